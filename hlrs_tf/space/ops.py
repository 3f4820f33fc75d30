"""Candidate operations of the DARTS search space, as Keras layers (channels-last).

The table and the op definitions follow the reference DARTS implementation (quark0/darts,
``cnn/operations.py``, the ``OPS`` table):

* ``max_pool_3x3`` / ``avg_pool_3x3`` -- ``nn.MaxPool2d(3, stride, padding=1)`` and ``nn.AvgPool2d(3, stride,
  padding=1, count_include_pad=False)`` (:func:`max_pool_3x3`, :func:`avg_pool_3x3`); followed by an
  affine-free BatchNorm in the *search* network only.
* ``skip_connect`` -- identity at stride 1, :class:`FactorizedReduce` at stride 2.
* ``sep_conv_kxk`` -- twice [ReLU, depthwise kxk, 1x1 conv, BN]; only the first depthwise conv is strided.
* ``dil_conv_kxk`` -- once [ReLU, depthwise kxk dilation 2, 1x1 conv, BN].
* ``none`` -- zeros. It is never instantiated in the search network: its output is zero, so its term of the
  mixed-op sum is zero and skipping it changes nothing (and an uncalled layer would stay unbuilt, which makes
  Keras trace the model twice; docs/method.md T3).

**Padding: the reference's, symmetric.** Every op with a kxk window pads ``k_eff // 2`` on *both* sides, as
the reference's ``padding=`` arguments do (``k_eff = d * (k - 1) + 1``: 1 for 3x3, 2 for 5x5 and the dilated
3x3, 4 for the dilated 5x5), so output pixel ``i`` is centred on input pixel ``s * i``. TensorFlow's "SAME"
padding is the same at stride 1 (odd windows), but at stride 2 on an even-sized map it pads one pixel less
before than after (0/1, 1/2, 3/4) and centres output pixel ``i`` on input pixel ``2i + 1``: every strided op
of a reduction cell shifted by one input pixel (half an output pixel) against the reference, a different
function (odd sizes happen to be symmetric under "SAME" too).
So the strided ops pad explicitly and run "valid" (:func:`pad_spatial`); the stride-1 ops keep "SAME", which
is the reference's padding there. ``FactorizedReduce`` (1x1 convs, no padding) was already the reference's.

Every layer that starts with a ReLU takes ``apply_relu``: the mixed op computes ``relu(x)`` once per edge and
feeds it to all of them (four ops on each edge share it), which saves a ReLU and its gradient per op.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from hlrs_tf.runtime import sync_bn
from hlrs_tf.space.genotypes import PRIMITIVES

# PyTorch's BatchNorm2d defaults (momentum 0.1 = weight of the new batch statistics).
BN_MOMENTUM = 0.1
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="hlrs_tf")
class BatchNorm(keras.layers.Layer):
    """BatchNorm on channels-last input as one fused kernel, with PyTorch's running-statistics rule.

    Keras' ``BatchNormalization`` is built from ~30 small ops (moments, updates, normalisation) per call; the
    search network holds hundreds of BNs, so their ops dominated the traced graph and the trace time. Here it
    is one ``FusedBatchNormV3`` op (and its fused gradient), with the running averages updated inside the op
    (``exponential_avg_factor`` = PyTorch's momentum 0.1; running variance unbiased, as in PyTorch).

    Args:
        affine: Learn a scale and an offset (derived network) or not (search network).
        momentum: Weight of the batch statistics in the running averages (PyTorch convention, 0.1).
        epsilon: Added to the variance.
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, affine: bool = True, momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.affine, self.momentum, self.epsilon = bool(affine), float(momentum), float(epsilon)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        # Never autocast (mixed precision, hlrs_tf.runtime.precision): the fused kernel takes bf16/fp16 activations but
        # its scale, offset and statistics in float32.
        if self.affine:
            self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones", autocast=False)
            self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros", autocast=False)
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(channels,), initializer="zeros", trainable=False, autocast=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(channels,), initializer="ones", trainable=False, autocast=False
        )

    def call(self, x, training=None):
        channels = x.shape[-1]
        if x.dtype == tf.float64:  # FusedBatchNorm has no float64 kernel: the float64 reference computations
            return self._call_float64(x, training)
        param_dtype = self.moving_mean.dtype  # float32 also for bf16/fp16 activations (see build)
        scale = self.gamma if self.affine else tf.ones((channels,), param_dtype)
        offset = self.beta if self.affine else tf.zeros((channels,), param_dtype)
        if training:
            if sync_bn.should_sync():  # >1 replicas: statistics of the global batch (hlrs_tf/runtime/sync_bn.py)
                return sync_bn.sync_batch_norm(self, x, scale, offset)
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=True, exponential_avg_factor=self.momentum,
            )
            self.moving_mean.assign(mean)
            self.moving_variance.assign(var)
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=self.epsilon, is_training=False,
        )
        return y

    def _call_float64(self, x, training):
        """The same function from unfused ops, for float64 (the ground truth ``tests/test_onednn_kernels.py``
        compares float32 kernels against); running statistics follow the same PyTorch rule."""
        scale = self.gamma if self.affine else None
        offset = self.beta if self.affine else None
        if not training:
            return tf.nn.batch_normalization(x, self.moving_mean, self.moving_variance, offset, scale, self.epsilon)
        mean, var = tf.nn.moments(x, [0, 1, 2])
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
        m = self.momentum
        self.moving_mean.assign((1 - m) * self.moving_mean + m * mean)
        self.moving_variance.assign((1 - m) * self.moving_variance + m * var * n / tf.maximum(n - 1, 1))
        return tf.nn.batch_normalization(x, mean, var, offset, scale, self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "affine": self.affine, "momentum": self.momentum, "epsilon": self.epsilon}


