"""Weight initialisation: PyTorch's defaults, as the reference DARTS code gets them, or Keras' own.

The reference (quark0/darts, ``cnn/model_search.py``, ``cnn/model.py``, ``cnn/operations.py``) never sets an
initialiser: every ``nn.Conv2d`` and ``nn.Linear`` keeps PyTorch's ``reset_parameters``
(``torch/nn/modules/conv.py`` ``_ConvNd.reset_parameters``, ``torch/nn/modules/linear.py``
``Linear.reset_parameters``)::

    init.kaiming_uniform_(self.weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(fan_in)        # the bias, when there is one
    init.uniform_(self.bias, -bound, bound)

``kaiming_uniform_`` draws ``U(-b, b)`` with ``b = gain * sqrt(3 / fan_in)`` and ``gain = sqrt(2 / (1 + a^2))``,
so ``a = sqrt(5)`` gives ``b = 1 / sqrt(fan_in)`` for the kernel too (:func:`reference_uniform_bound`).
``fan_in`` is ``weight.size(1) * prod(kernel_size)`` (``torch/nn/init.py``
``_calculate_fan_in_and_fan_out``): ``(in_channels / groups) * kh * kw`` for a conv -- so ``k * k`` for the
depthwise convs (``groups = C``), dilated or not -- and ``in_features`` for a linear layer. BatchNorm's scale
and offset start at 1 and 0 in both frameworks; the alphas keep their ``1e-3 * N(0, 1)``
(:mod:`hlrs_tf.space.supernet`). In DARTS only the linear classifiers (the network's and the auxiliary
head's) have biases; every conv is ``bias=False``.

:func:`apply_init` re-draws, once the model is built, every conv and dense kernel and every dense (or conv)
bias from that distribution, with the fan-in of the *PyTorch* op each variable stands for:

* ``keras.layers.Conv2D`` (the stems, the auxiliary head's 2x2 conv, and :class:`hlrs_tf.space.ops.PointwiseConv`,
  the 1x1 convs of the preprocessing, the separable convs and ``FactorizedReduce``): kernel ``(kh, kw,
  C_in / groups, C_out)``, fan-in ``kh * kw * C_in / groups`` (``C_in`` for a 1x1);
* :class:`hlrs_tf.space.ops.DepthwiseConv`: kernel ``(k, k, C, 1)``, fan-in ``k * k``;
* ``keras.layers.Dense``: kernel ``(in, out)`` and bias, fan-in ``in`` (``2 * features`` for BBN's classifier
  on the concatenated branches);
* :class:`hlrs_tf.space.fused_cell.FusedSearchCell`, whose variables stack the per-edge kernels of the direct cell:
  each ``(E, ...)`` slice gets the fan-in of the op it replaces (``pre*`` kernels ``(C_in, C)``: ``C_in``;
  depthwise ``(E, k, k, C, 1)``: ``k * k``; pointwise ``(E, C, C)`` and strided ``skip_connect``
  ``(n, C, C/2)``: ``C``). All slices of a stack share one bound, so one draw over the stack is the same
  distribution as a draw per slice, and the fused and the direct cell start from the same distribution per op.

Anything else trainable that :func:`apply_init` does not know (other than the BN scales and offsets and the
alphas, which it leaves alone) is an error, so a new layer type cannot silently keep Keras' initialiser.

Departures from the reference: the values are drawn with numpy's PCG64 from ``seed``, not PyTorch's
generator, so the distribution is the reference's but not the numbers. The DARTS README pins PyTorch 0.3.1,
whose ``_ConvNd.reset_parameters`` (the pre-1.0 ``conv.py``) drew every conv kernel from
``U(-1/sqrt(n), 1/sqrt(n))`` with ``n = in_channels * kh * kw`` *not* divided by ``groups`` -- a depthwise
kernel's bound was ``sqrt(C)`` times smaller than here; this module follows PyTorch >= 1.0
(``kaiming_uniform_``, fan-in per group), what the reference code gives when run today. The 1x1 / full
convs and the linear layers get the same bound under both versions. (Behind each depthwise conv the 1x1 conv
and a BatchNorm follow, so the scale of the depthwise kernel does not change the initial function, only the
early steps.)
"""

from __future__ import annotations

import math

import keras
import numpy as np

from hlrs_tf.config.search import INITS
from hlrs_tf.space import ops as darts_ops
from hlrs_tf.space.fused_cell import _CONV_OPS, FusedSearchCell
from hlrs_tf.space.supernet import SearchNetwork

__all__ = ["apply_init", "reference_uniform_bound", "reference_variables"]

# Mixed into the seed, so the initialisation draws are not the same stream as other numpy draws from ``seed``
# (the long-tail subsampling, the split).
_STREAM = 0x1A17


def reference_uniform_bound(fan_in: int) -> float:
    """The bound ``b`` of PyTorch's default ``U(-b, b)`` for a conv / linear weight or bias of ``fan_in``.

    ``kaiming_uniform_(a=sqrt(5))``: ``gain * sqrt(3 / fan_in)`` with ``gain = sqrt(2 / (1 + 5))``, i.e.
    ``1 / sqrt(fan_in)``; the biases use ``1 / sqrt(fan_in)`` directly.

    Args:
        fan_in: Inputs per output unit of the PyTorch op (``(C_in / groups) * kh * kw``, or ``in_features``).

    Raises:
        ValueError: ``fan_in < 1``.
    """
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    gain = math.sqrt(2.0 / (1.0 + 5.0))  # calculate_gain("leaky_relu", a=sqrt(5))
    return gain * math.sqrt(3.0 / fan_in)


