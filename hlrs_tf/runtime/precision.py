"""Numeric precision of the networks: float32, or Keras mixed precision (``--precision``).

``mixed_bfloat16`` / ``mixed_float16`` are Keras' dtype policies: every layer of the supernet and of the derived
network computes in bfloat16 / float16 while its variables stay float32 (the optimizers update float32 weights;
each layer reads a cast copy). What stays float32 on purpose:

* the alphas and their softmax (variables read without autocasting): the architecture is a float32 quantity,
  and the mixing weights enter the BN scale of the fused cell, which the fused BN kernel takes in float32;
* BatchNorm's scale, offset and running statistics: the fused BN kernel (``FusedBatchNormV3``) takes bf16 /
  fp16 activations but keeps its statistics and parameters in float32;
* the classifier (``dtype="float32"``, Keras' practice for the output layer), hence the logits and the loss;
* both optimizers' state, and with ``mixed_float16`` both optimizers are wrapped in a
  ``keras.optimizers.LossScaleOptimizer`` (float16's range is too small for small gradients; bfloat16 has
  float32's exponent range and needs no scaling). The custom train steps compute their gradients themselves:
  :func:`gradients` scales the loss and unscales the gradients at once, so the clipping, the coupled weight
  decay and the unrolled second-order step see true gradients, and :func:`apply_gradients` hands them to the
  optimizer, which keeps its own overflow check and scale updates.

The policy reaches the layers by the ``dtype=`` argument of the network (``SearchNetwork(...,
dtype="mixed_bfloat16")``); the network builds its sub-layers inside :func:`policy_scope` of its own policy,
which sets Keras' global policy only for that block and restores it after, so nothing leaks into other code.

Export is always float32 (:mod:`hlrs_tf.export.savedmodel_onnx` rebuilds a mixed-precision network as float32 with
the same
weights).

Speed: bfloat16 kernels exist natively on CPUs with ``avx512_bf16`` / ``amx_bf16`` (oneDNN uses them); on an
AVX2-only CPU oneDNN refuses bfloat16 and TensorFlow's Eigen kernels emulate it through float32 conversions,
which is slower than float32. :func:`hardware_warning` says so, keyed on what this process detects.
"""

from __future__ import annotations

import contextlib
import sys

__all__ = [
    "PRECISIONS",
    "SECOND_ORDER_REASON",
    "apply_gradients",
    "base_optimizer",
    "cpu_flags",
    "gradients",
    "hardware_warning",
    "loss_scale",
    "native_bf16",
    "policy_name",
    "policy_scope",
    "warn_if_slow",
    "wrap_optimizer",
]

#: The values of ``--precision`` (Keras dtype policy names); float32 is the default everywhere.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

#: Why second order (``--order=second``) runs in float32 only. Measured on the test supernet (C=4, 3 cells,
#: digits): the bfloat16 second-order architecture gradient was 73% off the float32 one in norm (cosine 0.70),
#: against 15% (cosine 0.99) for the first-order gradient at the same weights.
SECOND_ORDER_REASON = (
    "the unrolled step's finite difference perturbs the weights by 0.01/||v|| in total norm, ~1e-4 of a weight "
    "or less, below the resolution of bfloat16 (2^-8 relative) and float16 (2^-11) weights, so the "
    "Hessian-vector product would be rounding noise"
)

# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic: AVX-512 BF16 (dot products, conversions) and
# AMX tiles with bfloat16. oneDNN needs one of them for its bfloat16 kernels.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@contextlib.contextmanager
def policy_scope(policy):
    """Keras' global dtype policy set to ``policy`` inside the block and restored after it, errors included.

    Layers created inside take ``policy`` when they are given no ``dtype``; the networks use it to hand their
    own policy to every sub-layer they build.

    Args:
        policy: A Keras dtype policy or its name (``"float32"``, ``"mixed_bfloat16"``, ...).
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def policy_name(layer) -> str:
    """The name of a layer's dtype policy (``"float32"``, ``"mixed_bfloat16"``, ...)."""
    return layer.dtype_policy.name


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty when the file cannot be read, e.g. not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags=None) -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (``avx512_bf16`` or ``amx_bf16``).

    Args:
        flags: CPU flags to judge (default: this machine's, :func:`cpu_flags`).
    """
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in _BF16_FLAGS)


def hardware_warning(precision: str, cpu_only: bool, flags=None) -> str | None:
    """A one-line warning when ``precision`` will run slower than float32 here, else ``None``.

    Args:
        precision: One of :data:`PRECISIONS`.
        cpu_only: The run has no GPU (:func:`hlrs_tf.runtime.devices.visible_devices`).
        flags: CPU flags (default: this machine's).
    """
    if not cpu_only or precision == "float32":
        return None
    if precision == "mixed_bfloat16" and not native_bf16(flags):
        return ("--precision=mixed_bfloat16 on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16 flag): "
                "oneDNN has no bfloat16 kernels here and TensorFlow emulates them, so the step is slower than "
                "float32")
    if precision == "mixed_float16":
        return ("--precision=mixed_float16 on a CPU: float16 is meant for GPUs; TensorFlow's CPU kernels "
                "emulate it, so the step is slower than float32")
    return None


def warn_if_slow(precision: str, cpu_only: bool) -> None:
    """Prints :func:`hardware_warning`'s line to stderr when there is one (once per run, before it builds)."""
    message = hardware_warning(precision, cpu_only)
    if message:
        print(f"hlrs_tf: warning: {message}", file=sys.stderr)


def wrap_optimizer(optimizer, precision: str):
    """``optimizer`` in a ``LossScaleOptimizer`` for ``mixed_float16`` (dynamic loss scaling), else itself.

    The wrapper delegates ``learning_rate`` to the inner optimizer, so a float learning rate stays a variable
    a callback can ``assign`` (the HLRS architecture-lr schedule).
    """
    if precision != "mixed_float16":
        return optimizer
    import keras

    return keras.optimizers.LossScaleOptimizer(optimizer)


def _is_loss_scale(optimizer) -> bool:
    import keras

    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def base_optimizer(optimizer):
    """The optimizer that holds the update rule and its state (the inner one of a ``LossScaleOptimizer``)."""
    return optimizer.inner_optimizer if _is_loss_scale(optimizer) else optimizer


def loss_scale(optimizer):
    """The current loss scale of ``optimizer`` as a tensor, or ``None`` without loss scaling.

    A tensor, not the optimizer, is what a traced pass takes, so one trace serves passes for both optimizers.
    """
    if not _is_loss_scale(optimizer):
        return None
    import tensorflow as tf

    return tf.convert_to_tensor(optimizer.dynamic_scale)


def gradients(tape, loss, sources, scale=None) -> list:
    """The gradients of ``loss`` with loss scaling: of ``loss * scale``, divided by ``scale`` again.

    What ``LossScaleOptimizer.scale_loss`` does to the loss, then the unscaling it would do in ``apply``, here at
    once, so that everything between the tape and the optimizer (the unrolled second-order step, clipping,
    coupled decay) works on true gradients. The scale is a power of two: both steps are exact, and a gradient
    that overflowed stays inf/NaN for the optimizer to see (:func:`apply_gradients`).

    Args:
        tape: The ``tf.GradientTape`` that recorded ``loss`` (may be called after its recording block).
        loss: The (float32) loss.
        sources: Variables or watched tensors.
        scale: :func:`loss_scale` of the optimizer the gradients are for; ``None``: plain ``tape.gradient``.
    """
    if scale is None:
        return tape.gradient(loss, sources)
    import tensorflow as tf

    # The loss's own gradient seeded with the scale: the gradient of loss * scale, without recording the product.
    grads = tape.gradient(loss, sources, output_gradients=tf.cast(scale, loss.dtype))
    return [None if g is None else g / tf.cast(scale, g.dtype) for g in grads]


def apply_gradients(optimizer, grads, variables, transform=None) -> None:
    """Applies true (unscaled, :func:`gradients`) gradients, ``transform`` first (clipping, coupled decay).

    Without loss scaling: ``optimizer.apply(transform(grads), variables)``. A ``LossScaleOptimizer`` gets the
    transformed gradients multiplied by its scale, as if they were the gradients of its scaled loss: its
    ``apply`` then checks them for inf/NaN (skipping the step and halving the scale), divides by the scale
    and grows the scale -- its own rules, unchanged. A non-finite gradient stays non-finite through the
    transform (clipping by an infinite norm gives NaN), so that step is still skipped.

    Args:
        optimizer: A Keras optimizer, possibly a ``LossScaleOptimizer``.
        grads: True gradients, one per variable.
        variables: The variables.
        transform: ``list -> list`` applied to the gradients (``None``: identity).
    """
    grads = list(grads) if transform is None else transform(list(grads))
    if _is_loss_scale(optimizer):
        scale = optimizer.dynamic_scale
        grads = [g * scale for g in grads]
    optimizer.apply(grads, variables)
