"""Outputs and gradients of every kernel the networks run, for comparing oneDNN's kernels with TensorFlow's own.

    TF_ENABLE_ONEDNN_OPTS=1 python tests/onednn_kernel_cases.py /tmp/onednn.npz
    TF_ENABLE_ONEDNN_OPTS=0 python tests/onednn_kernel_cases.py /tmp/eigen.npz

Writes one ``.npz`` of ``<case>/y`` (output) and ``<case>/g<i>`` (gradient of a fixed random projection of the
output with respect to input ``i``) arrays, plus ``onednn`` (whether TensorFlow really ran oneDNN's kernels).
``tests/test_onednn_kernels.py`` runs it once per setting and compares. The same seeds give the same inputs in
both processes. Cases:

* single ops at the shapes the search and derived networks run them (batch 64, 32x32 down to 8x8 and the
  2x2-phase sizes of the fused cell, odd sizes): depthwise convs (3x3/5x5, stride 1/2, dilation 1/2), 1x1
  convs as einsum and as ``Conv2D``, fused BN, pools, the stem conv, the auxiliary head's pool (as
  ``derived_network.average_pool_same`` computes it on small maps: TF's own gradient of a "same" 5x5 average
  pool on a 4x4 map is wrong, and the two kernels disagreed there);
* ``FactorizedReduce`` with 5-7 input channels: oneDNN's filter gradient of a 1x1 *stride-2* ``Conv2D`` is
  wrong there, which is why the layer convolves the stride-2 samplings instead (``hlrs_tf.space.ops``);
* whole networks (the supernet with the fused and with the direct cell, a derived network with its auxiliary
  head): every kernel call of one training-mode forward pass is recorded with the inputs the network really
  gave it, and its output and gradients are computed again from those inputs in float32 (the kernels of this
  process) and in float64 (the ground truth). Stored per call: the relative error of each (``layerwise/...``).

Why per call and not the gradient of the whole network against a float64 network: a piecewise-linear network
(ReLU, max pooling) has kinks, and float32 and float64 forward passes round differently, so a pre-activation
within ~1e-7 of zero can fall on different sides. Measured on an AVX-512 CPU: one BN output that is -4.6e-7 in
float64 and +2.8e-7 in float32 moved the gradients of every variable before it, by up to 4% of the largest
entry, with kernels that are each within 1e-6 of float64. Which kernel set happens to fall on the same side as
float64 depends on the CPU. From identical inputs (float32 to float64 is exact) every ReLU mask and max-pool
argmax is the same in both precisions, so the per-call comparison measures the kernels and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _record(out: dict, name: str, fn, *args, variables=()) -> None:
    import tensorflow as tf

    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        y = fn(*args)
        proj = tf.constant(np.random.default_rng(1).standard_normal(y.shape).astype("float32"))
        loss = tf.reduce_sum(y * proj)
    grads = tape.gradient(loss, args + list(variables))
    out[f"{name}/y"] = y.numpy()
    for i, g in enumerate(grads):
        out[f"{name}/g{i}"] = g.numpy()


def _record_pointwise(out: dict, name: str, x, c_out: int, strides: int) -> None:
    """``PointwiseConv`` with its inputs kept, for the float64 numpy oracle of the test."""
    import keras
    import tensorflow as tf

    from hlrs_tf.space.ops import PointwiseConv

    keras.utils.set_random_seed(c_out * 10 + strides)  # the same weights in both processes
    layer = PointwiseConv(c_out, strides=strides)
    layer(tf.constant(x))  # build
    _record(out, name, lambda x: layer(x), x, variables=[layer.kernel])
    out[f"{name}/x"] = x
    out[f"{name}/w"] = layer.kernel.numpy()


def op_cases(out: dict) -> None:
    """Single ops at the networks' shapes."""
    import keras
    import tensorflow as tf

    from hlrs_tf.space.derived_network import average_pool_same
    from hlrs_tf.space.fused_cell import _fused_bn
    from hlrs_tf.space.ops import FactorizedReduce, avg_pool_3x3, depthwise_conv, max_pool_3x3

    rng = np.random.default_rng(0)
    f = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    b = 64
    for size, c in ((32, 16), (16, 32), (8, 64), (4, 64), (2, 64), (7, 16), (28, 8), (14, 16)):
        x = f(b, size, size, c)
        tag = f"{size}x{size}x{c}"
        for k in (3, 5):
            for s in (1, 2):
                for d in (1, 2):
                    _record(out, f"depthwise_k{k}_s{s}_d{d}/{tag}",
                            lambda x, w, s=s, d=d: depthwise_conv(x, w, s, dilation_rate=d), x, f(k, k, c, 1))
        _record(out, f"einsum_1x1/{tag}", lambda x, w: tf.einsum("bhwc,cd->bhwd", x, w), x, f(c, c))
        _record(out, f"conv_1x1_s1/{tag}", lambda x, w: tf.nn.conv2d(x, w, 1, "VALID"), x, f(1, 1, c, c))
        _record_pointwise(out, f"pointwise/{tag}", x, c, 1)
        zeros, ones = tf.zeros((c,)), tf.ones((c,))
        for training in (True, False):
            _record(out, f"fused_bn_train{int(training)}/{tag}",
                    lambda x, scale, t=training: _fused_bn(x, scale, zeros, zeros, ones, is_training=t)[0], x, f(c))
        for s in (1, 2):
            # As the networks run them: "SAME" at stride 1, explicit reference padding + "valid" at stride 2.
            _record(out, f"max_pool_s{s}/{tag}", lambda x, s=s: max_pool_3x3(x, s), x)
            _record(out, f"avg_pool_s{s}/{tag}", lambda x, s=s: avg_pool_3x3(x, s), x)
        if size >= 5:
            _record(out, f"aux_avg_pool_5x5_s3/{tag}", lambda x: tf.nn.avg_pool2d(x, 5, 3, "VALID"), x)
        else:  # the auxiliary head on a small map
            _record(out, f"aux_avg_pool_5x5_s3/{tag}", lambda x: average_pool_same(x, 5, 3), x)
    # Fewer input channels than one oneDNN channel block (8 on AVX2, 16 on AVX-512), at the shapes of the
    # direct supernet below (batch 8, 16x16, 8 output channels): where the 1x1 Conv2D kernels went wrong.
    for c_in in range(1, 17):
        for strides in (1, 2):
            _record_pointwise(out, f"pointwise_few/16x16x{c_in}_s{strides}", f(8, 16, 16, c_in), 8, strides)
    for size, c in ((32, 3), (28, 1)):
        _record(out, f"stem_conv_3x3/{size}x{size}x{c}", lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"),
                f(b, size, size, c), f(3, 3, c, 48))
    for c_in in (5, 6, 7, 16):
        for size in (16, 9):
            keras.utils.set_random_seed(c_in * 100 + size)  # the same weights in both processes
            layer = FactorizedReduce(8, affine=True, name=f"fr_{c_in}_{size}")
            x = f(8, size, size, c_in)
            layer(tf.constant(x), training=True)  # build
            _record(out, f"factorized_reduce/{size}x{size}x{c_in}", lambda x, lay=layer: lay(x, training=True), x,
                    variables=layer.trainable_variables)


