"""``python -m hlrs_tf.compare``: the method comparison (library: :mod:`hlrs_tf.experiments.comparison`)."""
