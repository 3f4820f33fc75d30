"""The allowed values of the settings that name a choice implemented in TensorFlow code, kept TensorFlow-free.

The configuration validates against them and the absl flags list them without importing the modules that
implement each choice (which import TensorFlow); those modules import them from here. The other choices live
in TensorFlow-free modules beside their implementation: ``--mixing`` in :mod:`hlrs_tf.losses.bbn_mixing`,
``--arch_lr_schedule`` in :mod:`hlrs_tf.search.schedules`, ``--weight_sampler`` / ``--arch_sampler`` in
:mod:`hlrs_tf.data.samplers`, ``--precision`` in :mod:`hlrs_tf.runtime.precision`.
"""

from __future__ import annotations

__all__ = ["CLASS_WEIGHT_REDUCTIONS", "DRW_LOSSES", "LOSSES", "STRATEGIES"]

#: The values of ``--loss`` (search and retraining; :mod:`hlrs_tf.losses.long_tail`).
LOSSES = ("ce", "class_balanced", "logit_adjusted", "balanced_softmax", "ldam", "focal", "class_balanced_focal")
#: Losses ``--drw_epoch`` can re-weight: those of LDAM-DRW's ``cifar_train.py`` (``CE``, ``LDAM``, ``Focal``);
#: the others are already class-weighted or class-adjusted.
DRW_LOSSES = ("ce", "ldam", "focal")
#: The values of ``--class_weight_reduction`` (:mod:`hlrs_tf.losses.reweighting`).
CLASS_WEIGHT_REDUCTIONS = ("weighted_mean", "batch_mean")
#: The values of ``--strategy`` (:mod:`hlrs_tf.runtime.distribute`).
STRATEGIES: tuple[str, ...] = ("auto", "default", "mirrored", "multi_worker")
