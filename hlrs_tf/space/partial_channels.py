"""PC-DARTS: partial channel connections and edge normalisation (Xu et al., ICLR 2020).

Followed: ``yuhuixu1993/PC-DARTS``, ``model_search.py`` (``channel_shuffle``, ``MixedOp.forward``,
``Cell.forward``, the ``weights2`` construction in ``Network.forward`` and ``Network.genotype``).

* **Partial channels.** Each mixed op of a search cell sees only the first ``C // K`` channels of its edge
  input (``xtemp``); the other ``C - C // K`` (``xtemp2``) bypass the op -- unchanged on a stride-1 edge,
  through a 2x2 max pool with stride 2 on the strided edges of a reduction cell. The edge output is
  ``channel_shuffle(concat([mixed_op(xtemp), bypass(xtemp2)]), K)``, so the next cell's slice sees other
  channels. The reference fixes the slice to the first channels and relies on the shuffle (its paper says
  "sampled"; the code does not sample), and so does this module. Every op, and so every weight of the mixed
  ops, has ``C // K`` channels: memory and compute of the mixed ops drop by ~K.
* **Edge normalisation.** One learnable ``beta`` per edge; node ``j`` sums its incoming edges weighted by the
  softmax of its edges' betas (:func:`edge_weights`). The betas are architecture variables (the alphas'
  optimiser, decay and schedule), and the derivation ranks a node's edges by ``softmax(beta)_e * max non-none
  softmax(alpha)_e`` (:func:`hlrs_tf.space.genotypes.derive_genotype`).

Departures from the reference:

* The reference hard-codes ``K = 4`` (``self.k = 4``, ``channel_shuffle(ans, 4)``); here ``K`` is
  ``--partial_channels`` and ``K = 1`` is plain DARTS (no slice, no shuffle, no betas), bit for bit.
* On an odd-sized map the reference's bypass pool (``nn.MaxPool2d(2, 2)``, floor) and its ops (ceil) disagree in
  size and ``torch.cat`` fails; here the bypass pool pads like TF's "SAME" (ceil), which on even maps -- all the
  reduction inputs of 32x32 and 28x28 images -- is the reference's pool exactly.
"""

from __future__ import annotations

import tensorflow as tf

from hlrs_tf.space.genotypes import node_edge_slices

__all__ = ["channel_shuffle", "split_channels", "bypass", "edge_weights", "check_partial_channels"]


def check_partial_channels(channels: int, k: int, reduction: bool = False) -> None:
    """Refuses a ``K`` that a cell (or, with ``reduction=False``, a supernet) with ``channels`` cannot use.

    A mixed op works on ``channels // K`` channels and the shuffle regroups all ``channels`` into ``K`` groups,
    so ``K`` must divide ``channels``. On the strided edges of a reduction cell ``skip_connect`` is a
    FactorizedReduce, which halves its ``channels // K`` channels, so there they must be even too. A supernet
    with ``C % K == 0`` satisfies both everywhere (its reduction cells have ``2C`` and ``4C`` channels), as in
    the reference, where e.g. ``C = 12``, ``K = 4`` works (3 channels per op in the normal cells).

    Raises:
        ValueError: The message names ``partial_channels`` and what is allowed.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"partial_channels must be an integer >= 1 (1 = DARTS), got {k!r}")
    if k == 1:
        return
    if channels % k:
        raise ValueError(f"partial_channels={k} does not divide channels={channels}: each mixed op works on "
                         f"channels // partial_channels of them (e.g. partial_channels=4 with channels=8, 12, 16)")
    if reduction and (channels // k) % 2:
        raise ValueError(f"partial_channels={k} leaves {channels // k} channels per op in a reduction cell of "
                         f"{channels} channels: the strided skip_connect (FactorizedReduce) needs an even number")


def split_channels(x, k: int):
    """``(x[..., :C // k], x[..., C // k:])``: the channels the mixed op sees, and the bypassed ones (NHWC).

    One ``SplitV``, whose gradient is one concatenation; two slices would each have a ``StridedSliceGrad``
    that writes its part into a zero tensor of the full size (17% of a K=4 step at the paper size).
    """
    c = int(x.shape[-1])
    return tuple(tf.split(x, [c // k, c - c // k], axis=-1))


def bypass(x, stride: int):
    """The bypassed channels of an edge: unchanged at stride 1, a 2x2 max pool with stride 2 otherwise."""
    if stride == 1:
        return x
    return tf.nn.max_pool2d(x, 2, 2, padding="SAME")


def channel_shuffle(x, groups: int):
    """The reference's ``channel_shuffle`` on NHWC: channel ``g * (C // groups) + i`` goes to ``i * groups + g``.

    (NCHW ``view(B, groups, C // groups, H, W).transpose(1, 2)``, written for channels-last.)
    """
    if groups == 1:
        return x
    shape = tf.shape(x)
    c = int(x.shape[-1])
    y = tf.reshape(x, tf.concat([shape[:3], [groups, c // groups]], 0))
    y = tf.transpose(y, [0, 1, 2, 4, 3])
    return tf.reshape(y, shape)


def edge_weights(betas, steps: int = 4):
    """Softmax of the betas over each node's incoming edges (the reference's ``weights2``), ``(num_edges,)``."""
    return tf.concat([tf.nn.softmax(betas[node]) for node in node_edge_slices(steps)], axis=0)
