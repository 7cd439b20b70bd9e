"""scripts/benchmark.py compares one network as Keras, Larq and bnn_cli layers: the
translations must be that same network (same weights in, same outputs out), or the
speed table compares different things."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT

pytest.importorskip("larq", reason="Larq is a test extra: pip install -e '.[test]'")
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402
import imagenet_pipeline as inp  # noqa: E402


@pytest.mark.parametrize("config", ["configs/larq_mnist.yaml"])
def test_translations_are_the_same_network(config):
    model = benchmark.bnn_model(config)
    x = np.random.default_rng(0).uniform(-1, 1, (4, *model.input_shape[1:])).astype("float32")
    larq = benchmark.translate(model, "larq")
    larq.set_weights(model.get_weights())
    np.testing.assert_allclose(larq(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert {type(layer).__module__.split(".")[0] for layer in larq.layers
            if type(layer).__name__.startswith("Quant")} == {"larq"}
    # Full precision: the same layers without quantizers, so the outputs differ.
    keras_fp = benchmark.translate(model, "keras")
    assert keras_fp.count_params() == model.count_params()
    assert not any(type(layer).__name__.startswith("Quant") for layer in keras_fp.layers)
    keras_fp.set_weights(model.get_weights())
    assert not np.allclose(keras_fp(x).numpy(), model(x).numpy())


def test_table_has_the_ratios_by_wall_and_cpu_time_and_the_cpu():
    results = {"step": {
        "cpu": {"model": "Some CPU", "cores": 2, "instruction_sets": ["avx2", "fma"]},
        "onednn": "1",
        "networks": {"net": {"batch": 8, "ms_per_step": {
            "keras (full precision)": 10.0, "larq": 12.0, "bnn": 12.0},
            "cpu_ms_per_step": {"keras (full precision)": 20.0, "larq": 30.0, "bnn": 16.0}}}},
        "train": {"job": {"bnn train": {"epoch_s": 2.0, "peak_mib": 900},
                          "plain script": {"epoch_s": 2.2, "peak_mib": 1000},
                          "plain script, oneDNN": {"epoch_s": 2.1, "peak_mib": 1000}}}}
    text = benchmark.table(results)
    assert "Some CPU, 2 cores (avx2, fma)" in text and "TF_ENABLE_ONEDNN_OPTS=1" in text
    assert "| net (8) | bnn | 12.0 | 16.0 | 0.83x, 1.25x | 1.00x, 1.88x |" in text
    assert "| job | 2.00 s | 2.20 s | 1.10 | 2.10 s | 900 / 1000 MiB |" in text


def test_the_reference_epoch_runs_with_tensorflows_own_defaults(monkeypatch):
    """The unit of time to accuracy is the plain script as a user runs it: bnn's oneDNN
    default must not leak into it from the measuring process."""
    seen = {}

    def fake(cmd, marker, cwd, env=None):
        seen.update(cmd=cmd, env=env)
        return {"epoch_ends": [0.0, 5.0, 9.0, 14.0], "peak_mib": 1.0}

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    monkeypatch.setattr(benchmark, "_timed_process", fake)
    monkeypatch.setattr(benchmark, "wait_until_quiet", lambda: seen.setdefault("quiet", 1))
    assert benchmark.reference_epoch("/data") == 5.0
    assert seen["quiet"] == 1 and "cmd" in seen  # it waited for quiet cores first
    assert "TF_ENABLE_ONEDNN_OPTS" not in seen["env"]
    assert seen["cmd"][2:9] == ["configs/larq_mnist.yaml", "mnist", "train", "test", "64",
                                "4", "0.001"]


def test_busy_share_counts_other_work_and_steal_not_idle(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")

    def sleep(_seconds):  # 200 ticks later: 60 user, 20 steal, 100 idle, 20 iowait
        stat.write_text("cpu  160 0 50 900 70 0 0 20 0 0\n")

    monkeypatch.setattr(benchmark.time, "sleep", sleep)
    assert benchmark.busy_share(1.0, stat) == pytest.approx(0.4)
    assert benchmark.busy_share(1.0, tmp_path / "missing") == 0.0


def test_the_reference_waits_for_quiet_cores_and_gives_up_saying_so(capsys):
    shares = iter([0.9, 0.5, 0.05, 0.9])
    assert benchmark.wait_until_quiet(0.15, 600, lambda: next(shares)) == 0.05
    assert capsys.readouterr().err.count("waiting for quiet cores") == 2
    assert benchmark.wait_until_quiet(0.15, 0, lambda: 0.7) == 0.7
    assert "70% busy after 0 s: measuring anyway" in capsys.readouterr().err


def test_epoch_time_is_the_median_gap_between_epoch_lines():
    # Lines at 0, 1, 3 and 4 s: epochs 2-4 took 1, 2 and 1 s (epoch 1 has no line
    # before it, and traces the step).
    assert benchmark._epoch_time({"epoch_ends": [0.0, 1.0, 3.0, 4.0]}) == 1.0


# --- imagenet-pipeline (scripts/imagenet_pipeline.py) ---------------------------------


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A tiny photo folder: 20 training and 10 validation photographs."""
    return inp.photo_folder(20, validation=10, root=tmp_path_factory.mktemp("in") / "photos",
                            progress=_quiet)