class KernelCalls:
    """Records every kernel call of the networks' forward passes, with the inputs the network gave it.

    The networks' kernels are module functions and two layer ``call``s; inside :meth:`recording` each is
    wrapped so that a call appends ``(kind, fn, float inputs)``, where ``fn`` recomputes the call from float32
    or float64 inputs. Nested calls (``depthwise_conv`` calling itself for a strided dilated conv) are recorded
    once, at the outermost call.
    """

    def __init__(self):
        self.calls = []
        self._depth = 0

    def _wrap(self, kind, fn, recompute):
        def recorded(*args, **kwargs):
            self._depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self._depth -= 1
            if self._depth == 0:
                inputs, again = recompute(*args, **kwargs)
                self.calls.append((kind, again, [np.asarray(a) for a in inputs]))
            return out

        return recorded

    def recording(self):
        import tensorflow as tf

        from hlrs_tf.space import derived_network, fused_cell, ops

        def bn_train(x, scale, offset):
            if x.dtype == tf.float64:  # FusedBatchNorm has no float64 kernel: the same function, unfused
                mean, var = tf.nn.moments(x, [0, 1, 2])
                return tf.nn.batch_normalization(x, mean, var, offset, scale, ops.BN_EPSILON)
            return fused_cell._fused_bn(x, scale, offset, tf.zeros_like(scale), tf.ones_like(scale), True)[0]

        def cast_like(x, *vs):
            return [tf.cast(v, x.dtype) for v in vs]

        patches = []  # (owner, attribute, wrapper)
        for owner in (ops, fused_cell):
            patches.append((owner, "depthwise_conv", self._wrap("depthwise", ops.depthwise_conv,
                lambda x, k, strides=1, dilation_rate=1, padding="reference": (
                    (x, k), lambda x, k: ops.depthwise_conv(x, k, strides, dilation_rate, padding)))))
            for name in ("max_pool_3x3", "avg_pool_3x3"):
                fn = getattr(ops, name)
                patches.append((owner, name, self._wrap(name, fn, lambda x, strides=1, fn=fn: (
                    (x,), lambda x: fn(x, strides)))))
        pool_same = derived_network.average_pool_same
        patches.append((derived_network, "average_pool_same", self._wrap("aux_avg_pool", pool_same,
            lambda x, pool_size, strides: ((x,), lambda x: pool_same(x, pool_size, strides)))))
        einsum = lambda x, k: tf.einsum("bhwc,cd->bhwd", x, k)  # noqa: E731
        patches.append((fused_cell.FusedSearchCell, "_pointwise", staticmethod(self._wrap(
            "pointwise", fused_cell.FusedSearchCell._pointwise, lambda x, k: ((x, k), einsum)))))

        def fused_bn(x, scale, offset, mean, variance, is_training):
            assert is_training, "the network cases run in training mode"
            return (x, scale, offset), lambda x, s, o: bn_train(x, *cast_like(x, s, o))

        patches.append((fused_cell, "_fused_bn", self._wrap("fused_bn", fused_cell._fused_bn, fused_bn)))

        pointwise_call = ops.PointwiseConv.call

        def pointwise(layer, x):
            s = layer.strides[0]
            kernel = tf.reshape(layer.kernel, (layer.kernel.shape[2], layer.filters))
            return (x, kernel), lambda x, k: einsum(x[:, ::s, ::s, :], k)

        patches.append((ops.PointwiseConv, "call", self._wrap("pointwise", pointwise_call, pointwise)))
        bn_call = ops.BatchNorm.call

        def batch_norm(layer, x, training=None):
            channels = x.shape[-1]
            scale = layer.gamma if layer.affine else tf.ones((channels,), x.dtype)
            offset = layer.beta if layer.affine else tf.zeros((channels,), x.dtype)
            assert training, "the network cases run in training mode"
            return (x, scale, offset), lambda x, s, o: bn_train(x, *cast_like(x, s, o))

        patches.append((ops.BatchNorm, "call", self._wrap("batch_norm", bn_call, batch_norm)))

        @contextlib.contextmanager
        def patched():
            saved = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in patches]
            try:
                for owner, attr, wrapper in patches:
                    setattr(owner, attr, wrapper)
                yield self
            finally:
                for owner, attr, original in saved:
                    setattr(owner, attr, original)

        return patched()

    def errors(self, out: dict, prefix: str) -> None:
        """Recomputes every recorded call in float32 and float64; stores each call's relative errors."""
        import tensorflow as tf

        for i, (kind, fn, inputs) in enumerate(self.calls):
            results = {}
            for dtype in ("float32", "float64"):
                args = [tf.constant(a.astype(dtype)) for a in inputs]
                with tf.GradientTape() as tape:
                    tape.watch(args)
                    y = fn(*args)
                    proj = np.random.default_rng(i).standard_normal(y.shape).astype("float32").astype(dtype)
                    loss = tf.reduce_sum(y * proj)
                results[dtype] = [y] + list(tape.gradient(loss, args))
            errs = [float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(float(np.abs(np.asarray(b)).max()), 1e-30))
                    for a, b in zip(results["float32"], results["float64"])]
            out[f"layerwise/{prefix}/{i:04d}_{kind}"] = np.array(errs)


