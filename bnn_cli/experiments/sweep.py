"""``bnn sweep``: trials of one config, each an ordinary run directory, driven by Optuna.

The sweep folder holds::

    study.db            the Optuna study (SQLite; --storage names any other database)
    trials/NAME-trial-0001-<timestamp>/   one run directory per trial (bnn train's)
    logs/trial-0001.log                   what that trial's bnn train printed
    results.csv / results.png             one row per trial; metric vs each swept key

Each trial is a ``bnn train`` process (``python -m bnn_cli.cli train``): TensorFlow's
state stays in it, and a trial is stopped as any run is, with SIGTERM (a checkpoint, then
``interrupted``). The sweep reads the run's ``metrics.jsonl`` as epochs end and reports
the monitored metric to Optuna (``trial.report``), so ``--prune`` (a median pruner) can
stop a hopeless trial; its run ends interrupted, marked ``pruned`` in run.json.

The study is the sweep's memory. Its trials record the host and process that run them and
the run directory. Started again with the same command, a sweep skips finished trials
(complete, pruned, failed) and first resumes its own trials left ``RUNNING`` by a killed
sweep on this host (``bnn train --resume`` of the run directory, or a fresh start when the
kill came before the run directory existed), then asks Optuna for new ones until the grid
is done or ``--trials`` are. A trial whose process failed (a non-finite loss, a value only
training could refuse) is told to Optuna as failed, with the reason, and the sweep goes
on. Several hosts may run the same command against one database (``--storage``): each
takes new trials from the shared study and leaves the others' running trials alone.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnn_cli.assemble.check import check
from bnn_cli.config.monitor import monitor_mode
from bnn_cli.config.source import flattened_text
from bnn_cli.errors import UserError
from bnn_cli.experiments.space import (
    Param,
    Space,
    overrides_of,
    parse_space,
    points_to_check,
    yaml_number,
)
from bnn_cli.plots import plot_sweep
from bnn_cli.rundir.record import RunRecord
from bnn_cli.rundir.run import RunDir, atomic_write_text, lock_holder, safe_name

STATE_NAMES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed",
               "RUNNING": "running", "WAITING": "waiting"}
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
_POLL_S = 0.3
_ORPHAN_WAIT_S = 120.0
"""How long a resumed trial waits for the ``bnn train`` of the killed sweep to let go of
its run directory (it gets SIGTERM when its sweep dies, saves a checkpoint and ends)."""


@dataclass
class SweepSettings:
    config: Path
    args: list[str]
    search: str = "grid"
    trials: int | None = None
    seed: int | None = None
    storage: str | None = None
    study: str | None = None
    output: Path | None = None
    prune: bool = False
    data_dir: str | None = None
    pruner: Any = None  # an Optuna pruner in place of --prune's median one (Python callers)


@dataclass
class SweepReport:
    folder: Path
    study: str
    storage: str
    monitor: str
    mode: str
    keys: list[str]
    rows: list[dict[str, Any]]
    results_csv: Path | None = None
    results_png: Path | None = None
    exit_code: int = 0
    stopped: str | None = None  # why the sweep stopped before its trials were done
    test_metrics: list[str] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        done = [r for r in self.rows if r["state"] == "completed" and _finite(r["value"])]
        if not done:
            return None
        pick = max if self.mode == "max" else min
        return pick(done, key=lambda r: r["value"])

    def as_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "study": self.study, "storage": self.storage,
                "monitor": self.monitor, "mode": self.mode, "keys": self.keys,
                "trials": self.rows, "best": self.best,
                "results_csv": str(self.results_csv) if self.results_csv else None,
                "results_png": str(self.results_png) if self.results_png else None,
                "stopped": self.stopped}

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 200)
        table = Table(title=f"sweep {self.study}: {len(self.rows)} trials, {self.monitor} "
                            f"({self.mode})")
        for column in ("trial", "state", *self.keys, f"best {self.monitor}",
                       *(f"test {m}" for m in self.test_metrics), "epochs", "wall time",
                       "run"):
            table.add_column(column, justify="right" if column != "run" else "left",
                             overflow="fold")
        best = self.best
        for row in self.rows:
            mark = " *" if best is not None and row["trial"] == best["trial"] else ""
            table.add_row(str(row["trial"]) + mark, row["state"],
                          *(str(row["params"].get(k, "")) for k in self.keys),
                          _fmt(row["value"]),
                          *(_fmt(row["test"].get(m)) for m in self.test_metrics),
                          str(row["epochs"] if row["epochs"] is not None else ""),
                          _seconds(row["wall_time"]), _relative(row["run_dir"], self.folder))
        console.print(table)
        if best is not None:
            console.print(f"best: trial {best['trial']} ({_point_text(best['params'])}) "
                          f"{self.monitor} {best['value']:.4f}", soft_wrap=True, markup=False)
        for row in self.rows:
            if row["state"] == "failed" and row.get("reason"):
                console.print(f"trial {row['trial']} failed: {row['reason']}", soft_wrap=True,
                              markup=False)
        if self.results_csv:
            console.print(f"wrote {self.results_csv}" + (f" and {self.results_png}"
                                                         if self.results_png else ""),
                          soft_wrap=True, markup=False)
        if self.stopped:
            console.print(self.stopped, soft_wrap=True, markup=False)


def _texts(params: dict[str, Any]) -> dict[str, str]:
    """Optuna's parameter values as the override texts they came from."""
    return {k: yaml_number(v) if isinstance(v, float) else str(v) for k, v in params.items()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if _finite(value) else ("" if value is None else str(value))


def _seconds(value: Any) -> str:
    if not _finite(value):
        return ""
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _relative(path: str | None, folder: Path) -> str:
    if not path:
        return ""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(folder.resolve()))
    return path


