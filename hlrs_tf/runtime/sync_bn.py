"""Cross-replica (synchronised) batch normalisation for :class:`hlrs_tf.space.ops.BatchNorm`.

Under ``tf.distribute`` each replica sees only its slice of the global batch. A plain BatchNorm normalises with
the statistics of that slice, so a mirrored run over R replicas is a different computation from one device with
the same global batch (docs/method.md M8), and the per-replica moving averages drift apart (our BN's moving
statistics have aggregation ``NONE``: each replica writes its own copy). Here the batch statistics are the
*global* ones: the replicas sum per-channel ``[sum, sum of squares]`` (and the count when the batch shape is
dynamic) across replicas in one reduction, so all of them normalise with the mean and variance of the global
batch and write identical moving averages.

The arithmetic matches the fused kernel of ``ops.BatchNorm`` (``FusedBatchNormV3`` with
``exponential_avg_factor``; checked against it in ``tests/test_distribute.py``):

* normalisation with the biased batch variance: ``y = (x - mean) / sqrt(var + epsilon) * scale + offset``;
* ``moving = (1 - momentum) * moving + momentum * batch`` (PyTorch's convention, momentum 0.1), with the
  *unbiased* variance ``var * n / (n - 1)`` going into the moving variance, ``n`` the global count ``N*H*W``.

The backward pass is the single-device one over the global batch: ``dx`` carries the statistics' dependence on
every replica's rows through a second cross-replica sum (of ``sum(dy)`` and ``sum(dy * xhat)``); the scale and
offset gradients stay local, since the optimizer all-reduces parameter gradients itself.

Numerics: ``E[x^2] - E[x]^2`` loses precision when the mean is large against the spread. The sums are taken of
``x - shift`` with ``shift`` = the moving mean (identical on every replica, no gradient), which is close to the
batch mean once training has started; the result is mathematically unchanged.

Cost (tiny test supernet, 2 logical CPU replicas, first order): trace + first step 34 s against 20 s without
synchronisation (Keras' ``synchronized=True`` was measured at ~2x, docs/method.md T8); steady-state step time
unchanged. What it took to get there is in the comments of :func:`_cross_replica_sum` and :func:`_normalize`.

Hook into ``ops.BatchNorm.call`` (training branch)::

    if sync_bn.should_sync():
        return sync_bn.sync_batch_norm(self, x, scale, offset)

Outside a replica context, with one replica, or after ``set_enabled(False)`` it does nothing and the fused path
runs unchanged.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["is_enabled", "set_enabled", "should_sync", "replicas_in_sync", "sync_batch_norm", "batch_norm_train"]

_ENABLED = True


def set_enabled(enabled: bool) -> None:
    """Switches synchronised BN on (default) or off for BN calls traced from now on.

    Off reproduces per-replica statistics (faster to trace, but a mirrored run then differs from one device).

    Args:
        enabled: Whether BN layers synchronise their batch statistics across replicas.
    """
    global _ENABLED
    _ENABLED = bool(enabled)


def is_enabled() -> bool:
    """Whether synchronised BN is switched on (see :func:`set_enabled`)."""
    return _ENABLED


def replicas_in_sync() -> int:
    """Replicas of the current *replica* context (1 outside ``strategy.run``, e.g. in cross-replica context)."""
    ctx = tf.distribute.get_replica_context()
    return int(ctx.num_replicas_in_sync) if ctx is not None else 1


def should_sync() -> bool:
    """True when a training-mode BN call must use :func:`sync_batch_norm`: enabled, and traced inside a replica
    context of more than one replica (MirroredStrategy over several devices, MultiWorkerMirroredStrategy)."""
    return _ENABLED and replicas_in_sync() > 1


def _add_local_results(strategy, value):
    # merge_call function: all replicas' tensors are in this one graph, so their sum is one AddN; every replica
    # then reads that same tensor (TF copies it to each device), which also makes the statistics bit-identical.
    return tf.add_n(list(strategy.experimental_local_results(value)))


def _cross_replica_sum(packed: tf.Tensor) -> tf.Tensor:
    """Sum of ``packed`` over all replicas, returned on every replica.

    ``MirroredStrategy`` (one process; GPUs or logical CPUs): a ``merge_call`` adding the replicas' tensors. On
    the tiny test supernet over 2 logical CPUs this traced ~5x faster and ran ~15x faster than
    ``ReplicaContext.all_reduce``, whose collective ops carry per-call latency that a BN layer, called hundreds
    of times per step, cannot afford; the vectors are only ``2C`` floats, so gathering them costs nothing.
    Multi-worker strategies: ``all_reduce`` (collectives are the only way between processes).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return packed
    if isinstance(ctx.strategy, tf.distribute.MirroredStrategy):
        return ctx.merge_call(_add_local_results, args=(packed,))
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, packed)


