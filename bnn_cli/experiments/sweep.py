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
(complete, pruned, failed); a trial whose worker is gone (a killed sweep: its process is
gone from this host, or its heartbeat stopped, from any host) is failed and queued again
by Optuna's retry callback, and its retry resumes the run directory (``bnn train
--resume``; a fresh start where no run directory is to be seen). Then new trials, until
the grid is done or ``--trials`` are. A trial whose process failed (a non-finite loss, a
value only training could refuse) is told to Optuna as failed, with the reason, and the
sweep goes on. Several processes share one study: ``--jobs N`` on this machine, or the
same command on several hosts against one database (``--storage``); how they keep out of
each other's way is :mod:`bnn_cli.experiments.study`'s.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnn_cli.assemble.check import check
from bnn_cli.config.monitor import monitor_mode
from bnn_cli.config.source import flattened_text
from bnn_cli.errors import UserError
from bnn_cli.experiments import study as study_mod
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
    grace: int = study_mod.DEFAULT_GRACE_S  # seconds without a heartbeat: the worker is dead
    jobs: int = 1  # trials at once on this machine, each a sweep process of its own
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
    optuna = study_mod.load_optuna()
    name = settings.study or folder.name
    url = storage_url(settings, folder, shown=False)
    shown = study_mod.masked(url)
    # (Steps are epochs, from 1: no trial is judged on its first epoch alone.)
    pruner = settings.pruner or optuna.pruners.MedianPruner(n_startup_trials=2,
                                                            n_warmup_steps=2)
    if not settings.prune:
        pruner = optuna.pruners.NopPruner()
    storage = study_mod.open_storage(url, settings.grace)
    queue = space.grid() if settings.search == "grid" else []
    return study_mod.join_study(storage, name, "maximize" if mode == "max" else "minimize",
                      _sampler(settings, space, 0), pruner, definition, queue, shown)


def _sampler(settings: SweepSettings, space: Space, index: int) -> Any:
    """The sampler for the sweep's trial number ``index``. Random and TPE samplers are
    seeded per trial (seed, index), so a resumed sweep samples what an uninterrupted one
    would have, instead of restarting its random stream at trial 1. (A grid's trials are
    queued in the study: a grid sweep's sampler only sees surplus asks, never run.)"""
    optuna = study_mod.load_optuna()
    seed = None if settings.seed is None else settings.seed * 100_003 + index
    if settings.search in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


