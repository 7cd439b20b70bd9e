"""tf.distribute: the runtime section's checks, two workers on localhost, mirrored on
two virtual CPUs, a multi-worker run resumed after one worker was killed, and two workers
that each read only their own files of a split stored in several.

The trainings run as `bnn train` processes (a multi-worker strategy must be created
before TensorFlow starts, and virtual CPUs too), each compared with one process
training the same config with the same global batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import machines
import numpy as np
import pytest

from bnn_cli.assemble import machine
from bnn_cli.assemble import strategy as distribute
from bnn_cli.assemble.check import check
from bnn_cli.config.schema import ConfigError

# No batch normalization: Keras normalizes each replica's share of the batch, so a net
# with it trains differently on N replicas than on one (by design, not a bug here).
CONFIG = """\
name: tiny
model:
  layers:
    - {type: Flatten}
    - {type: QuantDense, units: 32, kernel_quantizer: ste_sign, kernel_constraint: weight_clip}
    - {type: QuantDense, units: 10, input_quantizer: ste_sign, activation: softmax}
data:
  # (Background pixels at 0: the binary first layer's sums then depend on the digit.)
  preprocessing: [{type: rescale, range: [0, 1]}]
training:
  epochs: 2
  batch_size: 32
  steps_per_epoch: 6
  # A net that learns (one process: about 0.45 test accuracy, chance is 0.1), so that
  # equal metrics mean something: latent binary weights and the float classifier by Adam.
  optimizer: {type: Adam}
  learning_rate: 0.01
  flip_ratio: true  # (a metric of the quantizers, aggregated over the replicas too)
"""


@pytest.fixture(autouse=True)
def _no_strategy_left():
    yield
    distribute.reset()


def _config(folder: Path, text: str = CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _bnn(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bnn_cli.cli", "train", *args],
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append(out)
        assert proc.returncode == 0, out[-3000:]
    return outputs


def _two_workers(args: list[str], ports: list[int] | None = None,
                 tmp: Path | None = None) -> list[subprocess.Popen]:
    ports = ports or machines.free_ports(2)
    extra = {"TMPDIR": str(tmp)} if tmp else {}
    return [_bnn([*args, "runtime.strategy=multi_worker_mirrored"] if "--resume" not in args
                 else args, TF_CONFIG=_tf_config(ports, i), **extra) for i in range(2)]


def _only_run(output: Path) -> Path:
    runs = [p for p in output.iterdir()]
    assert len(runs) == 1, runs
    return runs[0]


def _result(run: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """run.json, and the last checkpoint's variables (model and optimizer)."""
    import tensorflow as tf

    from bnn_cli.rundir.run import RunDir

    status = json.loads((run / "run.json").read_text())
    reader = tf.train.load_checkpoint(RunDir(run).load_checkpoint("last").prefix)
    names = [n for n in reader.get_variable_to_shape_map()
             if not n.startswith("_CHECKPOINTABLE") and "save_counter" not in n]
    return status, {n: reader.get_tensor(n) for n in names}


