"""Crash safety and hostile input: kill -9 and resume, corrupt checkpoints, full disks,
unwritable outputs, run names that try to escape, code in model files, determinism.

The end-to-end tests train the digits BNN with tiny settings (``kill_resume.SETTINGS``:
4 epochs of 6 steps, deterministic ops). The tolerance for "equal to an uninterrupted
run" is ``kill_resume.RTOL``/``ATOL`` (1e-6 relative, 1e-7 absolute) on CPU; in practice
resumed runs are bit-identical, and the determinism test asserts exact equality.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import random
import shutil
import stat
import sys
from pathlib import Path

import pytest

from bnn_cli.cli import main
from bnn_cli.errors import UserError
from bnn_cli.rundir.run import MANIFEST, RunDir, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _load_script():
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "scripts" /
                                                  "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kill_resume = _load_script()
SETTINGS = kill_resume.SETTINGS


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A private TFDS data_dir; the embedded digits are prepared into it on first use."""
    old = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
    yield os.environ["TFDS_DATA_DIR"]
    if old is None:
        del os.environ["TFDS_DATA_DIR"]
    else:
        os.environ["TFDS_DATA_DIR"] = old


@pytest.fixture
def deterministic_ops():
    """In-process runs with training.deterministic switch TF's op determinism on for
    the whole process; switch it off again so later tests run as they would alone."""
    yield
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """One uninterrupted run in a fresh process: (run dir, start-up s, training s)."""
    return kill_resume.reference(tmp_path_factory.mktemp("reference"))


def _visible(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------
# kill -9 at random moments; determinism
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(reference, tmp_path):
    """Three SIGKILLs at random moments (start-up or training), each followed by
    `bnn train --resume`: the run ends equal to the uninterrupted one, every epoch once
    in metrics.csv and metrics.jsonl. (scripts/kill_resume.py does this at scale.)"""
    ref, startup_s, train_s = reference
    log: list[str] = []
    tried, survived = kill_resume.kill_trials(tmp_path, 3, 3, random.Random(20261130), ref,
                                              startup_s, train_s, log=log.append)
    print("\n".join(log))
    assert tried == 3, log
    assert survived == tried, "\n".join(log)


@pytest.mark.slow
def test_kill_9_before_the_first_checkpoint_then_resume(reference, tmp_path, capsys,
                                                        deterministic_ops):
    """Killed as soon as the run directory exists (no checkpoint yet): --resume starts
    over in the same folder and ends equal to the uninterrupted run."""
    out = tmp_path / "out"
    p = kill_resume.Process.start(kill_resume.bnn("train", str(QUICKSTART), *SETTINGS,
                                                  "--output", str(out)))
    p.wait_ready()
    p.proc.kill()
    p.wait()
    (run,) = kill_resume.run_dirs(out)
    assert not any((run / "checkpoints").glob("epoch-*")), "the kill came too late"
    assert (run / "config.yaml").is_file() and (run / "run.json").is_file()
    assert main(["train", str(run / "config.yaml"), "--resume", str(run)]) == 0
    assert f"resuming {run} after epoch 0" in capsys.readouterr().err
    assert kill_resume.compare(run, reference[0]) == []


@pytest.mark.slow
def test_same_seed_same_metrics_run_after_run(reference, tmp_path):
    """training.deterministic + the same seed: a second process gets bit-identical
    metrics and weights."""
    ref = reference[0]
    again, _, _ = kill_resume.reference(tmp_path)
    assert kill_resume.compare(again, ref, rtol=0.0, atol=0.0) == []


# ---------------------------------------------------------------------------------------
# Corrupted and truncated files
# ---------------------------------------------------------------------------------------


def _fake_run(tmp_path: Path) -> RunDir:
    """A run directory with checkpoints 1..3 made of small stand-in files; last -> 3,
    best -> 1 (so 1 and 3 are kept), as the training loop leaves them."""
    run = RunDir(tmp_path / "run")
    for epoch in (1, 2, 3):
        with run.new_checkpoint(epoch) as folder:
            (folder / "ckpt.index").write_bytes(b"index %d" % epoch)
            (folder / "ckpt.data-00000-of-00001").write_bytes(os.urandom(4096))
            atomic_write_text(folder / "state.json", json.dumps({"epoch": epoch}))
        run.point("last", epoch)
        if epoch == 1:
            run.point("best", epoch)
        run.prune()
    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,file", [
    (_truncate, "ckpt.data-00000-of-00001"),
    (_flip_byte, "ckpt.data-00000-of-00001"),
    (_truncate, "state.json"),
    (_flip_byte, "state.json"),
    (Path.unlink, "ckpt.index"),
    (_truncate, MANIFEST),
    (Path.unlink, MANIFEST),
])
def test_corrupt_checkpoint_is_named_and_skipped(tmp_path, damage, file):
    run = _fake_run(tmp_path)
    assert {p.name for p in run.checkpoints.iterdir() if p.is_dir()} == {"epoch-0001",
                                                                       "epoch-0003"}
    damage(run.checkpoints / "epoch-0003" / file)
    warnings: list[str] = []
    checkpoint = run.load_checkpoint("last", warn=warnings.append)
    assert checkpoint.path.name == "epoch-0001"
    assert checkpoint.state == {"epoch": 1}
    assert len(warnings) == 1
    assert "epoch-0003" in warnings[0] and "corrupted" in warnings[0]
    if (damage, file) != (Path.unlink, MANIFEST):  # (then: "no manifest" in the folder)
        assert file in warnings[0]  # the message names the damaged file


