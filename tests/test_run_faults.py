"""Faults and concurrency in run directories: one writer at a time (the lock), statuses
that tell the truth after a crash, a kill -9 or a full disk, file modes that follow the
umask, staging folders of killed creators, and metrics files and TensorBoard logs that
a resume continues instead of duplicating or reordering.

Trainings are tiny (``TINY``: 2 epochs of 3 steps) and in-process, except where a
second process is the point; they use the session's private TFDS data_dir (conftest).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bnn_cli.cli import main
from bnn_cli.rundir.run import LOCK_FILE, RunDir, RunLock, lock_holder
from bnn_cli.training import callbacks

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["training.epochs=2", "training.steps_per_epoch=3", "training.batch_size=16"]

# A process that holds a folder's lock the way bnn does (flock on FOLDER/.lock, its pid
# and start time as text), without importing TensorFlow: quick to start and to kill.
HOLDER = """
import fcntl, json, os, sys, time
f = open(os.path.join(sys.argv[1], ".lock"), "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0)
f.truncate()
f.write(json.dumps({"pid": os.getpid(), "since": "2026-01-02T03:04:05"}))
f.flush()
print("locked", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def holding_lock(folder: Path) -> Iterator[subprocess.Popen]:
    """Another live process holds ``folder``'s lock until the block ends (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _train(out: Path, *extra: str) -> int:
    return main(["train", QUICKSTART, *TINY, *extra, "--output", str(out)])


def _only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return run


def _status_file(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _fake_run(folder: Path, status: str = "running") -> Path:
    """A run directory as a killed `bnn train` leaves it after epoch 1 (no checkpoints:
    enough for what is tested with it, which never gets past the lock)."""
    folder.mkdir(parents=True)
    shutil.copy(QUICKSTART, folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({"status": status, "epochs_done": 1,
                                                 "epochs": 3}))
    return folder


def _lock_is_free(run: Path) -> bool:
    try:
        RunLock.acquire(run).release()
    except Exception:  # noqa: BLE001 - any refusal means: not free
        return False
    return True


# ---------------------------------------------------------------------------------------
# One process at a time: the lock
# ---------------------------------------------------------------------------------------


def test_resume_is_refused_while_a_live_process_holds_the_run(tmp_path, capsys):
    """A second writer is refused with exit 2 naming the holder, and writes nothing;
    once the holder is killed (-9), the status reads `interrupted`, for resume and eval."""
    runs = tmp_path / "runs"
    run = _fake_run(runs / "quickstart-1")
    before = (run / "run.json").read_bytes()
    with holding_lock(run) as holder:
        assert RunDir(run).effective_status() == "running"  # it is: its lock is held
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and "since 2026-01-02T03:04:05" in err
        assert "Traceback" not in err
        assert (run / "run.json").read_bytes() == before
        assert f'"pid": {holder.pid}' in (run / LOCK_FILE).read_text()  # not taken over
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # as left
    assert RunDir(run).effective_status() == "interrupted"
    assert RunDir(run).read_record().epochs_done == 1
    # `bnn eval` of the folder of runs lists it with the status that is true now.
    assert main(["eval", str(runs)]) == 2
    assert "interrupted" in capsys.readouterr().err
    assert _lock_is_free(run)


def test_a_new_run_is_locked_from_its_first_file_until_it_ends(tmp_path, monkeypatch):
    """The lock is taken in the staging folder before anything is written, moves with
    the rename, is held by the training process during every epoch and released when
    the run ends (so this same process can lock the run again)."""
    seen: list[dict | None] = []

    def fill(staging: RunDir) -> None:
        seen.append(lock_holder(staging.path))
        assert list(staging.path.iterdir()) == [staging.file(LOCK_FILE)]

    created = RunDir.create(tmp_path / "a", "x", fill)
    assert seen[0]["pid"] == os.getpid()
    assert lock_holder(created.path)["pid"] == os.getpid()
    created.unlock()
    assert lock_holder(created.path) is None

    real_begin = callbacks.Epochs.on_epoch_begin

    def begin(self, epoch, logs=None):
        seen.append(lock_holder(self.job.run.path))
        return real_begin(self, epoch, logs)

    monkeypatch.setattr(callbacks.Epochs, "on_epoch_begin", begin)
    assert _train(tmp_path / "b") == 0
    run = _only_run(tmp_path / "b")
    assert [h["pid"] for h in seen[1:]] == [os.getpid()] * 2
    assert lock_holder(run) is None
    assert _lock_is_free(run)


@pytest.mark.slow
def test_two_processes_never_train_one_run(tmp_path, capsys):
    """A real `bnn train` in another process: `--resume` of its run is refused while it
    trains (exit 2, naming its pid); after `kill -9` the lock is free and the run reads
    `interrupted`."""
    out = tmp_path / "out"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "bnn_cli.cli", "train", QUICKSTART,
                              "training.epochs=3", "training.steps_per_epoch=60",
                              "training.batch_size=16", "--output", str(out)],
                             stdout=log, stderr=log, cwd=ROOT)
    try:
        deadline = time.time() + 300
        while not [p for p in out.glob("*/run.json") if not p.parent.name.startswith(".")]:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.time() < deadline, "the first run did not start"
            time.sleep(0.05)
        run = _only_run(out)
        assert main(["train", str(run / "config.yaml"), "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"process {first.pid}" in err and "in use" in err
        assert first.poll() is None, "the first run ended before the check was made"
    finally:
        first.kill()
        first.wait()
        log.close()
    assert _status_file(run)["status"] in ("starting", "running")
    assert RunDir(run).effective_status() == "interrupted"
    assert _lock_is_free(run)


# ---------------------------------------------------------------------------------------
# Staging folders of killed creators
# ---------------------------------------------------------------------------------------


def test_abandoned_staging_folders_are_removed_and_live_ones_kept(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    abandoned = root / ".incomplete-killed"  # its creator's lock file names a dead pid
    abandoned.mkdir()
    (abandoned / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout)}))
    (abandoned / "run.json").write_text("{}")
    legacy = root / ".incomplete-legacy"  # no lock file, an hour old
    legacy.mkdir()
    os.utime(legacy, (time.time() - 3600,) * 2)
    just_made = root / ".incomplete-just-made"  # no lock file yet: its creator may be
    just_made.mkdir()                            # between mkdir and locking it
    live = root / ".incomplete-live"
    live.mkdir()
    with holding_lock(live):
        run = RunDir.create(root, "x")
        run.unlock()
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [".incomplete-just-made", ".incomplete-live", run.path.name])
    # Its creator is gone now: the next run created there removes it.
    RunDir.create(root, "y").unlock()
    assert not live.exists() and just_made.exists()


# ---------------------------------------------------------------------------------------
# Statuses: a run that ends says so
# ---------------------------------------------------------------------------------------


def test_an_unexpected_error_marks_the_run_failed(tmp_path, monkeypatch, capsys):
    real_prune = RunDir.prune
    calls: list[int] = []

    def prune(self: RunDir) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in epoch 2")
        real_prune(self)

    monkeypatch.setattr(RunDir, "prune", prune)
    assert _train(tmp_path) == 1
    run = _only_run(tmp_path)
    status = _status_file(run)
    assert status["status"] == "failed" and status["error"] == "RuntimeError: boom in epoch 2"
    assert _lock_is_free(run)


@pytest.fixture
def disk_full_from(monkeypatch, tmp_path):
    """``disk_full_from(name)``: from the commit of a file or folder named ``name`` under
    tmp_path on, every commit under tmp_path fails with ENOSPC (bnn commits every file it
    writes with os.replace), as on a disk that filled up. Returns the names refused."""
    real = os.replace
    refused: list[str] = []

    def install(name: str) -> list[str]:
        def replace(src, dst, *args, **kwargs):
            if tmp_path in Path(dst).parents and (refused or Path(dst).name == name):
                refused.append(Path(dst).name)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        return refused

    return install


def test_a_full_disk_that_refuses_even_run_json_still_reads_failed(tmp_path, capsys,
                                                                   disk_full_from,
                                                                   monkeypatch):
    """The disk fills while epoch 2's checkpoint is committed, and run.json cannot be
    rewritten either: the process says why and exits 2, run.json still says `running`,
    but every reader sees `failed` with the reason (kept in the lock file, in place).
    With space again, --resume finishes the run."""
    refused = disk_full_from("epoch-0002")
    assert _train(tmp_path) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "Traceback" not in err
    assert "epoch-0002" in refused and "run.json" in refused  # the status write was tried
    run = _only_run(tmp_path)
    assert _status_file(run)["status"] == "running"
    status = RunDir(run).read_record()
    assert status.status == "failed" and "the disk is full" in status.error
    assert status.epochs_done == 1
    monkeypatch.undo()  # space again
    assert main(["train", "--resume", str(run)]) == 0
    assert _status_file(run)["status"] == "completed"
    assert RunDir(run).read_record().status == "completed"


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real tmpfs of 64 MiB (needs root and a sandbox that allows mounts)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    """Write ``path`` until the disk it is on has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def test_a_really_full_disk_marks_the_run_failed(small_disk, tmp_path, capsys, monkeypatch):
    """On a real tmpfs: the disk is filled before epoch 2's checkpoint and again before
    the failed status is written, so both really fail (ENOSPC); the reason still reaches
    the next reader, and --resume finishes once there is space."""
    out, filler = small_disk / "runs", small_disk / "filler"
    real_save, real_status = callbacks._save_checkpoint, RunDir.write_record

    def save(job, state, improved):
        if state.epoch == 2:
            _fill(filler)
        real_save(job, state, improved)

    def write_record(self, **fields):
        if fields.get("status") == "failed":
            _fill(filler)
        return real_status(self, **fields)

    monkeypatch.setattr(callbacks, "_save_checkpoint", save)
    monkeypatch.setattr(RunDir, "write_record", write_record)
    assert _train(out) == 2
    err = capsys.readouterr().err
    assert "cannot write a checkpoint" in err and "Traceback" not in err
    run = _only_run(out)
    assert _status_file(run)["status"] == "running"  # run.json could not be rewritten
    status = RunDir(run).read_record()
    assert status.status == "failed" and "cannot write a checkpoint" in status.error
    assert RunDir(run).load_checkpoint("last").state["epoch"] == 1
    monkeypatch.undo()
    filler.unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert _status_file(run)["status"] == "completed"


# ---------------------------------------------------------------------------------------
# File modes
# ---------------------------------------------------------------------------------------


@pytest.fixture
def restore_umask() -> Iterator[None]:
    """The test may set its own umask; the process's comes back after it."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_run_files_and_folders_follow_the_umask(tmp_path, restore_umask, mask):
    """Every file of a run (and `bnn schema -o`'s) is 0666 less the umask, every folder
    0777 less it: not the 0600/0700 of temporary files, so others can read runs."""
    os.umask(mask)
    out, schema = tmp_path / "out", tmp_path / "schema.json"
    assert _train(out) == 0
    assert main(["schema", "-o", str(schema)]) == 0
    assert main(["schema", "-o", str(schema)]) == 0  # replacing a file: the same
    modes = Counter()
    for path in [schema, *_only_run(out).rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == want, path
        modes["folders" if path.is_dir() else "files"] += 1
    assert modes["folders"] >= 4 and modes["files"] >= 15  # checkpoints, events, lock...


# ---------------------------------------------------------------------------------------
# Metrics files and TensorBoard logs across a resume
# ---------------------------------------------------------------------------------------


def _csv(run: Path) -> tuple[list[str], list[dict]]:
    with (run / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_metrics_columns_are_fixed_when_the_file_is_created(tmp_path):
    """Rows whose keys come in another order (as older checkpoints stored them, sorted)
    and new keys: the columns keep their order, new ones are appended."""
    run = RunDir(tmp_path)
    run.write_metrics([{"loss": 0.5, "epoch": 1, "accuracy": 0.1}])
    assert _csv(tmp_path)[0] == ["epoch", "loss", "accuracy"]  # epoch first
    run.write_metrics([{"accuracy": 0.1, "epoch": 1, "loss": 0.5},
                       {"accuracy": 0.2, "epoch": 2, "flip_ratio": 0.01, "loss": 0.4}])
    columns, rows = _csv(tmp_path)
    assert columns == ["epoch", "loss", "accuracy", "flip_ratio"]
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["flip_ratio"] == ""
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert list(json.loads(lines[1])) == columns  # the JSON rows in the same order
    run.write_metrics([])  # resumed before the first epoch: the columns stay
    assert _csv(tmp_path) == (columns, [])


def _tensorboard_steps(run: Path) -> Counter:
    """How often each (writer, tag, step) is logged, over every event file (reading a
    file with a record cut short raises, so none may be left)."""
    from bnn_cli._keras import tf

    seen: Counter = Counter()
    for path in sorted((run / "tensorboard").rglob("*tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                seen[path.parent.name, value.tag, event.step] += 1
    return seen


def _tensorboard_steps_of(path: Path) -> set:
    from bnn_cli._keras import tf

    return {(path.parent.name, v.tag, e.step)
            for e in tf.compat.v1.train.summary_iterator(str(path)) for v in e.summary.value}


def test_a_resume_logs_each_step_once_and_keeps_the_csv_columns(tmp_path, monkeypatch,
                                                                capsys):
    """As a kill -9 leaves a run after epoch 2 was logged (metrics, TensorBoard, with
    the last event record cut short) but before its checkpoint was committed: the resume
    re-runs epoch 2, and afterwards every (tag, step) is in the event files once and
    metrics.csv has its columns in their first order."""
    with monkeypatch.context() as patch:
        patch.setattr(RunDir, "prune", lambda self: None)  # keep epoch-0001 around
        assert _train(tmp_path) == 0
    run = _only_run(tmp_path)
    columns, _ = _csv(run)
    before = _tensorboard_steps(run)
    assert before["train", "epoch_loss", 1] == 1
    epoch_2_files = [p for p in (run / "tensorboard").rglob("*tfevents*")
                     if ("train", "epoch_loss", 1) in _tensorboard_steps_of(p)]
    ck = run / "checkpoints"
    shutil.rmtree(ck / "epoch-0002")
    for which in ("last", "best"):
        (ck / f"{which}.json").write_text(json.dumps({"checkpoint": "epoch-0001"}))
    (run / "run.json").write_text(json.dumps({**_status_file(run), "status": "running"}))
    (last,) = epoch_2_files
    last.write_bytes(last.read_bytes()[:-3])
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert f"resuming {run} after epoch 1" in capsys.readouterr().err
    after = _tensorboard_steps(run)
    assert [k for k, n in after.items() if n > 1] == []
    assert set(after) == set(before)  # and nothing lost: every step of both epochs
    got_columns, rows = _csv(run)
    assert got_columns == columns and columns[:2] == ["epoch", "loss"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