def batch_norm(affine: bool, name: str | None = None) -> BatchNorm:
    """BatchNorm as in the reference: affine-free in the search network, affine in the derived one."""
    return BatchNorm(affine, name=name)


class CompositeLayer(keras.layers.Layer):
    """Base of the layers made only of sub-layers: ``build`` does nothing, each sub-layer builds itself on its
    first call.

    Without an explicit ``build`` Keras builds such a layer by first tracing its whole ``call`` symbolically
    (``compute_output_spec``), so the supernet ran twice at start-up; this cut build time by more than half.
    """

    def build(self, input_shape):
        del input_shape  # sub-layers infer their input shapes on their first call


def dilated_dense_kernel(kernel, dilation_rate: int):
    """A ``(k, k, C, 1)`` kernel spread to its dense ``(d(k-1)+1)``-sized equivalent (zeros between taps)."""
    k, d = int(kernel.shape[0]), int(dilation_rate)
    channels = kernel.shape[2]
    kern = tf.reshape(kernel, (k, 1, k, 1, channels, 1))
    kern = tf.pad(kern, ((0, 0), (0, d - 1), (0, 0), (0, d - 1), (0, 0), (0, 0)))
    kern = tf.reshape(kern, (k * d, k * d, channels, 1))
    size = d * (k - 1) + 1
    return kern[:size, :size]


def reference_padding(kernel_size: int, dilation_rate: int = 1) -> int:
    """Padding per side of a kxk window in the reference: ``k_eff // 2`` with ``k_eff = d * (k - 1) + 1``.

    ``cnn/operations.py`` passes ``padding=1`` (3x3), 2 (5x5), 2 (3x3 dilation 2), 4 (5x5 dilation 2) and the
    pools ``padding=1``: always this value, on both sides.

    Raises:
        ValueError: an even ``kernel_size`` (symmetric padding centres only odd windows).
    """
    k, d = int(kernel_size), int(dilation_rate)
    if k < 1 or k % 2 == 0 or d < 1:
        raise ValueError(f"kernel_size must be odd and dilation_rate >= 1, got kernel_size={k}, dilation_rate={d}")
    return d * (k - 1) // 2


def pad_spatial(x, pad: int, value: float = 0.0):
    """``x`` (NHWC) padded by ``pad`` pixels on all four sides with ``value``: the reference's symmetric
    padding, made explicit so the op that follows runs "valid"."""
    if pad == 0:
        return x
    return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=tf.constant(value, x.dtype))


