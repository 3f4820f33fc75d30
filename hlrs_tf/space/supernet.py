"""The DARTS search network (supernet) as a Keras layer, with its architecture parameters.

Stem 3x3 conv to ``stem_multiplier * C`` channels + BN; ``layers`` search cells with reduction cells (channels
doubled) at ``layers // 3`` and ``2 * layers // 3``; global average pool; linear classifier. All normal cells
share one ``(14, 8)`` alpha tensor and all reduction cells another, initialised ``1e-3 * N(0, 1)`` as in the
reference. With C=16, 8 cells, 10 classes and 32x32x3 input it has exactly 1,930,618 trainable weights
(alphas excluded), the reference count.

With ``partial_channels=K > 1`` it is the PC-DARTS supernet (:mod:`hlrs_tf.space.partial_channels`): the mixed ops
work on ``C // K`` channels, and two more architecture tensors, ``betas_normal`` and ``betas_reduce`` (one beta
per edge, ``1e-3 * N(0, 1)`` as in the PC-DARTS reference), weight each node's incoming edges.

The alphas are ordinary (trainable) Keras weights of this layer, named ``alphas_normal`` and
``alphas_reduce``; :func:`split_variables` separates them from the network weights by identity, so the SGD
optimizer never sees them (docs/method.md T4).

Precision: ``dtype`` (a Keras dtype policy, e.g. ``"mixed_bfloat16"``; :mod:`hlrs_tf.runtime.precision`) is handed to
every sub-layer; the alphas, their softmax and the classifier (so the logits) stay float32.
"""

from __future__ import annotations

import keras
from keras import ops

from hlrs_tf.runtime.precision import policy_scope
from hlrs_tf.space import partial_channels as pc
from hlrs_tf.space.cells import SearchCell
from hlrs_tf.space.fused_cell import FusedSearchCell
from hlrs_tf.space.genotypes import PRIMITIVES, Genotype, derive_genotype, num_edges
from hlrs_tf.space.ops import CompositeLayer
from hlrs_tf.space.stacking import cell_layout, stem_layers

# How the cells are computed: "fused" (fast; stacked parameters, shared work) or "direct" (one Keras layer per
# candidate op of every edge, as in the reference; the oracle the fused cell is tested against). Same function,
# same parameter count; the variable layouts differ, so checkpoints do not transfer between them.
CELL_IMPLEMENTATIONS = {"fused": FusedSearchCell, "direct": SearchCell}


