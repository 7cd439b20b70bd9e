"""``bnn eval``: a run directory, a checkpoint or a model file -> metrics on a split.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bnn_cli.assemble.check import load_run_config
from bnn_cli.config.monitor import selection
from bnn_cli.config.schema import Config
from bnn_cli.deploy.targets import TargetOptions, resolve
from bnn_cli.errors import UserError
from bnn_cli.rundir.run import Checkpoint, RunDir
from bnn_cli.training.evaluation import EvalReport, evaluate, evaluate_checkpoint


def evaluate_target(target: str | Path, options: TargetOptions, *,
                    split: str | None = None) -> EvalReport:
    """Evaluate a run directory / checkpoint / model file; write results into the run."""
    found = resolve(target, options)
    job, run, ckpt = found.job, found.run, found.checkpoint
    split = split or job.config.spec.data.test_split
    if ckpt is None:
        return evaluate(job.scoring_model, job.config, job.data_dir, split, run, str(target), None,
                         None)
    target = Path(target)
    named = target.stem if target.name in ("best.json", "last.json") else options.checkpoint
    pointer = _pointer_naming(run, ckpt, prefer=named)
    selected = None
    if pointer == "best":
        selected = selection(found.run_config or _stored_run_config(run, options.trust_plugins)
                             or job.config)
    return evaluate_checkpoint(job, ckpt, split, str(target), pointer, selected)


def _pointer_naming(run: RunDir, checkpoint: Checkpoint, *, prefer: str) -> str | None:
    """Which pointer (``prefer`` first, then the other) names ``checkpoint``, or None."""
    return next((which for which in (prefer, *({"best", "last"} - {prefer}))
                 if run.pointed(which) == checkpoint.path.name), None)


def _stored_run_config(run: RunDir, trust_plugins: bool) -> Config | None:
    """The run's own config (for how its checkpoints were chosen), or None if unreadable
    (or if it names plugins that are not trusted)."""

    with contextlib.suppress(UserError):
        return load_run_config(run, trust_plugins=trust_plugins).final.config
    return None
