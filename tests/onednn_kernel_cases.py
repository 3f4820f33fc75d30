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
  wrong there, which is why the layer convolves the stride-2 samplings instead (``hlrs_tf.ops``);
* whole networks: the gradient of the loss with respect to every trainable variable (weights and alphas)
  of the supernet with the fused and with the direct cell, and of a derived network with its auxiliary head.
"""

from __future__ import annotations

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

    from hlrs_tf.ops import PointwiseConv

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

    from hlrs_tf.derived_network import average_pool_same
    from hlrs_tf.fused_cell import _fused_bn
    from hlrs_tf.ops import FactorizedReduce, avg_pool_3x3, depthwise_conv, max_pool_3x3

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
            _record(out, f"factorized_reduce/{size}x{size}x{c_in}", lambda x, l=layer: l(x, training=True), x,
                    variables=layer.trainable_variables)


def network_cases(out: dict, float64_truth: bool) -> None:
    """Loss gradients of whole networks with respect to every trainable variable.

    With ``float64_truth`` the direct supernet and the derived network are computed once more in float64 (from
    the float32 weights and inputs), stored under ``float64/<name>/grad/<variable path>``: the ground truth the
    test measures both float32 kernel sets against. TF's float64 kernels are its own (Eigen) ones.
    """
    import keras
    import tensorflow as tf

    from hlrs_tf.derived_network import DerivedNetwork
    from hlrs_tf.genotypes import DARTS_V2
    from hlrs_tf.search_network import SearchNetwork

    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((8, 16, 16, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, 8).astype("int32"))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def grads_of(name, net, forward, inputs=x, paths=None):
        forward(net, inputs)  # build
        if paths is not None:  # the float64 copy: the float32 network's weights, cast
            for v, value in zip(net.trainable_variables, paths.values()):
                v.assign(tf.cast(value, v.dtype))
        with tf.GradientTape() as tape:
            logits = forward(net, inputs)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, net.trainable_variables)
        out[f"{name}/logits"] = logits.numpy()
        names = list(paths) if paths is not None else [v.path for v in net.trainable_variables]
        for path, g in zip(names, grads):
            out[f"{name}/grad/{path}"] = g.numpy()
        return {v.path: v.numpy() for v in net.trainable_variables}

    def supernet(impl, dtype="float32"):
        keras.utils.set_random_seed(3)
        return SearchNetwork(8, 10, 5, cell_impl=impl, name=f"supernet_{impl}", dtype=dtype)

    def derived(dtype="float32"):
        keras.utils.set_random_seed(4)
        return DerivedNetwork(DARTS_V2, 8, 10, 5, auxiliary=True, name="derived", dtype=dtype)

    supernet_forward = lambda n, inputs: n(inputs, training=True)  # noqa: E731
    # Training mode (batch statistics, drop-path probability 0: deterministic), main + auxiliary logits.
    derived_forward = lambda n, inputs: tf.add(*n.forward(inputs, training=True, with_aux=True))  # noqa: E731
    grads_of("supernet_fused", supernet("fused"), supernet_forward)
    direct = grads_of("supernet_direct", supernet("direct"), supernet_forward)
    derived_weights = grads_of("derived", derived(), derived_forward)
    if not float64_truth:
        return
    # Every sub-layer's default dtype from here on (this process ends after this). The global policy, not
    # floatx: Keras fixes the policy from floatx when the first layer is made.
    keras.config.set_dtype_policy("float64")
    x64 = tf.cast(x, tf.float64)
    grads_of("float64/supernet_direct", supernet("direct", "float64"), supernet_forward, x64, direct)
    grads_of("float64/derived", derived("float64"), derived_forward, x64, derived_weights)


def main(path: str) -> None:
    from hlrs_tf.cli import onednn_enabled

    out = {}
    onednn = onednn_enabled()
    op_cases(out)
    network_cases(out, float64_truth=not onednn)  # computed once, in TF's own kernels' process
    out["onednn"] = np.array(onednn)
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
