"""The DARTS evaluation network built from a genotype (the reference ``NetworkCIFAR``), as a Keras model.

Layout, as in the reference DARTS ``model.py``:

* stem: 3x3 conv to ``stem_multiplier * C`` channels (no bias) + affine BN;
* ``layers`` cells built from the genotype, reduction cells (channels doubled) at ``layers // 3`` and
  ``2 * layers // 3``; each cell preprocesses its inputs with ReLU-1x1conv-BN (FactorizedReduce for ``s0``
  after a reduction), applies the genotype's two ops per node and concatenates the ``*_concat`` states; the
  ops are :mod:`hlrs_tf.space.ops`' (``cnn/operations.py``), padded as the reference: ``k_eff // 2`` on both sides,
  so a reduction cell's stride-2 ops are centred on the even input pixels (TF's "SAME" would centre them one
  pixel later on even-sized maps);
* drop-path on every op output except identities (``skip_connect`` at stride 1) while training, with the
  probability in the non-trainable variable ``drop_path_prob`` that a callback ramps per epoch;
* an auxiliary head (:class:`AuxiliaryHead`) on the output of cell ``2 * layers // 3``, used only while
  training (its logits are weighted 0.4 in the loss by the retrain model);
* global average pool and a linear classifier.

BN is affine everywhere here (it is affine-free in the search network) and pools have no BN.

**Parameter count.** DARTS_V2 at C=36, 20 cells, 10 classes, 32x32x3 has 3,349,342 trainable parameters
*without* the auxiliary head and 3,825,768 with it (the head adds 476,426). 3,349,342 is what the reference
prints as "param size" -- its ``count_parameters_in_MB`` skips every parameter whose name contains
"auxiliary" -- so it is the count without the head (docs/method.md M2). Counts are PyTorch's ``parameters()``:
trainable weights only, no BN running statistics.

**BBN head (optional).** With ``bbn=True`` the last cell is built twice, as BBN's conventional and
re-balancing branches on the shared trunk (stem and all other cells); the classifier sees
``2 * concat(a * f_c, (1 - a) * f_r)`` of the pooled branch features (:func:`hlrs_tf.losses.bbn_mixing.bbn_mix`).
Training feeds each branch its own batch (:meth:`DerivedNetwork.forward_bbn`); inference (``call``) runs the trunk
once and both branches on it with ``a = 0.5``, i.e. the classifier on ``concat(f_c, f_r)``. This way a
BBN-searched architecture is retrained the way it was searched.

Every layer here is registered (``package="hlrs_tf"``) and has a ``get_config``; the network's config holds
the genotype as JSON-ready lists and optional ``metadata`` (dataset name, normalisation mean/std, class
names), so a saved ``model.keras`` is self-describing for export.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from hlrs_tf.losses.bbn_mixing import bbn_mix
from hlrs_tf.runtime.precision import policy_scope
from hlrs_tf.space import ops as darts_ops
from hlrs_tf.space.genotypes import Genotype
from hlrs_tf.space.ops import CompositeLayer, batch_norm, pointwise_conv
from hlrs_tf.space.stacking import cell_layout, preprocess_inputs, stem_layers

__all__ = ["AuxiliaryHead", "DerivedCell", "DerivedNetwork", "drop_path"]


def _as_genotype(genotype) -> Genotype:
    if isinstance(genotype, Genotype):
        return genotype
    return Genotype.from_dict(genotype, source="genotype in the model config", steps=len(genotype["normal"]) // 2)


def drop_path(x, drop_prob):
    """Drops whole examples of ``x`` with probability ``drop_prob`` and rescales the rest by ``1/(1 - p)``.

    The reference's ``drop_path``: a per-example Bernoulli(``1 - p``) mask. ``drop_prob`` is a tensor (the
    network's variable), so one traced step serves every epoch; at ``p = 0`` the mask is all ones and the
    result equals ``x`` exactly (``floor(1 + u) = 1`` for ``u`` in ``[0, 1)``), so no branch is needed.

    Args:
        x: ``(B, H, W, C)`` op output.
        drop_prob: Scalar drop probability in ``[0, 1)``.

    Returns:
        ``x`` with dropped examples zeroed and kept ones scaled.
    """
    keep = 1.0 - ops.cast(drop_prob, x.dtype)
    # Stateful TF random op: seeded by keras.utils.set_random_seed and deterministic under op determinism.
    u = tf.random.uniform((ops.shape(x)[0], 1, 1, 1), dtype=x.dtype)
    mask = ops.floor(keep + u)
    return x / keep * mask


def average_pool_same(x, pool_size: int, strides: int):
    """"Same" average pooling that excludes the padding, as ``sum / count`` over an explicitly zero-padded map.

    The same function as ``average_pool(..., padding="same")`` (TF's "same" average excludes padding), computed
    as a "valid" pool of the padded map rescaled by ``pool_size**2 / valid cells`` (a constant of the static
    shape). TensorFlow's own (Eigen) gradient of the direct form is wrong when the padding on a side reaches
    ``pool_size // 2`` -- 5x5 on a 4x4 map, the auxiliary head's case: off by 0.07-0.2 against the exact sum
    over windows, while oneDNN's is right (``tests/test_derived_network.py``, ``tests/test_onednn_kernels.py``).

    Args:
        x: ``(B, H, W, C)`` with static ``H``, ``W``.
        pool_size: Window size k.
        strides: Stride.

    Returns:
        ``(B, ceil(H/s), ceil(W/s), C)``.
    """
    pads, valid = [], []
    for n in x.shape[1:3]:
        out = -(-n // strides)
        total = max((out - 1) * strides + pool_size - n, 0)
        pads.append((total // 2, total - total // 2))
        inside = np.zeros(n + total)
        inside[total // 2 : total // 2 + n] = 1.0
        valid.append([inside[i * strides : i * strides + pool_size].sum() for i in range(out)])
    scale = (pool_size * pool_size) / np.outer(valid[0], valid[1])  # window size / valid cells, per output
    x = ops.pad(x, ((0, 0), *pads, (0, 0)))
    pooled = ops.average_pool(x, pool_size=pool_size, strides=strides, padding="valid")
    return pooled * ops.convert_to_tensor(scale[None, :, :, None], dtype=pooled.dtype)


@keras.saving.register_keras_serializable(package="hlrs_tf")
class DerivedCell(CompositeLayer):
    """One cell of the evaluation network: the genotype's two ops per node on the preprocessed inputs.

    Args:
        genotype: The :class:`~hlrs_tf.space.genotypes.Genotype` (or its ``to_dict()`` form).
        channels: Channels C of each node.
        reduction: Reduction cell (ops on the two cell inputs have stride 2; uses ``genotype.reduce``).
        reduction_prev: The previous cell was a reduction cell (``s0`` then needs a FactorizedReduce).
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, genotype, channels: int, reduction: bool, reduction_prev: bool, **kwargs):
        super().__init__(**kwargs)
        g = _as_genotype(genotype)
        self.genotype_dict = g.to_dict()
        self.channels, self.reduction, self.reduction_prev = int(channels), bool(reduction), bool(reduction_prev)
        pairs = g.reduce if reduction else g.normal
        self.concat = tuple(g.reduce_concat if reduction else g.normal_concat)
        self.steps = len(pairs) // 2
        self.indices = tuple(i for _, i in pairs)
        self.preprocess0, self.preprocess1 = preprocess_inputs(channels, reduction_prev, affine=True)
        self.cell_ops = []
        for k, (name, index) in enumerate(pairs):
            strides = 2 if reduction and index < 2 else 1
            self.cell_ops.append(
                darts_ops.make_op(name, channels, strides, affine=True, search=False, layer_name=f"op{k}_{name}")
            )
        # The reference skips drop-path on Identity ops only (a strided skip_connect is a FactorizedReduce).
        self.droppable = tuple(not isinstance(op, darts_ops.Identity) for op in self.cell_ops)

    def call(self, s0, s1, drop_prob=None, training=None):
        """Runs the cell.

        Args:
            s0: Output of cell k-2.
            s1: Output of cell k-1.
            drop_prob: Drop-path probability (scalar tensor); used only when ``training``.
            training: BN mode and whether drop-path is active.
        """
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        for j in range(self.steps):
            outs = []
            for k in (2 * j, 2 * j + 1):
                h = self.cell_ops[k](states[self.indices[k]], training=training)
                if training and drop_prob is not None and self.droppable[k]:
                    h = drop_path(h, drop_prob)
                outs.append(h)
            states.append(outs[0] + outs[1])
        return ops.concatenate([states[i] for i in self.concat], axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "genotype": self.genotype_dict,
            "channels": self.channels,
            "reduction": self.reduction,
            "reduction_prev": self.reduction_prev,
        }


