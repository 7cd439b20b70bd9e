"""The run directory: ``run`` (atomic files, the lock, checkpoints and their pointers,
metrics history, the run's config files, discovery) and ``record`` (``run.json``, typed).
"""
