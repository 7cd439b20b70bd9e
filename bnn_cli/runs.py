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
    metrics.csv / .jsonl   one row per epoch (rewritten whole from the state each epoch)
    tensorboard/           TensorBoard logs
    model.keras            the final model
    run.json               status (running/completed/interrupted/failed), metrics, time

Every file is written atomically (temporary file, flush, fsync, rename), and a pointer
moves to a new checkpoint only after that checkpoint is complete; older checkpoint
folders are deleted only after that, so a kill at any instant leaves a readable run.
The run directory itself is filled in a hidden ``.incomplete-*`` folder and renamed into
place, so it never exists without its config. (TensorBoard's event files are appended
by TensorFlow; a kill can cut the last record short, which TensorBoard tolerates.)
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnn_cli.errors import UserError

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE = "state.json"


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
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None

    def write() -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _swap_in(Path(tmp), path, write)


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


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
                      + "\n")


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


class RunDir:
    """A run directory and the operations on it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, name: str,
               fill: Callable[[RunDir], None] = lambda run: None) -> RunDir:
        """A new run directory ``root/<name>-<timestamp>`` (never an existing one).

        ``fill`` writes the first files (config, run.json) into a hidden staging folder
        ``root/.incomplete-*`` that is then renamed into place, so the run directory
        appears complete or not at all: a kill at any instant leaves either nothing to
        resume or a folder that ``--resume`` can continue (never one without its config).
        """
        root = Path(root)
        base = f"{safe_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = cls(root / f".incomplete-{base}-{os.urandom(4).hex()}")
            staging.path.mkdir()  # (not mkdtemp: a run directory keeps the umask's mode)
        except OSError as exc:
            raise UserError(f"cannot create a run directory in {root}: "
                            f"{exc.strerror or exc}; choose another folder with --output") \
                from None
        try:
            fill(staging)
            for i in range(1000):
                candidate = root / (base if i == 0 else f"{base}-{i}")
                if candidate.exists():  # rename() would replace an empty folder
                    continue
                try:
                    os.rename(staging.path, candidate)
                except (FileExistsError, IsADirectoryError, NotADirectoryError):
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY:
                        raise
                    continue
                _fsync_dir(root)
                return cls(candidate)
        except OSError as exc:
            raise _write_error(root, exc) from None
        finally:  # the staging folder is gone after the rename; otherwise remove it
            shutil.rmtree(staging.path, ignore_errors=True)
        raise UserError(f"too many runs named {base!r} in {root}")

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not (run.path / RUN_FILE).is_file() and not (run.path / "config.yaml").is_file():
            raise UserError(f"{run.path} is not a run directory (no {RUN_FILE}); give the "
                            "folder that `bnn train` created, e.g. runs/quickstart-2026...")
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    # -- status --------------------------------------------------------------------------

    def read_status(self) -> dict[str, Any]:
        path = self.file(RUN_FILE)
        return read_json(path) if path.exists() else {}

    def write_status(self, **fields: Any) -> dict[str, Any]:
        status = {**self.read_status_safely(), **fields}
        atomic_write_json(self.file(RUN_FILE), status)
        return status

    def read_status_safely(self) -> dict[str, Any]:
        try:
            return self.read_status()
        except UserError:
            return {}

    # -- metrics ---------------------------------------------------------------------------

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv and metrics.jsonl from the full history (one row an epoch)."""
        atomic_write_text(self.file("metrics.jsonl"),
                          "".join(json.dumps(row, default=_json_default) + "\n"
                                  for row in history))
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.file("metrics.csv"), buffer.getvalue())

    # -- checkpoints -----------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @contextlib.contextmanager
    def new_checkpoint(self, epoch: int) -> Iterator[Path]:
        """A temporary folder to fill; on success it becomes ``epoch-NNNN`` atomically."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=self.checkpoints))
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
                stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=self.checkpoints))
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
        keep = {self._pointer(w) for w in ("last", "best")} - {None}
        for child in self.checkpoints.iterdir():
            if child.is_dir() and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)

    def _pointer(self, which: str) -> str | None:
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
        pointed = self._pointer(which)
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
