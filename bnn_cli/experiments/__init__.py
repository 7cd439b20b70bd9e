"""Experiments: many runs of one config and what they show together.

``space`` reads a sweep's ``KEY=V1,V2`` and ``KEY=loguniform(a,b)`` arguments and checks
every config they make; ``sweep`` runs the trials with Optuna (``bnn sweep``), each an
ordinary run directory trained by a ``bnn train`` process; ``table`` is ``bnn runs`` (one
row per run directory, and what distinguishes it from its siblings); ``compare`` is
``bnn compare``; ``hparams`` writes a run's hyperparameters for TensorBoard's HParams
dashboard. The pictures are drawn in :mod:`bnn_cli.plots`.
"""