def _point_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------
# Setting up: the space, the checks, the folder, the study
# ---------------------------------------------------------------------------------------


def _optuna():
    try:
        import optuna
    except ImportError:  # (a main dependency; a broken install)
        raise UserError("bnn sweep needs the optuna package: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def check_points(settings: SweepSettings, space: Space) -> Any:
    """``bnn check`` every config the sweep can make (each grid point; for random/TPE each
    range's ends and each listed value) before anything is written. Returns the first
    point's checked config (its monitor and mode are the sweep's)."""

    points = list(points_to_check(space, settings.search))
    _say(f"checking {len(points)} config{'s' if len(points) != 1 else ''} of the sweep...")
    first = None
    for point in points:
        overrides = [*space.fixed, *overrides_of(point)]
        try:
            checked = check(settings.config, overrides, data_dir=settings.data_dir)
        except UserError as exc:
            raise UserError(f"{exc}\n(the sweep's point {_point_text(point)} does not check; "
                            "nothing was run or written. Fix or drop that value)") from None
        first = first or checked
    return first


def _folder(settings: SweepSettings, name: str) -> Path:
    return Path(settings.output) if settings.output else Path("runs") / f"sweep-{name}"


def _definition(settings: SweepSettings, space: Space) -> dict[str, Any]:
    """What makes a sweep this sweep (stored in the study; a second command against the
    same study must match it)."""

    try:
        text = flattened_text(settings.config)
    except OSError as exc:
        raise UserError(f"cannot read {settings.config}: {exc.strerror or exc}") from None
    return {"config": Path(settings.config).name,
            "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "search": settings.search, "params": [p.describe() for p in space.params],
            "fixed": space.fixed}


def _open_study(settings: SweepSettings, space: Space, folder: Path, mode: str,
                definition: dict[str, Any]) -> Any:
    optuna = _optuna()
    name = settings.study or folder.name
    storage = settings.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    shown = masked(storage)
    # (Steps are epochs, from 1: no trial is judged on its first epoch alone.)
    pruner = settings.pruner or optuna.pruners.MedianPruner(n_startup_trials=2,
                                                            n_warmup_steps=2)
    if not settings.prune:
        pruner = optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                    direction="maximize" if mode == "max" else "minimize",
                                    sampler=_sampler(settings, space, 0), pruner=pruner)
    except ValueError as exc:  # e.g. a direction that differs from the stored study's
        raise UserError(f"study {name!r} in {shown}: {exc}; use another --study") from None
    except ImportError as exc:  # a database driver that is not installed
        raise UserError(f"cannot open the Optuna storage {shown!r}: {exc} (its driver: "
                        "pip install psycopg2-binary for postgresql://, pymysql for "
                        "mysql+pymysql://)") from None
    except Exception as exc:  # noqa: BLE001 - a database URL that does not open
        if type(exc).__module__.startswith(("sqlalchemy", "optuna")):
            raise UserError(f"cannot open the Optuna storage {shown!r}: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}. Check "
                            "the URL (sqlite:///FILE, postgresql://USER:PASS@HOST/DB, "
                            "mysql+pymysql://...) and that its driver is installed") from None
        raise
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", definition)
    elif stored != definition:
        differs = sorted(k for k in definition if stored.get(k) != definition.get(k))
        raise UserError(f"study {name!r} in {shown} holds another sweep (its "
                        f"{', '.join(differs)} differ{'s' if len(differs) == 1 else ''}: "
                        f"{json.dumps({k: stored.get(k) for k in differs})}). Run that "
                        "sweep's command to continue it, or start this one elsewhere with "
                        "--output DIR (or --study NAME)")
    return study


