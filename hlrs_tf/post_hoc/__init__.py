"""``python -m hlrs_tf.post_hoc``: post-hoc classifier re-balancing of a finished retraining.

The library is :mod:`hlrs_tf.train.rebalancing`.
"""