class _Signals:
    """SIGINT/SIGTERM to the sweep: passed on to its children, the running trial (which
    saves a checkpoint and ends interrupted; a second signal stops it at once, as ``bnn
    train``) or ``--jobs``' sweep processes (which pass it on to theirs); the sweep then
    stops (a trial stays RUNNING in the study, to be resumed)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.children: list[subprocess.Popen] = []
        self.told: set[int] = set()  # the pids the signal was passed to

    def handler(self, signum, frame) -> None:
        first = self.received is None
        self.received = signum
        if not first:  # a second one: the trial stops at once
            self.told.clear()
        self.pass_on()
        if first:
            _say(f"\n{signal.Signals(signum).name}: stopping the trial (it saves a "
                 "checkpoint); run the same command again to resume the sweep")

    def pass_on(self) -> None:
        """Give each running child the signal received, once (the poll loop calls this
        too, for a signal that came while a child was starting)."""
        if self.received is None:
            return
        for child in list(self.children):
            if child.pid not in self.told and child.poll() is None:
                self.told.add(child.pid)
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
    number: int  # Optuna's (0-based)
    trial_id: int
    params: dict[str, str]
    origin: int  # the number of the trial this one retries (its own if none)
    run_dir: Path | None = None
    reported: set[int] = field(default_factory=set)

    @property
    def label(self) -> str:
        """The sweep's trial number, ``origin + 1`` (a retry keeps its trial's)."""
        return f"{self.origin + 1:04d}"

    @property
    def shown(self) -> int:
        return self.origin + 1


class _Runner:
    def __init__(self, settings: SweepSettings, space: Space, folder: Path, study: Any,
                 monitor: str, mode: str, total: int, name: str, signals: _Signals):
        self.settings, self.space, self.folder, self.study = settings, space, folder, study
        self.monitor, self.mode, self.total, self.name = monitor, mode, total, name
        self.signals = signals
        self.trials_dir = folder / "trials"
        self.logs_dir = folder / "logs"

    # -- which trials ----------------------------------------------------------------------

    def more_to_ask(self) -> bool:
        """Whether the study has trials to give out: queued ones (a grid's points, the
        retries of dead workers' trials), or fewer sampled trials than asked for."""
        optuna = study_mod.load_optuna()
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            return True
        return self.settings.search != "grid" and self.sampled(trials) < self.total

    def sampled(self, trials: list[Any]) -> int:
        """How many trials the study's samplers made (retries and surplus not counted)."""
        return sum(1 for t in trials if "failed_trial" not in t.system_attrs
                   and not study_mod.is_surplus(t))

    def claim(self, handle: Any) -> _Trial | None:
        """The asked trial, now this process's; None if it is surplus (told failed)."""
        optuna = study_mod.load_optuna()
        storage, frozen = self.study._storage, handle._cached_frozen_trial
        storage.record_heartbeat(handle._trial_id)
        storage.set_trial_user_attr(handle._trial_id, "owner", study_mod.owner())
        queued = "fixed_params" in frozen.system_attrs or "failed_trial" in frozen.system_attrs
        if self.settings.search == "grid" and not queued or not queued and self.surplus(frozen):
            storage.set_trial_user_attr(handle._trial_id, "surplus", True)
            self.study.tell(handle.number, state=optuna.trial.TrialState.FAIL)
            return None
        # (A queued or retried trial's values come back as queued: the study records them.)
        point = {p.key: p.suggest(handle, self.settings.search) for p in self.space.params}
        storage.set_trial_user_attr(handle._trial_id, "point", point)
        trial = _Trial(handle.number, handle._trial_id, dict(point), study_mod.origin(frozen),
                       reported=set(frozen.intermediate_values))
        known = frozen.user_attrs.get("run_dir")
        if known and RunDir.is_run(Path(known)):  # (a retry, on a host that sees the run)
            trial.run_dir = Path(known)
        return trial

    def surplus(self, frozen: Any) -> bool:
        """A sampled trial asked for after the study had all of its trials."""
        earlier = [t for t in self.study.get_trials(deepcopy=False) if t.number < frozen.number]
        return self.sampled(earlier) >= self.total

    def run_dir_of(self, trial: _Trial) -> Path | None:
        """The trial's run directory: ``trials/NAME-trial-NNNN-<timestamp>``."""
        if trial.run_dir is not None:
            return trial.run_dir
        prefix = f"{self.name}-trial-{trial.label}-"  # (a retry's: its trial's label)
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
        base = [sys.executable, "-m", "bnn_cli", "--child-of", str(os.getpid()), "train"]
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
        optuna = study_mod.load_optuna()
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
            self.signals.children = [child]
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
                self.signals.children = []
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
        optuna = study_mod.load_optuna()
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
    if settings.jobs < 1:
        raise UserError(f"--jobs {settings.jobs}: give the number of trials to run at once "
                        "(1 or more)")
    if settings.grace < 2:
        raise UserError(f"--grace {settings.grace}: give at least 2 seconds (a trial's worker "
                        "sends a heartbeat every quarter of the grace period)")
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
        stopped, failed = (_run_jobs(settings, folder, study.study_name, signals)
                           if settings.jobs > 1 else (_drive(runner, settings, total), False))
    report = collect(study, folder, space.keys, monitor, mode, storage_url(settings, folder))
    report.stopped = stopped
    if stopped:
        report.exit_code = 1 if failed else \
            signals.exit_code if signals.received else EXIT_SIGTERM
    elif not any(r["state"] == "completed" for r in report.rows):
        report.exit_code = 1
    write_results(report, space)
    return report


def storage_url(settings: SweepSettings, folder: Path, *, shown: bool = True) -> str:
    """The storage's URL (as shown: its password masked)."""
    url = settings.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    return study_mod.masked(url) if shown else url


def _run_jobs(settings: SweepSettings, folder: Path, study: str,
              signals: _Signals) -> tuple[str | None, bool]:
    """``--jobs N``: N sweep processes on this machine, each taking trials from the one
    study as hosts would, their progress on this stderr, each line marked ``[job K]``.
    Each gets 1/N of the CPU threads (unless the environment sets them) and, where
    ``CUDA_VISIBLE_DEVICES`` lists several GPUs, its share of them."""
    base = [sys.executable, "-m", "bnn_cli", "--child-of", str(os.getpid()), "sweep",
            str(settings.config), *settings.args, "--search", settings.search,
            "--output", str(folder), "--study", study, "--grace", str(settings.grace),
            *(["--trials", str(settings.trials)] if settings.trials else []),
            *(["--seed", str(settings.seed)] if settings.seed is not None else []),
            *(["--prune"] if settings.prune else []),
            *(["--data-dir", settings.data_dir] if settings.data_dir else [])]
    threads = str(max(1, (os.cpu_count() or 1) // settings.jobs))
    gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    procs = []
    for job in range(settings.jobs):
        env = {"TF_NUM_INTRAOP_THREADS": threads, "OMP_NUM_THREADS": threads,
               "TF_NUM_INTEROP_THREADS": threads, **os.environ, "PYTHONUNBUFFERED": "1",
               # (the URL, password and all, in the environment: not in ps' listing)
               "BNN_SWEEP_STORAGE": storage_url(settings, folder, shown=False)}
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[job::settings.jobs])
        procs.append(subprocess.Popen(base, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      env=env))
        signals.children.append(procs[-1])
    relays = [threading.Thread(target=_relay, args=(p.stderr, f"[job {k + 1}] "), daemon=True)
              for k, p in enumerate(procs)]
    for relay in relays:
        relay.start()
    while any(p.poll() is None for p in procs):
        signals.pass_on()
        time.sleep(_POLL_S)
    for relay in relays:
        relay.join()
    codes = [p.returncode for p in procs]
    failed = [f"job {k + 1} exited {c}" for k, c in enumerate(codes)
              if c not in (0, 1, EXIT_SIGINT, EXIT_SIGTERM)]
    if failed:
        return "; ".join(failed) + " (its lines above say why)", True
    if signals.received is not None or any(c in (EXIT_SIGINT, EXIT_SIGTERM) for c in codes):
        return "the sweep was interrupted; run the same command again to resume it", False
    return None, False


def _relay(stream: Any, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        _say(prefix + line.decode(errors="replace").rstrip("\n"))


def _drive(runner: _Runner, settings: SweepSettings, total: int) -> str | None:
    """Take the study's trials one at a time until none is left to give out: queued
    ones first (a grid's points, dead workers' trials to resume), then new samples;
    why the sweep stopped early, or None."""
    optuna = study_mod.load_optuna()
    study = runner.study
    while True:
        if runner.signals.received is not None:
            return "the sweep was interrupted; run the same command again to resume it"
        for number in study_mod.recover(study, settings.grace):
            _say(f"trial {number + 1}: its worker is gone; queued to resume")
        if not runner.more_to_ask():
            running = study.get_trials(deepcopy=False,
                                       states=(optuna.trial.TrialState.RUNNING,))
            if running:
                _say(f"{len(running)} trial(s) still running elsewhere: "
                     + ", ".join(f"{study_mod.origin(t) + 1} "
                                 f"({(t.user_attrs.get('owner') or {}).get('host', '?')})"
                                 for t in running))
            return None
        study.sampler = _sampler(settings, runner.space,
                                 runner.sampled(study.get_trials(deepcopy=False)))
        trial = runner.claim(study_mod.ask(study))
        if trial is None:
            continue  # (surplus: another process asked for the last trial at once)
        with study_mod.heartbeat(study._storage, trial.trial_id):
            if trial.run_dir is None:
                runner.run_dir_of(trial)  # (a retry's run directory, found by its label)
            if trial.run_dir is not None:
                runner.wait_for_orphan(trial)
                _say(f"trial {trial.shown}/{total}: resuming {trial.run_dir} "
                     f"({_point_text(trial.params)})")
            else:
                _say(f"trial {trial.shown}/{total}: {_point_text(trial.params)}")
            stopped = _finish(runner, trial, resume=trial.run_dir is not None)
        if stopped:
            return stopped


def _finish(runner: _Runner, trial: _Trial, resume: bool) -> str | None:
    optuna = study_mod.load_optuna()
    started = time.perf_counter()
    state, detail = runner.run(trial, resume)
    study = runner.study
    seconds = time.perf_counter() - started
    if state == "RUNNING":  # interrupted: stays RUNNING, resumed by the next command
        return (f"trial {trial.shown} was {detail}; run the same command again to "
                "resume it")
    try:
        if state == "COMPLETE":
            study.tell(trial.number, detail)
            what = f"{runner.monitor} {detail:.4f}"
        else:
            study._storage.set_trial_user_attr(trial.trial_id, "reason", detail)
            study.tell(trial.number, state=getattr(optuna.trial.TrialState, state))
            what = detail
    except optuna.exceptions.UpdateFinishedTrialError:
        # (no heartbeat reached the study for its grace period, and another process
        # failed the trial and queued it again: that retry resumes the run directory)
        _say(f"trial {trial.shown}: another process took it over (no heartbeat reached the "
             "study for its grace period); its retry goes on from the run directory")
        return None
    _say(f"trial {trial.shown}/{runner.total} {STATE_NAMES[state]}: {what} "
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
    """One row per trial of the sweep (a retried trial is shown as its retry), with what
    its run directory says."""
    rows = []
    metrics: list[str] = []
    for t in sorted(study_mod.sweep_trials(study.get_trials(deepcopy=False)),
                    key=lambda t: (study_mod.origin(t), t.number)):
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
        reason = t.user_attrs.get("reason")
        if state == "failed" and reason is None and study_mod.retried([t]):
            reason = f"its worker died {len(study_mod.retried([t])) + 1} times"
        rows.append({"trial": study_mod.origin(t) + 1, "optuna_number": t.number,
                     "state": state,
                     "params": dict(t.user_attrs.get("point") or _texts(t.params)),
                     "value": value,
                     "best_epoch": (record.best or {}).get("epoch"),
                     "test": test, "epochs": record.epochs_done,
                     "wall_time": record.wall_time, "run_dir": run_dir,
                     "host": (t.user_attrs.get("owner") or {}).get("host"),
                     "reason": reason})
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

