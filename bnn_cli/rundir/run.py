"""The run directory: everything one training run writes, written so nothing is lost.

Layout of ``runs/<name>-<timestamp>/``::

    config.yaml            the config as given (byte for byte)
    config.resolved.yaml   after overrides and defaults: what actually ran
    overrides.json         the KEY=VALUE overrides given on the command line
    summary.txt/.json      the model summary (parameters and MACs by precision)
    checkpoints/
      epoch-0003/          one immutable folder per checkpoint: ckpt.* (weights and
                           optimizer), state.json (epoch, history, best, early stopping),
                           manifest.json (sha256 of every file; written last = complete)
      last.json, best.json pointers to the latest and the best checkpoint folder
    metrics.csv / .jsonl   one row per epoch (rewritten whole from the state each epoch;
                           the CSV's columns are fixed when it is created)
    tensorboard/           TensorBoard logs
    model.keras            the final model
    run.json               status (running/completed/interrupted/failed), metrics, time
    .lock                  flock'ed by the one process that trains in the folder

Every file is written atomically (temporary file, flush, fsync, rename), and a pointer
moves to a new checkpoint only after that checkpoint is complete; older checkpoint
folders are deleted only after that, so a kill at any instant leaves a readable run.
The run directory itself is filled in a hidden ``.incomplete-*`` folder and renamed into
place, so it never exists without its config. (TensorBoard's event files are appended
by TensorFlow; a kill can cut the last record short, which TensorBoard tolerates, and a
resume removes the events logged after the checkpoint it continues from.)

One process at a time writes into a run directory: it holds an exclusive ``flock`` on
``.lock`` (created with the staging folder, so a new run is locked from its first file)
until the run ends. The kernel drops the lock when the process dies, ``kill -9``
included, so a ``running`` status whose lock no process holds is reported as
``interrupted``. Files and folders get the modes ``open``/``mkdir`` give (0666/0777
less the umask), so colleagues and TensorBoard servers can read runs.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bnn_cli.errors import UserError
from bnn_cli.rundir.record import RunRecord

RUN_FILE = "run.json"
CONFIG = "config.yaml"
RESOLVED_CONFIG = "config.resolved.yaml"
OVERRIDES = "overrides.json"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE = "state.json"
LOCK_FILE = ".lock"
"""Statuses that claim a process is working in the run (true only while it holds the lock)."""


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets us open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temp_file(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """Like ``tempfile.mkstemp``, but with the mode ``open`` gives (0666 less the umask,
    applied by the kernel) instead of 0600: runs are read by colleagues and TensorBoard."""
    for _ in range(100):
        path = folder / f"{prefix}{os.urandom(6).hex()}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def _new_temp_dir(folder: Path, prefix: str) -> Path:
    """Like ``tempfile.mkdtemp``, but 0777 less the umask instead of 0700 (see above)."""
    for _ in range(100):
        path = folder / f"{prefix}{os.urandom(6).hex()}"
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary folder name", str(folder))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not path.is_file():
        # A device or a pipe (`-o /dev/stdout`): a rename would replace the device node
        # itself, so write through it; atomicity means nothing for a stream anyway.
        try:
            with path.open("wb") as f:
                f.write(data)
        except OSError as exc:
            raise _write_error(path, exc) from None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _new_temp_file(path.parent, f".{path.name}.", ".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None

    def write() -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _swap_in(tmp, path, write)


def atomic_save(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Let ``write(tmp)`` (e.g. Keras ``model.save``) fill a temporary file beside ``path``,
    then swap it in as :func:`atomic_write_bytes` does: a library that writes in place
    could otherwise leave a half-written ``path`` behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.incomplete{path.suffix}")  # Keras checks the suffix

    def fill() -> None:
        write(tmp)
        _fsync_file(tmp)

    _swap_in(tmp, path, fill)


def atomic_save_folder(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Let ``write(tmp)`` fill a new folder beside ``path`` (e.g. a SavedModel), then put
    it in place of ``path``: readers see the old or the new folder, never a half-written
    one (between the two renames, for a moment, none)."""
    path = Path(path)
    try:
        tmp = _new_temp_dir(path.parent, f".{path.name}.incomplete.")
    except OSError as exc:
        raise _write_error(path, exc) from None
    old = tmp.with_name(tmp.name + ".old")
    try:
        write(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
    _fsync_dir(path.parent)


def _swap_in(tmp: Path, path: Path, fill: Callable[[], Any]) -> None:
    """``fill()`` the temporary file, then rename it over ``path`` (atomic on POSIX) and
    sync the folder; on failure remove the temporary file and keep ``path`` as it was."""
    try:
        fill()
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_error(path, exc) from None
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, sort_keys: bool = True) -> None:
    """``obj`` as indented JSON; ``sort_keys=False`` keeps the order of the dicts (a
    checkpoint's history rows keep their metrics' order that way)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys,
                                       default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def _write_error(path: Path, exc: OSError) -> UserError:
    reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
    return UserError(f"cannot write {path}: {reason}. Free space or choose another output "
                     "folder with --output; files already written are left as they were")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptError(path, f"not valid JSON ({exc})") from None


class CorruptError(UserError):
    """A file of a run that is truncated or corrupted."""

    def __init__(self, path: Path, why: str):
        self.path = path
        super().__init__(f"{path} is corrupted: {why}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _warn(message: str) -> None:
    # stderr: stdout carries results (`bnn eval --json`).
    sys.stderr.write(message + "\n")


# ---------------------------------------------------------------------------------------
# The lock of a run directory (and of a staging folder)
# ---------------------------------------------------------------------------------------

_LOCK_BYTES = 1024
"""The lock file's fixed size: its text is rewritten in place, into space the file
already has, so a process can still record how it ended on a full disk."""
_LOCK_WAIT_S = 0.5  # readers probe the lock for microseconds; ride out such a probe
STAGING_GRACE_S = 60.0
"""A staging folder without a lock file is left alone this long: its creator may be
between ``mkdir`` and taking the lock (or it is from a bnn without locks)."""


class RunBusyError(UserError):
    """Another live process holds the lock of a run directory."""

    def __init__(self, folder: Path, holder: dict[str, Any]):
        pid = holder.get("pid", "?")
        host = holder.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        since = f" since {holder['since']}" if holder.get("since") else ""
        super().__init__(
            f"{folder} is in use: process {pid}{where} has been training in it{since}, and "
            "only one process may write into a run directory at a time. Wait until it "
            f"ends, or stop it (kill {pid}) and then resume the run")


class RunLock:
    """An exclusive ``flock`` on ``FOLDER/.lock``, held while this process writes into
    FOLDER. The kernel releases it when the process dies, however it dies, so whether
    it can be taken is the truth about a live writer; the file's text (pid, start time,
    host) only names the holder in messages."""

    def __init__(self, fd: int, info: dict[str, Any]):
        self._fd: int | None = fd
        self.info = info

    @classmethod
    def acquire(cls, folder: Path) -> RunLock:
        """Take FOLDER's lock (creating the lock file); RunBusyError if a process holds it."""
        path = folder / LOCK_FILE
        try:
            # (Python's descriptors are not inherited: a child process never holds it.)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"cannot lock {folder} ({path}: {exc.strerror or exc}); a run "
                            "directory must be writable to train in it") from None
        try:
            locked = _flock(fd, fcntl.LOCK_EX, wait=_LOCK_WAIT_S)
        except OSError as exc:  # a filesystem without locks (some network mounts)
            locked = True
            _warn(f"warning: cannot lock {folder} ({exc.strerror or exc}); make sure no "
                  "other process trains in it at the same time")
        if not locked:
            holder = _read_lock_text(fd)
            os.close(fd)
            raise RunBusyError(folder, holder)
        lock = cls(fd, {"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "host": socket.gethostname()})
        try:
            lock._write(lock.info)
        except OSError as exc:
            lock.release()
            raise _write_error(path, exc) from None
        return lock

    def record_end(self, status: str, error: str) -> None:
        """Say in the lock file how the run ended, for when run.json cannot be written
        (a full disk): the next reader of a ``running`` run.json reports this instead."""
        text = {**self.info, "ended": status, "error": error}
        while len(json.dumps(text)) >= _LOCK_BYTES and text["error"]:  # (it must fit)
            text["error"] = text["error"][: -max(1, len(text["error"]) // 4)]
        with contextlib.suppress(OSError):  # best effort: the message was already shown
            self._write(text)

    def _write(self, text: dict[str, Any]) -> None:
        data = json.dumps(text).encode()[: _LOCK_BYTES - 1]
        assert self._fd is not None
        os.pwrite(self._fd, data.ljust(_LOCK_BYTES - 1) + b"\n", 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # (closing the last descriptor releases the flock)
            self._fd = None

    def __del__(self) -> None:  # a RunDir dropped without unlock(): close quietly
        self.release()


def _flock(fd: int, mode: int, *, wait: float) -> bool:
    """``flock(fd, mode)`` without blocking, retried for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _read_lock_text(fd: int) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        text = json.loads(os.pread(fd, _LOCK_BYTES, 0).decode("utf-8").strip() or "{}")
        if isinstance(text, dict):
            return text
    return {}


def lock_holder(folder: Path) -> dict[str, Any] | None:
    """The lock file's text if a live process holds FOLDER's lock (``{}`` if unreadable
    or when the filesystem cannot tell), None if none does."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None  # every writer creates the lock file before it writes anything
    except OSError:
        return {}
    try:
        if _flock(fd, fcntl.LOCK_SH, wait=0):
            return None  # (closing the descriptor below releases the probe at once)
        return _read_lock_text(fd)
    except OSError:  # no locks on this filesystem: assume the status file tells the truth
        return {}
    finally:
        os.close(fd)


def _last_holder(folder: Path) -> dict[str, Any]:
    """The lock file's text (the last process that held the lock)."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_lock_text(fd)
    finally:
        os.close(fd)


def _abandoned_staging(folder: Path) -> bool:
    """Whether a ``.incomplete-*`` folder was left by a creator that is gone: its lock is
    free (a live creator holds it from just after ``mkdir`` until the rename)."""
    if not (folder / LOCK_FILE).exists():
        return time.time() - folder.stat().st_mtime > STAGING_GRACE_S
    if lock_holder(folder) is not None:
        return False
    # A free lock with a pid: the creator died. Empty: it may be just about to lock.
    return bool(_last_holder(folder)) or time.time() - folder.stat().st_mtime > STAGING_GRACE_S


def remove_abandoned_staging(root: Path) -> list[Path]:
    """Delete the staging folders in ``root`` whose creators were killed (a live
    creator's is kept); cleaning up must never keep a new run from starting."""
    removed = []
    with contextlib.suppress(OSError):
        for folder in sorted(root.glob(".incomplete-*")):
            with contextlib.suppress(OSError):
                if folder.is_dir() and _abandoned_staging(folder):
                    shutil.rmtree(folder)
                    removed.append(folder)
    return removed


# ---------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""A name usable as one folder name (no separators, no '..', not hidden) and as a
TensorFlow name scope (which must not start with '_' or '-')."""


def safe_name(name: str) -> str:
    """``name`` made to match :data:`NAME_PATTERN` (the one sanitizer of names)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lstrip("._-").rstrip(".-") or "run"
    return cleaned[:80]


@dataclass
class Checkpoint:
    """One complete checkpoint folder and its training state."""

    path: Path
    state: dict[str, Any]

    @property
    def prefix(self) -> str:
        return str(self.path / "ckpt")

    @property
    def epoch(self) -> int:
        """The epoch it was saved after (its folder's number)."""
        return int(self.path.name.removeprefix("epoch-"))

    @property
    def saved_at(self) -> float:
        """When it was saved (``time.time()``): what was logged later belongs to epochs
        after it. (Older checkpoints lack the field: their manifest's time, written last.)"""
        saved = self.state.get("saved_at") if isinstance(self.state, dict) else None
        if isinstance(saved, (int, float)) and not isinstance(saved, bool):
            return float(saved)
        return (self.path / MANIFEST).stat().st_mtime


class RunDir:
    """A run directory and the operations on it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: RunLock | None = None

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, name: str,
               fill: Callable[[RunDir], None] = lambda run: None) -> RunDir:
        """A new run directory ``root/<name>-<timestamp>`` (never an existing one), locked
        by this process (:meth:`unlock` when the run ends).

        ``fill`` writes the first files (config, run.json) into a hidden staging folder
        ``root/.incomplete-*`` that is then renamed into place, so the run directory
        appears complete or not at all: a kill at any instant leaves either nothing to
        resume or a folder that ``--resume`` can continue (never one without its config).
        The lock is taken in the staging folder before ``fill`` and moves with the rename;
        staging folders of killed creators (their lock is free) are removed first.
        """
        root = Path(root)
        base = f"{safe_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            remove_abandoned_staging(root)
            staging = cls(root / f".incomplete-{base}-{os.urandom(4).hex()}")
            staging.path.mkdir()  # (not mkdtemp: a run directory keeps the umask's mode)
        except OSError as exc:
            raise UserError(f"cannot create a run directory in {root}: "
                            f"{exc.strerror or exc}; choose another folder with --output") \
                from None
        try:
            staging.lock()
            fill(staging)
            final = _rename_to_free_name(staging.path, root, base)
        except OSError as exc:
            staging.unlock()
            raise _write_error(root, exc) from None
        except BaseException:
            staging.unlock()
            raise
        finally:  # the staging folder is gone after the rename; otherwise remove it
            shutil.rmtree(staging.path, ignore_errors=True)
        if final is None:
            staging.unlock()
            raise UserError(f"too many runs named {base!r} in {root}")
        run = cls(final)
        run._lock, staging._lock = staging._lock, None
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not (run.path / RUN_FILE).is_file() and not (run.path / "config.yaml").is_file():
            raise UserError(f"{run.path} is not a run directory (no {RUN_FILE}); give the "
                            "folder that `bnn train` created, e.g. runs/quickstart-2026...")
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    @staticmethod
    def is_run(folder: Path) -> bool:
        """Whether ``folder`` is a run directory (it has a run.json)."""
        return (Path(folder) / RUN_FILE).is_file()

    # -- the config it was started with ----------------------------------------------------

    def write_config(self, original: str, resolved: dict[str, Any], overrides: list[str],
                     plugins: list[str]) -> None:
        """The config as given (config.yaml, what a resume checks again), resolved
        (config.resolved.yaml, every default written out) and its overrides and plugins."""
        atomic_write_text(self.file(CONFIG), original)
        atomic_write_text(self.file(RESOLVED_CONFIG), yaml.safe_dump(resolved, sort_keys=False))
        atomic_write_json(self.file(OVERRIDES), {"overrides": overrides, "plugins": plugins})

    @property
    def config_file(self) -> Path:
        return self.file(CONFIG)

    def read_overrides(self) -> tuple[list[str], list[str]]:
        """The KEY=VALUE overrides and the plugins the run was started with."""
        path = self.file(OVERRIDES)
        data = read_json(path) if path.is_file() else {}
        if not isinstance(data, dict):
            raise UserError(f"{path} is corrupted: not a JSON object")
        return [str(o) for o in data.get("overrides") or []], list(data.get("plugins") or [])

    def read_resolved_config(self) -> dict[str, Any] | None:
        """config.resolved.yaml (None if missing or unreadable)."""
        with contextlib.suppress(OSError, yaml.YAMLError):
            data = yaml.safe_load(self.file(RESOLVED_CONFIG).read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
        return None

    # -- the lock --------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the run's lock (before this process writes anything into it); a
        :class:`RunBusyError` (exit 2) names the live process that holds it."""
        if self._lock is None:
            self._lock = RunLock.acquire(self.path)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def record_end(self, status: str, error: str) -> None:
        """How the run ended, kept in the lock file for when run.json cannot be written."""
        if self._lock is not None:
            self._lock.record_end(status, error)

    # -- status --------------------------------------------------------------------------

    def read_record(self) -> RunRecord:
        """run.json as it is true now: a ``starting``/``running`` status whose lock no
        live process holds reads ``interrupted`` (the process was killed), or ``failed``
        with the reason its process left in the lock file when it could not write
        run.json (a full disk). Reading never writes: the next writer fixes the file."""
        record = self.read_record_file()
        if record.live and lock_holder(self.path) is None:
            ended = _last_holder(self.path)
            if ended.get("ended"):
                return record.updated(status=ended["ended"], error=ended.get("error"))
            return record.updated(status="interrupted")
        return record

    def read_record_safely(self) -> RunRecord:
        """:meth:`read_record`, or an empty record where run.json cannot be read."""
        try:
            return self.read_record()
        except UserError:
            return RunRecord()

    def effective_status(self) -> str | None:
        """The run's status as :meth:`read_record` tells it (None if unreadable)."""
        return self.read_record_safely().status

    def read_record_file(self) -> RunRecord:
        """run.json as written (``running`` even if its process is gone)."""
        path = self.file(RUN_FILE)
        return RunRecord.from_json(read_json(path) if path.exists() else {})

    def write_record(self, **fields: Any) -> RunRecord:
        """Update run.json's ``fields`` (by the process that holds the lock); a field set
        to None is cleared. An unreadable run.json is replaced."""
        try:
            old = self.read_record_file()
        except UserError:
            old = RunRecord()
        record = old.updated(**fields)
        atomic_write_json(self.file(RUN_FILE), record.to_json())
        return record

    # -- metrics ---------------------------------------------------------------------------

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv and metrics.jsonl from the full history (one row an epoch),
        both in the CSV's column order (:meth:`metric_columns`)."""
        columns = self.metric_columns(history)
        rows = [{k: row[k] for k in columns if k in row} for row in history]
        atomic_write_text(self.file("metrics.jsonl"),
                          "".join(json.dumps(row, default=_json_default) + "\n"
                                  for row in rows))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.file("metrics.csv"), buffer.getvalue())

    def read_history(self) -> list[dict[str, Any]]:
        """metrics.jsonl's rows with an integer ``epoch``, as far as it can be read: a
        live run may be between writes, a foreign one damaged; neither is an error."""
        try:
            lines = self.file("metrics.jsonl").read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        rows = []
        for line in lines:
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                    rows.append(row)
        return rows

    def metric_columns(self, history: list[dict[str, Any]]) -> list[str]:
        """metrics.csv's columns: fixed when the file is created (``epoch``, then the
        first row's order), new keys appended at the end, never reordered, so scripts
        that read columns by position keep working across a resume."""
        columns = self._csv_header() or ["epoch"]
        for row in history:
            columns += [k for k in row if k not in columns]
        return columns

    def _csv_header(self) -> list[str]:
        try:
            with self.file("metrics.csv").open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            return []
        # (A file that does not start with our header is not ours to follow.)
        return list(dict.fromkeys(c for c in header if c)) if "epoch" in header else []

    # -- TensorBoard -------------------------------------------------------------------------

    def drop_events_after(self, cutoff: float | None) -> None:
        """Remove the TensorBoard events logged after ``cutoff`` (a checkpoint's
        ``saved_at``; None: all of them), so a resumed run, which logs the epochs after
        its checkpoint again, shows each (tag, step) once. Event files are rewritten
        atomically; files left with no event are deleted."""
        from bnn_cli._keras import tf  # (lazy: `bnn runs` reads runs without TF)

        folder = self.file("tensorboard")
        if not folder.is_dir():
            return
        for leftover in folder.rglob(".*tfevents*"):  # temporaries of a rewrite cut short
            leftover.unlink(missing_ok=True)
        for path in sorted(folder.rglob("*tfevents*")):
            try:
                if path.is_file():
                    _drop_events(path, -math.inf if cutoff is None else cutoff)
            except (OSError, UserError, tf.errors.OpError) as exc:
                # The file is kept as it was (atomic rewrite): TensorBoard may show some
                # steps twice, which is no reason to keep a run from resuming.
                _warn(f"warning: could not remove the events after the checkpoint from "
                      f"{path}: {getattr(exc, 'message', None) or exc}")

    # -- checkpoints -----------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @contextlib.contextmanager
    def new_checkpoint(self, epoch: int) -> Iterator[Path]:
        """A temporary folder to fill; on success it becomes ``epoch-NNNN`` atomically."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_dir(self.checkpoints, ".incomplete-")
        try:
            yield tmp
            files = [p for p in sorted(tmp.iterdir()) if p.is_file()]
            for file in files:  # TensorFlow does not fsync what it writes
                _fsync_file(file)
            atomic_write_json(tmp / MANIFEST, {p.name: sha256_file(p) for p in files})
            final = self.checkpoints / f"epoch-{epoch:04d}"
            if final.exists():
                # A re-run of an epoch after a crash (no pointer names the old folder any
                # more): move it aside in one rename rather than deleting it in place, so
                # a kill never leaves a half-deleted folder under a checkpoint's name.
                stale = _new_temp_dir(self.checkpoints, ".stale-")
                os.replace(final, stale / final.name)
            os.replace(tmp, final)
            _fsync_dir(self.checkpoints)
            for leftover in self.checkpoints.glob(".stale-*"):  # (prune also removes them)
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_error(self.checkpoints, exc) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def point(self, which: str, epoch: int) -> None:
        """Point ``last``/``best`` at a complete checkpoint folder."""
        atomic_write_json(self.checkpoints / f"{which}.json", {"checkpoint": f"epoch-{epoch:04d}"})

    def align_pointers(self, last: int, best: int | None) -> None:
        """Point ``last``/``best`` at the checkpoints a resumed run's state names.

        The two pointers are written one after the other, so a kill can leave one behind,
        and a corrupt checkpoint that resume skipped may still be named by one. Before any
        folder can be re-written or pruned, they must agree with the state we continue
        from. (A best folder that no longer exists keeps its old pointer.)"""
        self.point("last", last)
        if best is not None and (self.checkpoints / f"epoch-{best:04d}").is_dir():
            self.point("best", best)

    def prune(self) -> None:
        """Delete checkpoint folders no pointer refers to (and leftovers of crashes)."""
        # (last, best, and what each finished stage of a multi-stage run selected)
        keep = {self.pointed(p.stem) for p in self.checkpoints.glob("*.json")} - {None}
        for child in self.checkpoints.iterdir():
            if child.is_dir() and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)

    def pointed(self, which: str) -> str | None:
        """The checkpoint folder a pointer (``last``, ``best``, ``stage-NAME``) names, or
        None if there is no such pointer (or it cannot be read)."""
        try:
            return read_json(self.checkpoints / f"{which}.json")["checkpoint"]
        except (UserError, KeyError, TypeError):
            return None

    def verify(self, folder: Path) -> Checkpoint:
        """Check a checkpoint folder against its manifest; raise CorruptError naming the file."""
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise CorruptError(folder, "incomplete checkpoint (no manifest)")
        manifest = read_json(manifest_path)
        if not isinstance(manifest, dict) or STATE not in manifest:
            raise CorruptError(manifest_path, f"not a manifest of {STATE} and the weights")
        for name, digest in manifest.items():
            file = folder / name
            if not file.is_file():
                raise CorruptError(file, "file missing")
            if sha256_file(file) != digest:
                raise CorruptError(file, "checksum mismatch (truncated or modified)")
        return Checkpoint(folder, read_json(folder / STATE))

    def load_checkpoint(self, which: str = "last", *, warn=_warn) -> Checkpoint:
        """The ``last``/``best`` checkpoint; a corrupt one falls back to the newest good one."""
        if not self.checkpoints.is_dir():
            raise UserError(f"{self.path} has no checkpoints yet; start the run again "
                            "instead of resuming it")
        pointed = self.pointed(which)
        pointer = self.checkpoints / f"{which}.json"
        if pointed is None and pointer.exists():
            warn(f"warning: {pointer} is unreadable (truncated or corrupted); using the "
                 "newest complete checkpoint")
        candidates = sorted((p for p in self.checkpoints.glob("epoch-*") if p.is_dir()),
                            reverse=True)
        if pointed:
            candidates.sort(key=lambda p: p.name != pointed)  # the pointed one first
        errors = []
        for folder in candidates:
            try:
                checkpoint = self.verify(folder)
            except UserError as exc:
                errors.append(str(exc))
                warn(f"warning: {exc}; trying an earlier checkpoint")
                continue
            return checkpoint
        raise UserError(f"{self.path} has no readable checkpoint"
                        + (": " + "; ".join(errors) if errors else ""))

    def resolve_checkpoint(self, target: Path) -> Checkpoint:
        """A checkpoint folder, or any file inside one, or a pointer file -> checkpoint."""
        target = Path(target)
        if target.name in ("last.json", "best.json"):
            return self.load_checkpoint(target.stem)
        folder = target if target.is_dir() else target.parent
        return self.verify(folder)


def _rename_to_free_name(staging: Path, root: Path, base: str) -> Path | None:
    """Rename ``staging`` to ``root/base`` (or ``base-1``, ...): the first that is free."""
    for i in range(1000):
        candidate = root / (base if i == 0 else f"{base}-{i}")
        if candidate.exists():  # rename() would replace an empty folder
            continue
        try:
            os.rename(staging, candidate)
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            continue
        _fsync_dir(root)
        return candidate
    return None


def _drop_events(path: Path, cutoff: float) -> None:
    """Keep the events of one event file logged at or before ``cutoff``: event times
    (``wall_time``) sort them by epoch whatever a tag's step counts (epochs, iterations),
    because an epoch's events are all logged before its checkpoint is saved."""
    from bnn_cli._keras import tf  # (lazy: `bnn runs` reads runs without TF)

    events = []
    with contextlib.suppress(tf.errors.DataLossError):  # a last record cut short by a kill
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            events.append(event)
    kept = [e for e in events if e.wall_time <= cutoff or e.HasField("file_version")]
    if len(kept) == len(events):
        return
    if all(e.HasField("file_version") for e in kept):
        path.unlink()
        _fsync_dir(path.parent)
        return

    def write(tmp: Path) -> None:
        with tf.io.TFRecordWriter(str(tmp)) as writer:  # (the event files' own format)
            for event in kept:
                writer.write(event.SerializeToString())

    atomic_save(path, write)


def find_run_dir(target: Path) -> RunDir | None:
    """The run directory that contains ``target`` (itself, or a file/checkpoint in it)."""
    for candidate in [target, *target.parents][:4]:
        if (candidate / RUN_FILE).is_file():
            return RunDir(candidate)
    return None


def child_runs(folder: Path) -> list[RunDir]:
    """The run directories directly inside ``folder`` (e.g. ``runs/``), by name; hidden
    ``.incomplete-*`` staging folders are not runs."""
    with contextlib.suppress(OSError):
        return [RunDir(p) for p in sorted(folder.iterdir())
                if p.is_dir() and not p.name.startswith(".")
                and ((p / RUN_FILE).is_file() or (p / "config.yaml").is_file())]
    return []
