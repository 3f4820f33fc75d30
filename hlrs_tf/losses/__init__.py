"""Long-tail losses.

- ``reweighting``: class-weighted cross-entropy and the effective-number weights (class-balanced loss).
- ``long_tail``: logit-adjusted, balanced-softmax, LDAM-DRW, focal and class-balanced focal losses, and DRW's
  per-epoch switch.
- ``bbn_mixing``: BBN's mixing factor ``alpha_T``, mixed feature and mixed loss (the search and the retraining).
"""
