"""The DARTS search space.

- ``ops``: the candidate operations; ``genotypes``: the genotype format and its derivation from the alphas.
- ``cells``: the search cell computed edge by edge (the reference); ``fused_cell``: the same cell fused for
  speed; ``partial_channels``: PC-DARTS' channel split and shuffle.
- ``supernet``: the search network; ``derived_network``: the network of a genotype, for retraining.
- ``init``: the reference's (PyTorch) weight initialisation.
"""
