"""A checked config -> what runs: ``check`` (the config with its data, stages and teachers
checked: a ``CheckedConfig``), ``model`` (the Keras model and optimizer), ``strategy``
(tf.distribute), ``mixed_precision``, ``distillation`` (the distilling trainer), ``job``
(model + optimizer + checkpoint of one run), ``report`` (what ``bnn check`` prints),
``deployability`` (LCE's conversion rules), ``vetting`` (model files from elsewhere, read
without running their code).
"""
