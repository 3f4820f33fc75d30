"""Re-weighting for long-tailed data: class-balanced loss weights and the class-weighted cross-entropy.

Cui et al., "Class-Balanced Loss Based on Effective Number of Samples" (CVPR 2019): the effective number of
class ``i`` is ``E_i = (1 - beta^N_i) / (1 - beta)``; its weight is ``1 / E_i``, normalised so the weights sum
to the number of classes. docs/method.md M7 uses ``beta = 0.9999`` for the ``darts_reweight`` method.

Each example's cross-entropy is scaled by the weight of its class; :func:`class_weighted_cross_entropy` then
reduces over the batch in one of two ways (``--class_weight_reduction``):

* ``weighted_mean`` (default): ``sum(w_y * CE) / sum(w_y)``, PyTorch's ``F.cross_entropy(weight=w)`` as the
  long-tail reference uses it (kaidic/LDAM-DRW ``cifar_train.py``: ``nn.CrossEntropyLoss(weight=per_cls_weights)``);
* ``batch_mean``: ``sum(w_y * CE) / batch_size``, Cui et al.'s official TensorFlow code (and Keras'
  ``sample_weight``), which this package used before. With weights summing to ``C`` the mean weight of a batch
  drawn from the long-tailed distribution is far below 1 (0.171 on CIFAR-10-LT at ratio 100, beta 0.9999), so
  the weight steps are ~5.8x smaller than with plain cross-entropy at the same learning rate.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

# The reductions of the class-weighted cross-entropy (``--class_weight_reduction``); see the module docstring.
from hlrs_tf.config.choices import CLASS_WEIGHT_REDUCTIONS


def effective_number_weights(counts, beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights ``(1 - beta) / (1 - beta^N_i)``, normalised to sum to ``C``.

    Args:
        counts: Training examples per class (all classes; a class with 0 examples gets weight 0).
        beta: The effective-number hyperparameter in ``[0, 1)``; 0 gives equal weights.

    Returns:
        ``float64 [C]`` weights.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"--reweight_beta must be in [0, 1), got {beta}")
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"class counts must be a non-empty vector of counts >= 0, got {counts.tolist()}")
    present = counts > 0
    effective = np.where(present, (1.0 - np.power(beta, counts)) / (1.0 - beta), 1.0)
    w = np.where(present, 1.0 / effective, 0.0)
    return w * (len(counts) / w.sum())


def check_reduction(reduction: str) -> str:
    """Returns ``reduction`` if it is one of :data:`CLASS_WEIGHT_REDUCTIONS`.

    Raises:
        ValueError: Naming ``--class_weight_reduction`` and the allowed values.
    """
    if reduction not in CLASS_WEIGHT_REDUCTIONS:
        raise ValueError(f"--class_weight_reduction={reduction!r} is invalid: it must be one of "
                         f"{', '.join(CLASS_WEIGHT_REDUCTIONS)}")
    return reduction


def _replicas() -> int:
    """Replicas whose shares of this loss are summed (1 outside a replica context of a strategy)."""
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def reduction_syncs_replicas(reduction: str) -> bool:
    """True when :func:`class_weighted_cross_entropy` with ``reduction`` all-reduces across replicas here.

    ``weighted_mean`` needs the global batch's weight sum; that cross-replica sum is a ``merge_call`` under
    ``MirroredStrategy``, which TensorFlow refuses inside a nested ``tf.function`` -- so a pass computing this
    loss must be traced inline (see :func:`hlrs_tf.search.bilevel.traced_once`).
    """
    return check_reduction(reduction) == "weighted_mean" and _replicas() > 1


def class_weighted_cross_entropy(y, logits, class_weights, reduction: str = "weighted_mean"):
    """Cross-entropy with each example scaled by the weight of its class, reduced over the global batch.

    The effective learning rate, against plain cross-entropy (whose gradient is the batch mean of the
    per-example gradients):

    * ``weighted_mean``: ``sum(w_y * CE_i) / sum(w_y)``. A convex combination of the examples' losses: the
      overall gradient scale is that of a mean whatever the weights' scale (it is invariant to ``w -> c w``);
      the weights only shift the mass between classes. A batch of a single class gives exactly its plain
      cross-entropy, whatever its weight. Reference: kaidic/LDAM-DRW ``cifar_train.py``
      (``nn.CrossEntropyLoss(weight=per_cls_weights)``, i.e. ``F.cross_entropy(weight=w)``). Departure: a
      batch whose weights sum to 0 gives loss 0 here (``divide_no_nan``), NaN in PyTorch.
    * ``batch_mean``: ``sum(w_y * CE_i) / batch_size``: the gradient is scaled by the batch's mean weight,
      so the effective learning rate is ``lr * mean(w_y)``. With weights summing to ``C`` and a uniform
      sampler over a long-tailed set that is ~0.17 lr at ratio 100 (the head's weights are small). Cui et
      al.'s TensorFlow code and Keras' ``sample_weight`` reduction.

    Under ``tf.distribute`` this runs once per replica on that replica's slice and returns the replica's
    *share*: the shares (and so the gradients, which the optimizer sums over replicas) add up to the
    single-device value of the global batch. ``weighted_mean``: ``local sum(w_y CE) / global sum(w_y)``, the
    global sum from an all-reduce (a label statistic, no gradient through it); exact for any split.
    ``batch_mean``: ``local mean / replicas``, as Keras' losses (exact for equal slices, which
    :func:`hlrs_tf.runtime.distribute.check_global_batch_size` ensures).

    Args:
        y: Integer labels ``[B]`` (or ``[B, 1]``).
        logits: ``[B, C]`` logits (any float dtype; the loss is computed in float32).
        class_weights: ``[C]`` per-class weights.
        reduction: One of :data:`CLASS_WEIGHT_REDUCTIONS`.

    Returns:
        Scalar float32 loss (this replica's share under a strategy).

    Raises:
        ValueError: Unknown ``reduction``.
    """
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    ce = keras.losses.sparse_categorical_crossentropy(y, ops.cast(logits, "float32"), from_logits=True)
    return reduce_over_batch(ce, y, class_weights, reduction)


def reduce_over_batch(values, y, class_weights=None, reduction: str = "weighted_mean"):
    """This replica's share of a per-example loss reduced over the global batch, optionally class-weighted.

    The one reduction of every loss of this package (:func:`class_weighted_cross_entropy` and
    :func:`hlrs_tf.losses.long_tail.long_tail_loss`); see :func:`class_weighted_cross_entropy` for the two
    reductions and how the replicas' shares add up to the single-device value.

    Args:
        values: Per-example losses ``[B]`` (float32).
        y: Integer labels ``[B]``, which pick each example's class weight.
        class_weights: ``[C]`` per-class weights, or ``None``: the plain batch mean (Keras' losses).
        reduction: One of :data:`CLASS_WEIGHT_REDUCTIONS` (only used with ``class_weights``).

    Returns:
        Scalar float32 loss (this replica's share under a strategy).
    """
    check_reduction(reduction)
    replicas = _replicas()
    if class_weights is None:
        total = ops.sum(values)
    else:
        y = ops.reshape(ops.cast(y, "int32"), (-1,))
        w = ops.take(ops.cast(ops.convert_to_tensor(class_weights), "float32"), y)
        total = ops.sum(w * values)
    if class_weights is None or reduction == "batch_mean":
        # Keras' order of operations (mean, then 1 / replicas), so this is bit-identical to
        # ``SparseCategoricalCrossentropy(...)(y, logits[, sample_weight=w])``.
        loss = ops.divide_no_nan(total, ops.cast(ops.shape(values)[0], "float32"))
        return loss * (1.0 / replicas) if replicas > 1 else loss
    weight_sum = tf.stop_gradient(ops.sum(w))
    if replicas > 1:
        weight_sum = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, weight_sum)
    return ops.divide_no_nan(total, weight_sum)
