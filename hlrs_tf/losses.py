"""Re-weighting for long-tailed data: class-balanced loss weights from the effective number of samples.

Cui et al., "Class-Balanced Loss Based on Effective Number of Samples" (CVPR 2019): the effective number of
class ``i`` is ``E_i = (1 - beta^N_i) / (1 - beta)``; its weight is ``1 / E_i``, normalised so the weights sum
to the number of classes. The loss is the per-example cross-entropy scaled by the weight of its class and
averaged over the batch (their official TensorFlow code's reduction). SPEC.md section 7 uses
``beta = 0.9999`` for the ``darts_reweight`` method.
"""

from __future__ import annotations

import numpy as np


def effective_number_weights(counts, beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights ``(1 - beta) / (1 - beta^N_i)``, normalised to sum to ``C``.

    Args:
        counts: Training examples per class (all classes; a class with 0 examples gets weight 0).
        beta: The effective-number hyperparameter in ``[0, 1)``; 0 gives equal weights.

    Returns:
        ``float64 [C]`` weights.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"--reweight_beta must be in [0, 1), got {beta}")
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"class counts must be a non-empty vector of counts >= 0, got {counts.tolist()}")
    present = counts > 0
    effective = np.where(present, (1.0 - np.power(beta, counts)) / (1.0 - beta), 1.0)
    w = np.where(present, 1.0 / effective, 0.0)
    return w * (len(counts) / w.sum())
