"""``python -m hlrs_tf.tune``: hyper-parameter tuning (library: :mod:`hlrs_tf.experiments.tuning`)."""
