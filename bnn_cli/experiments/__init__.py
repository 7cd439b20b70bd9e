"""Experiments: many runs of one config and what they show together.

``space`` reads a sweep's ``KEY=V1,V2`` and ``KEY=loguniform(a,b)`` arguments and checks
every config they make; ``sweep`` runs the trials with Optuna (``bnn sweep``), each an
ordinary run directory trained by a ``python -m bnn_cli --child-of PID train`` process;
``table`` is ``bnn runs`` (one row per run directory, and what differs from its
siblings); ``compare`` is ``bnn compare``; ``configs``, runs' configs side by side. The
pictures are drawn in :mod:`bnn_cli.plots`.
"""
