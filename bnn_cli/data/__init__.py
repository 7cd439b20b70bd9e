"""The data: ``pipeline`` (a TFDS dataset opened, split, preprocessed, augmented and
batched, each epoch drawn from ``(seed, epoch)``) and ``digits`` (the embedded default,
scikit-learn's digits through a real TFDS builder).
"""
