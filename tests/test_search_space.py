"""The search space against the reference: parameter counts, op semantics, mixed op and cell wiring."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.space import ops as darts_ops
from hlrs_tf.space.cells import MixedOp, SearchCell
from hlrs_tf.space.genotypes import PRIMITIVES, num_edges
from hlrs_tf.space.stacking import reduction_layers
from hlrs_tf.space.supernet import SearchNetwork
from hlrs_tf.testing import registry_round_trip


def count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def test_reference_parameter_count_c16_l8_cifar():
    """docs/method.md M2: C=16, L=8, 10 classes, 32x32x3 -> exactly 1,930,618 trainable weights, alphas excluded."""
    model = DartsSearchModel(SearchNetwork(16, 10, 8))
    model.build_all((32, 32, 3))
    weights, alphas = model.split_variables()
    assert count(weights) == 1_930_618
    assert [tuple(a.shape) for a in alphas] == [(14, 8), (14, 8)]
    assert count(alphas) == 224
    # alphas are separate variables, never among the weights
    assert not {id(a) for a in alphas} & {id(w) for w in weights}
    assert all("alphas" not in w.path for w in weights)


def test_alpha_init_scale():
    net = SearchNetwork(4, 10, 3)
    a = keras.ops.convert_to_numpy(net.alphas_normal)
    assert a.shape == (14, 8) and 0 < a.std() < 1e-2


def test_reduction_positions():
    assert reduction_layers(8) == (2, 5)
    assert reduction_layers(5) == (1, 3)
    net = SearchNetwork(4, 10, 8)
    assert [c.reduction for c in net.cells] == [False, False, True, False, False, True, False, False]
    assert [c.channels for c in net.cells] == [4, 4, 8, 8, 8, 16, 16, 16]
    assert [c.reduction_prev for c in net.cells][3] and [c.reduction_prev for c in net.cells][6]


def test_num_edges():
    assert num_edges(4) == 14
    cell = SearchCell(4, reduction=True, reduction_prev=False)
    strides = [e.strides for e in cell.edges]
    # node j takes 2 + j inputs; only the edges from the two cell inputs are strided
    assert len(strides) == 14
    assert strides == [2, 2, 2, 2, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1]


def _dense_depthwise_reference(x, kernel, stride, dilation):
    """Direct numpy depthwise conv padded as PyTorch's ``Conv2d(padding=k_eff // 2)`` in the reference
    ``cnn/operations.py``: ``k_eff // 2`` zeros on both sides (not TF's 'SAME', which pads less before than
    after at stride 2 on even sizes)."""
    n, h, w, c = x.shape
    k = kernel.shape[0]
    eff = dilation * (k - 1) + 1
    out_h, out_w = -(-h // stride), -(-w // stride)
    p = eff // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros((n, out_h, out_w, c), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            for a in range(k):
                for b in range(k):
                    row, col = i * stride + a * dilation, j * stride + b * dilation
                    out[:, i, j, :] += xp[:, row, col, :] * kernel[a, b, :, 0]
    return out


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 2, 2), (3, 1, 2)])
def test_depthwise_conv_matches_direct_computation(k, stride, dilation):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 8, 3)).astype("float32")
    layer = darts_ops.DepthwiseConv(k, strides=stride, dilation_rate=dilation)
    y = keras.ops.convert_to_numpy(layer(x))
    ref = _dense_depthwise_reference(x, keras.ops.convert_to_numpy(layer.kernel), stride, dilation)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_batchnorm_fused_matches_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 5, 3)).astype("float32") * 3 + 1
    bn = darts_ops.BatchNorm(affine=False)
    y = keras.ops.convert_to_numpy(bn(x, training=True))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    # PyTorch running statistics: momentum 0.1, unbiased variance
    n = x.size // 3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance), 0.9 + 0.1 * var * n / (n - 1), atol=1e-4
    )
    assert not bn.trainable_weights  # affine-free in the search network


def test_factorized_reduce_shapes_even_and_odd():
    fr = darts_ops.FactorizedReduce(8, affine=False)
    assert tuple(fr(np.ones((2, 8, 8, 4), "float32")).shape) == (2, 4, 4, 8)
    fr2 = darts_ops.FactorizedReduce(8, affine=False)
    assert tuple(fr2(np.ones((2, 7, 7, 4), "float32")).shape) == (2, 4, 4, 8)


@pytest.mark.parametrize("size", [(8, 8), (7, 7), (5, 6)])
def test_strided_views_are_what_a_1x1_stride_2_conv_sees(size):
    """FactorizedReduce's samplings: x and x shifted by one pixel (zero-padded back), taken at stride 2 -- for
    static sizes, and for sizes only known at run time (the other code path)."""
    x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype("float32")
    shifted = np.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    expected = (x[:, ::2, ::2, :], shifted[:, ::2, ::2, :])
    dynamic = tf.function(darts_ops.strided_views, input_signature=[tf.TensorSpec((None, None, None, 3))])
    for even, odd in (darts_ops.strided_views(tf.constant(x)), dynamic(tf.constant(x))):
        np.testing.assert_array_equal(even.numpy(), expected[0])
        np.testing.assert_array_equal(odd.numpy(), expected[1])


@pytest.mark.parametrize("stride,offset", [(2, 0), (2, 1), (3, 0), (3, 2)])
@pytest.mark.parametrize("size", [(8, 8), (7, 9), (1, 2)])
def test_subsample_is_numpy_strided_indexing_padded_at_the_end(size, stride, offset):
    """``subsample`` (a reshape and a ``Slice``, not a strided slice) against numpy's ``x[:, o::s, o::s]``
    zero-padded to ``ceil(H/s) x ceil(W/s)``, static and dynamic sizes; its gradient puts the output gradient
    back at the sampled pixels and zeros elsewhere."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *size, 3)).astype("float32")
    rows, cols = -(-size[0] // stride), -(-size[1] // stride)
    sampled = x[:, offset::stride, offset::stride, :]
    expected = np.pad(sampled, ((0, 0), (0, rows - sampled.shape[1]), (0, cols - sampled.shape[2]), (0, 0)))
    dynamic = tf.function(lambda t: darts_ops.subsample(t, stride, offset),
                          input_signature=[tf.TensorSpec((None, None, None, 3))])
    for got in (darts_ops.subsample(tf.constant(x), stride, offset), dynamic(tf.constant(x))):
        np.testing.assert_array_equal(got.numpy(), expected)
    g = rng.standard_normal(expected.shape).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = darts_ops.subsample(xt, stride, offset)
    grad = tape.gradient(y, xt, output_gradients=tf.constant(g)).numpy()
    want = np.zeros_like(x)
    want[:, offset::stride, offset::stride, :] = g[:, : sampled.shape[1], : sampled.shape[2], :]
    np.testing.assert_array_equal(grad, want)


def test_factorized_reduce_is_two_1x1_stride_2_convs():
    """The reference form (ReLU, 1x1 stride-2 conv of x and of x shifted by one pixel, concat, BN), written with
    TF's strided conv, against the layer (which convolves the samplings with stride 1)."""
    x = np.random.default_rng(1).standard_normal((2, 7, 7, 6)).astype("float32")
    fr = darts_ops.FactorizedReduce(8, affine=False)
    got = fr(x, training=False).numpy()
    r = np.maximum(x, 0.0)
    shifted = np.pad(r[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    halves = [tf.nn.conv2d(v, conv.kernel.numpy(), 2, "VALID") for v, conv in ((r, fr.conv_1), (shifted, fr.conv_2))]
    expected = tf.concat(halves, axis=-1).numpy() / np.sqrt(1 + 1e-5)  # BN at its initial statistics
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _one_hot(name):
    w = np.zeros(len(PRIMITIVES), "float32")
    w[PRIMITIVES.index(name)] = 1.0
    return w


def test_mixed_op_one_hot_reduces_to_single_op():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 6, 4)).astype("float32")
    op = MixedOp(4, strides=1)
    out_none = keras.ops.convert_to_numpy(op(x, _one_hot("none"), training=False))
    np.testing.assert_array_equal(out_none, 0.0)
    out_skip = keras.ops.convert_to_numpy(op(x, _one_hot("skip_connect"), training=False))
    np.testing.assert_allclose(out_skip, x, atol=1e-6)
    # max pool, then an affine-free BN at its initial statistics (mean 0, var 1)
    out_max = keras.ops.convert_to_numpy(op(x, _one_hot("max_pool_3x3"), training=False))
    ref = tf.nn.max_pool2d(x, 3, 1, "SAME").numpy() / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(out_max, ref, atol=1e-5)
    # the average excludes the padding: a corner averages 4 values, not 9
    out_avg = keras.ops.convert_to_numpy(op(x, _one_hot("avg_pool_3x3"), training=False)) * np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(out_avg[:, 0, 0, :], x[:, :2, :2, :].mean(axis=(1, 2)), atol=1e-5)


def test_mixed_op_is_weighted_sum_of_candidates():
    """The optimised mixed op (shared ReLU, no 'none' layer) equals sum_o w_o * o(x) computed op by op."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 8, 4)).astype("float32")
    for strides in (1, 2):
        mixed = MixedOp(4, strides=strides)
        w = tf.nn.softmax(rng.standard_normal(len(PRIMITIVES)).astype("float32")).numpy()
        got = keras.ops.convert_to_numpy(mixed(x, w, training=True))
        # direct: every candidate applied to x itself (applying its own ReLU), weighted, summed
        expected = np.zeros_like(got)
        for (i, _shares_relu), layer in zip(mixed._relu_first, mixed.candidate_ops):
            cfg = layer.get_config()
            if "apply_relu" in cfg:
                cfg["apply_relu"] = True
            clone = layer.__class__.from_config(cfg)
            clone(x, training=True)  # build
            clone.set_weights(layer.get_weights())
            expected += w[i] * keras.ops.convert_to_numpy(clone(x, training=True))
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_search_cell_output_shape():
    cell = SearchCell(4, reduction=True, reduction_prev=False)
    s = np.zeros((2, 8, 8, 12), "float32")
    w = np.full((14, 8), 1 / 8, "float32")
    assert tuple(cell(s, s, w).shape) == (2, 4, 4, 16)


def test_layers_serialise():
    for layer in [
        darts_ops.SepConv(4, 3, 2, affine=False),
        darts_ops.DilConv(4, 5, 1, affine=True),
        darts_ops.FactorizedReduce(4),
        darts_ops.Pool("avg", 2, bn=True),
        MixedOp(4, 2),
        SearchCell(4, True, False),
        SearchNetwork(4, 10, 3),
    ]:
        clone = registry_round_trip(layer)
        assert clone.get_config() == layer.get_config()
