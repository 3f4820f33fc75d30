"""Mixed operation and search cell of DARTS, as Keras layers.

A search cell has two inputs (``s0`` from cell k-2, ``s1`` from cell k-1), ``steps`` intermediate nodes and
one mixed op per edge: node j sums a mixed op over all ``2 + j`` earlier states, 14 edges for 4 nodes, in the
order (node 0: s0, s1), (node 1: s0, s1, n0), ... -- the row order of the ``(14, 8)`` alpha tensor. The cell
output is the channel concatenation of the last ``multiplier`` nodes.

With ``partial_channels=K > 1`` the cells are PC-DARTS cells (:mod:`hlrs_tf.space.partial_channels`): each mixed op
works on ``C // K`` channels of its input and the rest bypass it, and each node weights its incoming edges by
the softmax of their betas (``edge_weights``).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from hlrs_tf.space import ops as darts_ops
from hlrs_tf.space import partial_channels as pc
from hlrs_tf.space.genotypes import PRIMITIVES, edge_pairs
from hlrs_tf.space.ops import CompositeLayer
from hlrs_tf.space.stacking import preprocess_inputs


def add_n(tensors):
    """Sum of a list of same-shape tensors as one op (stack + sum would add a copy and its gradient)."""
    return tensors[0] if len(tensors) == 1 else tf.add_n(tensors)


@keras.saving.register_keras_serializable(package="hlrs_tf")
class MixedOp(CompositeLayer):
    """``sum_o w_o * o(x)`` over the candidate ops of one edge.

    ``none`` is not instantiated (its term is zero). The ReLU that starts the conv ops (and the
    FactorizedReduce of a strided ``skip_connect``) is computed once and shared.

    With ``partial_channels=K > 1``, PC-DARTS' ``MixedOp`` (``model_search.py``): the ops see the first
    ``channels // K`` channels, the others bypass them (:func:`hlrs_tf.space.partial_channels.bypass`), and the
    output is ``channel_shuffle(concat([mixed, bypassed]), K)``.

    Args:
        channels: Channels of the edge.
        strides: 1, or 2 for the input edges of a reduction cell.
        primitives: Candidate op names; the weight vector passed to ``call`` is indexed the same way.
        partial_channels: PC-DARTS' ``K`` (1: DARTS).
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, channels: int, strides: int = 1, primitives=PRIMITIVES, partial_channels: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        self.channels, self.strides, self.primitives = channels, strides, tuple(primitives)
        self.partial_channels = int(partial_channels)
        op_channels = channels // self.partial_channels
        self._relu_first = []  # per op (index into primitives, layer, takes relu(x))
        self.candidate_ops = []
        for i, name in enumerate(self.primitives):
            if name == "none":
                continue
            shares_relu = name in darts_ops.RELU_FIRST or (name == "skip_connect" and strides > 1)
            layer = darts_ops.make_op(
                name, op_channels, strides, affine=False, search=True, apply_relu=not shares_relu, layer_name=name
            )
            self.candidate_ops.append(layer)
            self._relu_first.append((i, shares_relu))

    def call(self, x, weights, training=None):
        """Mixes the candidate ops.

        Args:
            x: Edge input, ``(B, H, W, C)``.
            weights: Softmaxed op weights of this edge, shape ``(len(primitives),)``.
            training: BN mode.
        """
        k = self.partial_channels
        x, bypassed = pc.split_channels(x, k) if k > 1 else (x, None)
        relu_x = ops.relu(x) if any(s for _, s in self._relu_first) else None
        w = tf.unstack(weights)  # one op, instead of one slice per candidate
        terms = []
        for (i, shares_relu), op in zip(self._relu_first, self.candidate_ops):
            out = op(relu_x if shares_relu else x, training=training)
            terms.append(w[i] * out)
        mixed = add_n(terms)
        if k == 1:
            return mixed
        bypassed = tf.cast(pc.bypass(bypassed, self.strides), mixed.dtype)
        return pc.channel_shuffle(ops.concatenate([mixed, bypassed], axis=-1), k)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "strides": self.strides,
            "primitives": list(self.primitives),
            "partial_channels": self.partial_channels,
        }


class SearchCellConfig:
    """``get_config`` of the search-cell implementations (this module's and :mod:`hlrs_tf.space.fused_cell`'s), which
    share their constructor arguments. Mix in before the Keras layer base."""

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "reduction": self.reduction,
            "reduction_prev": self.reduction_prev,
            "steps": self.steps,
            "multiplier": self.multiplier,
            "primitives": list(self.primitives),
            "partial_channels": self.partial_channels,
        }


@keras.saving.register_keras_serializable(package="hlrs_tf")
class SearchCell(SearchCellConfig, CompositeLayer):
    """A DARTS search cell (normal or reduction) whose edges are mixed ops.

    Args:
        channels: Channels C of each node.
        reduction: Reduction cell (input edges strided by 2).
        reduction_prev: The previous cell was a reduction cell (``s0`` then needs a FactorizedReduce).
        steps: Intermediate nodes (4).
        multiplier: Nodes concatenated into the output (4).
        primitives: Candidate op names.
        partial_channels: PC-DARTS' ``K`` (1: DARTS; :mod:`hlrs_tf.space.partial_channels`).
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(
        self, channels, reduction, reduction_prev, steps=4, multiplier=4, primitives=PRIMITIVES,
        partial_channels=1, **kwargs
    ):
        super().__init__(**kwargs)
        pc.check_partial_channels(channels, partial_channels, reduction)
        self.channels, self.reduction, self.reduction_prev = channels, reduction, reduction_prev
        self.steps, self.multiplier, self.primitives = steps, multiplier, tuple(primitives)
        self.partial_channels = int(partial_channels)
        self.preprocess0, self.preprocess1 = preprocess_inputs(channels, reduction_prev, affine=False)
        self.edges = []
        for j, i in edge_pairs(steps):
            strides = 2 if reduction and i < 2 else 1
            self.edges.append(MixedOp(channels, strides, self.primitives, self.partial_channels,
                                      name=f"edge_{j}_{i}"))

    def call(self, s0, s1, weights, edge_weights=None, training=None):
        """Runs the cell.

        Args:
            s0: Output of cell k-2.
            s1: Output of cell k-1.
            weights: Softmaxed alphas of this cell type, ``(num_edges, len(primitives))``.
            edge_weights: PC-DARTS' normalised edge weights ``(num_edges,)``
                (:func:`hlrs_tf.space.partial_channels.edge_weights`), or ``None`` (DARTS: every edge weighs 1).
            training: BN mode.
        """
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        rows = tf.unstack(weights)
        betas = None if edge_weights is None else tf.unstack(edge_weights)
        offset = 0
        for _ in range(self.steps):
            node = [self.edges[offset + i](h, rows[offset + i], training=training) for i, h in enumerate(states)]
            if betas is not None:
                node = [tf.cast(betas[offset + i], out.dtype) * out for i, out in enumerate(node)]
            offset += len(states)
            states.append(add_n(node))
        return ops.concatenate(states[-self.multiplier :], axis=-1)

