"""bnn sweep: grids and sampled searches of the quickstart on the embedded digits, each
trial an ordinary run directory; resumable; clean errors for bad arguments."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICKSTART

from bnn_cli.cli import main
from bnn_cli.experiments import space as spacemod
from bnn_cli.experiments import study as study_mod
from bnn_cli.experiments import sweep as sweepmod
from bnn_cli.rundir.run import RunDir, lock_holder

PNG = b"\x89PNG\r\n\x1a\n"
FIXED = ["training.epochs=1", "training.steps_per_epoch=2", "training.batch_size=16"]
LR = "training.learning_rate.initial"


def _sweep(folder: Path, *args: str) -> int:
    return main(["sweep", str(QUICKSTART), *args, *FIXED, "--output", str(folder)])


def _results(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _trial_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "trials").iterdir()
                  if p.is_dir() and not p.name.startswith("."))


def _study(folder: Path):
    import optuna

    return optuna.load_study(study_name=folder.name,
                             storage=f"sqlite:///{(folder / 'study.db').resolve()}")


def test_grid_of_two_values_makes_two_runs_and_a_table_naming_both(tmp_path, capsys):
    folder = tmp_path / "sweep"
    assert _sweep(folder, f"{LR}=0.001,0.01") == 0
    out, err = capsys.readouterr()
    runs = _trial_dirs(folder)
    assert len(runs) == 2
    assert all(RunDir(r).read_record().status == "completed" for r in runs)
    rows = _results(folder)
    assert sorted(r[LR] for r in rows) == ["0.001", "0.01"]
    assert {r["state"] for r in rows} == {"completed"}
    assert sorted(Path(r["run_dir"]).name for r in rows) == [r.name for r in runs]
    for row in rows:  # the table's numbers are the ones each trial's run.json recorded
        status = json.loads((Path(row["run_dir"]) / "run.json").read_text())
        assert float(row["best_val_accuracy"]) == pytest.approx(
            status["best"]["val_accuracy"], abs=1e-4)
        assert float(row["test_accuracy"]) == pytest.approx(
            status["test"]["metrics"]["accuracy"], abs=1e-4)
        assert 0 < float(row["test_accuracy"]) <= 1
    # Each run directory is an ordinary run, trained with its trial's override.
    for row in rows:
        overrides = json.loads((Path(row["run_dir"]) / "overrides.json").read_text())
        assert f"{LR}={row[LR]}" in overrides["overrides"]
    # The printed table names both values and both run directories; progress says which
    # trial of how many and the best so far.
    assert "0.001" in out and "0.01" in out and all(r.name[:30] in out for r in runs)
    assert "trial 2/2" in err and "best so far val_accuracy" in err
    png = (folder / "results.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 5000
    assert [t.state.name for t in _study(folder).trials] == ["COMPLETE", "COMPLETE"]

    # The same command again: every trial is done, nothing runs twice.
    assert _sweep(folder, f"{LR}=0.001,0.01") == 0
    err = capsys.readouterr().err
    assert len(_trial_dirs(folder)) == 2 and "epoch 1:" not in err
    assert len(_study(folder).trials) == 2

    # Another sweep in the same folder (the same study) is refused, and nothing runs.
    before = (folder / "results.csv").read_bytes()
    assert _sweep(folder, f"{LR}=0.001,0.1") == 2
    err = capsys.readouterr().err
    assert "holds another sweep" in err and "Traceback" not in err
    assert "--output DIR (or --study NAME)" in err
    assert len(_trial_dirs(folder)) == 2 and len(_study(folder).trials) == 2
    assert (folder / "results.csv").read_bytes() == before


def _sampled(folder: Path, *args: str, capsys) -> list[dict]:
    """``bnn sweep ... --json`` into ``folder``: its trials' reports."""
    capsys.readouterr()
    assert main(["sweep", str(QUICKSTART), *args, *FIXED, "--output", str(folder),
                 "--json"]) == 0
    return json.loads(capsys.readouterr().out)["trials"]


@pytest.mark.slow
def test_random_search_with_a_seed_is_reproducible(tmp_path, capsys):
    args = [f"{LR}=loguniform(1e-3,1e-2)", "model.layers[0].filters=choice(16,32)",
            "--search", "random", "--trials", "2"]
    trials = _sampled(tmp_path / "a", *args, "--seed", "7", capsys=capsys)
    got = [t["params"] for t in trials]
    assert len(got) == 2 and got[0] != got[1]
    assert all(1e-3 <= float(p[LR]) <= 1e-2 and p["model.layers[0].filters"] in ("16", "32")
               for p in got)
    # The same command into a fresh folder (a fresh study) samples the same trials...
    assert [t["params"] for t in _sampled(tmp_path / "b", *args, "--seed", "7",
                                          capsys=capsys)] == got
    # ...and another seed other ones.
    assert [t["params"] for t in _sampled(tmp_path / "c", *args, "--seed", "8",
                                          capsys=capsys)] != got
    # Each run directory got its trial's values.
    for trial in trials:
        resolved = (Path(trial["run_dir"]) / "config.resolved.yaml").read_text()
        assert f"filters: {trial['params']['model.layers[0].filters']}" in resolved


