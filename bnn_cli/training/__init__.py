"""Training: ``loop`` (one ``fit`` per stage, new runs and resumes), ``callbacks`` (the
guard, progress and per-epoch bookkeeping), ``state`` (what a checkpoint saves of the
loop), ``outcomes`` (how a run ends), ``evaluation`` (a checkpoint on a split), ``hparams``
(TensorBoard's HParams).
"""
