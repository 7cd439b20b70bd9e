"""After training: ``targets`` (what ``bnn eval``/``export``/``predict`` are pointed at,
resolved once), ``evaluate``, ``export`` (each inference format, checked against the
trained model; ``lce_check``, the LCE file against ``bnn check``'s prediction),
``runtimes`` (each file run as a device runs it), ``predict``, ``latency``
(``bnn benchmark-model``).
"""
