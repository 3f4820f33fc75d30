"""The DARTS search cell computed fast: stacked per-cell parameters, raw ops, work shared between edges.

Same function as :class:`hlrs_tf.space.cells.SearchCell` (the direct per-edge computation, kept as the reference
that ``tests/test_fused_cell.py`` compares this one against, in values and in first- and second-order
gradients), same parameter count, same constructor and ``call``. What differs is how it is computed; each
point was measured with ``benchmarks/profile_step.py`` (see ``benchmarks/NOTES.md``):

* **Pools shared per source state.** Every edge has its own ``max_pool_3x3`` / ``avg_pool_3x3`` followed by an
  affine-free BN in the reference; for the edges leaving the same state those are the same function of the same
  input (no parameters; their running statistics receive identical updates), so they are computed once per
  state and weighted per edge. A normal cell computes 5 pools of each kind instead of 14; ``MaxPoolGrad``
  alone was 9% of a step.
* **Shared ReLU and strided views.** ``relu(h)`` and the two stride-2 views FactorizedReduce takes of it are
  computed once per state, not once per edge.
* **Pointwise convs as ``einsum``** (one MatMul-backed op): TF's ``Conv2DBackpropInput`` for 1x1 kernels was
  the most expensive op type of a step (16%) and ~2.5x slower than a matmul's gradient.
* **The mixing weight folded into the last BN** of each op: ``w * BN(y) = BN(y; scale=w)``, so the product
  and its gradient are not separate full-size ops and their inputs need not be kept for the backward pass.
* **Dilated convs in phase space.** A 3x3/5x5 depthwise conv with dilation 2 on an even-sized map is an
  ordinary "same" conv on each of its four 2x2 phase sub-images (``space_to_batch`` with block 2: pixel
  ``(2i+r, 2j+c)`` is pixel ``(i, j)`` of phase ``(r, c)``, and out-of-range taps stay out of range). TF does
  exactly that per call (``SpaceToBatchND`` / ``BatchToSpaceND`` around every dilated conv, 11% of a step);
  here the phases of ``relu(h)`` are made once per state, and since the 1x1 conv, the BN (per-channel
  statistics over all pixels) and the weighted sum are all indifferent to where a pixel sits, the dilated ops'
  terms of a node are summed in phase space and mapped back with one ``batch_to_space`` per node.
* **Strided ops padded once per source state.** The strided ops pad as the reference does (``k_eff // 2`` on
  both sides, :mod:`hlrs_tf.space.ops`; TF's "SAME" would centre them one pixel off on even maps): the padded
  ``relu(h)`` for the strided 3x3 and 5x5 depthwise convs (pads 1 and 2) is made once per state and shared
  by its edges; a dilated conv at stride 2 reads only even pixels, so it is the ordinary "same" kxk conv of
  ``relu(h)[::2, ::2]`` -- the even view FactorizedReduce also takes -- with kxk taps instead of the
  ``k_eff x k_eff`` dense kernel the previous stride-2 "SAME" version convolved with.
* **The parameter-free terms of a node summed over their stack.** The pools and the stride-1 skips of a
  node's edges (3 per edge, up to 15 per node) are weighted by scalars and summed over their stack
  (:func:`_weighted_sum`), and so are PC-DARTS' bypassed channels: a ``Pack``, a ``Mul`` and a ``Sum``
  forward, and a ``Mul`` per term and one ``Sum`` backward, instead of a ``Mul`` per term forward and a
  ``Mul``, a ``Mul`` and a ``Sum`` per term backward. 6% fewer op executions per K=4 step, whose
  cost is mostly per op, not per byte. Its gradient is written out, so that the step stays bit-identical
  from process to process (see :func:`_stacked_weighted_sum`).
* **One ``AddN`` per node** over all its edges' terms.
* **Stacked variables**: each kind of weight of all 14 edges is one ``(E, ...)`` variable (and all BN running
  statistics of the cell one ``(slots, C)`` pair), sliced with one ``Unpack``. The supernet goes from ~1,400 to
  ~140 weight variables, which divides the optimizer's per-variable ops (and the graph) accordingly.
* **No Keras layer per op**: the ops are called directly, so tracing runs ~20 Python calls per edge, not ~25
  nested ``Layer.__call__`` s.

**PC-DARTS** (``partial_channels=K > 1``, :mod:`hlrs_tf.space.partial_channels`): every op works on the first ``C // K``
channels of its source state, so all the sharing above applies to that slice unchanged. The bypassed channels
and the edge weights (softmaxed betas) need no per-edge work either: the channel shuffle is one fixed
permutation and every edge's output is linear in its edge weight, so a node is
``shuffle(concat([sum_e beta_e * mixed_e, sum_e beta_e * bypass_e]))`` -- the betas folded into the ops' mixing
weights (BN scales) like the alphas, the bypass (a 2x2 max pool on strided edges) made once per source state, and
one shuffle per node instead of one per edge.

BN uses the fused kernel with PyTorch's running-statistics rule, like :class:`hlrs_tf.space.ops.BatchNorm`, and the
synchronised cross-replica version (:mod:`hlrs_tf.runtime.sync_bn`) when several replicas train.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from hlrs_tf.runtime import sync_bn
from hlrs_tf.space import partial_channels as pc
from hlrs_tf.space.cells import SearchCellConfig
from hlrs_tf.space.genotypes import PRIMITIVES, edge_pairs
from hlrs_tf.space.ops import (
    BN_EPSILON,
    BN_MOMENTUM,
    avg_pool_3x3,
    depthwise_conv,
    max_pool_3x3,
    pad_spatial,
    reference_padding,
    strided_views,
)

# (primitive, [(slot name, kind, kernel size)]) for the parametric ops; kinds: "dw" depthwise (k, k, C, 1),
# "pw" pointwise (C, C). Slot order = order of use.
_CONV_OPS = {
    "sep_conv_3x3": (("dw1", "dw", 3), ("pw1", "pw", 1), ("dw2", "dw", 3), ("pw2", "pw", 1)),
    "sep_conv_5x5": (("dw1", "dw", 5), ("pw1", "pw", 1), ("dw2", "dw", 5), ("pw2", "pw", 1)),
    "dil_conv_3x3": (("dw", "dw", 3), ("pw", "pw", 1)),
    "dil_conv_5x5": (("dw", "dw", 5), ("pw", "pw", 1)),
}
SUPPORTED = frozenset(PRIMITIVES)


_NO_PAD = [[0, 0], [0, 0]]


def _fused_bn(x, scale, offset, mean, variance, is_training):
    """The fused BN kernel, V1: the same kernel as V3, but for V2 and V3 the gradient tape materialises a zeros
    constant (and its shape) for each of the four unused statistics outputs -- 6,000 dead constants and 5,000
    shapes in the traced search step, a sixth of the graph. V1 is registered as accepting ``None`` for them.

    V1 takes float32 only; bfloat16 / float16 activations (mixed precision) go to V3, which takes them with
    float32 scale, offset and statistics (the dead constants are the price there; casting ``x`` to float32
    around V1 would add two full-size casts and their gradients per BN instead). Both have CPU kernels, with
    and without oneDNN."""
    op = tf.raw_ops.FusedBatchNorm if x.dtype == tf.float32 else tf.raw_ops.FusedBatchNormV3
    return op(
        x=x, scale=scale, offset=offset, mean=mean, variance=variance, epsilon=BN_EPSILON,
        exponential_avg_factor=BN_MOMENTUM if is_training else 1.0, data_format="NHWC", is_training=is_training,
    )


def _add_n(tensors):
    return tensors[0] if len(tensors) == 1 else tf.add_n(tensors)


def _weighted_sum(tensors, weights):
    """``sum_t weights[t] * tensors[t]`` for same-shape tensors and scalar weights, over their stack.

    A ``Pack``, a ``Mul`` and a ``Sum`` forward, and the gradient written out (:func:`_stacked_weighted_sum`),
    instead of a ``Mul`` per term forward and a ``Mul``, a ``Mul`` and a ``Sum`` (with their broadcast-shape
    ops) per term backward, which made up most of the K=4 step's element-wise ops.
    """
    if len(tensors) == 1:
        return weights[0] * tensors[0]
    return _stacked_weighted_sum(len(tensors))(*tensors, *weights)


def _stacked_weighted_sum(n: int):
    """``(*tensors, *weights) -> sum_t weights[t] * tensors[t]`` for ``n`` terms, with its gradient written out.

    Why not TensorFlow's own gradient of ``reduce_sum(w * stack(tensors), 0)``: it hands each term its gradient
    as an ``Unpack`` of one buffer, and those views then meet the term's other gradients in an ``AddN``
    (a pool shared by several nodes, a state with other consumers). ``AddN`` accumulates into the first input
    it may overwrite and moves that input to the front of the sum; a view may be overwritten only once the
    other views of its buffer are gone, which depends on the order the executor's threads ran their ops. So
    the order of the sum, and its last bits, changed from process to process: seeded searches of the same
    flags differed by ~1e-7 after a few steps, and sometimes by 3e-5 at the next epoch (benchmarks/NOTES.md).
    Here each term's gradient ``weights[t] * g`` is a tensor of its own, as ``Mul``'s own gradient gives; the
    weights' gradients are one ``Sum`` over the stack the forward pass made.
    """

    @tf.custom_gradient
    def weighted_sum(*args):
        tensors, weights = args[:n], args[n:]
        stack = tf.stack(tensors)
        rank = tensors[0].shape.rank
        y = tf.reduce_sum(tf.reshape(tf.stack(weights), [n] + [1] * rank) * stack, axis=0)

        def grad(g):
            grad_weights = tf.reduce_sum(stack * g[None], axis=list(range(1, rank + 1)))
            return [w * g for w in weights] + tf.unstack(grad_weights)

        return y, grad

    return weighted_sum


def _glorot_limit(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


def _stacked_uniform(limit: float) -> keras.initializers.Initializer:
    """Uniform(-limit, limit): Keras' Glorot uniform of *one* slice, so a stacked kernel is initialised exactly
    like the per-edge kernels of the direct cell (Glorot on the stacked shape would see the wrong fans)."""
    return keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="hlrs_tf")
class FusedSearchCell(SearchCellConfig, keras.layers.Layer):
    """A DARTS search cell (normal or reduction), computed with stacked parameters and shared work.

    Under a mixed-precision policy (:mod:`hlrs_tf.runtime.precision`) the cell does its own casting (Keras' autocasting
    is off): states and kernels go to the compute dtype, while the mixing weights stay float32 -- they are the
    BN scales of the ops ending in a BN (the fused kernel takes float32 scales), so the alphas' gradient through
    them is float32 too -- and only the products ``w * pool`` / ``w * skip`` use a compute-dtype copy.

    Args:
        channels: Channels C of each node.
        reduction: Reduction cell (input edges strided by 2).
        reduction_prev: The previous cell was a reduction cell (``s0`` then needs a FactorizedReduce).
        steps: Intermediate nodes (4).
        multiplier: Nodes concatenated into the output (4).
        primitives: Candidate op names (a subset of :data:`hlrs_tf.space.genotypes.PRIMITIVES`, any order); the
            weight rows passed to ``call`` are indexed the same way.
        partial_channels: PC-DARTS' ``K`` (1: DARTS; see the module docstring).
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(
        self, channels, reduction, reduction_prev, steps=4, multiplier=4, primitives=PRIMITIVES,
        partial_channels=1, **kwargs
    ):
        kwargs["autocast"] = False  # see the class docstring: call casts what it computes with
        super().__init__(**kwargs)
        unknown = [p for p in primitives if p not in SUPPORTED]
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; known: {', '.join(PRIMITIVES)}")
        if channels % 2:
            raise ValueError(f"channels must be even (FactorizedReduce halves), got {channels}")
        pc.check_partial_channels(int(channels), partial_channels, bool(reduction))
        self.partial_channels = int(partial_channels)
        self.op_channels = int(channels) // self.partial_channels  # channels every candidate op works on
        self.channels, self.reduction, self.reduction_prev = int(channels), bool(reduction), bool(reduction_prev)
        self.steps, self.multiplier, self.primitives = int(steps), int(multiplier), tuple(primitives)
        # Edge e of node j from state i, in the reference's row order; stride 2 on the input edges of a
        # reduction cell.
        self.edge_list = edge_pairs(self.steps)
        self.num_edges = len(self.edge_list)
        self.strided_edges = [e for e, (_, i) in enumerate(self.edge_list) if self._stride(i) == 2]
        # BN slots of the stacked running statistics: preprocessing, the pools of each source state, then
        # per edge every op that ends (or, for sep convs, pauses) in a BN. With partial channels the ops' BNs
        # have C // K channels, so the preprocessing's two (C channels) get variables of their own; K=1 keeps
        # one pair for all (the checkpoint layout of DARTS runs).
        slots = []
        for i in range(self.steps + 1):  # the last node feeds no edge
            slots += [f"max_{i}", f"avg_{i}"]
        for e in range(self.num_edges):
            for name in self.primitives:
                if name.startswith("sep_conv"):
                    slots += [f"{name}_bn1_{e}", f"{name}_bn2_{e}"]
                elif name.startswith("dil_conv"):
                    slots.append(f"{name}_bn_{e}")
                elif name == "skip_connect" and e in self.strided_edges:
                    slots.append(f"skip_bn_{e}")
        pre = ["pre0", "pre1"]
        # Statistics groups: (variable-name prefix, slots, channels); slot name -> (group, row).
        if self.partial_channels == 1:
            self._stat_groups = [("", pre + slots, self.channels)]
        else:
            self._stat_groups = [("", slots, self.op_channels), ("pre_", pre, self.channels)]
        self._slot = {name: (g, k) for g, (_, names, _) in enumerate(self._stat_groups) for k, name in enumerate(names)}

    def _stride(self, source: int) -> int:
        return 2 if self.reduction and source < 2 else 1

    # ------------------------------------------------------------------ variables
    def build(self, s0_shape, s1_shape=None, weights_shape=None):
        c = self.channels
        half = c // 2
        c0, c1 = int(s0_shape[-1]), int(s1_shape[-1])
        add = self.add_weight

        def glorot(fan_in, fan_out):
            return _stacked_uniform(_glorot_limit(fan_in, fan_out))

        if self.reduction_prev:
            self.pre0_fr1 = add(name="pre0_fr1", shape=(c0, half), initializer=glorot(c0, half))
            self.pre0_fr2 = add(name="pre0_fr2", shape=(c0, half), initializer=glorot(c0, half))
        else:
            self.pre0_kernel = add(name="pre0_kernel", shape=(c0, c), initializer=glorot(c0, c))
        self.pre1_kernel = add(name="pre1_kernel", shape=(c1, c), initializer=glorot(c1, c))
        c = self.op_channels  # the candidate ops' channels (C // K)
        half = c // 2
        self.conv_kernels = {}
        e = self.num_edges
        for name in self.primitives:
            for slot, kind, k in _CONV_OPS.get(name, ()):
                if kind == "dw":  # Keras fans of a (k, k, C, 1) depthwise kernel: k*k*C in, k*k out
                    shape, limit = (e, k, k, c, 1), _glorot_limit(k * k * c, k * k)
                else:
                    shape, limit = (e, c, c), _glorot_limit(c, c)
                self.conv_kernels[f"{name}/{slot}"] = add(
                    name=f"{name}_{slot}", shape=shape, initializer=_stacked_uniform(limit)
                )
        self.skip_fr = None
        if "skip_connect" in self.primitives and self.strided_edges:
            n = len(self.strided_edges)
            self.skip_fr = [
                add(name=f"skip_fr{k}", shape=(n, c, half), initializer=_stacked_uniform(_glorot_limit(c, half)))
                for k in (1, 2)
            ]
        # Never autocast: the fused BN kernel takes its statistics in float32 (see the class docstring).
        self._stats = []  # per statistics group: (moving_mean, moving_variance)
        for prefix, names, width in self._stat_groups:
            self._stats.append((
                add(name=f"{prefix}moving_mean", shape=(len(names), width), initializer="zeros", trainable=False,
                    autocast=False),
                add(name=f"{prefix}moving_variance", shape=(len(names), width), initializer="ones",
                    trainable=False, autocast=False),
            ))
        self.moving_mean, self.moving_variance = self._stats[0]

    # ------------------------------------------------------------------ the computation
    def _bn(self, bn, x, slot: str, scale, training):
        """Affine-free BN (times ``scale``) of ``x`` with the running statistics of ``slot``; ``bn`` holds this
        call's unstacked statistics (``mean``, ``var``), their updates (``new_mean``, ``new_var``) and ``zeros``,
        each per statistics group."""
        g, k = self._slot[slot]
        mean, var, zeros = bn["mean"][g][k], bn["var"][g][k], bn["zeros"][g]
        if not training:
            return _fused_bn(x, scale, zeros, mean, var, is_training=False)[0]
        if sync_bn.should_sync():  # >1 replicas: statistics of the global batch
            y, new_mean, new_var = sync_bn.batch_norm_train_values(
                x, scale, zeros, mean, var, BN_MOMENTUM, BN_EPSILON
            )
        else:
            y, new_mean, new_var = _fused_bn(x, scale, zeros, mean, var, is_training=True)[:3]
        bn["new_mean"][g][k], bn["new_var"][g][k] = new_mean, new_var
        return y

    @staticmethod
    def _pointwise(x, kernel):
        return tf.einsum("bhwc,cd->bhwd", x, kernel)

    def _factorized_reduce(self, bn, views, w1, w2, slot, scale, training):
        even, odd = views
        out = tf.concat([self._pointwise(even, w1), self._pointwise(odd, w2)], axis=-1)
        return self._bn(bn, out, slot, scale, training)

    def call(self, s0, s1, weights, edge_weights=None, training=None):
        """Runs the cell: the arguments and the result of :meth:`hlrs_tf.space.cells.SearchCell.call` (the cell
        inputs ``k-2`` and ``k-1``, the softmaxed alphas, PC-DARTS' edge weights or ``None``, the BN mode)."""
        training = bool(training)
        c, c_op, k_pc = self.channels, self.op_channels, self.partial_channels
        compute = self.compute_dtype  # float32, or bfloat16 / float16 under a mixed policy (no-op casts in float32)
        s0, s1 = tf.cast(s0, compute), tf.cast(s1, compute)
        stat_dtype = self.moving_mean.dtype  # BN scales, offsets and statistics: float32
        bn = {"mean": [], "var": [], "new_mean": [], "new_var": [], "zeros": []}
        for (mean_var, var_var), (_, _, width) in zip(self._stats, self._stat_groups):
            means, variances = tf.unstack(mean_var), tf.unstack(var_var)
            bn["mean"].append(means)
            bn["var"].append(variances)
            bn["new_mean"].append(list(means))
            bn["new_var"].append(list(variances))
            bn["zeros"].append(tf.zeros((width,), stat_dtype))
        ones, ones_op = tf.ones((c,), stat_dtype), tf.ones((c_op,), stat_dtype)  # BN scales: preprocessing, ops
        # w[e][o] as a (C // K,) vector, a BN scale (float32); and as a compute-dtype scalar (w_c), the weight of a
        # term of _weighted_sum. One op for all 14 x 8 of them; the edge weights (PC-DARTS) folded in.
        n_ops = len(self.primitives)
        weights = tf.cast(weights, stat_dtype)
        beta = None
        if edge_weights is not None:
            beta = tf.cast(edge_weights, stat_dtype)
            weights = weights * beta[:, None]
        w_stack = tf.reshape(weights[:, :, None] * ones_op, (self.num_edges * n_ops, c_op))
        w = tf.unstack(w_stack)
        w_c = tf.unstack(tf.reshape(tf.cast(weights, compute), (-1,)))
        cast = lambda v: tf.cast(v, compute)  # noqa: E731  (kernels: float32 variables, compute-dtype copies)
        kernels = {key: tf.unstack(cast(var)) for key, var in self.conv_kernels.items()}  # one Unpack per variable
        skip_fr = [tf.unstack(cast(v)) for v in self.skip_fr] if self.skip_fr is not None else None

        if self.reduction_prev:
            h0 = self._factorized_reduce(
                bn, strided_views(tf.nn.relu(s0)), cast(self.pre0_fr1), cast(self.pre0_fr2), "pre0", ones, training
            )
        else:
            h0 = self._bn(bn, self._pointwise(tf.nn.relu(s0), cast(self.pre0_kernel)), "pre0", ones, training)
        h1 = self._bn(bn, self._pointwise(tf.nn.relu(s1), cast(self.pre1_kernel)), "pre1", ones, training)
        states = [h0, h1]
        shared = {}  # per source state: relu, pools, strided views -- computed on first use

        def source(i, key, fn):
            if (i, key) not in shared:
                shared[(i, key)] = fn()
            return shared[(i, key)]

        # PC-DARTS: the edge weights as compute-dtype scalars, for the bypassed channels.
        beta_c = None if beta is None else tf.unstack(tf.cast(beta, compute))
        e = -1  # edge index: edges run in edge_list order, node by node
        for _ in range(self.steps):
            terms, phase_terms = [], []  # phase_terms: dilated-conv outputs still in phase space
            linear, linear_w = [], []  # parameter-free terms (pools, skip) and their weights: one _weighted_sum
            bypass_terms, bypass_w = [], []  # PC-DARTS: the bypassed channels of the node's edges
            for i, state in enumerate(states):
                e += 1
                stride = self._stride(i)
                if k_pc == 1:
                    h = state
                else:  # the ops see the first C // K channels; the rest bypass them, once per source state
                    h, rest = source(i, "split", lambda s=state: pc.split_channels(s, k_pc))
                    passed = source(i, "bypass", lambda r=rest, st=stride: pc.bypass(r, st))
                    bypass_terms.append(passed)
                    if beta_c is not None:
                        bypass_w.append(beta_c[e])
                even = h.shape[1] % 2 == 0 and h.shape[2] % 2 == 0
                relu_h = lambda i=i, h=h: source(i, "relu", lambda: tf.nn.relu(h))  # noqa: E731
                for o, name in enumerate(self.primitives):
                    w_eo, wc_eo = w[e * n_ops + o], w_c[e * n_ops + o]
                    if name == "none":
                        continue  # zeros: its term of the sum is zero
                    if name == "max_pool_3x3":
                        p = source(i, "max", lambda h=h, s=stride, i=i: self._bn(bn,
                            max_pool_3x3(h, s), f"max_{i}", ones_op, training))
                        linear.append(p)
                        linear_w.append(wc_eo)
                    elif name == "avg_pool_3x3":
                        p = source(i, "avg", lambda h=h, s=stride, i=i: self._bn(bn,
                            avg_pool_3x3(h, s), f"avg_{i}", ones_op, training))
                        linear.append(p)
                        linear_w.append(wc_eo)
                    elif name == "skip_connect":
                        if stride == 1:
                            linear.append(h)
                            linear_w.append(wc_eo)
                        else:
                            k = self.strided_edges.index(e)
                            views = source(i, "views", lambda r=relu_h: strided_views(r()))
                            terms.append(self._factorized_reduce(
                                bn, views, skip_fr[0][k], skip_fr[1][k], f"skip_bn_{e}", w_eo, training))
                    elif name.startswith("sep_conv"):
                        kern = {slot: kernels[f"{name}/{slot}"][e] for slot, _, _ in _CONV_OPS[name]}
                        if stride == 1:
                            y = depthwise_conv(relu_h(), kern["dw1"])
                        else:  # the reference's symmetric padding, shared by the edges leaving state i
                            pad = reference_padding(int(kern["dw1"].shape[0]))
                            padded = source(i, f"pad{pad}", lambda r=relu_h, p=pad: pad_spatial(r(), p))
                            y = depthwise_conv(padded, kern["dw1"], stride, padding="valid")
                        y = self._bn(bn, self._pointwise(y, kern["pw1"]), f"{name}_bn1_{e}", ones_op, training)
                        y = depthwise_conv(tf.nn.relu(y), kern["dw2"])
                        terms.append(self._bn(bn, self._pointwise(y, kern["pw2"]), f"{name}_bn2_{e}", w_eo, training))
                    elif stride == 1 and even:  # dil_conv, in phase space (see the module docstring)
                        phases = source(i, "phases", lambda r=relu_h: tf.space_to_batch(r(), [2, 2], _NO_PAD))
                        y = depthwise_conv(phases, kernels[f"{name}/dw"][e])
                        y = self._pointwise(y, kernels[f"{name}/pw"][e])
                        phase_terms.append(self._bn(bn, y, f"{name}_bn_{e}", w_eo, training))
                    else:  # dil_conv on a strided edge or an odd-sized map
                        if stride == 1:
                            y = depthwise_conv(relu_h(), kernels[f"{name}/dw"][e], dilation_rate=2)
                        else:  # dilation 2 at stride 2 = the undilated conv of the even pixels (module docstring)
                            views = source(i, "views", lambda r=relu_h: strided_views(r()))
                            y = depthwise_conv(views[0], kernels[f"{name}/dw"][e])
                        y = self._pointwise(y, kernels[f"{name}/pw"][e])
                        terms.append(self._bn(bn, y, f"{name}_bn_{e}", w_eo, training))
            if linear:
                terms.append(_weighted_sum(linear, linear_w))
            if phase_terms:
                terms.append(tf.batch_to_space(_add_n(phase_terms), [2, 2], _NO_PAD))
            node = _add_n(terms)
            if bypass_terms:  # shuffle(concat(mixed, bypass)) of every edge, summed = the same of the sums
                bypass_sum = _weighted_sum(bypass_terms, bypass_w) if bypass_w else _add_n(bypass_terms)
                node = pc.channel_shuffle(tf.concat([node, bypass_sum], axis=-1), k_pc)
            states.append(node)

        if training:
            # One write per statistics variable for all BNs of the cell (slots not run keep their value).
            for (mean_var, var_var), new_mean, new_var in zip(self._stats, bn["new_mean"], bn["new_var"]):
                mean_var.assign(tf.stack(new_mean))
                var_var.assign(tf.stack(new_var))
        return tf.concat(states[-self.multiplier :], axis=-1)

    def copy_from_direct(self, cell) -> None:
        """Sets every variable from a built direct :class:`hlrs_tf.space.cells.SearchCell` of the same configuration
        (weights and running statistics), so both compute the same function. Used by the equivalence tests.

        Args:
            cell: The direct cell; must have been called once (built).
        """
        if (cell.channels, cell.reduction, cell.reduction_prev, cell.steps, tuple(cell.primitives),
                cell.partial_channels) != (self.channels, self.reduction, self.reduction_prev, self.steps,
                                           self.primitives, self.partial_channels):
            raise ValueError("the direct cell has a different configuration")
        means = [m.numpy() for m, _ in self._stats]
        variances = [v.numpy() for _, v in self._stats]

        def stats(slot, layer):
            g, k = self._slot[slot]
            means[g][k] = layer.moving_mean.numpy()
            variances[g][k] = layer.moving_variance.numpy()

        pre0, pre1 = cell.preprocess0, cell.preprocess1
        if self.reduction_prev:
            self.pre0_fr1.assign(pre0.conv_1.kernel.numpy()[0, 0])
            self.pre0_fr2.assign(pre0.conv_2.kernel.numpy()[0, 0])
        else:
            self.pre0_kernel.assign(pre0.conv.kernel.numpy()[0, 0])
        self.pre1_kernel.assign(pre1.conv.kernel.numpy()[0, 0])
        stats("pre0", pre0.bn)
        stats("pre1", pre1.bn)
        stacks = {key: var.numpy() for key, var in self.conv_kernels.items()}
        skip = [v.numpy() for v in self.skip_fr] if self.skip_fr is not None else None
        for e, (_, i) in enumerate(self.edge_list):
            layers = {layer.name: layer for layer in cell.edges[e].candidate_ops}
            for name, layer in layers.items():
                if name in ("max_pool_3x3", "avg_pool_3x3"):
                    stats(f"{name[:3]}_{i}", layer.norm)  # every edge of source i holds the same statistics
                elif name == "skip_connect" and e in self.strided_edges:
                    k = self.strided_edges.index(e)
                    skip[0][k], skip[1][k] = layer.conv_1.kernel.numpy()[0, 0], layer.conv_2.kernel.numpy()[0, 0]
                    stats(f"skip_bn_{e}", layer.bn)
                elif name.startswith("sep_conv"):
                    for slot, sub in (("dw1", layer.dw_1), ("dw2", layer.dw_2)):
                        stacks[f"{name}/{slot}"][e] = sub.kernel.numpy()
                    for slot, sub in (("pw1", layer.pw_1), ("pw2", layer.pw_2)):
                        stacks[f"{name}/{slot}"][e] = sub.kernel.numpy()[0, 0]
                    stats(f"{name}_bn1_{e}", layer.bn_1)
                    stats(f"{name}_bn2_{e}", layer.bn_2)
                elif name.startswith("dil_conv"):
                    stacks[f"{name}/dw"][e] = layer.dw.kernel.numpy()
                    stacks[f"{name}/pw"][e] = layer.pw.kernel.numpy()[0, 0]
                    stats(f"{name}_bn_{e}", layer.bn)
        for key, var in self.conv_kernels.items():
            var.assign(stacks[key])
        if skip is not None:
            for var, value in zip(self.skip_fr, skip):
                var.assign(value)
        for (mean_var, var_var), m, v in zip(self._stats, means, variances):
            mean_var.assign(m)
            var_var.assign(v)

    def compute_output_shape(self, s0_shape, s1_shape=None, weights_shape=None):
        b, h, w, _ = s1_shape
        if self.reduction:
            h, w = (None if h is None else -(-h // 2)), (None if w is None else -(-w // 2))
        return (b, h, w, self.multiplier * self.channels)
