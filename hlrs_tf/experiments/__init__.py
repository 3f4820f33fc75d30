"""Experiments over many runs.

- ``comparison``: the method comparison (``python -m hlrs_tf.compare``); ``tuning``: hyper-parameter tuning
  (``python -m hlrs_tf.tune``); ``stats``: paired differences and their confidence intervals.
"""