def _assert_same(a: Path, b: Path) -> None:
    (status_a, vars_a), (status_b, vars_b) = _result(a), _result(b)
    assert status_a["status"] == status_b["status"] == "completed"
    assert status_a["epochs_done"] == status_b["epochs_done"]
    for key, value in status_a["final"].items():
        if key != "seconds":
            assert status_b["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for key, value in status_a["test"]["metrics"].items():
        assert status_b["test"]["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6)
    assert sorted(vars_a) == sorted(vars_b)
    for name, value in vars_a.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(vars_b[name], value, rtol=1e-4, atol=1e-5,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(vars_b[name], value, err_msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, the default strategy, the same global batch."""
    tmp = tmp_path_factory.mktemp("one")
    config = _config(tmp)
    started = time.perf_counter()
    (out,) = _wait([_bnn([str(config), "--output", str(tmp / "runs")])])
    run = _only_run(tmp / "runs")
    accuracy = json.loads((run / "run.json").read_text())["test"]["metrics"]["accuracy"]
    assert accuracy > 0.3, f"the reference net does not learn: test accuracy {accuracy}"
    return run, time.perf_counter() - started, config


# ---------------------------------------------------------------------------------------
# Checks: every mistake a config error before anything runs
# ---------------------------------------------------------------------------------------


def _problem(tmp_path, overrides: list[str], text: str = CONFIG) -> str:
    with pytest.raises(ConfigError) as info:
        check(_config(tmp_path, text), overrides, start_runtime=True)
    return str(info.value)


def test_unknown_strategy_and_precision_are_located(tmp_path):
    message = _problem(tmp_path, ["runtime.strategy=mirored", "runtime.mixed_precision=fp16"])
    assert "runtime.strategy" in message and "'mirrored'" in message
    assert "runtime.mixed_precision" in message and "'mixed_bfloat16'" in message


def test_multi_worker_without_tf_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    text = CONFIG + "runtime:\n  strategy: multi_worker_mirrored\n"
    message = _problem(tmp_path, [], text)
    line = CONFIG.count("\n") + 2
    assert message.startswith(f"{tmp_path / 'tiny.yaml'}:{line}:13: runtime.strategy: ")
    assert "TF_CONFIG is not set" in message and '"task": {"type": "worker"' in message


@pytest.mark.parametrize(("tf_config", "expected"), [
    ("{not json", "is not JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}}', 'needs a "cluster" and a "task"'),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", '
     '"index": 2}}', "task.index is 2, but cluster.worker has 2 address(es)"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     '"host:port" addresses'),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker"}}',
     "names the job 'ps'"),
])
def test_bad_tf_config(tmp_path, monkeypatch, tf_config, expected):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    message = _problem(tmp_path, ["runtime.strategy=multi_worker_mirrored"])
    assert expected in message and "runtime.strategy" in message


def test_batch_must_divide_by_the_replicas(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config([1111, 2222, 3333], 0))
    message = _problem(tmp_path, ["runtime.strategy=multi_worker_mirrored"])
    assert "training.batch_size" in message and "tiny.yaml:" in message
    assert "32 is the global batch, split over the 3 replicas" in message
    assert "e.g. 30 or 33" in message
    message = _problem(tmp_path, ["runtime.strategy=mirrored", "training.batch_size=15",
                                  "runtime.devices=[/cpu:0, /cpu:1]"])
    assert "15 is the global batch, split over the 2 replicas" in message


def test_tpu_without_a_tpu(tmp_path, monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    message = _problem(tmp_path, ["runtime.strategy=tpu"])
    assert "needs a TPU, and this machine has none" in message


def test_devices_are_checked(tmp_path):
    message = _problem(tmp_path, ["runtime.devices=[/gpu:0]"])
    assert "for the mirrored strategy only" in message
    message = _problem(tmp_path, ["runtime.strategy=mirrored", "runtime.devices=[/gpu:7]"])
    assert "runtime.devices[0]" in message and "/gpu:7 does not exist" in message
    message = _problem(tmp_path, ["runtime.strategy=mirrored", "runtime.devices=[/tpu:0]"])
    assert "runtime.devices[0]" in message


def test_a_stage_cannot_change_the_runtime(tmp_path):
    text = CONFIG + "stages:\n  - {name: a, set: {runtime.strategy: mirrored}}\n"
    message = _problem(tmp_path, [], text)
    assert "stages[0].set.runtime.strategy" in message and "cannot change the runtime" in message


def test_runs_of_other_strategies_are_read_anywhere(tmp_path, monkeypatch):
    """`bnn eval`/`export` of a multi-worker run need no cluster: only training checks
    the runtime section against the machine."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    checked = check(_config(tmp_path), ["runtime.strategy=multi_worker_mirrored"])
    assert checked.spec.runtime.strategy == "multi_worker_mirrored"


def test_chief():
    two = {"worker": ["a:1", "b:1"]}
    assert distribute.Cluster(two, "worker", 0).is_chief
    assert not distribute.Cluster(two, "worker", 1).is_chief
    with_chief = {"chief": ["c:1"], **two}
    assert distribute.Cluster(with_chief, "chief", 0).is_chief
    assert not distribute.Cluster(with_chief, "worker", 0).is_chief
    assert distribute.Cluster(with_chief, "worker", 0).num_workers == 3
    env = {"TF_CONFIG": json.dumps({"cluster": with_chief, "task": {"type": "chief"}})}
    assert distribute.cluster_from_env(env).is_chief


def test_default_strategy_trains_as_before(tmp_path):
    """The default runtime is one device: the strategy's scope is TensorFlow's no-op."""
    import tensorflow as tf

    check(_config(tmp_path), [], start_runtime=True)
    assert distribute.strategy() is tf.distribute.get_strategy()
    assert distribute.replicas() == 1 and distribute.is_chief()


# ---------------------------------------------------------------------------------------
# Trainings
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_equal_one_process(one_process, tmp_path):
    """Two `bnn train` processes with TF_CONFIG (MultiWorkerMirroredStrategy on CPU)
    end with the one-process run's metrics and weights; only the chief's run exists."""
    reference, one_seconds, config = one_process
    output, tmp = tmp_path / "runs", tmp_path / "tmp"
    tmp.mkdir()
    started = time.perf_counter()
    chief, worker = _wait(_two_workers([str(config), "--output", str(output)], tmp=tmp))
    two_seconds = time.perf_counter() - started
    run = _only_run(output)  # the other worker wrote nothing here...
    assert list(tmp.iterdir()) == []  # ...and removed its temporary copy
    assert "run directory:" in chief and "run directory:" not in worker
    assert "worker 1 of 2 workers" in worker
    status = json.loads((run / "run.json").read_text())
    assert status["runtime"] == {"strategy": "multi_worker_mirrored", "replicas": 2,
                                 "workers": 2, "mixed_precision": None,
                                 "cpu": str(machine.cpu()),
                                 "input": {"by": "examples"}}  # (held in memory)
    _assert_same(reference, run)
    print(f"\none process: {one_seconds:.1f} s, two workers: {two_seconds:.1f} s, "
          f"final {status['final']}, test {status['test']['metrics']}")


@pytest.mark.slow
def test_mirrored_on_two_virtual_cpus(one_process, tmp_path):
    reference, _, config = one_process
    output = tmp_path / "runs"
    _wait([_bnn([str(config), "--output", str(output), "runtime.strategy=mirrored",
                 "runtime.devices=[/cpu:0, /cpu:1]"])])
    run = _only_run(output)
    status = json.loads((run / "run.json").read_text())
    assert status["runtime"]["replicas"] == 2
    _assert_same(reference, run)


@pytest.mark.slow
def test_synchronized_batch_norm_on_two_replicas_equals_one(tmp_path):
    """With batch normalization on the global batch's statistics (Keras's
    ``synchronized``), the quickstart trains on two replicas as on one."""
    from conftest import QUICKSTART, TINY

    config = _config(tmp_path, f"extends: {QUICKSTART}\n"
                     "model: {defaults: {BatchNormalization: {synchronized: true}}}\n")
    args = [str(config), *TINY, "training.epochs=2"]
    _wait([_bnn([*args, "--output", str(tmp_path / "one")])])  # (prepares the digits)
    _wait([_bnn([*args, "--output", str(tmp_path / "two"), "runtime.strategy=mirrored",
                 "runtime.devices=[/cpu:0, /cpu:1]"])])
    _assert_same(_only_run(tmp_path / "one"), _only_run(tmp_path / "two"))


def _kill_a_worker_after_the_first_checkpoint(config: Path, output: Path) -> None:
    """Start a two-worker job; once its first checkpoint exists, kill -9 worker 1 and
    stop the job (the chief waits for its peer, or fails)."""
    chief, worker = _two_workers([str(config), "--output", str(output)])
    deadline = time.monotonic() + 600
    while not list(output.glob("*/checkpoints/last.json")):
        assert chief.poll() is None and time.monotonic() < deadline, \
            "the job ended before a worker could be killed"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    try:
        chief.wait(timeout=20)
    except subprocess.TimeoutExpired:
        chief.send_signal(signal.SIGKILL)
        chief.wait()
    chief.communicate()
    worker.communicate()


@pytest.mark.slow
def test_resume_after_a_worker_was_killed(tmp_path):
    """Kill -9 one worker after the first epoch, stop the job, restart both workers
    with --resume: the run ends as an uninterrupted one-process run ends."""
    text = CONFIG.replace("epochs: 2", "epochs: 4").replace("steps_per_epoch: 6",
                                                            "steps_per_epoch: 10")
    config = _config(tmp_path / "cfg", text)
    _wait([_bnn([str(config), "--output", str(tmp_path / "one")])])
    reference = _only_run(tmp_path / "one")

    output = tmp_path / "runs"
    _kill_a_worker_after_the_first_checkpoint(config, output)
    run = _only_run(output)
    epochs = json.loads((run / "checkpoints" / "last.json").read_text())
    assert json.loads((run / "run.json").read_text())["status"] != "completed", epochs

    outputs = _wait(_two_workers(["--resume", str(run)]))
    assert "resuming" in outputs[0]
    _assert_same(reference, run)
    assert len(json.loads((run / "run.json").read_text())["final"]) > 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]



# ---------------------------------------------------------------------------------------
# Two workers, each reading its own files
# ---------------------------------------------------------------------------------------

SHARDS = machines.SHARDS

FILES_CONFIG = CONFIG.replace("""data:
""", """data:
  dataset: ./digits/1.0.0
  train_split: train
  validation_split: test
  cache: false          # (read from the files every epoch: what a large split does)
  shuffle_buffer: 200
""").replace("epochs: 2", "epochs: 3").replace("steps_per_epoch: 6", "steps_per_epoch: 20")


def _shards_read(root: Path, since: float) -> list[int]:
    """The training files whose access time is after ``since`` (read since then)."""
    return sorted(i for i in range(SHARDS)
                  if (root / f"digits-train.tfrecord-{i:05d}-of-{SHARDS:05d}").stat().st_atime
                  > since)


def _age(root: Path) -> float:
    """Set every file's access time two days back (relatime then records the next
    read); the moment after."""
    old = time.time() - 2 * 86400
    for path in root.iterdir():
        os.utime(path, (old, path.stat().st_mtime))
    return time.time()


@pytest.mark.slow
def test_two_workers_read_only_their_own_files_and_end_near_one_process(tmp_path):
    """Each worker has its own copy of the dataset (as each host its own disk): worker i
    reads training files i, i+2, ... of its copy and no other, and the job ends near the
    one-process run of the same config (another order of examples: near, not equal)."""
    config = _config(tmp_path / "cfg", FILES_CONFIG)
    copies = [machines.digits_in_files(tmp_path / f"host{i}" / "digits" / "1.0.0")
              for i in range(2)]
    _wait([_bnn([str(config), f"data.dataset={copies[0]}", "--output", str(tmp_path / "one")])])
    one = json.loads((_only_run(tmp_path / "one") / "run.json").read_text())
    assert one["runtime"]["input"] == {"by": "examples"}

    since = [_age(copy) for copy in copies]
    ports, output = machines.free_ports(2), tmp_path / "runs"
    procs = [_bnn([str(config), f"data.dataset={copies[i]}", "--output", str(output),
                   "runtime.strategy=multi_worker_mirrored"],
                  TF_CONFIG=_tf_config(ports, i)) for i in range(2)]
    outputs = _wait(procs)
    assert [_shards_read(copies[i], since[i]) for i in range(2)] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert "worker 0 of 2 reads files 0, 2, ... of the 8" in outputs[0]
    assert "worker 1 of 2 reads files 1, 3, ... of the 8" in outputs[1]
    two = json.loads((_only_run(output) / "run.json").read_text())
    assert two["runtime"]["input"] == {"by": "files", "files": SHARDS, "workers": 2}
    assert one["test"]["metrics"]["accuracy"] > 0.6, "the reference net does not learn"
    for key in ("accuracy", "loss"):
        assert two["test"]["metrics"][key] == pytest.approx(one["test"]["metrics"][key],
                                                            rel=0.1, abs=0.05), key
    print(f"\none process: {one['test']['metrics']}, two workers: {two['test']['metrics']}")


@pytest.mark.slow
def test_a_file_sharded_job_resumed_after_a_worker_was_killed_ends_as_uninterrupted(tmp_path):
    config = _config(tmp_path / "cfg", FILES_CONFIG.replace("epochs: 3", "epochs: 4"))
    machines.digits_in_files(tmp_path / "cfg" / "digits" / "1.0.0")
    _wait(_two_workers([str(config), "--output", str(tmp_path / "uninterrupted")]))
    reference = _only_run(tmp_path / "uninterrupted")

    output = tmp_path / "runs"
    _kill_a_worker_after_the_first_checkpoint(config, output)  # (mid-epoch 2)
    run = _only_run(output)
    assert json.loads((run / "run.json").read_text())["status"] != "completed"
    _wait(_two_workers(["--resume", str(run)]))
    _assert_same(reference, run)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