@keras.saving.register_keras_serializable(package="hlrs_tf")
class SearchNetwork(CompositeLayer):
    """DARTS supernet with shared per-cell-type alphas.

    Args:
        channels: Initial channels C (16 in the paper).
        num_classes: Output classes.
        layers: Number of cells L (8 in the paper); at least 3 so both reductions are distinct cells.
        steps: Intermediate nodes per cell (4).
        multiplier: Nodes concatenated per cell output (4).
        stem_multiplier: Stem channels = ``stem_multiplier * C`` (3).
        primitives: Candidate op names (the reference order).
        cell_impl: ``"fused"`` (default, fast) or ``"direct"`` (per-edge layers; see
            :data:`CELL_IMPLEMENTATIONS`).
        partial_channels: PC-DARTS' ``K``: the mixed ops see ``C // K`` channels and the edges of a node are
            weighted by softmaxed betas; 1 (default) is DARTS.
        **kwargs: Forwarded to ``keras.layers.Layer``; ``dtype`` (a dtype policy) applies to every sub-layer
            but the classifier.
    """

    def __init__(
        self,
        channels: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        primitives=PRIMITIVES,
        cell_impl: str = "fused",
        partial_channels: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if cell_impl not in CELL_IMPLEMENTATIONS:
            raise ValueError(f"cell_impl must be one of {sorted(CELL_IMPLEMENTATIONS)}, got {cell_impl!r}")
        self.cell_impl = cell_impl
        pc.check_partial_channels(channels, partial_channels)  # before any layer: C, 2C and 4C all fit then
        self.partial_channels = int(partial_channels)
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (two reduction cells at L//3 and 2L//3), got {layers}")
        self.channels, self.num_classes, self.num_layers = channels, num_classes, layers
        self.steps, self.multiplier, self.stem_multiplier = steps, multiplier, stem_multiplier
        self.primitives = tuple(primitives)
        # Every sub-layer gets this network's dtype policy (Keras gives a layer the global one); the scope
        # restores the global policy afterwards.
        with policy_scope(self.dtype_policy):
            self._build_layers(channels, layers, steps, multiplier, stem_multiplier)

        shape = (num_edges(steps), len(self.primitives))
        init = keras.initializers.RandomNormal(stddev=1e-3)
        # Not autocast: the alphas and their softmax are float32 under mixed precision too.
        self.alphas_normal = self.add_weight(name="alphas_normal", shape=shape, initializer=init, autocast=False)
        self.alphas_reduce = self.add_weight(name="alphas_reduce", shape=shape, initializer=init, autocast=False)
        self.betas_normal = self.betas_reduce = None
        if self.partial_channels > 1:  # PC-DARTS' edge normalisation (its reference: 1e-3 * randn(14))
            self.betas_normal = self.add_weight(name="betas_normal", shape=shape[:1], initializer=init,
                                                autocast=False)
            self.betas_reduce = self.add_weight(name="betas_reduce", shape=shape[:1], initializer=init,
                                                autocast=False)

    def _build_layers(self, channels, layers, steps, multiplier, stem_multiplier):
        # The reference search stem uses BatchNorm2d's default affine=True: part of the 1,930,618 count.
        self.stem_conv, self.stem_bn = stem_layers(channels, stem_multiplier)
        self.cells = []
        for i, c_curr, reduction, reduction_prev in cell_layout(layers, channels):
            self.cells.append(self.make_cell(c_curr, reduction, reduction_prev, name=f"cell_{i}"))
        self.feature_dim = multiplier * c_curr
        # float32 under any policy: logits and loss in float32 (Keras' practice for the output layer).
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier", dtype="float32")

    @property
    def cell_class(self):
        """The layer class of the cells (:data:`CELL_IMPLEMENTATIONS` of ``cell_impl``)."""
        return CELL_IMPLEMENTATIONS[self.cell_impl]

    def make_cell(self, channels, reduction, reduction_prev, name):
        """A search cell of this network's implementation, op set and ``partial_channels``."""
        return self.cell_class(channels, reduction, reduction_prev, self.steps, self.multiplier, self.primitives,
                               partial_channels=self.partial_channels, name=name)

    @property
    def arch_variables(self) -> list:
        """The architecture parameters: ``[alphas_normal, alphas_reduce]``, then ``[betas_normal,
        betas_reduce]`` with partial channels (PC-DARTS' order of ``arch_parameters()``)."""
        betas = [] if self.betas_normal is None else [self.betas_normal, self.betas_reduce]
        return [self.alphas_normal, self.alphas_reduce] + betas

    def arch_weights(self):
        """Softmaxed alphas ``(normal, reduce)``, each ``(num_edges, num_ops)``."""
        return ops.softmax(self.alphas_normal, axis=-1), ops.softmax(self.alphas_reduce, axis=-1)

    def edge_weights(self):
        """PC-DARTS' normalised edge weights ``(normal, reduce)``, each ``(num_edges,)``
        (:func:`hlrs_tf.space.partial_channels.edge_weights`); ``(None, None)`` without partial channels."""
        if self.betas_normal is None:
            return None, None
        return pc.edge_weights(self.betas_normal, self.steps), pc.edge_weights(self.betas_reduce, self.steps)

    def cell_weights(self) -> dict:
        """``{reduction: (softmaxed alphas, edge weights or None)}`` of both cell types, computed once per pass."""
        (w_normal, w_reduce), (e_normal, e_reduce) = self.arch_weights(), self.edge_weights()
        return {False: (w_normal, e_normal), True: (w_reduce, e_reduce)}

    def run_cell(self, cell, s0, s1, weights=None, training=None):
        """One cell on its two inputs with the architecture weights of its type (``weights``: a
        :meth:`cell_weights` result to reuse, or ``None`` to compute them)."""
        alphas, edges = (weights or self.cell_weights())[bool(cell.reduction)]
        return cell(s0, s1, alphas, edges, training=training)

    def stem(self, x, training=None):
        """Stem conv + BN; returns the first ``(s0, s1)`` pair."""
        s = self.stem_bn(self.stem_conv(x), training=training)
        return s, s

    def run_cells(self, s0, s1, cells, training=None):
        """Runs ``cells`` (a slice of :attr:`cells`) on the state pair, returning the last pair."""
        weights = self.cell_weights()
        for cell in cells:
            s0, s1 = s1, self.run_cell(cell, s0, s1, weights, training=training)
        return s0, s1

    def features(self, x, training=None):
        """Globally pooled features of the last cell, ``(B, feature_dim)``."""
        s0, s1 = self.stem(x, training=training)
        _, s1 = self.run_cells(s0, s1, self.cells, training=training)
        return ops.mean(s1, axis=(1, 2))

    def call(self, x, training=None):
        return self.classifier(self.features(x, training=training))

    def genotype(self, max_skip_connect: int | None = None, replaced: list | None = None) -> Genotype:
        """Derives the discrete genotype from the current alphas (reference rules; with partial channels,
        PC-DARTS' edge-normalised ranking by the betas).

        Args:
            max_skip_connect: P-DARTS cap on the normal cell's skip connections (``None``: no cap); see
                :func:`hlrs_tf.space.genotypes.cap_skip_connect`.
            replaced: If given, the cap's replacement record is appended to it.
        """
        betas = {}
        if self.betas_normal is not None:
            betas = dict(betas_normal=ops.convert_to_numpy(self.betas_normal),
                         betas_reduce=ops.convert_to_numpy(self.betas_reduce))
        return derive_genotype(
            ops.convert_to_numpy(self.alphas_normal),
            ops.convert_to_numpy(self.alphas_reduce),
            steps=self.steps,
            multiplier=self.multiplier,
            max_skip_connect=max_skip_connect,
            replaced=replaced,
            **betas,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "num_classes": self.num_classes,
            "layers": self.num_layers,
            "steps": self.steps,
            "multiplier": self.multiplier,
            "stem_multiplier": self.stem_multiplier,
            "primitives": list(self.primitives),
            "cell_impl": self.cell_impl,
            "partial_channels": self.partial_channels,
        }


def split_variables(model, arch_variables) -> tuple[list, list]:
    """Splits ``model.trainable_variables`` into (weights, alphas) by variable identity.

    Args:
        model: The Keras model or layer.
        arch_variables: The architecture variables.

    Returns:
        ``(weight_variables, arch_variables)`` in the model's trainable-variable order.
    """
    arch_ids = {id(v) for v in arch_variables}
    trainable = model.trainable_variables
    weights = [v for v in trainable if id(v) not in arch_ids]
    alphas = [v for v in trainable if id(v) in arch_ids]
    if len(alphas) != len(arch_variables):
        raise ValueError("architecture variables are not all trainable variables of the model")
    return weights, alphas
