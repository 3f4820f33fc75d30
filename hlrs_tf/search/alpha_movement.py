"""How far the DARTS architecture parameters (alphas) have moved away from uniform.

At initialisation the alphas are ``1e-3 * N(0, 1)``, so every edge's softmax is almost uniform (``1 / num_ops``)
and the genotype derived from them is chosen by initialisation noise. Two numbers say whether a search has
moved the architecture:

* ``alpha_max_softmax``: the mean over edges of the largest softmax weight of the edge. ``1 / num_ops``
  (``alpha_uniform``, 0.125 for the 8 DARTS primitives) means no preference at all; 1 means every edge has
  picked one op. It is reported per cell type (``_normal``, ``_reduce``) and over the edges of both cells.
* ``alpha_range``: ``max - min`` of the raw alphas (per cell type and over both), 0 for uniform alphas. The
  softmax is shift-invariant per edge, so this is a scale of the logits rather than a preference; it shows
  whether the arch optimiser moves them at all (Adam moves each alpha by at most ~lr per step).

Pure numpy, so tests and analysis scripts can use it without TensorFlow. The BBN supernet
(:mod:`hlrs_tf.search.bbn`) shares the alphas of a cell type between its two branch cells, so it has the same two
arrays as the plain supernet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hlrs_tf.space.genotypes import node_edge_slices

__all__ = ["alpha_movement", "edge_max_weight", "ALPHA_MOVEMENT_KEYS"]

#: The keys of :func:`alpha_movement`, in the order they are reported.
ALPHA_MOVEMENT_KEYS = (
    "alpha_max_softmax",
    "alpha_max_softmax_normal",
    "alpha_max_softmax_reduce",
    "alpha_uniform",
    "alpha_range",
    "alpha_range_normal",
    "alpha_range_reduce",
)


def _check(alphas: Any, name: str) -> np.ndarray:
    arr = np.asarray(alphas, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty (edges, ops) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=-1, keepdims=True))  # shifted: no overflow for large alphas
    return e / e.sum(axis=-1, keepdims=True)


def alpha_movement(alphas_normal: Any, alphas_reduce: Any) -> dict[str, float]:
    """Alpha-movement metrics of the normal and reduction cell alphas.

    Args:
        alphas_normal: Raw (pre-softmax) alphas of the normal cell, ``(edges, ops)``.
        alphas_reduce: Raw alphas of the reduction cell, ``(edges, ops)``, the same number of ops.

    Returns:
        Plain floats under :data:`ALPHA_MOVEMENT_KEYS`: ``alpha_max_softmax{,_normal,_reduce}`` (mean over
        edges of the largest softmax weight; the combined value is the mean over the edges of both cells),
        ``alpha_uniform`` (``1 / num_ops``, what ``alpha_max_softmax`` is for uniform alphas) and
        ``alpha_range{,_normal,_reduce}`` (``max - min`` of the raw alphas).

    Raises:
        ValueError: An array is not a non-empty 2-D array of finite values, or the two differ in ops.
    """
    normal = _check(alphas_normal, "alphas_normal")
    reduce = _check(alphas_reduce, "alphas_reduce")
    if normal.shape[1] != reduce.shape[1]:
        raise ValueError(
            f"alphas_normal and alphas_reduce differ in ops: {normal.shape[1]} vs {reduce.shape[1]}"
        )
    max_n = _softmax(normal).max(axis=-1)
    max_r = _softmax(reduce).max(axis=-1)
    both = np.concatenate([normal.ravel(), reduce.ravel()])
    return {
        "alpha_max_softmax": float(np.concatenate([max_n, max_r]).mean()),
        "alpha_max_softmax_normal": float(max_n.mean()),
        "alpha_max_softmax_reduce": float(max_r.mean()),
        "alpha_uniform": 1.0 / normal.shape[1],
        "alpha_range": float(both.max() - both.min()),
        "alpha_range_normal": float(normal.max() - normal.min()),
        "alpha_range_reduce": float(reduce.max() - reduce.min()),
    }


def edge_max_weight(edge_weights: Any, steps: int = 4) -> float:
    """PC-DARTS: the mean over nodes of the largest normalised edge weight (softmaxed betas of a node's edges).

    Uniform edge weights give ``mean_j 1 / (2 + j)`` (0.3208 for 4 nodes); 1 means every node has put all its
    weight on one input.

    Args:
        edge_weights: ``(num_edges,)`` edge weights, node by node (2, 3, 4, ... edges).
        steps: Number of intermediate nodes.
    """
    w = np.asarray(edge_weights, dtype=np.float64)
    nodes = node_edge_slices(steps)
    if w.shape != (nodes[-1].stop,) or not np.all(np.isfinite(w)):
        raise ValueError(f"edge_weights must be a finite ({nodes[-1].stop},) array, got {w.shape}")
    return float(np.mean([w[node].max() for node in nodes]))
