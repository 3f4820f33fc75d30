"""Every strided op of the search space pads as the reference (PyTorch DARTS, quark0/darts ``cnn/operations.py``).

The reference pads ``k_eff // 2`` on both sides (``k_eff = d * (k - 1) + 1``): ``nn.MaxPool2d(3, stride,
padding=1)`` (padding never wins, as -inf), ``nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)``,
and zero-padded depthwise convs with ``padding`` 1, 2, 2, 4 for sep 3x3, sep 5x5, dil 3x3, dil 5x5. So output
pixel ``i`` of a stride-2 op is centred on input pixel ``2i``. TF's "SAME" pads 0/1, 1/2 and 3/4 at stride 2 on
even sizes (centre ``2i + 1``), which is what these tests would catch. The oracles below are numpy loops written
from PyTorch's definitions, not from our code; sizes are even (8) and odd (7), square and not.
"""

import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.space import ops as darts_ops

SIZES = [(8, 8), (7, 7), (8, 7)]
EPS = 1e-5  # BatchNorm2d's default epsilon


def _windows(n, stride, pad, k_eff):
    """Per output position along one axis: the first input index of its window (may be negative)."""
    out = (n + 2 * pad - k_eff) // stride + 1  # PyTorch's output size
    return [i * stride - pad for i in range(out)]