@tf.autograph.experimental.do_not_convert  # no tensor-dependent Python control flow; converting costs trace time
def batch_norm_train(layer, x, scale, offset, reduce_fn=_cross_replica_sum, replicas: int | None = None):
    """Training-mode BN with statistics summed by ``reduce_fn``; updates ``layer``'s moving statistics.

    This is the whole algorithm; :func:`sync_batch_norm` calls it with the cross-replica sum. Tests call it with
    the identity (``replicas=1``) to compare it with the fused kernel on one device.

    The graph is kept small on purpose: tracing and instantiating the step function costs per op, and a
    supernet calls BN hundreds of times per step (a first version in plain ops with autodiff had ~3x the ops
    of the fused path per BN). The normalisation is the fused inference kernel with the global statistics,
    the backward pass a hand-written gradient around the fused gradient kernel with one cross-replica sum.

    Args:
        layer: The BN layer: ``moving_mean``, ``moving_variance`` (variables), ``momentum``, ``epsilon``.
        x: Channels-last 4-D input (``NHWC``, what the fused kernel takes).
        scale: Per-channel scale (ones without affine parameters).
        offset: Per-channel offset (zeros without affine parameters).
        reduce_fn: Sums a packed 1-D float32 vector over replicas.
        replicas: Replicas taking part in ``reduce_fn`` (default: those of the current replica context). The
            global count is ``replicas x`` the local one when the batch shape is static (every replica traces
            the same shape); otherwise the counts are summed too.

    Returns:
        The normalised ``x``.
    """
    y, new_mean, new_variance = batch_norm_train_values(
        x, scale, offset, layer.moving_mean, layer.moving_variance, layer.momentum, layer.epsilon,
        reduce_fn, replicas,
    )
    layer.moving_mean.assign(new_mean)
    layer.moving_variance.assign(new_variance)
    return y


@tf.autograph.experimental.do_not_convert
def batch_norm_train_values(x, scale, offset, moving_mean, moving_variance, momentum: float, epsilon: float,
                            reduce_fn=_cross_replica_sum, replicas: int | None = None):
    """Functional form of :func:`batch_norm_train`: returns ``(y, new_moving_mean, new_moving_variance)``.

    For callers that keep the statistics of many BNs stacked in one variable (the fused search cell) and
    write them back together.

    Args:
        x: Channels-last 4-D input.
        scale: Per-channel scale.
        offset: Per-channel offset.
        moving_mean: Current moving mean (tensor or variable), ``(C,)``.
        moving_variance: Current moving variance, ``(C,)``.
        momentum: Weight of the batch statistics (PyTorch convention).
        epsilon: Added to the variance.
        reduce_fn: Sums a packed 1-D float32 vector over replicas.
        replicas: Replicas taking part in ``reduce_fn`` (default: those of the current replica context).
    """
    if replicas is None:
        replicas = replicas_in_sync()
    in_dtype = x.dtype
    if in_dtype in (tf.bfloat16, tf.float16):
        # Mixed precision (hlrs_tf.runtime.precision): statistics, normalisation and its gradient in float32, as the
        # fused kernel computes them internally; the output goes back to the activations' dtype.
        x = tf.cast(x, tf.float32)
    # The moving mean is the same on every replica and near the batch mean once training runs: summing
    # x - shift instead of x keeps E[x^2] - E[x]^2 from cancelling badly. Read outside the custom gradient.
    shift = tf.convert_to_tensor(moving_mean)
    y, mean_shifted, variance, count = _normalize(
        x, tf.convert_to_tensor(scale), tf.convert_to_tensor(offset), shift, float(epsilon), reduce_fn,
        int(replicas),
    )
    # Moving statistics exactly as FusedBatchNormV3 with exponential_avg_factor: new = (1 - momentum) * old +
    # momentum * batch, with the unbiased variance (Bessel's correction over the *global* count) -- and
    # shift + momentum * (mean - shift) is the mean's update since shift is the old moving mean.
    momentum = float(momentum)
    if isinstance(count, float):
        bessel = momentum * count / max(count - 1.0, 1.0)  # a Python number: no ops for it
    else:
        bessel = momentum * count / tf.maximum(count - 1.0, 1.0)
    new_mean = shift + momentum * mean_shifted
    new_variance = (1.0 - momentum) * tf.convert_to_tensor(moving_variance) + bessel * variance
    return tf.cast(y, in_dtype), new_mean, new_variance


