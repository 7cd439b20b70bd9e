"""The sweep's Optuna study, shared by every process that runs it.

Several processes run one study: ``bnn sweep --jobs N`` on one machine, or the same
command on several hosts against one database. Optuna's own mechanisms keep them apart:

- **No trial runs twice.** A grid's points are queued once, as WAITING trials, by the
  process that created the study (its ``create_study`` won; the others wait until the
  queue is complete). Taking a queued trial is atomic in Optuna's storage, so each point
  goes to one process. A sampled search (random, TPE) asks for new trials; one that a
  process asked for after the study already had all of its trials (two asked at once for
  the last one) is *surplus*: it is told failed before it runs and is not a trial of the
  sweep.
- **A dead worker's trial is run again.** A process records a heartbeat for the trial it
  runs (``RDBStorage`` heartbeats). A trial whose heartbeat stopped for ``grace`` seconds
  (its worker died, on any host) is failed by the next process that looks
  (``optuna.storages.fail_stale_trials``), and Optuna's
  ``RetryHeartbeatStaleTrialCallback`` queues a copy of it, which the next free process
  takes and resumes from the trial's run directory. On its own host a process sees a dead
  worker at once (its pid is gone) and fails the trial the same way without waiting out
  the grace.

The storage's URL is shown and written only with its password masked.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from bnn_cli.errors import UserError

DEFAULT_GRACE_S = 120
MAX_RETRIES = 3  # a trial whose worker dies this many times stays failed
_CREATE_TRIES = 8
_JOIN_WAIT_S = 60.0


def load_optuna() -> Any:
    try:
        import optuna
    except ImportError:  # (a main dependency; a broken install)
        raise UserError("bnn sweep needs the optuna package: pip install optuna") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ---------------------------------------------------------------------------------------
# The URL, shown without its password
# ---------------------------------------------------------------------------------------


def masked(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


def scrubbed(text: str, url: str) -> str:
    """``text`` (a driver's message may quote the URL) with the URL's password masked."""
    password = re.search(r"//[^/:@]*:([^/@]*)@", url)
    text = text.replace(url, masked(url))
    if password and password.group(1):
        text = text.replace(password.group(1), "***")
    return text


# ---------------------------------------------------------------------------------------
# Opening the storage and the study
# ---------------------------------------------------------------------------------------


def open_storage(url: str, grace: int = DEFAULT_GRACE_S) -> Any:
    """Optuna's ``RDBStorage`` for ``url`` with heartbeats, or a :class:`UserError` that
    names the URL (masked) and the fix. Two processes that open a new database at the same
    moment both create Optuna's tables; the one that loses that race opens it again."""
    optuna = load_optuna()
    import sqlalchemy.exc

    shown = masked(url)
    engine: dict[str, Any] = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                              else {"pool_pre_ping": True})
    if url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
    for attempt in range(_CREATE_TRIES):
        try:
            with _quiet():
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=max(1, grace // 4),
                    grace_period=grace,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRIES, inherit_intermediate_values=True))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == _CREATE_TRIES - 1:
                raise
            time.sleep(random.uniform(0.1, 0.5))  # another process is creating the tables
        except ImportError as exc:  # the database's driver is not installed
            raise UserError(f"cannot open the Optuna storage {shown!r}: its database driver "
                            f"is not installed ({scrubbed(str(exc), url)}); "
                            f"{_driver_fix(url)}") from None
        except Exception as exc:  # noqa: BLE001 - a URL that does not open
            if not type(exc).__module__.startswith(("sqlalchemy", "optuna", "psycopg")):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UserError(f"cannot open the Optuna storage {shown!r}: {type(exc).__name__}: "
                            f"{scrubbed(first, url)[:300]}. Check the URL "
                            "(sqlite:///FILE, postgresql://USER:PASSWORD@HOST:PORT/DB, "
                            "mysql+pymysql://...), that the server is up and takes that user "
                            "and password, and that its driver is installed") from None
    raise AssertionError("unreachable")


def _driver_fix(url: str) -> str:
    """How to install the driver that SQLAlchemy reads ``url`` to need."""
    dialect, _, driver = url.split(":", 1)[0].partition("+")
    if dialect == "postgresql" and driver in ("", "psycopg"):
        # (SQLAlchemy 2.1 reads postgresql:// as psycopg 3, not psycopg2)
        return 'pip install "bnn-cli[postgres]" (psycopg 3, for postgresql:// URLs)'
    if dialect == "mysql" and driver in ("", "pymysql"):
        return "pip install pymysql, and write the URL as mysql+pymysql://USER:PASSWORD@HOST/DB"
    return f"install the Python package of the {driver or dialect} driver"


def join_study(storage: Any, name: str, direction: str, sampler: Any, pruner: Any,
               definition: dict[str, Any], queue: list[dict[str, str]], shown: str) -> Any:
    """Create the study ``name``, or join it if another process (or an earlier sweep)
    created it. The creator queues ``queue`` (a grid's points), then stores
    ``definition``; a joiner waits for the definition and checks that it is the same
    sweep."""
    optuna = load_optuna()
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                    sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                  pruner=pruner)
    else:
        for point in queue:
            study.enqueue_trial(point, user_attrs={"point": point})
        study.set_user_attr("sweep", definition)  # (last: it says the queue is complete)
        return study
    if study.direction.name.lower() != direction:
        raise UserError(f"study {name!r} in {shown} was made to {study.direction.name.lower()}"
                        f" its metric, this sweep would {direction} it; use another --study")
    stored = _wait_for_definition(study, name, shown)
    if stored != definition:
        differs = sorted(k for k in definition if stored.get(k) != definition.get(k))
        raise UserError(f"study {name!r} in {shown} holds another sweep (its "
                        f"{', '.join(differs)} differ{'s' if len(differs) == 1 else ''}: "
                        f"{json.dumps({k: stored.get(k) for k in differs})}). Run that "
                        "sweep's command to continue it, or start this one elsewhere with "
                        "--output DIR (or --study NAME)")
    return study


