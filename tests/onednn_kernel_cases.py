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


def op_cases(out: dict) -> None:
    """Single ops at the networks' shapes."""
    import keras
    import tensorflow as tf

    from hlrs_tf.derived_network import average_pool_same
    from hlrs_tf.fused_cell import _fused_bn
    from hlrs_tf.ops import FactorizedReduce, depthwise_conv

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
        zeros, ones = tf.zeros((c,)), tf.ones((c,))
        for training in (True, False):
            _record(out, f"fused_bn_train{int(training)}/{tag}",
                    lambda x, scale, t=training: _fused_bn(x, scale, zeros, zeros, ones, is_training=t)[0], x, f(c))
        for s in (1, 2):
            _record(out, f"max_pool_s{s}/{tag}", lambda x, s=s: tf.nn.max_pool2d(x, 3, s, "SAME"), x)
            _record(out, f"avg_pool_s{s}/{tag}", lambda x, s=s: tf.nn.avg_pool2d(x, 3, s, "SAME"), x)
        if size >= 5:
            _record(out, f"aux_avg_pool_5x5_s3/{tag}", lambda x: tf.nn.avg_pool2d(x, 5, 3, "VALID"), x)
        else:  # the auxiliary head on a small map
            _record(out, f"aux_avg_pool_5x5_s3/{tag}", lambda x: average_pool_same(x, 5, 3), x)
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


def network_cases(out: dict) -> None:
    """Loss gradients of whole networks with respect to every trainable variable."""
    import keras
    import tensorflow as tf

    from hlrs_tf.derived_network import DerivedNetwork
    from hlrs_tf.genotypes import DARTS_V2
    from hlrs_tf.search_network import SearchNetwork

    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((8, 16, 16, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, 8).astype("int32"))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def grads_of(name, net, forward):
        forward(net)  # build
        with tf.GradientTape() as tape:
            logits = forward(net)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, net.trainable_variables)
        out[f"{name}/logits"] = logits.numpy()
        for v, g in zip(net.trainable_variables, grads):
            out[f"{name}/grad/{v.path}"] = g.numpy()

    for cell_impl in ("fused", "direct"):
        keras.utils.set_random_seed(3)
        net = SearchNetwork(8, 10, 5, cell_impl=cell_impl, name=f"supernet_{cell_impl}")
        grads_of(f"supernet_{cell_impl}", net, lambda n: n(x, training=True))
    keras.utils.set_random_seed(4)
    net = DerivedNetwork(DARTS_V2, 8, 10, 5, auxiliary=True, name="derived")
    # Training mode (batch statistics, drop-path probability 0: deterministic), main + auxiliary logits.
    grads_of("derived", net, lambda n: tf.add(*n.forward(x, training=True, with_aux=True)))


def main(path: str) -> None:
    from hlrs_tf.cli import onednn_enabled

    out = {}
    op_cases(out)
    network_cases(out)
    out["onednn"] = np.array(onednn_enabled())
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