def np_max_pool(x, proj, stride):
    """``nn.MaxPool2d(3, stride, padding=1)`` and its input gradient (of ``sum(y * proj)``), float64."""
    b, h, w, c = x.shape
    rows, cols = _windows(h, stride, 1, 3), _windows(w, stride, 1, 3)
    y = np.zeros((b, len(rows), len(cols), c))
    dx = np.zeros(x.shape)
    for i, r0 in enumerate(rows):
        for j, c0 in enumerate(cols):
            r, cc = slice(max(r0, 0), min(r0 + 3, h)), slice(max(c0, 0), min(c0 + 3, w))  # -inf padding: ignored
            win = x[:, r, cc, :].reshape(b, -1, c)
            y[:, i, j, :] = win.max(axis=1)
            arg = win.argmax(axis=1)  # random inputs: no ties
            nc = cc.stop - cc.start
            for n in range(b):
                for ch in range(c):
                    a = arg[n, ch]
                    dx[n, r.start + a // nc, cc.start + a % nc, ch] += proj[n, i, j, ch]
    return y, dx


def np_avg_pool(x, proj, stride):
    """``nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)`` and its input gradient, float64."""
    b, h, w, c = x.shape
    rows, cols = _windows(h, stride, 1, 3), _windows(w, stride, 1, 3)
    y = np.zeros((b, len(rows), len(cols), c))
    dx = np.zeros(x.shape)
    for i, r0 in enumerate(rows):
        for j, c0 in enumerate(cols):
            r, cc = slice(max(r0, 0), min(r0 + 3, h)), slice(max(c0, 0), min(c0 + 3, w))
            count = (r.stop - r.start) * (cc.stop - cc.start)  # cells inside the map only
            y[:, i, j, :] = x[:, r, cc, :].sum(axis=(1, 2)) / count
            dx[:, r, cc, :] += proj[:, i : i + 1, j : j + 1, :] / count
    return y, dx


def np_depthwise(x, kernel, stride, dilation, proj=None):
    """``nn.Conv2d(C, C, k, stride, padding=k_eff // 2, dilation, groups=C, bias=False)`` of NHWC ``x`` with a
    ``(k, k, C, 1)`` kernel; with ``proj`` also the input and kernel gradients of ``sum(y * proj)``."""
    b, h, w, c = x.shape
    k = kernel.shape[0]
    k_eff = dilation * (k - 1) + 1
    p = k_eff // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # zeros on both sides
    rows, cols = _windows(h, stride, p, k_eff), _windows(w, stride, p, k_eff)
    y = np.zeros((b, len(rows), len(cols), c))
    dxp, dk = np.zeros(xp.shape), np.zeros(kernel.shape)
    for i, r0 in enumerate(rows):
        for j, c0 in enumerate(cols):
            for a in range(k):
                for bb in range(k):
                    pix = xp[:, r0 + p + a * dilation, c0 + p + bb * dilation, :]
                    y[:, i, j, :] += pix * kernel[a, bb, :, 0]
                    if proj is not None:
                        row, col = r0 + p + a * dilation, c0 + p + bb * dilation
                        dxp[:, row, col, :] += proj[:, i, j, :] * kernel[a, bb, :, 0]
                        dk[a, bb, :, 0] += (pix * proj[:, i, j, :]).sum(axis=0)
    return y, dxp[:, p : p + h, p : p + w, :], dk


def np_bn_train(y):
    """``BatchNorm2d(affine=False)`` in training mode: batch statistics, biased variance."""
    mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    return (y - mean) / np.sqrt(var + EPS)


def np_relu(x):
    return np.maximum(x, 0.0)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _value_and_grads(fn, x, *variables):
    """``fn(x)``, and the gradients of ``sum(fn(x) * proj)`` with respect to ``x`` and ``variables``."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = fn(xt)
        proj = np.random.default_rng(1).standard_normal(y.shape)
        loss = tf.reduce_sum(y * tf.constant(proj, y.dtype))
    grads = tape.gradient(loss, [xt, *variables])
    return y.numpy(), proj, [g.numpy() for g in grads]


# Tolerances: every oracle entry is a float64 sum of at most 25 products (or a max, or 9 terms / count) of
# O(1) values; float32 rounding of such a sum is ~25 * 6e-8 ~ 1.5e-6, so 1e-5 is a loose bound.
TOL = 1e-5


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_matches_pytorch(size, stride):
    x = _x((2, *size, 3))
    y, proj, (dx,) = _value_and_grads(lambda t: darts_ops.max_pool_3x3(t, stride), x)
    y_ref, dx_ref = np_max_pool(x.astype(np.float64), proj, stride)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, atol=TOL)
    np.testing.assert_allclose(dx, dx_ref, atol=TOL)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stride", [1, 2])
def test_avg_pool_matches_pytorch_count_include_pad_false(size, stride):
    x = _x((2, *size, 3))
    y, proj, (dx,) = _value_and_grads(lambda t: darts_ops.avg_pool_3x3(t, stride), x)
    y_ref, dx_ref = np_avg_pool(x.astype(np.float64), proj, stride)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, atol=TOL)
    np.testing.assert_allclose(dx, dx_ref, atol=TOL)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_layer_and_unknown_spatial_size(kind):
    """The ``Pool`` layer (no BN: the derived network's op) and the same pool traced with unknown H, W."""
    x = _x((2, 8, 7, 3))
    ref = (np_max_pool if kind == "max" else np_avg_pool)(x.astype(np.float64), np.zeros((2, 4, 4, 3)), 2)[0]
    layer = darts_ops.Pool(kind, strides=2, bn=False)
    np.testing.assert_allclose(layer(x).numpy(), ref, atol=TOL)
    fn = darts_ops.max_pool_3x3 if kind == "max" else darts_ops.avg_pool_3x3
    dynamic = tf.function(lambda t: fn(t, 2), input_signature=[tf.TensorSpec((None, None, None, 3))])
    np.testing.assert_allclose(dynamic(tf.constant(x)).numpy(), ref, atol=TOL)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_max_pool_minus_inf_padding_in_low_precision(dtype):
    # A max selects one of its inputs, so the low-precision result is the float32 one of the cast input, exactly.
    x = tf.cast(tf.constant(_x((2, 8, 8, 3))), dtype)
    y = darts_ops.max_pool_3x3(x, 2)
    assert y.dtype == dtype and np.isfinite(tf.cast(y, tf.float32).numpy()).all()
    np.testing.assert_array_equal(tf.cast(y, tf.float32).numpy(),
                                  darts_ops.max_pool_3x3(tf.cast(x, tf.float32), 2).numpy())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_matches_pytorch(size, k, dilation, stride):
    """Output, input and kernel gradient of the raw function and of the ``DepthwiseConv`` layer."""
    x = _x((2, *size, 3))
    kernel = _x((k, k, 3, 1), seed=2)
    kt = tf.Variable(kernel)
    y, proj, (dx, dk) = _value_and_grads(lambda t: darts_ops.depthwise_conv(t, kt, stride, dilation), x, kt)
    y_ref, dx_ref, dk_ref = np_depthwise(x.astype(np.float64), kernel.astype(np.float64), stride, dilation, proj)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, atol=TOL)
    np.testing.assert_allclose(dx, dx_ref, atol=TOL)
    # A kernel-gradient entry sums over 2 x H' x W' (up to 128) products: still far below 1e-4.
    np.testing.assert_allclose(dk, dk_ref, atol=1e-4)
    layer = darts_ops.DepthwiseConv(k, strides=stride, dilation_rate=dilation)
    layer.build(x.shape)
    layer.kernel.assign(kernel)
    np.testing.assert_allclose(layer(x).numpy(), y_ref, atol=TOL)


@pytest.mark.parametrize("size", [(8, 8), (7, 7)])
@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 1), (3, 2), (5, 2)])
def test_strided_output_pixel_i_is_centred_on_input_pixel_2i(size, k, dilation):
    """A kernel that is 1 at its centre tap samples the input: the reference gives ``x[::2, ::2]`` (TF's "SAME"
    would give ``x[1::2, 1::2]`` on even sizes)."""
    x = _x((1, *size, 2))
    kernel = np.zeros((k, k, 2, 1), "float32")
    kernel[k // 2, k // 2] = 1.0
    y = darts_ops.depthwise_conv(tf.constant(x), tf.constant(kernel), 2, dilation).numpy()
    np.testing.assert_array_equal(y, x[:, ::2, ::2, :])


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("size", [8, 7])
def test_pool_window_of_output_i_is_centred_on_input_2i(kind, size):
    """An impulse at input ``(r, c)`` reaches output ``(i, j)`` exactly when ``|r - 2i| <= 1`` and
    ``|c - 2j| <= 1``: the 3x3 window of output ``i`` spans inputs ``2i - 1 .. 2i + 1``."""
    fn = darts_ops.max_pool_3x3 if kind == "max" else darts_ops.avg_pool_3x3
    out = -(-size // 2)
    for r, c in [(0, 0), (1, 1), (2, 2), (1, 4), (size - 1, size - 2)]:
        x = np.zeros((1, size, size, 1), "float32")  # max: background 0 < impulse 1 (no -inf needed)
        x[0, r, c, 0] = 1.0
        hit = fn(tf.constant(x), 2).numpy()[0, :, :, 0] > 0
        want = np.array([[abs(r - 2 * i) <= 1 and abs(c - 2 * j) <= 1 for j in range(out)] for i in range(out)])
        np.testing.assert_array_equal(hit, want, err_msg=f"impulse at {(r, c)}")


def _set_kernels(layer, kernels):
    for sub, value in kernels.items():
        getattr(layer, sub).kernel.assign(value)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_sep_conv_matches_pytorch(size, k, stride):
    """``SepConv`` = relu, dw(stride), 1x1, BN, relu, dw, 1x1, BN (BN in training mode: batch statistics)."""
    c = 4
    x = _x((4, *size, c))
    layer = darts_ops.SepConv(c, k, stride, affine=False)
    layer(x, training=False)  # build
    kernels = {"dw_1": _x((k, k, c, 1), 3), "pw_1": _x((1, 1, c, c), 4), "dw_2": _x((k, k, c, 1), 5),
               "pw_2": _x((1, 1, c, c), 6)}
    _set_kernels(layer, kernels)
    kern = {key: v.astype(np.float64) for key, v in kernels.items()}
    y = np_depthwise(np_relu(x.astype(np.float64)), kern["dw_1"], stride, 1)[0]
    y = np_bn_train(y @ kern["pw_1"][0, 0])
    y = np_depthwise(np_relu(y), kern["dw_2"], 1, 1)[0]
    ref = np_bn_train(y @ kern["pw_2"][0, 0])
    got = layer(x, training=True).numpy()
    assert got.shape == ref.shape
    # Outputs are standardised (O(1)); the float32 rounding before each BN is ~1e-6 relative to the batch
    # standard deviation, which the BN divides by: 1e-4 is a loose bound.
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_dil_conv_matches_pytorch(size, k, stride):
    """``DilConv`` = relu, dw(stride, dilation 2, padding d(k-1)/2), 1x1, BN (training mode)."""
    c = 4
    x = _x((4, *size, c))
    layer = darts_ops.DilConv(c, k, stride, 2, affine=False)
    layer(x, training=False)  # build
    kernels = {"dw": _x((k, k, c, 1), 7), "pw": _x((1, 1, c, c), 8)}
    _set_kernels(layer, kernels)
    y = np_depthwise(np_relu(x.astype(np.float64)), kernels["dw"].astype(np.float64), stride, 2)[0]
    ref = np_bn_train(y @ kernels["pw"][0, 0].astype(np.float64))
    got = layer(x, training=True).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4)  # as for SepConv


@pytest.mark.parametrize("size", [(8, 8), (7, 7)])
def test_relu_conv_bn_kxk_strided_matches_pytorch(size):
    """``ReLUConvBN`` with a 3x3 stride-2 conv (DARTS only uses 1x1, but the layer takes any odd k)."""
    c_in, c_out = 3, 4
    x = _x((4, *size, c_in))
    layer = darts_ops.ReLUConvBN(c_out, 3, 2, affine=False)
    layer(x, training=False)  # build
    kernel = _x((3, 3, c_in, c_out), 9)
    layer.conv.kernel.assign(kernel)
    # A full conv is the sum over input channels of depthwise convs with that channel's kernel slice.
    xr = np_relu(x.astype(np.float64))
    y = sum(
        np_depthwise(np.repeat(xr[..., ci : ci + 1], c_out, axis=-1), kernel[:, :, ci : ci + 1, :].astype(np.float64)
                     .transpose(0, 1, 3, 2), 2, 1)[0]
        for ci in range(c_in)
    )
    np.testing.assert_allclose(layer(x, training=True).numpy(), np_bn_train(y), atol=1e-4)  # as for SepConv


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        darts_ops.DepthwiseConv(4)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        darts_ops.ReLUConvBN(4, kernel_size=2)
    with pytest.raises(ValueError, match="padding must be 'reference' or 'valid'"):
        darts_ops.depthwise_conv(tf.zeros((1, 4, 4, 1)), tf.zeros((3, 3, 1, 1)), padding="same")