def max_pool_3x3(x, strides: int = 1):
    """``nn.MaxPool2d(3, stride=strides, padding=1)`` of NHWC ``x``: padding never wins (PyTorch pads -inf).

    Stride 1: TF's "SAME" max pool, which pads 1/1 and ignores the padding -- the same function. Stride 2:
    explicit -inf padding 1/1, then "valid" (TF's "SAME" would pad 0/1 on even sizes, see the module docstring).

    Returns:
        ``(B, ceil(H/s), ceil(W/s), C)``.
    """
    if strides == 1:
        return tf.nn.max_pool2d(x, 3, 1, "SAME")
    return tf.nn.max_pool2d(pad_spatial(x, 1, float("-inf")), 3, strides, "VALID")


def _avg_pool_scale(n: int, strides: int):
    """Per output position along one axis: 3 / (cells of the window inside the map), padding 1/1."""
    out = -(-n // strides)
    return [3.0 / (min(i * strides + 1, n - 1) - max(i * strides - 1, 0) + 1) for i in range(out)]


def avg_pool_3x3(x, strides: int = 1):
    """``nn.AvgPool2d(3, stride=strides, padding=1, count_include_pad=False)`` of NHWC ``x``.

    Stride 1: TF's "SAME" average pool, which pads 1/1 and divides by the cells inside the map -- the same
    function. Stride 2: the "valid" average of the zero-padded map (its sum / 9) times ``9 / cells inside``,
    a constant of the static shape (the count is separable: rows inside times columns inside); with unknown
    spatial sizes the count is pooled from a padded ones map instead.

    Returns:
        ``(B, ceil(H/s), ceil(W/s), C)``.
    """
    if strides == 1:
        return tf.nn.avg_pool2d(x, 3, 1, "SAME")
    pooled = tf.nn.avg_pool2d(pad_spatial(x, 1), 3, strides, "VALID")
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:
        ones = pad_spatial(tf.ones_like(x[:1, :, :, :1]), 1)
        return pooled / tf.nn.avg_pool2d(ones, 3, strides, "VALID")  # fraction of the window inside the map
    scale = np.outer(_avg_pool_scale(h, strides), _avg_pool_scale(w, strides))
    return pooled * tf.constant(scale[None, :, :, None], pooled.dtype)


def depthwise_conv(x, kernel, strides: int = 1, dilation_rate: int = 1, padding: str = "reference"):
    """Bias-free depthwise convolution of NHWC ``x`` with a ``(k, k, C, 1)`` kernel, padded as the reference.

    ``nn.Conv2d(C, C, k, stride, padding=k_eff // 2, dilation, groups=C, bias=False)`` of
    ``cnn/operations.py`` (:func:`reference_padding`; zero padding on both sides):

    * stride 1: TF's "SAME", which is that padding for odd windows;
    * stride s with ``dilation % s == 0`` (``dil_conv`` on a stride-2 edge): every tap of output ``i`` reads
      input ``s*i + d*m``, a multiple of s, so the op is the stride-1 conv with dilation ``d / s`` of the
      sub-sampled map ``x[:, ::s, ::s]`` (its "SAME" padding ``(d/s) * (k//2)`` is exactly the taps that fall
      outside the map). It convolves with the kxk taps themselves, not their dense ``k_eff x k_eff`` spread
      (25 taps instead of 81 for the 5x5), and ``tf.nn.depthwise_conv2d`` refuses a stride together with a
      dilation anyway;
    * other strides: explicit zero padding, then "valid" (a dilated kernel spread into its dense equivalent,
      :func:`dilated_dense_kernel`).

    Args:
        x: ``(B, H, W, C)``.
        kernel: ``(k, k, C, 1)``, k odd.
        strides: Stride (both spatial dims).
        dilation_rate: Dilation d.
        padding: ``"reference"``, or ``"valid"`` when the caller already padded ``x`` with
            :func:`pad_spatial` by ``reference_padding(k, d)`` (the fused cell shares one padded map among
            the edges leaving a state).

    Returns:
        ``(B, ceil(H/s), ceil(W/s), C)`` (for ``"valid"``: of the unpadded ``H``, ``W``).
    """
    if padding not in ("reference", "valid"):
        raise ValueError(f"padding must be 'reference' or 'valid', got {padding!r}")
    k, s, d = int(kernel.shape[0]), int(strides), int(dilation_rate)
    pad = reference_padding(k, d)
    if padding == "reference" and s == 1:
        if d == 1:
            # The raw op: ``tf.nn.depthwise_conv2d`` adds two dead constants per call to a traced graph.
            return tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, strides=[1, 1, 1, 1], padding="SAME")
        return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME", dilations=[d, d])
    if padding == "reference" and d % s == 0:
        return depthwise_conv(subsample(x, s), kernel, 1, d // s)
    if padding == "reference":
        x = pad_spatial(x, pad)
    if d > 1:
        kernel = dilated_dense_kernel(kernel, d)
    return tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, strides=[1, s, s, 1], padding="VALID")