def _needs_bnn_crop(name: str) -> None:
    from bnn_cli.config import schema

    if name == inp.BNN and not hasattr(schema, "RandomResizedCrop"):
        pytest.skip("bnn's random_resized_crop is not written yet")


def test_imagenet_photo_folder_has_classes_of_jpegs_at_imagenet_size(photos):
    from PIL import Image

    for split, count in (("train", 20), ("validation", 10)):
        classes = sorted(p.name for p in (photos / split).iterdir())
        assert classes == [f"class{c}" for c in range(inp.CLASSES)]
        files = sorted((photos / split).glob("*/*"))
        assert len(files) == count and {f.suffix for f in files} == {".jpg"}
        for f in files:
            with Image.open(f) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                long, short = max(image.size), min(image.size)
            assert inp.WIDTHS[0] <= long <= inp.WIDTHS[1]
            assert inp.HEIGHTS[0] <= short <= inp.HEIGHTS[1]


def test_imagenet_photo_folder_is_reused_when_complete_and_rewritten_when_not(tmp_path):
    root = tmp_path / "photos"
    assert inp.photo_folder(10, validation=10, root=root, progress=_quiet) == root
    marker = root / "done.json"
    stamp = marker.stat().st_mtime_ns
    inp.photo_folder(10, validation=10, root=root, progress=_quiet)
    assert marker.stat().st_mtime_ns == stamp
    marker.unlink()  # (a folder that does not say it is complete)
    inp.photo_folder(10, validation=10, root=root, progress=_quiet)
    assert marker.exists() and [p.name for p in tmp_path.iterdir()] == ["photos"]


@pytest.mark.parametrize("mode", inp.MODES)
@pytest.mark.parametrize("name", inp.PIPELINES)
def test_imagenet_pipelines_read_every_photograph(photos, name, mode):
    _needs_bnn_crop(name)
    batches = list(inp.BUILDERS[name](photos, mode, 8))
    count = 20 if mode == "train" else 10
    assert sum(len(y) for _, y in batches) == count == inp.drain(inp.BUILDERS[name](
        photos, mode, 8))
    x, y = batches[0]
    assert y.dtype == "int64" and set(y.numpy()) <= set(range(inp.CLASSES))
    if name == inp.DECODE:  # (each image as its number of values)
        assert x.shape == (8,) and all(360 * 480 * 3 <= v <= 375 * 500 * 3 for v in x.numpy())
    else:
        assert x.shape == (8, 224, 224, 3) and x.dtype == "float32"


def test_imagenet_pipelines_evaluate_the_same_crops(photos):
    # bnn's evaluation and the zoo's read the same centre crops, normalized alike (in
    # other orders): the same work is timed.
    _needs_bnn_crop(inp.BNN)
    means = [np.concatenate([x.numpy() for x, _ in inp.BUILDERS[name](photos, "eval", 8)]
                            ).mean(axis=(0, 1, 2)) for name in (inp.BNN, inp.ZOO)]
    np.testing.assert_allclose(means[0], means[1], atol=1e-4)


def test_imagenet_table_has_the_pipelines_and_the_goal():
    result = {"images": {"train": 3000, "eval": 500}, "batch": 256, "rounds": 3,
              "images_per_s": {inp.BNN: {"train": 900.0, "eval": 1000.0},
                               inp.ZOO: {"train": 900.0, "eval": 1250.0},
                               inp.DECODE: {"train": 1000.0, "eval": 1250.0}},
              "cpu": {"model": "Some CPU", "cores": 16, "instruction_sets": ["avx2"]}}
    text = benchmark.table({"imagenet-pipeline": result})
    assert "| bnn | 900 | 1000 | 1.00x / 0.80x | 0.90x / 0.80x |" in text
    assert "| zoo tf.data | 900 | 1250 | 1.00x / 1.00x | 0.90x / 1.00x |" in text
    assert "| decoding alone | 1000 | 1250 | 1.11x / 1.00x | 1.00x / 1.00x |" in text
    assert "train met, eval not met" in text
    assert "CPU: Some CPU, 16 cores (avx2)." in text


def test_gpu_check_table_names_the_device_and_each_policy():
    import gpu_check

    step = {"cpu": {"model": "Host CPU", "cores": 16, "instruction_sets": []}, "onednn": "1",
            "networks": {"binarynet_cifar10": {
                "batch": 256, "ms_per_step": {"keras (full precision)": 4.0, "larq": 5.0,
                                              "bnn": 4.0},
                "cpu_ms_per_step": {"keras (full precision)": 4.0, "larq": 5.0, "bnn": 4.0}}}}
    results = {"device": {"gpu": True, "name": "1 x NVIDIA H100"}, "step": step,
               "epochs": {"quickstart": {"float32": 0.5, "mixed_float16": 0.25}},
               "pipeline": None}
    text = gpu_check.table(results)
    assert text.startswith("Device: 1 x NVIDIA H100.")
    assert "| `bnn train` quickstart | 0.50 s | 0.25 s |" in text
    assert "| binarynet_cifar10 (256) | bnn | 4.0 | 4.0 | 1.00x, 1.00x | 1.25x, 1.25x |" in text
