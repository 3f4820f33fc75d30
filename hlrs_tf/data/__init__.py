"""Data: the dataset specs and sources, the long-tailed subsets, samplers and input pipelines, shot metrics.

- ``spec``: :class:`DatasetSpec`, :class:`ArrayDataset`, :class:`DatasetError` and the hard-coded specs of the
  known datasets (no TensorFlow).
- ``sources``: :func:`load_dataset` and :func:`dataset_spec` over the sources (Debian Fashion-MNIST, scikit-learn
  digits, tfds, npz, folders), with the one validation every source passes.
- ``long_tail``: the long-tail profile and subset, the stratified search split and the retraining's holdout
  split, the class-count check (NumPy only).
- ``samplers``: the uniform / class-balanced / reversed (BBN) samplers as per-class probabilities (NumPy only).
- ``pipeline``: the tf.data pipelines: normalisation and augmentation, the search streams of every sampler, the
  evaluation batches, and the retraining stream with cutout.
- ``long_tail_metrics``: top-1, per-class and many/medium/few-shot accuracy (no TensorFlow).
"""