def _sampler(settings: SweepSettings, space: Space, index: int) -> Any:
    """The sampler for the sweep's trial number ``index``. Random and TPE samplers are
    seeded per trial (seed, index), so a resumed sweep samples what an uninterrupted one
    would have, instead of restarting its random stream at trial 1."""
    optuna = _optuna()
    if settings.search == "grid":
        # (The grid's order must be the same in every process of the sweep.)
        return _grid_sampler(optuna)(space.search_space(), seed=settings.seed or 0)
    seed = None if settings.seed is None else settings.seed * 100_003 + index
    if settings.search == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _grid_sampler(optuna: Any) -> type:
    """Optuna's GridSampler, without its ``study.stop()`` once the grid is done (which
    works only inside ``study.optimize``; the sweep counts its trials itself)."""

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            return None

    return Grid


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """A process's start time (clock ticks after boot, /proc): with the pid, it names
    one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid())}


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the sweep process a trial names is still running (on this host)."""
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = owner.get("pid_start")
    return start is None or _process_start(pid) in (None, start)


class _Signals:
    """SIGINT/SIGTERM to the sweep: passed on to the running trial (which saves a
    checkpoint and ends interrupted; a second signal stops it at once, as ``bnn train``);
    the sweep then stops (the trial stays RUNNING in the study, to be resumed)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.child: subprocess.Popen | None = None
        self.told: subprocess.Popen | None = None  # the child the signal was passed to

    def handler(self, signum, frame) -> None:
        first = self.received is None
        self.received = signum
        if not first and self.told is self.child:  # a second one: the trial stops at once
            self.told = None
        self.pass_on()
        if first:
            _say(f"\n{signal.Signals(signum).name}: stopping the trial (it saves a "
                 "checkpoint); run the same command again to resume the sweep")

    def pass_on(self) -> None:
        """Give the running trial the signal received, once (the poll loop calls this
        too, for a signal that came while the trial was starting)."""
        child = self.child
        if self.received is not None and child is not None and self.told is not child \
                and child.poll() is None:
            self.told = child
            with contextlib.suppress(OSError):
                child.send_signal(self.received)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        previous = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.received == signal.SIGINT else EXIT_SIGTERM


# ---------------------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------------------


@dataclass
class _Trial:
    number: int  # Optuna's (0-based); the sweep's trial number is number + 1
    trial_id: int
    params: dict[str, str]
    run_dir: Path | None = None
    reported: set[int] = field(default_factory=set)

    @property
    def label(self) -> str:
        return f"{self.number + 1:04d}"


class _Runner:
    def __init__(self, settings: SweepSettings, space: Space, folder: Path, study: Any,
                 monitor: str, mode: str, total: int, name: str, signals: _Signals):
        self.settings, self.space, self.folder, self.study = settings, space, folder, study
        self.monitor, self.mode, self.total, self.name = monitor, mode, total, name
        self.signals = signals
        self.trials_dir = folder / "trials"
        self.logs_dir = folder / "logs"

    # -- which trials ----------------------------------------------------------------------

    def abandoned(self) -> list[Any]:
        """This host's RUNNING trials whose sweep process is gone (a killed sweep)."""
        optuna = _optuna()
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            owner = t.user_attrs.get("owner") or {}
            if owner.get("host") not in (None, socket.gethostname()):
                continue  # another host's: it resumes its own
            if not owner and time.time() - t.datetime_start.timestamp() < 60:
                continue  # (asked a moment ago by a process that is about to say so)
            if owner and _alive(owner) and owner.get("pid") != os.getpid():
                continue  # (this process runs one sweep at a time: its own are over)
            out.append(t)
        return out

    def run_dir_of(self, trial: _Trial) -> Path | None:
        """The trial's run directory: ``trials/NAME-trial-NNNN-<timestamp>``."""
        if trial.run_dir is not None:
            return trial.run_dir
        prefix = f"{self.name}-trial-{trial.label}-"
        with contextlib.suppress(OSError):
            found = sorted(p for p in self.trials_dir.iterdir()
                           if p.is_dir() and p.name.startswith(prefix)
                           and RunDir.is_run(p))
            if found:
                trial.run_dir = found[-1]
                self.study._storage.set_trial_user_attr(trial.trial_id, "run_dir",
                                                        str(found[-1].resolve()))
        return trial.run_dir

    # -- running ---------------------------------------------------------------------------

    def command(self, trial: _Trial, resume: bool) -> list[str]:
        base = [sys.executable, "-m", "bnn_cli", "--trial-of", str(os.getpid()), "train"]
        data = ["--data-dir", self.settings.data_dir] if self.settings.data_dir else []
        if resume:
            # (The sweep made this run directory from the user's own config.)
            return [*base, "--resume", str(trial.run_dir), "--trust-plugins", *data]
        overrides = [*self.space.fixed, *overrides_of(trial.params),
                     f"name={self.name}-trial-{trial.label}"]
        return [*base, str(self.settings.config), *overrides, "--output",
                str(self.trials_dir), *data]

    def run(self, trial: _Trial, resume: bool) -> tuple[str, Any]:
        """Train the trial to its end; (Optuna state name, value or reason)."""
        optuna = _optuna()
        handle = optuna.trial.Trial(self.study, trial.trial_id)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"trial-{trial.label}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        pruned_at: int | None = None
        with log_path.open("ab") as log:
            log.write(f"\n$ {' '.join(self.command(trial, resume))}\n".encode())
            log.flush()
            child = subprocess.Popen(self.command(trial, resume), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
            self.signals.child = child
            try:
                while True:
                    self.signals.pass_on()  # (a signal that came just before Popen)
                    code = child.poll()
                    epoch = self.report_epochs(trial, handle)
                    if code is not None:
                        break
                    if (epoch is not None and pruned_at is None and self.settings.prune
                            and self.signals.received is None and handle.should_prune()):
                        pruned_at = epoch
                        _say(f"  trial {trial.number + 1}: pruned after epoch {epoch} "
                             f"(worse than the median of earlier trials); stopping it")
                        child.send_signal(signal.SIGTERM)
                    time.sleep(_POLL_S)
            finally:
                self.signals.child = None
        return self.outcome(trial, code, pruned_at, log_path)

    def report_epochs(self, trial: _Trial, handle: Any) -> int | None:
        """Report the epochs the run logged since the last look; the newest reported."""
        run_dir = self.run_dir_of(trial)
        if run_dir is None:
            return None
        newest = None
        for row in RunDir(run_dir).read_history():
            epoch, value = row.get("epoch"), row.get(self.monitor)
            if not isinstance(epoch, int) or epoch in trial.reported or not _finite(value):
                continue
            handle.report(float(value), epoch)
            trial.reported.add(epoch)
            newest = epoch
            _say(f"  trial {trial.number + 1}/{self.total} epoch {epoch}: {self.monitor} "
                 f"{value:.4f}")
        return newest

    def outcome(self, trial: _Trial, code: int, pruned_at: int | None,
                log_path: Path) -> tuple[str, Any]:
        run_dir = self.run_dir_of(trial)
        record = RunDir(run_dir).read_record_safely() if run_dir else RunRecord()
        state = record.status
        if state == "completed":
            value = record.best_value(self.monitor)
            if not _finite(value):
                return "FAIL", f"the run completed without a finite {self.monitor}"
            return "COMPLETE", float(value)
        if pruned_at is not None and self.signals.received is None:
            if run_dir is not None:
                self.mark_pruned(run_dir, pruned_at)
            return "PRUNED", f"pruned after epoch {pruned_at}"
        if self.signals.received is not None or state == "interrupted" or code in (
                EXIT_SIGINT, EXIT_SIGTERM, -signal.SIGKILL, -signal.SIGTERM):
            return "RUNNING", f"interrupted (exit {code})"
        reason = record.error or _last_error(log_path) or f"bnn train exited {code}"
        return "FAIL", reason

    def mark_pruned(self, run_dir: Path, epoch: int) -> None:
        """Say in run.json that the sweep's pruner stopped the run (its status stays
        ``interrupted``: ``bnn train --resume`` could still finish it)."""
        run = RunDir(run_dir)
        deadline = time.monotonic() + 30
        while True:
            try:
                run.lock()
                break
            except UserError:  # (the trial's process is still letting go)
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
        try:
            run.write_record(pruned=f"by the sweep's median pruner after epoch {epoch}")
        finally:
            run.unlock()

    def wait_for_orphan(self, trial: _Trial) -> None:
        """The killed sweep's ``bnn train`` may still be saving its checkpoint."""
        run_dir = self.run_dir_of(trial)
        if run_dir is None:
            return
        deadline = time.monotonic() + _ORPHAN_WAIT_S
        while lock_holder(run_dir) is not None:
            if time.monotonic() > deadline:
                holder = lock_holder(run_dir) or {}
                raise UserError(f"{run_dir} is still in use by process {holder.get('pid', '?')}"
                                f" after {_ORPHAN_WAIT_S:.0f} s; stop it (kill "
                                f"{holder.get('pid', 'PID')}) and run the sweep again")
            time.sleep(0.5)

    def best_line(self) -> str:
        optuna = _optuna()
        done = self.study.get_trials(deepcopy=False,
                                     states=(optuna.trial.TrialState.COMPLETE,))
        if not done:
            return "no trial completed yet"
        pick = max if self.mode == "max" else min
        best = pick(done, key=lambda t: t.value)
        return f"best so far {self.monitor} {best.value:.4f} (trial {best.number + 1})"


def _last_error(log_path: Path) -> str | None:
    """The last ``error: ...`` paragraph bnn train printed."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error: "):
            return " ".join([lines[i][len("error: "):], *lines[i + 1:i + 3]]).strip()[:500]
    return None


# ---------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------


def run_sweep(settings: SweepSettings) -> SweepReport:
    """``bnn sweep``: check every config, then run (or resume) the study's trials."""
    space = parse_space(settings.args, settings.search)
    if settings.trials is not None and settings.trials < 1:
        raise UserError(f"--trials {settings.trials}: give a positive number of trials")
    if settings.search == "grid" and settings.trials is not None:
        raise UserError("--trials is for --search random or tpe; a grid runs each of its "
                        "points once (list fewer values to run fewer trials)")
    if not Path(settings.config).is_file():
        raise UserError(f"{settings.config} is not a file; give the YAML config to sweep, "
                        "e.g. bnn sweep configs/quickstart.yaml training.epochs=5,10")
    total = len(space.grid()) if settings.search == "grid" else (settings.trials or 10)
    checked = check_points(settings, space)

    training = checked.spec.training
    monitor, mode = training.monitor, monitor_mode(training, training.monitor)
    name = safe_name(checked.config.name)[:60]
    folder = _folder(settings, name)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the sweep folder {folder}: {exc.strerror or exc}; "
                        "choose another with --output") from None
    try:
        study = _open_study(settings, space, folder, mode, _definition(settings, space))
    except UserError:
        if created:  # (a storage that does not open leaves nothing behind)
            with contextlib.suppress(OSError):
                for leftover in folder.iterdir():
                    leftover.unlink()
                folder.rmdir()
        raise
    signals = _Signals()
    runner = _Runner(settings, space, folder, study, monitor, mode, total, name, signals)
    _say(f"sweep {study.study_name}: {total} trials ({settings.search}) of "
         f"{settings.config}, {monitor} ({mode}); folder {folder}")
    stopped = None
    with signals.installed():
        stopped = _drive(runner, settings, total)
    report = collect(study, folder, space.keys, monitor, mode, storage_url(settings, folder))
    report.stopped = stopped
    if stopped:
        report.exit_code = signals.exit_code if signals.received else EXIT_SIGTERM
    elif not any(r["state"] == "completed" for r in report.rows):
        report.exit_code = 1
    write_results(report, space)
    return report