@tf.autograph.experimental.do_not_convert
def _normalize(x, scale, offset, shift, epsilon, reduce_fn, replicas):
    """``(y, mean - shift, biased variance, global count)`` of BN over all replicas.

    The statistics are computed outside the custom gradient, on ``stop_gradient(x)``, and enter it as inputs:
    ``tf.custom_gradient`` walks the graph back from its outputs to its inputs when it is traced, and a walk
    that passed the cross-replica sum would run through the *other* replicas' whole network -- once per BN
    layer, which made tracing quadratic (tens of seconds on the tiny test supernet). Their effect on the
    gradient is in the hand-written ``dx`` instead.
    """
    if x.dtype != tf.float32 or x.shape.rank != 4:
        raise ValueError(f"synchronised BatchNorm takes float32 NHWC input, got {x.dtype.name} {x.shape}")
    static_count = x.shape[:-1].num_elements()  # None when the batch dimension is dynamic
    xs = tf.stop_gradient(x) - shift
    # [sum, sum of squares] per channel in one reduction, then one cross-replica sum for both (and for the count
    # when the batch is dynamic). Python numbers are folded before they become graph constants: every op costs
    # trace time, and a supernet calls BN hundreds of times per step.
    sums = tf.reduce_sum(tf.concat([xs, tf.square(xs)], axis=-1), axis=[0, 1, 2])
    if static_count is None:
        local = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        total = reduce_fn(tf.concat([sums, tf.reshape(local, [1])], axis=0))
        count = total[-1]
        moments = total[:-1] / count
    else:
        count = float(static_count * replicas)
        moments = reduce_fn(sums) * (1.0 / count)
    mean_shifted, mean_sq = tf.split(moments, 2)
    variance = tf.nn.relu(mean_sq - tf.square(mean_shifted))  # biased, as the fused kernel normalises
    mean = mean_shifted + shift
    y = _normalize_with_stats(x, scale, offset, mean, variance, epsilon, count, reduce_fn)
    return y, mean_shifted, variance, count


def _normalize_with_stats(x, scale, offset, mean, variance, epsilon, count, reduce_fn):
    """Fused inference-mode BN with the given global statistics, differentiated as training-mode BN over the
    global batch (the statistics' dependence on every replica's rows is in ``dx``)."""

    @tf.custom_gradient
    def bn(x, scale, offset, mean, variance):
        # Inference mode of the fused kernel = normalise with the given statistics, one op.
        y, _, _, _, _, reserve_3 = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=mean, variance=variance, epsilon=epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=False,
        )

        def grad(dy):
            # Frozen-statistics gradient in one op: dy * scale * inv, and the local sum(dy * xhat), sum(dy).
            dx_frozen, d_scale, d_offset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x, scale=scale, reserve_space_1=mean, reserve_space_2=variance,
                reserve_space_3=reserve_3, epsilon=epsilon, data_format="NHWC", is_training=False,
            )
            # The statistics depend on every replica's rows, which adds
            #   -scale * inv / N * (G_offset + xhat * G_scale),  xhat = (x - mean) * inv,
            # with the *global* sums G (one cross-replica sum); per channel that is -(a + b * (x - mean)).
            # scale/offset keep their local sums: the optimizer all-reduces parameter gradients itself.
            g_offset, g_scale = tf.split(reduce_fn(tf.concat([d_offset, d_scale], axis=0)), 2)
            inv = tf.math.rsqrt(variance + epsilon)
            coef = scale * inv / count
            dx = dx_frozen - (coef * g_offset + (coef * inv * g_scale) * (x - mean))
            return dx, d_scale, d_offset, None, None  # no gradient into the statistics: it is all in dx

        return y, grad

    return bn(x, scale, offset, mean, variance)


@tf.autograph.experimental.do_not_convert
def sync_batch_norm(layer, x, scale, offset):
    """Training-mode BN with batch statistics of the *global* batch (all replicas); see the module docstring.

    Call it from ``BatchNorm.call`` when :func:`should_sync` is true. Every replica computes the same mean and
    variance, so the output on each replica's slice equals the single-device output on the same rows, and the
    moving statistics stay identical on all replicas.

    Args:
        layer: The BN layer (``moving_mean``, ``moving_variance``, ``momentum``, ``epsilon``).
        x: This replica's channels-last activations.
        scale: Per-channel scale.
        offset: Per-channel offset.

    Returns:
        The normalised activations of this replica.
    """
    return batch_norm_train(layer, x, scale, offset, _cross_replica_sum, replicas_in_sync())