@keras.saving.register_keras_serializable(package="hlrs_tf")
class AuxiliaryHead(CompositeLayer):
    """The reference ``AuxiliaryHeadCIFAR``: ReLU, 5x5 avg pool stride 3, 1x1 conv 128 + BN + ReLU,
    2x2 conv 768 + BN + ReLU, linear.

    On CIFAR (8x8 input) the pool gives 2x2 and the 2x2 conv 1x1, exactly as the reference. Other image sizes
    are handled without changing the parameter count: the pool pads ("same", padding excluded from the
    average) when the map is smaller than 5, the 2x2 conv pads when the pooled map is 1x1 (e.g. 7x7 from
    28x28 Fashion-MNIST), and a global average pool before the classifier absorbs any map larger than 1x1.

    Args:
        num_classes: Output classes.
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.conv1 = pointwise_conv(128, name="conv1")
        self.bn1 = batch_norm(True, name="bn1")
        self.conv2 = keras.layers.Conv2D(768, 2, padding="valid", use_bias=False, name="conv2")
        self.bn2 = batch_norm(True, name="bn2")
        # float32 under any policy: its logits enter the loss (as the network's classifier).
        self.classifier = keras.layers.Dense(num_classes, name="classifier", dtype="float32")

    def call(self, x, training=None):
        x = ops.relu(x)
        # Static sizes (known at trace time) pick the padding; CIFAR's 8x8 takes the reference path.
        if min(x.shape[1:3]) >= 5:
            x = ops.average_pool(x, pool_size=5, strides=3, padding="valid")
        else:
            x = average_pool_same(x, pool_size=5, strides=3)
        x = ops.relu(self.bn1(self.conv1(x), training=training))
        pad_h, pad_w = int(x.shape[1] < 2), int(x.shape[2] < 2)
        if pad_h or pad_w:
            # What "same" padding does for a 2x2 kernel on a 1-pixel map: one zero row/column after it.
            x = ops.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        x = ops.relu(self.bn2(self.conv2(x), training=training))
        return self.classifier(ops.mean(x, axis=(1, 2)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="hlrs_tf")
class DerivedNetwork(keras.Model):
    """The DARTS evaluation network of a genotype (see the module docstring).

    ``call(x)`` returns the class logits (inference: no auxiliary head, no drop-path; with BBN the
    equal-weight concat of both branches). :meth:`forward` also returns the auxiliary logits, and
    :meth:`forward_bbn` the BBN training logits; the retrain model uses those in its ``train_step``.

    Build it (``network.build((None, H, W, C))`` or a first call) before training: ``build`` runs every
    sub-layer once, auxiliary head and both branches included, so nothing stays unbuilt (docs/method.md T3) and
    a reloaded ``model.keras`` gets the same variables.

    Args:
        genotype: A :class:`~hlrs_tf.space.genotypes.Genotype` or its ``to_dict()`` form.
        channels: Initial channels C (36 in the DARTS CIFAR setting).
        num_classes: Output classes.
        layers: Number of cells (20); at least 3.
        auxiliary: Build the auxiliary head (after cell ``2 * layers // 3``).
        bbn: Build BBN's two branch cells in place of the last cell.
        stem_multiplier: Stem channels = ``stem_multiplier * C`` (3).
        metadata: Optional JSON-ready dict kept in the config (dataset, mean/std, class names, ...).
        **kwargs: Forwarded to ``keras.Model``; ``dtype`` (a dtype policy such as ``"mixed_bfloat16"``,
            :mod:`hlrs_tf.runtime.precision`) applies to every sub-layer but the classifiers, which stay float32.

    Raises:
        ValueError: ``layers < 3``, or ``bbn`` with an auxiliary head on the last cell (``layers == 3``).
    """

    def __init__(
        self,
        genotype,
        channels: int = 36,
        num_classes: int = 10,
        layers: int = 20,
        auxiliary: bool = True,
        bbn: bool = False,
        stem_multiplier: int = 3,
        metadata: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (two reduction cells at L//3 and 2L//3), got {layers}")
        self.aux_index = 2 * layers // 3
        if bbn and auxiliary and self.aux_index >= layers - 1:
            raise ValueError(
                f"the auxiliary head sits on cell {self.aux_index}, the last cell, which BBN splits into two "
                f"branches: use layers >= 4 or no auxiliary head"
            )
        self.genotype = _as_genotype(genotype)
        self.channels, self.num_classes, self.num_layers = int(channels), int(num_classes), int(layers)
        self.auxiliary, self.bbn, self.stem_multiplier = bool(auxiliary), bool(bbn), int(stem_multiplier)
        self.metadata = dict(metadata) if metadata else None
        # Every sub-layer gets this network's dtype policy (Keras gives a layer the global one, which the scope
        # restores afterwards), so a saved model.keras reloads with the precision it was trained in.
        with policy_scope(self.dtype_policy):
            self._build_layers(channels, num_classes, layers, auxiliary, bbn, stem_multiplier)
        # Set by a callback each epoch (linear ramp to the maximum); read by the traced train step.
        self.drop_path_prob = self.add_weight(
            name="drop_path_prob", shape=(), initializer="zeros", trainable=False
        )

    def _build_layers(self, channels, num_classes, layers, auxiliary, bbn, stem_multiplier):
        self.stem_conv, self.stem_bn = stem_layers(channels, stem_multiplier)
        self.cells = []
        self.branch_cells = []
        for i, c_curr, reduction, reduction_prev in cell_layout(layers, channels):
            if bbn and i == layers - 1:
                # Two copies of the last cell with their own weights: conventional, re-balancing.
                self.branch_cells = [
                    DerivedCell(self.genotype, c_curr, reduction, reduction_prev, name=f"cell_{i}_{b}")
                    for b in ("conventional", "rebalancing")
                ]
            else:
                self.cells.append(DerivedCell(self.genotype, c_curr, reduction, reduction_prev, name=f"cell_{i}"))
        self.auxiliary_head = AuxiliaryHead(num_classes, name="auxiliary_head") if auxiliary else None
        # float32 under any policy: logits and loss in float32 (Keras' practice for the output layer).
        self.classifier = keras.layers.Dense(num_classes, name="classifier", dtype="float32")

    # ---------------------------------------------------------------- forward passes
    def _trunk(self, x, training, with_aux):
        """Stem and the (shared) cells; returns ``(s0, s1, aux_logits or None)``."""
        s = self.stem_bn(self.stem_conv(x), training=training)
        s0 = s1 = s
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob, training=training)
            if with_aux and i == self.aux_index:
                aux = self.auxiliary_head(s1, training=training)
        return s0, s1, aux

    @staticmethod
    def _pool(s):
        return ops.mean(s, axis=(1, 2))

    def forward(self, x, training=False, with_aux=None):
        """Logits and auxiliary logits of one batch.

        Args:
            x: Normalised images ``(B, H, W, C)``.
            training: BN mode; also enables drop-path.
            with_aux: Run the auxiliary head; default: ``training and auxiliary``.

        Returns:
            ``(logits, aux_logits)``; ``aux_logits`` is None when the head is not run. With BBN the logits are
            the equal-weight inference logits.
        """
        if with_aux is None:
            with_aux = bool(training) and self.auxiliary
        with_aux = with_aux and self.auxiliary
        features, aux = self._features(x, training, with_aux)
        return self.classifier(features), aux

    def _features(self, x, training, with_aux):
        s0, s1, aux = self._trunk(x, training, with_aux)
        if not self.bbn:
            return self._pool(s1), aux
        f_c = self._pool(self.branch_cells[0](s0, s1, self.drop_path_prob, training=training))
        f_r = self._pool(self.branch_cells[1](s0, s1, self.drop_path_prob, training=training))
        return bbn_mix(f_c, f_r, 0.5), aux

    def features(self, x, training=False):
        """The classifier's input of one batch: the pooled last cell (with BBN, both branches' features mixed
        with ``a = 0.5``, as inference). ``classifier(features(x)) == call(x)``; the post-hoc methods
        (:mod:`hlrs_tf.post_hoc`) work on it."""
        return self._features(x, training, False)[0]

    def forward_bbn(self, x_c, x_r, alpha, training=True):
        """BBN training pass: each batch through the trunk and its own branch, features mixed by ``alpha``.

        Args:
            x_c: Batch of the conventional (uniform) sampler.
            x_r: Batch of the re-balancing (reversed) sampler.
            alpha: Mixing factor ``alpha_T`` (scalar tensor).
            training: BN mode and drop-path.

        Returns:
            ``(logits, aux_c, aux_r)``: the mixed logits and the auxiliary logits of each batch (None without
            an auxiliary head).
        """
        if not self.bbn:
            raise ValueError("forward_bbn needs a network built with bbn=True")
        s0c, s1c, aux_c = self._trunk(x_c, training, self.auxiliary)
        s0r, s1r, aux_r = self._trunk(x_r, training, self.auxiliary)
        f_c = self._pool(self.branch_cells[0](s0c, s1c, self.drop_path_prob, training=training))
        f_r = self._pool(self.branch_cells[1](s0r, s1r, self.drop_path_prob, training=training))
        return self.classifier(bbn_mix(f_c, f_r, alpha)), aux_c, aux_r

    def call(self, x, training=None):
        return self.forward(x, training=training, with_aux=False)[0]

    def build(self, input_shape):
        """Builds every sub-layer with one eager pass on a zero image (auxiliary head included)."""
        shape = tuple(input_shape)
        self.forward(ops.zeros((1, *shape[1:])), training=False, with_aux=self.auxiliary)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    # ---------------------------------------------------------------- bookkeeping
    def auxiliary_variables(self) -> list:
        """Trainable variables of the auxiliary head (empty without one)."""
        return list(self.auxiliary_head.trainable_variables) if self.auxiliary_head is not None else []

    def parameter_counts(self) -> dict:
        """PyTorch-style parameter counts (trainable weights only; BN running statistics excluded).

        Returns:
            ``{"params": all trainable, "params_without_aux": what the reference prints as "param size",
            "aux_params": the auxiliary head's, "non_trainable": BN statistics and bookkeeping}``.
        """
        count = lambda vs: int(sum(int(tf.size(v)) for v in vs))  # noqa: E731
        total, aux = count(self.trainable_variables), count(self.auxiliary_variables())
        return {
            "params": total,
            "params_without_aux": total - aux,
            "aux_params": aux,
            "non_trainable": count(self.non_trainable_variables),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "genotype": self.genotype.to_dict(),
            "channels": self.channels,
            "num_classes": self.num_classes,
            "layers": self.num_layers,
            "auxiliary": self.auxiliary,
            "bbn": self.bbn,
            "stem_multiplier": self.stem_multiplier,
            "metadata": self.metadata,
        }
