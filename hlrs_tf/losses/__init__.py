"""Long-tail losses.

- ``reweighting``: class-weighted cross-entropy and the effective-number weights (class-balanced loss).
- ``long_tail``: logit-adjusted, balanced-softmax, LDAM-DRW, focal and class-balanced focal losses.
"""
