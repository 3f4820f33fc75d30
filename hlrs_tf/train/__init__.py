"""Retraining a derived architecture (``python -m hlrs_tf.train``).

- ``model``: the retraining model (auxiliary head, drop-path, the long-tail losses, BBN).
- ``task``: runs a retraining into a work directory; ``callbacks``: its per-epoch callbacks.
- ``rebalancing``: post-hoc classifier re-balancing (logit adjustment, tau-normalisation, cRT).
"""