@keras.saving.register_keras_serializable(package="hlrs_tf")
class DepthwiseConv(keras.layers.Layer):
    """Bias-free depthwise convolution, padded as the reference (:func:`depthwise_conv`), any stride and dilation.

    The trainable kernel is ``(k, k, C, 1)``, so parameter counts match the reference.

    Args:
        kernel_size: Spatial size k of the kernel.
        strides: Stride (same in both spatial dims).
        dilation_rate: Dilation d.
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, kernel_size: int, strides: int = 1, dilation_rate: int = 1, **kwargs):
        super().__init__(**kwargs)
        reference_padding(kernel_size, dilation_rate)  # validates: odd kernel, dilation >= 1
        if int(strides) < 1:
            raise ValueError(f"strides must be >= 1, got {strides}")
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.dilation_rate = int(dilation_rate)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, channels, 1), initializer="glorot_uniform", trainable=True
        )

    def call(self, x):
        return depthwise_conv(x, self.kernel, self.strides, self.dilation_rate)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.strides
        return (b, None if h is None else -(-h // s), None if w is None else -(-w // s), c)

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
        }


@keras.saving.register_keras_serializable(package="hlrs_tf")
class PointwiseConv(keras.layers.Conv2D):
    """Bias-free 1x1 convolution computed as a matmul (``einsum``) of the channels, not by a ``Conv2D`` kernel.

    The same function and the same ``(1, 1, C_in, C_out)`` kernel variable as ``keras.layers.Conv2D(filters, 1,
    use_bias=False)`` (a strided 1x1 conv is the 1x1 conv of the strided sampling), so checkpoints and parameter
    counts are unchanged. Why not the conv kernel:

    * correctness: oneDNN's filter gradient of 1x1 ``Conv2D`` kernels is wrong for some shapes with few input
      channels: at stride 2 with 5-7 input channels on AVX2 (relative error 0.4-1.1, see
      :class:`FactorizedReduce`), and on AVX-512 CPUs the search network with direct cells got a 1x1 stride-1
      8->8 kernel gradient 4.2% off, where float32 round-off of that gradient is ~3e-6 against a float64
      computation (``tests/test_onednn_kernels.py`` compares both kernel sets against float64 for that
      reason). oneDNN blocks channels by 8 on AVX2 and by 16 on AVX-512, and both failures have fewer input
      channels than one block. The matmul kernels have no such blocking of the reduced dimension, and the
      fused search cell, which always computed its 1x1 convs this way, agreed with float64 on both machines;
    * speed: TF's ``Conv2DBackpropInput`` for 1x1 kernels was ~2.5x slower than a matmul's gradient in the
      search step (:mod:`hlrs_tf.space.fused_cell`).

    Args:
        filters: Output channels.
        strides: Stride (the input is sampled every ``strides`` pixels, as a 1x1 strided conv does).
        **kwargs: Forwarded to ``keras.layers.Conv2D`` (e.g. ``name``, ``dtype``).
    """

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        for fixed in ("kernel_size", "padding", "use_bias"):
            kwargs.pop(fixed, None)  # from a Conv2D config: always 1, "valid", False here
        super().__init__(filters, 1, strides=strides, padding="valid", use_bias=False, **kwargs)

    def call(self, inputs):
        s = self.strides[0]
        inputs = subsample(inputs, s)
        kernel = ops.reshape(self.kernel, (self.kernel.shape[2], self.filters))
        return tf.einsum("bhwc,cd->bhwd", inputs, kernel)

    def get_config(self):
        return {**super().get_config(), "strides": self.strides[0]}


def pointwise_conv(filters: int, strides: int = 1, name: str | None = None) -> PointwiseConv:
    """Bias-free 1x1 convolution (:class:`PointwiseConv`)."""
    return PointwiseConv(filters, strides=strides, name=name)


@keras.saving.register_keras_serializable(package="hlrs_tf")
class ReLUConvBN(CompositeLayer):
    """ReLU -> kxk conv -> BN: the cell-input preprocessing of DARTS (``ReLUConvBN`` of ``cnn/operations.py``).

    DARTS only builds it with 1x1 kernels. A kxk kernel (k odd) is padded as the reference's ``padding=k//2``:
    "SAME" at stride 1, explicit symmetric zero padding and "valid" when strided (see the module docstring).

    Args:
        filters: Output channels.
        kernel_size: Conv size (1 for preprocessing).
        strides: Conv stride.
        affine: Whether BN has scale/offset.
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters: int, kernel_size: int = 1, strides: int = 1, affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.affine = filters, kernel_size, strides, affine
        self._pad = 0
        if kernel_size == 1:  # the preprocessing of every cell input (see PointwiseConv for why not Conv2D)
            self.conv = pointwise_conv(filters, strides)
        else:
            pad = reference_padding(kernel_size)  # validates: odd kernel
            self._pad = pad if strides > 1 else 0
            self.conv = keras.layers.Conv2D(filters, kernel_size, strides=strides, use_bias=False,
                                            padding="valid" if self._pad else "same")
        self.bn = batch_norm(affine)

    def call(self, x, training=None):
        return self.bn(self.conv(pad_spatial(ops.relu(x), self._pad)), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "affine": self.affine,
        }