@pytest.mark.slow
def test_tpe_search_in_a_named_study(tmp_path, capsys):
    """``--search tpe --study NAME``: the study in DIR/study.db has that name, and its
    trials are the sweep's trials, with the sampled values in range."""
    import optuna
    import yaml

    folder = tmp_path / "tpe"
    trials = _sampled(folder, f"{LR}=loguniform(1e-3,1e-2)", "training.seed=int(0,9)",
                      "--search", "tpe", "--trials", "2", "--seed", "3", "--study", "tiny-tpe",
                      capsys=capsys)
    storage = f"sqlite:///{(folder / 'study.db').resolve()}"
    assert optuna.get_all_study_names(storage) == ["tiny-tpe"]
    study = optuna.load_study(study_name="tiny-tpe", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial, frozen in zip(trials, study.trials, strict=True):
        lr, seed = float(trial["params"][LR]), int(trial["params"]["training.seed"])
        assert 1e-3 <= lr <= 1e-2 and seed in range(10)
        assert lr == pytest.approx(frozen.params[LR], rel=1e-3)  # what TPE sampled
        assert seed == frozen.params["training.seed"]
        # The trial's run trained with those values and reported its best to the study.
        resolved = yaml.safe_load((Path(trial["run_dir"]) / "config.resolved.yaml").read_text())
        assert resolved["training"]["seed"] == seed
        assert resolved["training"]["learning_rate"]["initial"] == pytest.approx(lr)
        status = json.loads((Path(trial["run_dir"]) / "run.json").read_text())
        assert frozen.value == pytest.approx(status["best"]["val_accuracy"])
    rows = _results(folder)
    assert [r["state"] for r in rows] == ["completed", "completed"]


@pytest.mark.slow
def test_a_failed_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(tmp_path, capsys):
    # Pixels divided by 1e-38 overflow: that trial's loss is NaN at once.
    values = ("[{type: rescale, range: [-1, 1]}],"
              "[{type: normalize, mean: [0.0], std: [1.0e-38]}]")
    folder = tmp_path / "nan"
    assert _sweep(folder, f"data.preprocessing={values}") == 0  # (one trial completed)
    rows = {r["state"]: r for r in _results(folder)}
    assert set(rows) == {"completed", "failed"}
    assert "non-finite loss" in rows["failed"]["reason"]
    assert "non-finite loss" in capsys.readouterr().out  # (the table's notes)
    states = sorted(t.state.name for t in _study(folder).trials)
    assert states == ["COMPLETE", "FAIL"]


@pytest.mark.slow
def test_pruned_trials_end_interrupted_and_marked(tmp_path, capsys):
    import optuna

    from bnn_cli.experiments.table import list_runs

    folder = tmp_path / "pruned"
    # No val_accuracy exceeds 1.01: every trial is pruned at its first report.
    settings = sweepmod.SweepSettings(
        QUICKSTART, [f"{LR}=0.001,0.01", "training.epochs=10", "training.steps_per_epoch=3",
                     "training.batch_size=16"], output=folder, prune=True,
        pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    report = sweepmod.run_sweep(settings)
    assert [r["state"] for r in report.rows] == ["pruned", "pruned"]
    for row in list_runs(folder).rows:
        assert row["status"] == "interrupted" and row["pruned"]
        assert row["epochs_done"] < 10
        run = RunDir(folder / row["name"])
        run.load_checkpoint("last")  # (a clean end: a readable checkpoint)
    assert report.exit_code == 1  # (no trial completed)


@pytest.mark.slow
def test_prune_on_the_command_line_stops_a_trial_worse_than_the_median(tmp_path, capsys):
    """``bnn sweep --prune``: after two completed trials (the median pruner's start-up), a
    trial that cannot learn (a learning rate of 1e-9) is stopped once it is out of its
    warm-up (Optuna's MedianPruner never prunes a step below n_warmup_steps=2: not on
    its first epoch alone) and worse than their median; its run ends interrupted, marked."""
    from bnn_cli.experiments.table import list_runs

    folder = tmp_path / "prune"
    epochs = 8
    capsys.readouterr()
    assert main(["sweep", str(QUICKSTART), f"{LR}=0.01,0.005,1.0e-9", f"training.epochs={epochs}",
                 "training.steps_per_epoch=5", "training.batch_size=16", "--prune",
                 "--output", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    study = _study(folder)
    # (A grid runs its points in the order listed, the study's queue: the pruner needs two
    # trials done before the one it is to stop.)
    assert [t.params[LR] for t in study.trials] == ["0.01", "0.005", "1.0e-9"], \
        "the grid's order changed: the trial meant to be pruned is not the third"
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert [r["state"] for r in report["trials"]] == ["completed", "completed", "pruned"]
    done, pruned = study.trials[:2], study.trials[2]
    stopped_at = max(pruned.intermediate_values)
    assert 2 <= stopped_at < epochs
    median = sorted(t.intermediate_values[stopped_at] for t in done)
    assert max(pruned.intermediate_values.values()) < (median[0] + median[1]) / 2
    rows = {Path(r["path"]).name: r for r in list_runs(folder).rows}
    row = rows[Path(report["trials"][2]["run_dir"]).name]
    assert row["status"] == "interrupted" and "median pruner" in row["pruned"]
    assert stopped_at <= row["epochs_done"] < epochs
    assert all(r["status"] == "completed" and r["epochs_done"] == epochs
               for name, r in rows.items() if name != Path(row["path"]).name)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_sweep_killed_in_its_second_trial_resumes_it_and_runs_no_trial_twice(tmp_path, sig):
    """kill -9 of the sweep (its trial gets SIGTERM from the kernel), or a Ctrl-C (the
    sweep passes it on and exits 130): either way the next command resumes the trial."""
    folder = tmp_path / "killed"
    epochs = 10  # (the kill lands with most of the second trial still to run)
    args = [str(QUICKSTART), f"{LR}=0.001,0.003,0.01", f"training.epochs={epochs}",
            "training.steps_per_epoch=3", "training.batch_size=16", "--output", str(folder)]
    proc = subprocess.Popen([sys.executable, "-m", "bnn_cli.cli", "sweep", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 300
    second = None
    while second is None:  # the event: the second trial's first checkpoint exists
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended early"
        found = list((folder / "trials").glob("*-trial-0002-*/checkpoints/last.json")) \
            if (folder / "trials").is_dir() else []
        if found:
            second = found[0].parent.parent
        time.sleep(0.05)
    assert lock_holder(second) is not None, "the second trial ended before the kill"
    os.kill(proc.pid, sig)  # the sweep only (its trial is in a process group of its own)
    assert proc.wait(timeout=120) == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    while lock_holder(second) is not None:  # (the trial saves a checkpoint and ends)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    from bnn_cli.experiments.table import list_runs

    cut = RunDir(second).read_record()
    assert cut.epochs_done < epochs, "the second trial finished before the kill landed"
    statuses = {Path(r["path"]).name: r["status"] for r in list_runs(folder).rows}
    assert statuses[second.name] == "interrupted"
    assert sorted(statuses.values()) == ["completed", "interrupted"]

    assert main(["sweep", *args]) == 0
    runs = _trial_dirs(folder)
    assert len(runs) == 3  # the interrupted trial was resumed in place, not started over
    study = _study(folder)
    trials = study_mod.sweep_trials(study.trials)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert sorted(t.params[LR] for t in trials) == ["0.001", "0.003", "0.01"]
    # The killed sweep's trial was failed at once (its process is gone from this host)
    # and queued again by Optuna's retry callback; the retry resumed it.
    assert [t.number for t in study.trials if t.state.name == "FAIL"] == [1]
    assert [t.system_attrs.get("failed_trial") for t in trials] == [None, None, 1]
    rows = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    logs = {p.name: p.read_text() for p in (folder / "logs").iterdir()}
    assert logs["trial-0002.log"].count("\n$ ") == 2 and "--resume" in logs["trial-0002.log"]
    assert logs["trial-0001.log"].count("\n$ ") == 1  # (trial 1 did not run again)
    assert logs["trial-0003.log"].count("\n$ ") == 1
    assert {r["state"] for r in _results(folder)} == {"completed"}


BAD = [
    (f"{LR}=loguniform(1e-2)", "loguniform() takes two numbers"),
    (f"{LR}=logunifrom(1e-4,1e-2)", "did you mean 'loguniform'"),
    (f"{LR}=loguniform(1e-2,1e-4)", "needs low < high"),
    (f"{LR}=loguniform(0,1e-2)", "positive bounds"),
    ("model.layers[0].filters=range(16,8)", "is empty"),
    ("model.layers[0].filters=range(8,x)", "takes integers"),
    ("training.epochs", "is not KEY=VALUES"),
    ("training.epochs=1,,2", "empty value"),
    ("training.epochs=1,2,1", "lists 1 twice"),
    ("model.layers[0].kernel_size=[3,3],[5,5", "is missing"),
    ("model.layers[x].filters=16,32", "list index 'x' is not a number"),
    (f"{LR}=uniform(0.001,0.01)", "only --search random or --search tpe"),
    ("training.batch_size=32", "nothing to sweep"),
]


@pytest.mark.parametrize(("arg", "message"), BAD)
def test_bad_sweep_arguments_are_one_clean_error(tmp_path, capsys, arg, message):
    folder = tmp_path / "bad"
    assert main(["sweep", str(QUICKSTART), arg, "--output", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not folder.exists()


def test_bad_options_are_clean_errors(tmp_path, capsys):
    folder = tmp_path / "bad"
    for extra, message in ((["--search", "bayes"], "not a search"),
                           (["--trials", "3"], "--trials is for --search random"),
                           (["--search", "random", "--trials", "0"], "positive number"),
                           (["--jobs", "0"], "--jobs 0: give the number of trials"),
                           (["--grace", "1"], "--grace 1: give at least 2 seconds"),
                           (["--storage", "nosuchdb://u:secret@h/x"],
                            "cannot open the Optuna storage 'nosuchdb://u:***@h/x'")):
        assert main(["sweep", str(QUICKSTART), f"{LR}=0.001,0.01", *extra,
                     "--output", str(folder)]) == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # (the storage opens after the checks' line)
        assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert not folder.exists()


def test_every_grid_point_is_checked_before_anything_is_written(tmp_path, capsys):
    folder = tmp_path / "unchecked"
    code = main(["sweep", str(QUICKSTART), "model.defaults.QuantConv2D.kernel_quantizer="
                 "ste_sign,ste_sgn", "--output", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown quantizer 'ste_sgn'" in err and "did you mean" in err
    assert "nothing was run or written" in err and "Traceback" not in err
    assert not folder.exists()


def test_the_space_language():
    space = spacemod.parse_space(
        ["model.layers[0].kernel_size=[3,3],[5,5]", "training.seed=range(0,7,3)",
         "training.batch_size=16", "model.layers[0].filters=int(1,3)",
         "training.optimizer={type: Adam, beta_1: 0.9},{type: SGD}"], "grid")
    assert space.fixed == ["training.batch_size=16"]
    grid = space.search_space()
    assert grid["model.layers[0].kernel_size"] == ["[3,3]", "[5,5]"]
    assert grid["training.seed"] == ["0", "3", "6"]
    assert grid["model.layers[0].filters"] == ["1", "2", "3"]
    assert grid["training.optimizer"] == ["{type: Adam, beta_1: 0.9}", "{type: SGD}"]
    assert len(space.grid()) == 2 * 3 * 3 * 2
    # Sampled numbers are written as YAML reads them back as numbers.
    assert spacemod.yaml_number(1e-05) == "1.0e-05"
    assert spacemod.yaml_number(0.003) == "0.003"
    ranges = spacemod.parse_space([f"{LR}=loguniform(1e-4,1e-2)", "training.epochs=int(1,3)",
                                   "model.layers[0].filters=choice(8,16)"], "tpe")
    checked = list(spacemod.points_to_check(ranges, "tpe"))
    assert {p[LR] for p in checked} == {"0.0001", "0.01"}
    assert {p["model.layers[0].filters"] for p in checked} == {"8", "16"}


@pytest.mark.parametrize("search", ["random", "tpe"])
def test_samplers_give_override_texts_in_range_reproducibly(search):
    import optuna
    import yaml

    args = [f"{LR}=loguniform(1e-4,1e-2)", "training.epochs=int(1,3)",
            "model.layers[0].filters=range(16,65,16)", "training.seed=choice(0,1)",
            "training.batch_size=uniform(8,9)"]
    space = spacemod.parse_space(args, search)
    settings = sweepmod.SweepSettings(QUICKSTART, args, search=search, trials=4, seed=3)

    def sample() -> list[dict[str, str]]:
        study = optuna.create_study(direction="maximize")
        points = []
        for i in range(4):
            study.sampler = sweepmod._sampler(settings, space, i)
            trial = study.ask()
            points.append({p.key: p.suggest(trial, search) for p in space.params})
            study.tell(trial, float(i))
        return points

    points = sample()
    assert points == sample()
    for point in points:
        values = {k: yaml.safe_load(v) for k, v in point.items()}  # (YAML reads numbers)
        assert 1e-4 <= values[LR] <= 1e-2 and isinstance(values[LR], float)
        assert values["training.epochs"] in (1, 2, 3)
        assert values["model.layers[0].filters"] in (16, 32, 48, 64)
        assert values["training.seed"] in (0, 1)
        assert 8 <= values["training.batch_size"] <= 9
