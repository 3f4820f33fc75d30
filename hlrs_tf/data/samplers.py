"""The samplers of the search and retraining streams, as per-class draw probabilities.

:data:`SAMPLERS` names them: ``uniform`` (over instances), ``class_balanced`` (every class alike, the re-sampling
of Kang et al.) and ``reversed`` (BBN's re-balancing branch, class ``i`` in proportion to ``N_max / N_i``);
:func:`class_sampling_probs` gives their per-class probabilities. The tf.data stream that draws by them,
:func:`hlrs_tf.data.pipeline.class_sampler_stream`, lives with the other streams in :mod:`hlrs_tf.data.pipeline`.

NumPy only. The configs (:mod:`hlrs_tf.config.search`, :mod:`hlrs_tf.config.flags`) take the choices of
``--weight_sampler`` and ``--arch_sampler`` from :data:`SAMPLERS`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLERS", "class_sampling_probs"]


SAMPLERS = ("uniform", "class_balanced", "reversed")


def class_sampling_probs(counts, sampler: str) -> np.ndarray:
    """Per-class draw probabilities of a sampler, from the class counts of the split it draws from.

    * ``uniform``: over instances, so class ``i`` gets ``N_i / N``.
    * ``class_balanced``: every class present gets ``1 / C`` (re-sampling, Kang et al.).
    * ``reversed``: ``N_max / N_i``, normalised -- BBN's re-balancing branch sampler, which favours the tail.

    Classes absent from the split get probability 0 under every sampler.

    Args:
        counts: Examples per class.
        sampler: One of :data:`SAMPLERS`.

    Returns:
        ``float64 [C]`` probabilities summing to 1.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("cannot sample from an empty split")
    if sampler == "uniform":
        w = counts
    elif sampler == "class_balanced":
        w = present.astype(np.float64)
    else:
        w = np.where(present, counts.max() / np.maximum(counts, 1.0), 0.0)
    return w / w.sum()