def _shape(variable) -> tuple[int, ...]:
    return tuple(int(d) for d in variable.shape)


def _kernel(layer):
    kernel = layer.kernel
    if not isinstance(kernel, keras.Variable):  # LoRA / quantised: the kernel property is computed
        raise TypeError(f"apply_init: the kernel of layer {layer.name!r} is not a plain variable")
    return kernel


def _fused_cell_variables(cell: FusedSearchCell):
    """``(variable, fan_in)`` of every kernel of a fused cell (see the module docstring)."""
    out = []
    for name in ("pre0_kernel", "pre0_fr1", "pre0_fr2", "pre1_kernel"):
        var = getattr(cell, name, None)
        if var is not None:  # (C_in, C_out): an unstacked 1x1 conv
            out.append((var, _shape(var)[0]))
    for key, var in cell.conv_kernels.items():
        name, slot = key.split("/")
        kind = {s: kind for s, kind, _ in _CONV_OPS[name]}[slot]
        shape = _shape(var)
        if kind == "dw":  # (E, k, k, C, 1): depthwise, groups = C
            fan_in = shape[1] * shape[2]
        else:  # (E, C_in, C_out): 1x1 conv
            fan_in = shape[1]
        out.append((var, fan_in))
    for var in cell.skip_fr or ():  # (n, C_in, C/2): the 1x1 convs of FactorizedReduce
        out.append((var, _shape(var)[1]))
    return out


def _layer_variables(layer):
    """``(variable, fan_in)`` of the variables of ``layer`` itself (not its sub-layers') that the reference
    initialises, and the ids of the trainable ones it deliberately leaves as built."""
    if isinstance(layer, FusedSearchCell):
        return _fused_cell_variables(layer), ()
    if isinstance(layer, keras.layers.Conv2D):  # PointwiseConv included; kernel (kh, kw, C_in / groups, C_out)
        kernel = _kernel(layer)
        fan_in = int(np.prod(_shape(kernel)[:-1]))
        pairs = [(kernel, fan_in)]
        if layer.bias is not None:
            pairs.append((layer.bias, fan_in))
        return pairs, ()
    if isinstance(layer, darts_ops.DepthwiseConv):  # (k, k, C, 1), groups = C
        shape = _shape(layer.kernel)
        return [(layer.kernel, shape[0] * shape[1])], ()
    if isinstance(layer, keras.layers.Dense):  # (in, out)
        kernel = _kernel(layer)
        fan_in = _shape(kernel)[0]
        pairs = [(kernel, fan_in)]
        if layer.bias is not None:
            pairs.append((layer.bias, fan_in))
        return pairs, ()
    if isinstance(layer, (darts_ops.BatchNorm, keras.layers.BatchNormalization)):
        return [], [id(v) for v in layer.trainable_variables]  # ones / zeros, as in PyTorch
    if isinstance(layer, SearchNetwork):
        return [], [id(v) for v in layer.arch_variables]  # the alphas keep 1e-3 * N(0, 1)
    return [], ()


def reference_variables(model) -> list[tuple[keras.Variable, float]]:
    """Every variable of a built model that the reference initialises, with its bound ``b`` of ``U(-b, b)``.

    Args:
        model: A built Keras layer or model (a search network, a derived network, or any layer made of the
            layers listed in the module docstring).

    Returns:
        ``[(variable, bound)]`` in the model's layer order.

    Raises:
        ValueError: The model is not built.
        TypeError: A trainable variable belongs to no layer type this module knows.
    """
    if not model.built:
        raise ValueError(f"apply_init: build {model.name!r} before initialising it")
    pairs, kept, seen = [], set(), set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        layer_pairs, layer_kept = _layer_variables(layer)
        kept.update(layer_kept)
        for var, fan_in in layer_pairs:
            if id(var) not in seen:  # a layer reachable twice is initialised once
                seen.add(id(var))
                pairs.append((var, reference_uniform_bound(fan_in)))
    unknown = [v.path for v in model.trainable_variables if id(v) not in seen and id(v) not in kept]
    if unknown:
        raise TypeError(
            f"apply_init does not know the reference initialisation of {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}: add its layer type to hlrs_tf/space/init.py"
        )
    return pairs


def apply_init(model, init: str, seed: int) -> None:
    """Initialises a built model's weights as ``init`` says (call before restoring any checkpoint).

    Args:
        model: A built Keras layer or model (see :func:`reference_variables`).
        init: ``"reference"``: every conv / dense kernel and bias from PyTorch's default ``U(-b, b)``,
            ``b = 1 / sqrt(fan_in)`` (module docstring); ``"keras"``: leave the model as Keras built it.
        seed: Seed of the draws: the same seed and the same model give the same weights.

    Raises:
        ValueError: ``init`` is not one of :data:`hlrs_tf.config.search.INITS`, or the model is not built.
        TypeError: See :func:`reference_variables`.
    """
    if init not in INITS:
        raise ValueError(f"--init={init!r} is invalid: it must be one of {', '.join(INITS)}")
    if init == "keras":
        return
    rng = np.random.default_rng([_STREAM, int(seed)])
    for var, bound in reference_variables(model):
        var.assign(rng.uniform(-bound, bound, size=_shape(var)).astype(var.dtype))