def subsample(x, stride: int, offset: int = 0):
    """``x[:, offset::stride, offset::stride]`` of an NHWC map, zero-padded at the end to ``ceil(H/stride) x
    ceil(W/stride)`` (only ``offset > 0`` can need the padding).

    With static spatial sizes it is a reshape to ``(B, H/s, s, W/s, s, C)`` (after the zero padding to multiples
    of ``s``) and one ``Slice``: TF's strided-slice kernel, and the ``StridedSliceGrad`` of its gradient (a
    full-size zero tensor scattered into), were 5-10x slower on the supernet's maps -- both stride-2 views of a
    64x32x32x64 map took 66 ms forward and backward as strided slices and 8 ms this way (1 thread,
    ``benchmarks/NOTES.md``). Same values, bit for bit.
    """
    return _subsamples(x, stride, (offset,))[0]


def _subsamples(x, stride: int, offsets):
    """:func:`subsample` of ``x`` at each of ``offsets``, padding and reshaping ``x`` once for all of them."""
    s = int(stride)
    if s == 1 and tuple(offsets) == (0,):
        return (x,)
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:  # dynamic size: shift, pad by one stride, sample, crop to ceil(H/s) x ceil(W/s)
        shape = tf.shape(x)
        rows, cols = (shape[1] + s - 1) // s, (shape[2] + s - 1) // s
        return tuple(tf.pad(x[:, o:, o:, :], [[0, 0], [0, s], [0, s], [0, 0]])[:, ::s, ::s, :][:, :rows, :cols, :]
                     for o in map(int, offsets))
    pad_h, pad_w = -h % s, -w % s
    if pad_h or pad_w:
        x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    rows, cols, c = (h + pad_h) // s, (w + pad_w) // s, x.shape[3]
    blocks = tf.reshape(x, [-1, rows, s, cols, s, c])
    return tuple(tf.reshape(tf.slice(blocks, [0, 0, o, 0, o, 0], [-1, -1, 1, -1, 1, -1]), [-1, rows, cols, c])
                 for o in map(int, offsets))


def strided_views(x):
    """The two stride-2 samplings of an NHWC map that FactorizedReduce convolves (:func:`subsample`).

    ``even`` is ``x[:, ::2, ::2]``; ``odd`` is the one-pixel-shifted ``x[:, 1::2, 1::2]``, zero-padded at the end
    to ``ceil(H/2) x ceil(W/2)`` -- exactly what a 1x1 stride-2 conv sees of ``x`` and of ``x`` shifted by one
    pixel and zero-padded back to full size.

    Args:
        x: ``(B, H, W, C)`` tensor.

    Returns:
        ``(even, odd)``, both ``(B, ceil(H/2), ceil(W/2), C)``.
    """
    return _subsamples(x, 2, (0, 1))


