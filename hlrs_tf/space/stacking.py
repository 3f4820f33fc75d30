"""How DARTS stacks its cells, shared by the supernet and the derived network: one place for each rule.

Follows the reference quark0/darts ``cnn/model_search.py`` (``Network.__init__``, ``Cell.__init__``) and
``cnn/model.py`` (``NetworkCIFAR``, ``Cell``):

* the stem: a 3x3 convolution to ``stem_multiplier * C`` channels and a batch norm;
* ``L`` cells, the reduction cells at ``L // 3`` and ``2L // 3``, each doubling the channels;
* every cell preprocesses its two inputs (the outputs of cells ``k-2`` and ``k-1``) to its own channel count:
  a ``FactorizedReduce`` of input ``k-2`` when cell ``k-1`` reduced (so both inputs have the same size), a
  ReLU-1x1 conv-BN otherwise, and a ReLU-1x1 conv-BN of input ``k-1``. The search cell's BNs have no affine
  parameters (``affine=False`` in ``model_search.py``), the derived cell's have (``model.py``).

The cell's edges (node ``j`` reads all ``2 + j`` earlier states) are :func:`hlrs_tf.space.genotypes.edge_pairs`.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras

from hlrs_tf.space import ops as darts_ops

__all__ = ["cell_layout", "preprocess_inputs", "reduction_layers", "stem_layers"]


def reduction_layers(layers: int) -> tuple[int, int]:
    """Indices of the reduction cells among ``layers`` cells (the reference's ``L//3`` and ``2L//3``)."""
    return (layers // 3, 2 * layers // 3)


def cell_layout(layers: int, channels: int) -> Iterator[tuple[int, int, bool, bool]]:
    """``(index, channels, reduction, reduction_prev)`` of every cell: ``channels`` (the reference's ``C``)
    doubled at each reduction cell."""
    c_curr, reduction_prev = channels, False
    for i in range(layers):
        reduction = i in reduction_layers(layers)
        if reduction:
            c_curr *= 2
        yield i, c_curr, reduction, reduction_prev
        reduction_prev = reduction


def stem_layers(channels: int, stem_multiplier: int) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """The stem's 3x3 convolution (no bias) to ``stem_multiplier * channels`` and its batch norm (affine, the
    reference's ``BatchNorm2d`` default in both networks), named ``stem_conv`` and ``stem_bn``."""
    conv = keras.layers.Conv2D(stem_multiplier * channels, 3, padding="same", use_bias=False, name="stem_conv")
    return conv, darts_ops.batch_norm(affine=True, name="stem_bn")


def preprocess_inputs(channels: int, reduction_prev: bool, affine: bool):
    """A cell's ``preprocess0`` (input ``k-2``) and ``preprocess1`` (input ``k-1``), both to ``channels``.

    Args:
        channels: The cell's channels.
        reduction_prev: Whether cell ``k-1`` reduced (then input ``k-2`` is twice as large: ``FactorizedReduce``).
        affine: Affine BNs (the derived cell) or not (the search cell).
    """
    if reduction_prev:
        preprocess0 = darts_ops.FactorizedReduce(channels, affine=affine, name="preprocess0")
    else:
        preprocess0 = darts_ops.ReLUConvBN(channels, 1, 1, affine=affine, name="preprocess0")
    return preprocess0, darts_ops.ReLUConvBN(channels, 1, 1, affine=affine, name="preprocess1")
