"""bnn sweep across processes and hosts, on real storages: two sweeps started at once on
one new PostgreSQL study (as two hosts following the README would), a killed worker's
trial resumed by the survivor (heartbeats across hosts on PostgreSQL; a dead pid on one
host, on SQLite), ``--jobs``, and storage URLs that do not open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import machines
import pytest
from conftest import QUICKSTART

from bnn_cli.cli import main
from bnn_cli.experiments import study as study_mod
from bnn_cli.rundir.run import RunDir, lock_holder

LR = "training.learning_rate.initial"
TINY = ["training.epochs=1", "training.steps_per_epoch=2", "training.batch_size=16"]


@pytest.fixture(scope="module")
def postgres():
    try:
        with machines.running() as server:
            yield server
    except RuntimeError as exc:
        pytest.skip(str(exc))


def _command(folder: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bnn_cli.cli", "sweep", str(QUICKSTART), *args,
            "--output", str(folder)]


def _env(storage: str | None = None) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if storage:
        env["BNN_SWEEP_STORAGE"] = storage  # (as the README says: off the command line)
    return env


def _load(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def _runs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("**/trials/*") if RunDir.is_run(p))


def _commands_per_log(root: Path) -> dict[str, int]:
    return {p.name: p.read_text().count("\n$ ") for p in root.glob("**/logs/trial-*.log")}


def _assert_no_password(root: Path, password: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), f"the password is in {path}"


# ---------------------------------------------------------------------------------------
# Two hosts, one PostgreSQL study
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_sweeps_started_at_once_share_one_new_postgres_study(postgres, tmp_path, capsys):
    """Both create Optuna's tables and the study at the same moment; together they run
    the grid's four trials once each, each into its own folder (each host its own disk)."""
    storage = postgres.new_database("two_hosts")
    values = ["0.001", "0.003", "0.01", "0.03"]
    args = [f"{LR}={','.join(values)}", *TINY, "--study", "lr"]
    procs = [subprocess.Popen(_command(tmp_path / host, *args), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=_env(storage), text=True)
             for host in ("host-a", "host-b")]
    outputs = [p.communicate(timeout=600)[1] for p in procs]
    for proc, err in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err

    study = _load(storage, "lr")
    trials = study_mod.sweep_trials(study.trials)
    assert sorted(t.params[LR] for t in trials) == values  # each point once
    assert {t.state.name for t in trials} == {"COMPLETE"}
    runs = _runs(tmp_path)
    assert len(runs) == 4  # no trial ran twice, in either folder
    assert all(RunDir(r).read_record().status == "completed" for r in runs)
    assert all("test" in json.loads((r / "run.json").read_text()) for r in runs)
    assert sorted(_commands_per_log(tmp_path).values()) == [1, 1, 1, 1]
    # `bnn runs` over the two folders lists every trial, completed
    capsys.readouterr()
    assert main(["runs", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert sorted(Path(r["path"]).name for r in rows) == sorted(r.name for r in runs)
    assert {r["status"] for r in rows} == {"completed"}
    _assert_no_password(tmp_path, postgres.password)


# ---------------------------------------------------------------------------------------
# A worker that dies
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["postgresql-two-hosts", "sqlite-one-host"])
def test_a_killed_worker_leaves_its_trial_to_the_survivor_which_resumes_it(
        where, postgres, tmp_path):
    """Sweep A is killed (SIGKILL) inside its trial; sweep B, already running, fails that
    trial once A's worker is seen to be gone (across hosts: its heartbeat stopped for the
    grace period; on one host: its pid is gone), Optuna's retry callback queues it again,
    and B resumes it from its run directory: every trial is run once, to the end."""
    folder = tmp_path / "shared"  # (a folder both hosts see, as over NFS)
    if where.startswith("postgresql"):
        if not machines.can_be_another_host():
            pytest.skip("cannot start a process under another host name (unshare --uts)")
        storage, wrap = postgres.new_database("killed_worker"), machines.as_other_host
    else:
        storage, wrap = f"sqlite:///{(folder / 'study.db').resolve()}", (lambda c: c)
    epochs = 8
    args = [f"{LR}=0.001,0.003,0.01", f"training.epochs={epochs}",
            "training.steps_per_epoch=3", "training.batch_size=16", "--grace", "4"]
    first = subprocess.Popen(_command(folder, *args), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=_env(storage))
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:  # the event: A's trial has its first checkpoint
        assert first.poll() is None and time.monotonic() < deadline, "sweep A ended early"
        found = list(folder.glob("trials/*-trial-0001-*/checkpoints/last.json"))
        victim = found[0].parent.parent if found else None
        time.sleep(0.05)
    second = subprocess.Popen(wrap(_command(folder, *args)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=_env(storage), text=True)
    assert lock_holder(victim) is not None, "A's trial ended before the kill"
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
    err = second.communicate(timeout=600)[1]
    assert second.returncode == 0, err[-3000:]
    assert "trial 1: its worker is gone; queued to resume" in err

    cut = [json.loads(x)["epoch"] for x in (victim / "metrics.jsonl").read_text().splitlines()]
    assert cut == list(range(1, epochs + 1))  # resumed, not started over
    assert RunDir(victim).read_record().status == "completed"
    assert len(_runs(folder)) == 3
    logs = _commands_per_log(folder)
    assert logs == {"trial-0001.log": 2, "trial-0002.log": 1, "trial-0003.log": 1}
    assert "--resume" in (folder / "logs" / "trial-0001.log").read_text()
    study = _load(storage, folder.name)
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"  # Optuna's retry
    assert study.trials[0].state.name == "FAIL"
    rows = study_mod.sweep_trials(study.trials)
    assert sorted(t.params[LR] for t in rows) == ["0.001", "0.003", "0.01"]
    assert {t.state.name for t in rows} == {"COMPLETE"}


# ---------------------------------------------------------------------------------------
# --jobs
# ---------------------------------------------------------------------------------------


def test_jobs_run_trials_at_once_in_processes_of_their_own(tmp_path):
    """Two jobs sample three trials: exactly three run (a job that asks for a trial once
    the study has all three marks it surplus and runs nothing), in both jobs."""
    folder = tmp_path / "jobs"
    done = subprocess.run(_command(folder, f"{LR}=loguniform(0.001,0.01)", *TINY,
                                   "--search", "random", "--trials", "3", "--jobs", "2"),
                          capture_output=True, text=True, env=_env(), timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[job 1]" in done.stderr and "[job 2]" in done.stderr
    study = _load(f"sqlite:///{(folder / 'study.db').resolve()}", "jobs")
    trials = study_mod.sweep_trials(study.trials)
    assert len(trials) == 3 and {t.state.name for t in trials} == {"COMPLETE"}
    assert all(study_mod.is_surplus(t) for t in study.trials if t not in trials)
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert len(owners) == 2 and os.getpid() not in owners  # both jobs ran trials
    assert _commands_per_log(folder) == {f"trial-000{n}.log": 1 for n in (1, 2, 3)}
    assert len(_runs(folder)) == 3
    table = done.stdout  # the one final table, printed by the parent
    assert table.count("completed") == 3 and "surplus" not in table


# ---------------------------------------------------------------------------------------
# Storages that do not open: one clean error, the password masked, nothing written
# ---------------------------------------------------------------------------------------


def _refused(tmp_path: Path, capsys, url: str, *, env: bool = False) -> str:
    folder = tmp_path / "nothing"
    storage = [] if env else ["--storage", url]
    code = main(["sweep", str(QUICKSTART), f"{LR}=0.001,0.01", *storage,
                 "--output", str(folder)])
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot open the Optuna storage") and "Traceback" not in err
    assert not folder.exists()
    return err


def test_a_server_that_is_down_is_one_clean_error_with_the_password_masked(
        tmp_path, capsys, monkeypatch):
    url = f"postgresql://bnn:topsecret@127.0.0.1:{machines.free_ports(1)[0]}/sweeps"
    for env in (False, True):
        if env:
            monkeypatch.setenv("BNN_SWEEP_STORAGE", url)
        err = _refused(tmp_path, capsys, url, env=env)
        assert "postgresql://bnn:***@127.0.0.1:" in err and "topsecret" not in err
        assert "refused" in err.lower() and "that the server is up" in err


def test_a_missing_driver_names_the_package_to_install(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "mysql://u:pw1234@127.0.0.1/sweeps")
    assert "driver is not installed" in err and "mysql+pymysql://" in err
    assert "pw1234" not in err


def test_the_postgres_driver_fix_names_the_extra():
    assert 'pip install "bnn-cli[postgres]"' in study_mod._driver_fix("postgresql://h/db")
    assert "psycopg2" in study_mod._driver_fix("postgresql+psycopg2://h/db")


@pytest.mark.slow
def test_a_refused_password_is_one_clean_error_with_the_password_masked(
        postgres, tmp_path, capsys):
    err = _refused(tmp_path, capsys, postgres.url(password="not-the-password"))
    assert "password authentication failed" in err and "not-the-password" not in err
    assert f"postgresql://bnn:***@127.0.0.1:{postgres.port}/postgres" in err


# ---------------------------------------------------------------------------------------
# The rules, in one process
# ---------------------------------------------------------------------------------------


def _study_and_runner(tmp_path: Path, search: str, total: int, grace: int = 120):
    import optuna

    from bnn_cli.experiments import space as spacemod
    from bnn_cli.experiments import sweep as sweepmod

    settings = sweepmod.SweepSettings(QUICKSTART, [f"{LR}=0.001,0.01"], search=search,
                                      trials=None if search == "grid" else total, seed=0,
                                      grace=grace)
    space = spacemod.parse_space(settings.args, search)
    storage = study_mod.open_storage(f"sqlite:///{tmp_path / 'study.db'}", grace)
    queue = space.grid() if search == "grid" else []
    study = study_mod.join_study(storage, "rules", "maximize", optuna.samplers.RandomSampler(0),
                                 optuna.pruners.NopPruner(), {"sweep": 1}, queue, "here")
    runner = sweepmod._Runner(settings, space, tmp_path, study, "val_accuracy", "max", total,
                              "q", sweepmod._Signals())
    return study, runner


@pytest.mark.parametrize("search", ["grid", "random"])
def test_a_trial_asked_for_after_the_last_one_is_surplus_and_never_runs(tmp_path, search):
    """Three processes ask at once for a study's last two trials: the third is told
    failed, marked surplus, and is no trial of the sweep."""
    study, runner = _study_and_runner(tmp_path, search, total=2)
    claimed = [runner.claim(study_mod.ask(study)) for _ in range(3)]
    assert [c is None for c in claimed] == [False, False, True]
    extra = study.trials[2]
    assert study_mod.is_surplus(extra) and extra.state.name == "FAIL"
    assert [t.number for t in study_mod.sweep_trials(study.trials)] == [0, 1]
    assert not runner.more_to_ask()
    if search == "grid":  # each queued point went to one claim
        assert sorted(c.params[LR] for c in claimed[:2]) == ["0.001", "0.01"]


def test_a_dead_process_of_this_host_is_seen_at_once_and_its_trial_retried(tmp_path):
    study, runner = _study_and_runner(tmp_path, "grid", total=2)
    trial = runner.claim(study_mod.ask(study))
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = {**study_mod.owner(), "pid": gone.pid, "pid_start": "1"}
    study._storage.set_trial_user_attr(trial.trial_id, "owner", dead)
    study._storage.set_trial_user_attr(trial.trial_id, "run_dir", str(tmp_path / "gone"))
    assert study_mod.recover(study, 120) == [0]
    assert study.trials[0].state.name == "FAIL"
    retry = study_mod.ask(study)  # a retry comes before the queue's other point
    again = runner.claim(retry)
    assert again.origin == 0 and again.label == "0001" and again.params == trial.params
    assert again.run_dir is None  # (its run directory is not on this host: started anew)
    assert study_mod.recover(study, 120) == []  # (the retry's owner is alive: this one)


def test_a_trial_whose_heartbeat_stopped_is_retried_from_any_host(tmp_path):
    study, runner = _study_and_runner(tmp_path, "grid", total=2, grace=2)
    trial = runner.claim(study_mod.ask(study))  # (its one heartbeat: at the claim)
    far = {"host": "another-host", "pid": 1, "pid_start": "1"}
    study._storage.set_trial_user_attr(trial.trial_id, "owner", far)
    assert study_mod.recover(study, 2) == []  # within the grace period: still alive
    with study_mod.heartbeat(study._storage, trial.trial_id):  # beats keep it alive
        time.sleep(3)
        assert study_mod.recover(study, 2) == []
    time.sleep(3)
    assert study_mod.recover(study, 2) == [0]
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state.name == "WAITING"
