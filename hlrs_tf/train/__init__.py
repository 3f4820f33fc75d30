"""Retraining a derived architecture (``python -m hlrs_tf.train``).

- ``model``: the retraining model (auxiliary head, drop-path, the long-tail losses, BBN).
- ``task``: runs a retraining into a work directory; ``callbacks``: its drop-path and ``alpha_T`` schedules and
  the TensorBoard genotype card (the callbacks every run uses are :mod:`hlrs_tf.runtime.callbacks`).
- ``rebalancing``: post-hoc classifier re-balancing (logit adjustment, tau-normalisation, cRT).
"""