def _wait_for_definition(study: Any, name: str, shown: str) -> dict[str, Any]:
    """The stored sweep definition, once the study's creator has queued its trials."""
    deadline = time.monotonic() + _JOIN_WAIT_S
    while True:
        stored = study.user_attrs.get("sweep")
        if stored is not None:
            return stored
        if study.get_trials(deepcopy=False) and not _queued_by_bnn(study):
            raise UserError(f"study {name!r} in {shown} was not made by bnn sweep (it has "
                            "trials and no sweep definition); use another --study")
        if time.monotonic() > deadline:
            raise UserError(f"study {name!r} in {shown} exists but its sweep was never set up "
                            f"(its creator stopped within its first moments, {_JOIN_WAIT_S:.0f}"
                            " s ago or more); use another --study, or delete that study with "
                            "optuna delete-study")
        time.sleep(0.2)


def _queued_by_bnn(study: Any) -> bool:
    return all("point" in t.user_attrs for t in study.get_trials(deepcopy=False))


# ---------------------------------------------------------------------------------------
# Who holds a trial
# ---------------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """A process's start time (clock ticks after boot, /proc): with the pid, it names
    one process even after the pid is reused."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - one read of /proc
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def owner() -> dict[str, Any]:
    """This process, as a trial's ``owner`` attribute names it."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid())}


def dead_here(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` names a process of this host that is gone."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    start = holder.get("pid_start")
    return start is not None and _process_start(pid) not in (None, start)


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every interval while the block runs (a thread, so
    that a long wait in the block does not make the trial look dead)."""
    stop = threading.Event()
    storage.record_heartbeat(trial_id)

    def beat() -> None:
        while not stop.wait(storage.get_heartbeat_interval()):
            with contextlib.suppress(Exception):  # (a blip of the database: beat again)
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _never_claimed(trial: Any, grace: int) -> bool:
    """A trial asked for by a process that died before it named itself the owner (and so
    before its first heartbeat)."""
    return not trial.user_attrs.get("owner") and trial.datetime_start is not None and \
        time.time() - trial.datetime_start.timestamp() > grace


def recover(study: Any, grace: int) -> list[int]:
    """Fail the trials whose worker is gone and queue their retries; the failed trials'
    numbers. A worker is gone when its heartbeat is older than the grace period (any
    host), or at once when it was a process of this host that no longer runs."""
    optuna = load_optuna()
    storage = study._storage
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    gone = [t for t in running if dead_here(t.user_attrs.get("owner") or {})
            or _never_claimed(t, grace)]
    failed = []
    for frozen in gone:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(frozen._trial_id,
                                              state=optuna.trial.TrialState.FAIL):
                failed.append(frozen.number)
                storage.get_heartbeat_stale_trial_callback()(
                    study, storage.get_trial(frozen._trial_id))
    before = {t.number for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
    with _quiet():
        optuna.storages.fail_stale_trials(study)
    failed += [t.number for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.FAIL,)) if t.number not in before]
    return failed


def ask(study: Any) -> Any:
    """The next trial: a retry first (a dead worker's trial, whose run directory waits to
    be resumed), else ``study.ask()``: a queued trial (a grid's point) or a new sample. A
    retry is taken as Optuna takes a queued trial, atomically (WAITING -> RUNNING)."""
    optuna = load_optuna()
    TrialState = optuna.trial.TrialState
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if "failed_trial" not in waiting.system_attrs:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if study._storage.set_trial_state_values(waiting._trial_id,
                                                     state=TrialState.RUNNING):
                return optuna.trial.Trial(study, waiting._trial_id)
    with _quiet():
        return study.ask()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without Optuna's warnings that heartbeats are experimental and meant for
    ``Study.optimize`` (the sweep records them itself, around its trial processes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
        warnings.filterwarnings("ignore", category=load_optuna().exceptions.ExperimentalWarning)
        yield


# ---------------------------------------------------------------------------------------
# Which trials are the sweep's
# ---------------------------------------------------------------------------------------


def origin(trial: Any) -> int:
    """The number of the trial that ``trial`` retries (its own if it is no retry): the
    sweep's trial number, its run directory's and its log's, is ``origin + 1``."""
    retried = trial.system_attrs.get("failed_trial")
    return trial.number if retried is None else retried


def retried(trials: list[Any]) -> set[int]:
    """The numbers of the trials that a later trial retries."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def is_surplus(trial: Any) -> bool:
    return bool(trial.user_attrs.get("surplus"))


def sweep_trials(trials: list[Any]) -> list[Any]:
    """The study's trials that are trials of the sweep: not surplus, and not retried by a
    later trial (the retry stands for them)."""
    again = retried(trials)
    return [t for t in trials if not is_surplus(t) and t.number not in again]
