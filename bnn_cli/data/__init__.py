"""The data: ``sources`` (a TFDS dataset, a TFDS dataset directory, or a ``folder`` of
images by class, opened and checked), ``steps`` (the config's preprocessing and
augmentation, per example or per batch), ``images`` (decode-and-crop, crops, resizes,
flips, colour noise), ``pipeline`` (a split read, cached, shuffled, augmented and batched,
each epoch drawn from ``(seed, epoch)``) and ``digits`` (the embedded default,
scikit-learn's digits through a real TFDS builder).
"""
