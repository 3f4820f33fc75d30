"""Data: the dataset sources and specs, the long-tailed subsets, samplers and input pipelines, shot metrics.

- ``datasets``: sources (Debian Fashion-MNIST, scikit-learn digits, tfds, npz, folders), the long-tailed
  subset, the class-balanced / reversed samplers of BBN and the search pipeline.
- ``retrain_pipeline``: the retraining pipeline (augmentation, cutout) and the holdout split.
- ``long_tail_metrics``: top-1, per-class and many/medium/few-shot accuracy (no TensorFlow).
"""
