"""The architecture search (``python -m hlrs_tf.search``).

- ``bilevel``: the DARTS model, first- and second-order bilevel step; ``bbn``: the Bilateral-Branch supernet
  and loss.
- ``schedules``: HLRS, the architecture learning rate per epoch (BBN's alpha_T is
  :mod:`hlrs_tf.losses.bbn_mixing`).
- ``collapse`` and ``guards``: skip-connection collapse guards and the non-finite-loss guard;
  ``alpha_movement``: how far the alphas moved.
- ``task``: runs a search into a work directory; ``callbacks``: the HLRS schedule, genotype, alpha-movement and
  alpha-heatmap callbacks (the callbacks every run uses are :mod:`hlrs_tf.runtime.callbacks`).
"""