@keras.saving.register_keras_serializable(package="hlrs_tf")
class FactorizedReduce(CompositeLayer):
    """ReLU, two 1x1 stride-2 convs (the second on the input shifted by one pixel), concat, BN.

    ``FactorizedReduce`` of ``cnn/operations.py``: ``conv_1`` sees ``x[::2, ::2]`` and ``conv_2`` (on
    ``x[:, :, 1:, 1:]``) sees ``x[1::2, 1::2]``; no padding is involved, so the symmetric-padding fix of the
    other strided ops does not concern it. The shifted input is zero-padded back to full size so both halves
    have ``ceil(H/2)`` rows for odd sizes too (the reference's ``x[:, :, 1:, 1:]`` only lines up for even
    sizes); for even sizes it is identical.

    A 1x1 stride-2 conv is a 1x1 conv of the stride-2 sampling, and that is how it runs here
    (:func:`strided_views`, then stride-1 convs): oneDNN's filter gradient of a 1x1 *stride-2* ``Conv2D`` is
    wrong for 5-7 input channels on this stack (``tests/test_onednn_kernels.py``).

    Args:
        filters: Output channels (even).
        affine: Whether BN has scale/offset.
        apply_relu: Apply the leading ReLU (False when the caller already did).
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters: int, affine: bool = True, apply_relu: bool = True, **kwargs):
        super().__init__(**kwargs)
        if filters % 2:
            raise ValueError(f"FactorizedReduce needs an even number of filters, got {filters}")
        self.filters, self.affine, self.apply_relu = filters, affine, apply_relu
        self.conv_1 = pointwise_conv(filters // 2)  # on the stride-2 samplings (see above)
        self.conv_2 = pointwise_conv(filters // 2)
        self.bn = batch_norm(affine)

    def call(self, x, training=None):
        if self.apply_relu:
            x = ops.relu(x)
        even, odd = strided_views(x)
        out = ops.concatenate([self.conv_1(even), self.conv_2(odd)], axis=-1)
        return self.bn(out, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "affine": self.affine,
            "apply_relu": self.apply_relu,
        }


@keras.saving.register_keras_serializable(package="hlrs_tf")
class SepConv(CompositeLayer):
    """Separable conv applied twice: [ReLU, depthwise kxk, 1x1, BN] x 2; only the first is strided.

    ``SepConv`` of ``cnn/operations.py``; the depthwise convs are zero-padded ``k//2`` on both sides
    (:class:`DepthwiseConv`), also the strided one.

    Args:
        filters: Output channels (equal to the input channels in DARTS).
        kernel_size: 3 or 5.
        strides: Stride of the first depthwise conv.
        affine: Whether BN has scale/offset.
        apply_relu: Apply the leading ReLU (False when the caller already did).
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters, kernel_size, strides=1, affine=True, apply_relu=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        self.affine, self.apply_relu = affine, apply_relu
        self.dw_1 = DepthwiseConv(kernel_size, strides=strides)
        self.pw_1 = pointwise_conv(filters)
        self.bn_1 = batch_norm(affine)
        self.dw_2 = DepthwiseConv(kernel_size)
        self.pw_2 = pointwise_conv(filters)
        self.bn_2 = batch_norm(affine)

    def call(self, x, training=None):
        if self.apply_relu:
            x = ops.relu(x)
        x = self.bn_1(self.pw_1(self.dw_1(x)), training=training)
        x = ops.relu(x)
        return self.bn_2(self.pw_2(self.dw_2(x)), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "affine": self.affine,
            "apply_relu": self.apply_relu,
        }


