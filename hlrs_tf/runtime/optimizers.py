"""The optimisers of a run, built from the config blocks that own their settings.

One function per optimiser, used by the search (:func:`hlrs_tf.search.task.build_model`), the retraining
(:func:`hlrs_tf.train.task.build_model`) and the test factory (:func:`hlrs_tf.testing.small_search_model`):

- the weights: SGD with momentum (quark0/darts ``cnn/train_search.py`` and ``cnn/train.py``:
  ``torch.optim.SGD(lr, momentum, weight_decay)`` with ``CosineAnnealingLR(T_max=epochs, eta_min)``). Ours decays
  the rate per step over the whole run instead of per epoch, and adds the weight decay to the gradient in the
  train step (coupled L2, as ``weight_decay=`` in PyTorch) rather than in the optimiser;
- the architecture: Adam with DARTS' betas (0.5, 0.999), a float learning rate that
  :class:`hlrs_tf.search.callbacks.HLRSCallback` sets each epoch (``architect.py``:
  ``torch.optim.Adam(arch_parameters, lr, betas, weight_decay)``; the decay is likewise added to the gradient).

``mixed_float16`` puts each in a ``LossScaleOptimizer`` (:func:`hlrs_tf.runtime.precision.wrap_optimizer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from hlrs_tf.runtime import precision as precision_lib

if TYPE_CHECKING:
    from hlrs_tf.config.blocks import ArchOptimizer, WeightOptimizer

__all__ = ["arch_optimizer", "sgd", "weight_optimizer"]


def sgd(learning_rate, momentum: float, precision: str = "float32") -> keras.optimizers.Optimizer:
    """SGD with momentum at ``learning_rate`` (a float or a ``LearningRateSchedule``), wrapped for ``precision``."""
    return precision_lib.wrap_optimizer(keras.optimizers.SGD(learning_rate, momentum=momentum), precision)


def weight_optimizer(settings: WeightOptimizer, total_steps: int,
                     precision: str = "float32") -> keras.optimizers.Optimizer:
    """The weight optimiser of a run: SGD, its rate cosine-decayed per step from ``learning_rate`` to
    ``learning_rate_min`` over ``total_steps``.

    Args:
        settings: The config's weight optimiser block.
        total_steps: Weight steps of the whole run (the length of the cosine).
        precision: The run's dtype policy.
    """
    schedule = keras.optimizers.schedules.CosineDecay(
        settings.learning_rate, decay_steps=max(total_steps, 1),
        alpha=settings.learning_rate_min / settings.learning_rate,
    )
    return sgd(schedule, settings.momentum, precision)


def arch_optimizer(settings: ArchOptimizer, precision: str = "float32") -> keras.optimizers.Optimizer:
    """The architecture optimiser: Adam at ``arch_learning_rate`` (a float, so a callback can set it per epoch)
    with ``arch_beta1`` / ``arch_beta2``."""
    adam = keras.optimizers.Adam(settings.arch_learning_rate, beta_1=settings.arch_beta1, beta_2=settings.arch_beta2)
    return precision_lib.wrap_optimizer(adam, precision)