def storage_url(settings: SweepSettings, folder: Path) -> str:
    """The storage's URL as shown (its password masked)."""
    return masked(settings.storage or f"sqlite:///{(folder / 'study.db').resolve()}")


def masked(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


def _drive(runner: _Runner, settings: SweepSettings, total: int) -> str | None:
    """Resume this host's abandoned trials, then new ones until there are ``total``;
    why the sweep stopped early, or None."""
    optuna = _optuna()
    study = runner.study
    for frozen in runner.abandoned():
        if runner.signals.received is not None:
            return "the sweep was interrupted; run the same command again to resume it"
        point = frozen.user_attrs.get("point") or _texts(frozen.params)
        trial = _Trial(frozen.number, frozen._trial_id, dict(point),
                       reported=set(frozen.intermediate_values))
        study._storage.set_trial_user_attr(trial.trial_id, "owner", _owner())
        runner.wait_for_orphan(trial)
        resume = runner.run_dir_of(trial) is not None
        _say(f"trial {trial.number + 1}/{total}: {'resuming ' + str(trial.run_dir) if resume else 'starting again (it had not begun)'}"  # noqa: E501
             f" ({_point_text(trial.params)})")
        stopped = _finish(runner, trial, resume)
        if stopped:
            return stopped
    while True:
        if runner.signals.received is not None:
            return "the sweep was interrupted; run the same command again to resume it"
        trials = study.get_trials(deepcopy=False)
        if len(trials) >= total:
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            if running:
                _say(f"{len(running)} trial(s) still running elsewhere: "
                     + ", ".join(f"{t.number + 1} ({(t.user_attrs.get('owner') or {}).get('host', '?')})"  # noqa: E501
                                 for t in running))
            return None
        study.sampler = _sampler(settings, runner.space, len(trials))
        handle = study.ask()
        study._storage.set_trial_user_attr(handle._trial_id, "owner", _owner())
        params = {p.key: p.suggest(handle, settings.search) for p in runner.space.params}
        study._storage.set_trial_user_attr(handle._trial_id, "point", params)
        trial = _Trial(handle.number, handle._trial_id, params)
        _say(f"trial {trial.number + 1}/{total}: {_point_text(params)}")
        stopped = _finish(runner, trial, resume=False)
        if stopped:
            return stopped


def _finish(runner: _Runner, trial: _Trial, resume: bool) -> str | None:
    optuna = _optuna()
    started = time.perf_counter()
    state, detail = runner.run(trial, resume)
    study = runner.study
    seconds = time.perf_counter() - started
    if state == "RUNNING":  # interrupted: stays RUNNING, resumed by the next command
        return (f"trial {trial.number + 1} was {detail}; run the same command again to "
                "resume it")
    if state == "COMPLETE":
        study.tell(trial.number, detail)
        what = f"{runner.monitor} {detail:.4f}"
    else:
        study._storage.set_trial_user_attr(trial.trial_id, "reason", detail)
        study.tell(trial.number, state=getattr(optuna.trial.TrialState, state))
        what = detail
    _say(f"trial {trial.number + 1}/{runner.total} {STATE_NAMES[state]}: {what} "
         f"({seconds:.1f} s); {runner.best_line()}")
    with contextlib.suppress(UserError):  # (the table so far, in case the sweep is killed)
        write_results(collect(study, runner.folder, runner.space.keys, runner.monitor,
                              runner.mode, ""), runner.space, png=False)
    return None


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


def collect(study: Any, folder: Path, keys: list[str], monitor: str, mode: str,
            storage: str) -> SweepReport:
    """One row per trial of the study, with what its run directory says."""
    rows = []
    metrics: list[str] = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        run_dir = t.user_attrs.get("run_dir")
        record = RunRecord()
        if run_dir and Path(run_dir).is_dir():
            record = RunDir(run_dir).read_record_safely()
        test = record.test_metrics
        metrics += [m for m in test if m not in metrics and not m.startswith("flip_ratio")]
        value = t.value if t.value is not None else record.best_value(monitor)
        state = STATE_NAMES.get(t.state.name, t.state.name.lower())
        if state == "running" and record.status in ("interrupted", "failed"):
            state = "interrupted"  # (its sweep was stopped: the next one resumes it)
        rows.append({"trial": t.number + 1, "optuna_number": t.number, "state": state,
                     "params": dict(t.user_attrs.get("point") or _texts(t.params)),
                     "value": value,
                     "best_epoch": (record.best or {}).get("epoch"),
                     "test": test, "epochs": record.epochs_done,
                     "wall_time": record.wall_time, "run_dir": run_dir,
                     "host": (t.user_attrs.get("owner") or {}).get("host"),
                     "reason": t.user_attrs.get("reason")})
    return SweepReport(folder, study.study_name, storage, monitor, mode, keys, rows,
                       test_metrics=metrics)


def write_results(report: SweepReport, space: Space, *, png: bool = True) -> None:
    """results.csv (one row per trial) and results.png (metric vs each swept key)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "optuna_number", "state", *report.keys,
                     f"best_{report.monitor}", "best_epoch",
                     *(f"test_{m}" for m in report.test_metrics), "epochs", "wall_time_s",
                     "run_dir", "host", "reason"])
    for r in report.rows:
        writer.writerow([r["trial"], r["optuna_number"], r["state"],
                         *(r["params"].get(k, "") for k in report.keys),
                         "" if r["value"] is None else r["value"], r["best_epoch"] or "",
                         *(r["test"].get(m, "") for m in report.test_metrics),
                         "" if r["epochs"] is None else r["epochs"],
                         "" if r["wall_time"] is None else r["wall_time"],
                         r["run_dir"] or "", r["host"] or "", r["reason"] or ""])
    report.results_csv = report.folder / "results.csv"
    atomic_write_text(report.results_csv, buffer.getvalue())
    if png and report.rows:

        path = report.folder / "results.png"
        try:
            plot_sweep(report.rows, [_axis(p) for p in space.params], report.monitor,
                       report.mode, path, title=f"sweep {report.study}")
            report.results_png = path
        except Exception as exc:  # noqa: BLE001 - a picture is never a reason to fail
            _say(f"warning: could not draw {path}: {exc}")


def _axis(param: Param) -> dict[str, Any]:
    """How results.png draws a swept key: numbers (log scale for loguniform) or
    categories."""
    numeric = param.is_range or all(_is_number(v) for v in param.values)
    return {"key": param.key, "log": param.log, "numeric": numeric,
            "values": None if numeric else param.grid_values()}


def _is_number(text: str) -> bool:
    import yaml

    with contextlib.suppress(yaml.YAMLError):
        value = yaml.safe_load(text)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return False