@keras.saving.register_keras_serializable(package="hlrs_tf")
class DilConv(CompositeLayer):
    """Dilated separable conv: ReLU, depthwise kxk with dilation 2, 1x1, BN.

    ``DilConv`` of ``cnn/operations.py``; the depthwise conv is zero-padded ``d * (k - 1) // 2`` on both sides
    (:class:`DepthwiseConv`; at stride 2 it is the undilated conv of the even pixels, see
    :func:`depthwise_conv`).

    Args:
        filters: Output channels.
        kernel_size: 3 or 5.
        strides: Stride of the depthwise conv.
        dilation_rate: Dilation (2 in DARTS).
        affine: Whether BN has scale/offset.
        apply_relu: Apply the leading ReLU (False when the caller already did).
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters, kernel_size, strides=1, dilation_rate=2, affine=True, apply_relu=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        self.dilation_rate, self.affine, self.apply_relu = dilation_rate, affine, apply_relu
        self.dw = DepthwiseConv(kernel_size, strides=strides, dilation_rate=dilation_rate)
        self.pw = pointwise_conv(filters)
        self.bn = batch_norm(affine)

    def call(self, x, training=None):
        if self.apply_relu:
            x = ops.relu(x)
        return self.bn(self.pw(self.dw(x)), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "affine": self.affine,
            "apply_relu": self.apply_relu,
        }


@keras.saving.register_keras_serializable(package="hlrs_tf")
class Pool(CompositeLayer):
    """3x3 max or average pooling, padded 1/1 as the reference (:func:`max_pool_3x3`, :func:`avg_pool_3x3`; the
    average excludes the padding), optionally followed by BN.

    Args:
        kind: ``"max"`` or ``"avg"``.
        strides: Pool stride.
        bn: Follow with an affine-free BN (search network only).
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, kind: str, strides: int = 1, bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("max", "avg"):
            raise ValueError(f"Pool kind must be 'max' or 'avg', got {kind!r}")
        self.kind, self.strides, self.bn = kind, strides, bn
        self.norm = batch_norm(affine=False) if bn else None

    def call(self, x, training=None):
        pool = max_pool_3x3 if self.kind == "max" else avg_pool_3x3
        x = pool(x, self.strides)
        return self.norm(x, training=training) if self.norm is not None else x

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "strides": self.strides, "bn": self.bn}


@keras.saving.register_keras_serializable(package="hlrs_tf")
class Identity(CompositeLayer):
    """``skip_connect`` at stride 1."""

    def call(self, x, training=None):
        return x


@keras.saving.register_keras_serializable(package="hlrs_tf")
class Zero(CompositeLayer):
    """``none``: zeros of the (possibly subsampled) output shape. Only used when a genotype names it."""

    def __init__(self, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.strides = strides

    def call(self, x, training=None):
        return ops.zeros_like(x[:, :: self.strides, :: self.strides, :])

    def get_config(self):
        return {**super().get_config(), "strides": self.strides}


# Ops whose first layer is a ReLU; a mixed op shares one ReLU among them.
RELU_FIRST = frozenset({"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"})


def make_op(
    name: str, channels: int, strides: int, *, affine: bool, search: bool, apply_relu: bool = True, layer_name=None
) -> keras.layers.Layer:
    """Builds one candidate operation by its primitive name.

    Args:
        name: One of :data:`hlrs_tf.space.genotypes.PRIMITIVES`.
        channels: Input = output channels of the op.
        strides: 1, or 2 on the input edges of a reduction cell.
        affine: BN with scale/offset (derived network) or without (search network).
        search: Search-network flavour: pools are followed by an affine-free BN.
        apply_relu: For ops that start with a ReLU: whether they apply it themselves.
        layer_name: Keras layer name.

    Returns:
        The op as a Keras layer.
    """
    kw = {"name": layer_name}
    if name == "none":
        return Zero(strides, **kw)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return Pool(name[:3], strides=strides, bn=search, **kw)
    if name == "skip_connect":
        if strides == 1:
            return Identity(**kw)
        return FactorizedReduce(channels, affine=affine, apply_relu=apply_relu, **kw)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        return SepConv(channels, int(name[-1]), strides, affine=affine, apply_relu=apply_relu, **kw)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        return DilConv(channels, int(name[-1]), strides, 2, affine=affine, apply_relu=apply_relu, **kw)
    raise ValueError(f"unknown operation {name!r}; known: {', '.join(PRIMITIVES)}")