def network_cases(out: dict, float64_truth: bool) -> None:
    """Every kernel call of whole networks against float64 (see the module docstring); and the logits.

    With ``float64_truth`` the direct supernet and the derived network are also run whole in float64 (from the
    float32 weights and inputs), stored as ``float64/<name>/logits``: the forward pass is continuous, so the
    logits of either kernel set can be held to float64 too. TF's float64 kernels are its own (Eigen) ones.
    """
    import keras
    import tensorflow as tf

    from hlrs_tf.space.derived_network import DerivedNetwork
    from hlrs_tf.space.genotypes import DARTS_V2
    from hlrs_tf.space.supernet import SearchNetwork

    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((8, 16, 16, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, 8).astype("int32"))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def run(name, net, forward, inputs=x, weights=None, record=True):
        forward(net, inputs)  # build
        if weights is not None:  # the float64 copy: the float32 network's weights, cast
            for v, value in zip(net.trainable_variables, weights):
                v.assign(tf.cast(value, v.dtype))
        calls = KernelCalls()
        with calls.recording() if record else contextlib.nullcontext():
            with tf.GradientTape() as tape:
                logits = forward(net, inputs)
                loss = loss_fn(y, logits)
        grads = tape.gradient(loss, net.trainable_variables)
        assert all(g is not None for g in grads), name
        out[f"{name}/logits"] = logits.numpy()
        if record:
            calls.errors(out, name)
        return [v.numpy() for v in net.trainable_variables]

    def supernet(impl, dtype="float32"):
        keras.utils.set_random_seed(3)
        return SearchNetwork(8, 10, 5, cell_impl=impl, name=f"supernet_{impl}", dtype=dtype)

    def derived(dtype="float32"):
        keras.utils.set_random_seed(4)
        return DerivedNetwork(DARTS_V2, 8, 10, 5, auxiliary=True, name="derived", dtype=dtype)

    supernet_forward = lambda n, inputs: n(inputs, training=True)  # noqa: E731
    # Training mode (batch statistics, drop-path probability 0: deterministic), main + auxiliary logits.
    derived_forward = lambda n, inputs: tf.add(*n.forward(inputs, training=True, with_aux=True))  # noqa: E731
    run("supernet_fused", supernet("fused"), supernet_forward)
    direct = run("supernet_direct", supernet("direct"), supernet_forward)
    derived_weights = run("derived", derived(), derived_forward)
    if not float64_truth:
        return
    # Every sub-layer's default dtype from here on (this process ends after this). The global policy, not
    # floatx: Keras fixes the policy from floatx when the first layer is made.
    keras.config.set_dtype_policy("float64")
    x64 = tf.cast(x, tf.float64)
    run("float64/supernet_direct", supernet("direct", "float64"), supernet_forward, x64, direct, record=False)
    run("float64/derived", derived("float64"), derived_forward, x64, derived_weights, record=False)


def main(path: str) -> None:
    from hlrs_tf.runtime.cli import onednn_enabled
    from hlrs_tf.search.task import configure_threads

    configure_threads()  # the commands' thread layout: oneDNN picks other kernels for one intra-op thread
    out = {}
    onednn = onednn_enabled()
    op_cases(out)
    network_cases(out, float64_truth=not onednn)  # computed once, in TF's own kernels' process
    out["onednn"] = np.array(onednn)
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