def test_corrupt_pointer_is_named_and_newest_good_checkpoint_used(tmp_path):
    run = _fake_run(tmp_path)
    _truncate(run.checkpoints / "last.json")
    warnings: list[str] = []
    assert run.load_checkpoint("last", warn=warnings.append).path.name == "epoch-0003"
    assert "last.json" in warnings[0]


def test_no_readable_checkpoint_is_a_clean_error(tmp_path):
    run = _fake_run(tmp_path)
    for name in ("epoch-0001", "epoch-0003"):
        _truncate(run.checkpoints / name / "state.json")
    with pytest.raises(UserError, match="no readable checkpoint.*state.json"):
        run.load_checkpoint("last", warn=lambda _: None)


def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path, data_dir, capsys,
                                                       deterministic_ops):
    """A truncated last checkpoint: resume names the file, continues from the previous
    good one (best), re-runs the later epochs once each and ends where the run did.
    (A run name that tries to escape the output folder is refused by the check:
    tests/bad_configs/bad_run_name.yaml and test_validation.py.)"""
    out = tmp_path / "out"
    # monitor `loss` in max mode: epoch 1 (the highest loss) stays the best checkpoint,
    # so an older checkpoint than the last exists to fall back to.
    args = ["train", str(QUICKSTART), *SETTINGS, "training.epochs=3",
            "training.monitor=loss", "training.monitor_mode=max", "--output", str(out)]
    assert main(args) == 0
    (run,) = kill_resume.run_dirs(out)
    done = tmp_path / "done"
    shutil.copytree(run, done)  # the uninterrupted result, to compare with
    ck = run / "checkpoints"
    assert json.loads((ck / "last.json").read_text())["checkpoint"] == "epoch-0003"
    best = json.loads((ck / "best.json").read_text())["checkpoint"]
    assert best != "epoch-0003"
    # As if killed after the last checkpoint, and then the checkpoint lost its tail.
    status = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**status, "status": "running"}))
    data = ck / "epoch-0003" / "ckpt.data-00000-of-00001"
    _truncate(data)
    capsys.readouterr()
    assert main(["train", str(run / "config.yaml"), "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert str(data) in err and "corrupted" in err and "Traceback" not in err
    assert f"resuming {run} after epoch {int(best[-4:])}" in err
    assert kill_resume.compare(run, done) == []  # also: every epoch once in both files
    assert {p.name for p in ck.iterdir() if p.is_dir()} <= {"epoch-0003", best}


def test_corrupt_run_files_are_clean_errors(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(QUICKSTART.read_text())
    (run / "overrides.json").write_text('{"overrides": ["training.ep')
    assert main(["train", str(QUICKSTART), "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "overrides.json is corrupted" in err and "Traceback" not in err
    assert main(["train", str(QUICKSTART), "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Full disk, unwritable output
# ---------------------------------------------------------------------------------------


@pytest.fixture
def disk_full(monkeypatch, tmp_path):
    """``disk_full(pred)``: os.replace of a destination under tmp_path for which
    ``pred(dest)`` is true raises ENOSPC, as a full disk does at the commit of a
    write (every file bnn writes is committed by os.replace). Returns the calls made."""
    calls: list[str] = []
    real = os.replace

    def install(predicate):
        def replace(src, dst, *a, **kw):
            dst_path = Path(dst)
            if tmp_path in dst_path.parents:
                calls.append(dst_path.name)
                if predicate(dst_path):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            return real(src, dst, *a, **kw)

        monkeypatch.setattr(os, "replace", replace)
        return calls

    yield install
    monkeypatch.setattr(os, "replace", real)


def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(tmp_path, disk_full):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "epoch\n1\n")
    disk_full(lambda dst: True)
    with pytest.raises(UserError, match="the disk is full"):
        atomic_write_text(target, "epoch\n1\n2\n")
    assert target.read_text() == "epoch\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary left


def test_disk_full_while_creating_the_run_leaves_nothing(tmp_path, data_dir, capsys,
                                                         disk_full):
    out = tmp_path / "out"
    calls = disk_full(lambda dst: dst.name == "summary.txt")
    assert main(["train", str(QUICKSTART), *SETTINGS, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "summary.txt" in err and "the disk is full" in err and "Traceback" not in err
    assert "summary.txt" in calls
    assert list(out.iterdir()) == []  # no run directory, and no staging folder left


def test_disk_full_during_training_then_resume(tmp_path, data_dir, capsys, disk_full,
                                               deterministic_ops):
    """ENOSPC when epoch 2's checkpoint is committed: exit 2 with a clear message, the
    files of epoch 1 intact; with space again, --resume finishes the run."""
    out = tmp_path / "out"
    disk_full(lambda dst: dst.name == "epoch-0002")
    args = ["train", str(QUICKSTART), *SETTINGS, "training.epochs=2", "--output", str(out)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "the disk is full" in err and "Traceback" not in err
    (run,) = kill_resume.run_dirs(out)
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["best.json", "epoch-0001", "last.json"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    disk_full(lambda dst: False)  # space again
    assert main(["train", str(run / "config.yaml"), "--resume", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_a_real_full_device_is_a_clean_error(tmp_path, capsys):
    """A character device like /dev/full (every write fails with ENOSPC), made here so
    the real one is never at risk: written through, not replaced by a rename."""
    full = tmp_path / "full"
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except OSError:
        pytest.skip("creating a device node needs root")
    assert main(["schema", "-o", str(full)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {full}: the disk is full" in err and "Traceback" not in err
    assert stat.S_ISCHR(full.stat().st_mode)  # still the device, not a regular file


@pytest.mark.parametrize("below", ["file", "file/runs"])
def test_unwritable_output_is_a_clean_error(tmp_path, data_dir, capsys, below):
    (tmp_path / "file").write_text("a regular file\n")
    code = main(["train", str(QUICKSTART), *SETTINGS, "--output", str(tmp_path / below)])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot create a run directory" in err and "--output" in err
    assert "Traceback" not in err
    assert (tmp_path / "file").read_text() == "a regular file\n"


# ---------------------------------------------------------------------------------------
# Hostile names and model files
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "../../evil", "/etc/evil", "..", ".", "", "a/../../b", "~/evil", "..\\..\\evil",
    "C:\\evil", ".hidden", "-rf", "nul\x00byte", "名前/../x", "a" * 500, "\n", "${HOME}",
])
def test_run_names_cannot_leave_the_output_folder(tmp_path, name):
    out = tmp_path / "out"
    run = RunDir.create(out, name)
    assert run.path.parent == out
    assert not run.path.name.startswith((".", "-"))
    assert len(run.path.name) < 120
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == [run.path.name]


def test_interrupted_run_creation_leaves_no_run_directory(tmp_path):
    def fill(run: RunDir) -> None:
        atomic_write_text(run.file("run.json"), "{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RunDir.create(tmp_path, "x", fill)
    assert list(tmp_path.iterdir()) == []


def test_resume_of_a_completed_run_is_a_no_op(reference, capsys):
    run = reference[0]

    def files() -> dict[Path, tuple[int, str]]:
        """Each file's inode (a rewrite, atomic or not, makes a new one or changes the
        bytes) and the hash of its contents."""
        return {p: (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
                for p in run.rglob("*") if p.is_file()}

    before = files()
    assert main(["train", str(run / "config.yaml"), "--resume", str(run)]) == 0
    assert "already completed" in capsys.readouterr().err
    assert files() == before
