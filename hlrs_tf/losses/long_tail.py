"""The long-tail losses of ``--loss`` (issue 19), shared by the search (both levels) and the retraining.

Every loss is a per-example loss of ``(labels, logits, constants)`` reduced over the global batch by
:func:`hlrs_tf.losses.reweighting.reduce_over_batch` (plain mean, or class-weighted with
``--class_weight_reduction``). The
constants come from the class counts ``n_j`` of the long-tailed training split the loss sees, once, in numpy
(:meth:`LossSpec.from_counts`); the run saves them to ``class_counts.json`` (:meth:`LossSpec.summary`).

* ``ce``: cross-entropy.
* ``class_balanced``: CE weighted by Cui et al.'s effective-number weights (``--reweight_beta``,
  :func:`hlrs_tf.losses.reweighting.effective_number_weights`), reduced as ``--class_weight_reduction`` says.
* ``logit_adjusted`` (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment"):
  ``CE(z + log(pi^tau + 1e-12), y)`` with ``pi`` the class priors ``n_j / sum n`` and ``tau = --la_tau``.
  Reference: google-research/google-research ``logit_adjustment/utils.py``, ``build_loss_fn`` (``logits +
  tf.math.log(base_probs**tau + 1e-12)``, then ``sparse_softmax_cross_entropy_with_logits`` and the batch
  mean); ``main.py`` reads ``base_probs`` from a file of the training split's priors. Same formula, 1e-12
  included (it keeps a class without examples finite).
* ``balanced_softmax`` (Ren et al., NeurIPS 2020, "Balanced Meta-Softmax"): ``CE(z + log n, y)``. Reference:
  jiawei-ren/BalancedMetaSoftmax-Classification ``loss/BalancedSoftmaxLoss.py``, ``balanced_softmax_loss``
  (``logits + spc.log()``, ``F.cross_entropy``, mean). Same formula; a class without examples is refused
  (``log 0``) where the reference would produce ``-inf`` logits. It equals ``logit_adjusted`` at ``tau = 1``
  up to the 1e-12 (``log n_j = log pi_j + log N``, and a softmax ignores a constant shift).
* ``ldam`` (Cao et al., NeurIPS 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
  Loss"): margins ``m_j = 0.5 * n_j^(-1/4) / max_k n_k^(-1/4)``; the true class' logit loses its margin, the
  logits are scaled by ``s = 30`` and go into the (DRW-)weighted CE. Reference: kaidic/LDAM-DRW
  ``losses.py``, ``LDAMLoss`` (``m_list = 1 / sqrt(sqrt(cls_num_list))``, scaled to ``max_m = 0.5``;
  ``x_m = x - batch_m`` on the target entry only; ``F.cross_entropy(self.s * output, target,
  weight=self.weight)``). **Departure**: the reference applies the margin to the output of a normalised
  classifier (``models/resnet_cifar.py``, ``NormedLinear``: cosine similarities in ``[-1, 1]``, which is why
  ``s = 30``); here it is applied to our networks' ordinary linear classifier logits (the networks are not
  changed), so ``s * z`` can be far larger than in the reference and the loss saturates sooner.
* ``focal`` (Lin et al., ICCV 2017): ``FL = -(1 - p_t)^gamma log p_t`` with ``p_t`` the softmax probability of
  the true class, ``gamma = --focal_gamma``, batch mean. Reference: kaidic/LDAM-DRW ``losses.py``,
  ``focal_loss`` / ``FocalLoss`` (``p = exp(-CE)``, ``(1 - p)^gamma * CE``, mean), the softmax form of Lin
  et al.'s sigmoid loss. Here ``1 - p_t`` is ``-expm1(-CE)`` (exact for small CE) and floored at the smallest
  normal float32 before the power, so ``gamma < 1`` has a finite gradient at ``p_t = 1``.
* ``class_balanced_focal``: the focal loss with each example weighted by its class' effective-number weight,
  reduced as ``--class_weight_reduction`` says. Reference: Cui et al.'s richardaecn/class-balanced-loss
  ``src/cifar_main.py``, ``focal_loss`` (``alpha * modulator * CE``, summed and divided by the number of
  positives, i.e. the batch size: our ``batch_mean``). **Departures**: Cui et al.'s focal loss is the
  *sigmoid* one (per-class binary CE on one-hot labels); this is the softmax focal loss above, as LDAM-DRW's
  ``FocalLoss(weight=...)`` -- but with the modulator from the true ``p_t``, where LDAM-DRW's
  ``p = exp(-w_y CE)`` folds the weight into it (Cui et al. keep the modulator unweighted, as here). The
  default reduction is ``weighted_mean``, as for ``class_balanced``.

**DRW** (deferred re-weighting, Cao et al.): with ``--drw_epoch=E > 0`` the losses of :data:`DRW_LOSSES` are
unweighted before epoch ``E`` (0-based) and weighted by the effective-number weights (``--reweight_beta``,
0.9999 by default, as the reference) from epoch ``E`` on, reduced as ``--class_weight_reduction`` says
(``weighted_mean`` = the reference's ``F.cross_entropy(weight=...)``). Reference: kaidic/LDAM-DRW
``cifar_train.py``, ``train_rule == 'DRW'``: ``idx = epoch // 160; betas = [0, 0.9999]`` -- beta 0 gives
equal weights, so before the switch the weighted mean is the plain mean; the same holds here, where the
weights are ``1 + drw_active * (w - 1)`` with ``drw_active`` a non-trainable variable of the model that
:class:`hlrs_tf.losses.long_tail.DRWSchedule` assigns at the start of every epoch (so a resumed run gets the right
weights). ``E`` counts this run's epochs (160 of the reference's 200; a preset uses 80% of the default
epochs).

Replicas (``tf.distribute``): each replica returns its share of the global-batch loss and the shares sum to the
single-device value (:func:`hlrs_tf.losses.reweighting.reduce_over_batch`): unweighted losses are ``local mean /
replicas``, as Keras' losses; weighted ones with ``weighted_mean`` divide by the global weight sum, an
all-reduce (:meth:`LossSpec.syncs_replicas`).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from hlrs_tf.config.choices import DRW_LOSSES, LOSSES
from hlrs_tf.losses import reweighting as losses
from hlrs_tf.runtime.callbacks import EpochSchedule, model_variable

#: Losses weighted by the effective-number weights throughout.
_CLASS_WEIGHTED = ("class_balanced", "class_balanced_focal")
#: LDAM's largest margin and logit scale (kaidic/LDAM-DRW ``cifar_train.py``: ``LDAMLoss(max_m=0.5, s=30)``).
LDAM_MAX_MARGIN = 0.5
LDAM_SCALE = 30.0
#: Added to ``pi^tau`` before the log (google-research ``logit_adjustment/utils.py``, ``build_loss_fn``).
LA_EPSILON = 1e-12
#: The focal modulator's base ``1 - p_t`` is floored here (the smallest normal float32): ``x^gamma`` has an
#: infinite derivative at 0 for ``gamma < 1``.
_FOCAL_FLOOR = float(np.finfo(np.float32).tiny)


# ------------------------------------------------------------------------------------------------ constants
def _check_counts(counts) -> np.ndarray:
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"class counts must be a non-empty vector of counts >= 0, got {counts.tolist()}")
    return counts


def class_priors(counts) -> np.ndarray:
    """The class priors ``n_j / sum_k n_k`` (float64)."""
    counts = _check_counts(counts)
    return counts / counts.sum()


def logit_adjustments(counts, tau: float = 1.0) -> np.ndarray:
    """Logit adjustment's offsets ``log(pi_j^tau + 1e-12)`` (google-research ``build_loss_fn``), float64."""
    return np.log(class_priors(counts) ** float(tau) + LA_EPSILON)


def balanced_softmax_offsets(counts) -> np.ndarray:
    """Balanced softmax's offsets ``log n_j`` (BalancedMetaSoftmax ``balanced_softmax_loss``), float64.

    Raises:
        ValueError: A class without examples (its offset would be ``-inf``).
    """
    counts = _check_counts(counts)
    if (counts == 0).any():
        raise ValueError(f"--loss=balanced_softmax needs every class in the training split, got counts "
                         f"{counts.tolist()}")
    return np.log(counts)


def ldam_margins(counts, max_margin: float = LDAM_MAX_MARGIN) -> np.ndarray:
    """LDAM's margins ``m_j = max_margin * n_j^(-1/4) / max_k n_k^(-1/4)`` (LDAM-DRW ``LDAMLoss``), float64.

    Raises:
        ValueError: A class without examples (its margin would be infinite).
    """
    counts = _check_counts(counts)
    if (counts == 0).any():
        raise ValueError(f"--loss=ldam needs every class in the training split, got counts {counts.tolist()}")
    m = 1.0 / np.sqrt(np.sqrt(counts))
    return m * (max_margin / m.max())


# ------------------------------------------------------------------------------------------------ per example
def _labels_and_logits(y, logits):
    return ops.reshape(ops.cast(y, "int32"), (-1,)), ops.cast(logits, "float32")


def cross_entropy(y, logits):
    """Per-example softmax cross-entropy ``[B]`` (float32) of integer labels and logits."""
    y, logits = _labels_and_logits(y, logits)
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


def adjusted_cross_entropy(y, logits, offsets):
    """Per-example ``CE(logits + offsets, y)``: logit adjustment and balanced softmax (by their offsets)."""
    _, logits = _labels_and_logits(y, logits)
    return cross_entropy(y, logits + ops.cast(ops.convert_to_tensor(offsets), "float32"))


def ldam_cross_entropy(y, logits, margins, scale: float = LDAM_SCALE):
    """Per-example LDAM loss ``CE(s * (z - m_y e_y), y)``: the true class' logit minus its margin, scaled."""
    y, logits = _labels_and_logits(y, logits)
    margins = ops.cast(ops.convert_to_tensor(margins), "float32")
    one_hot = ops.one_hot(y, ops.shape(logits)[-1], dtype="float32")
    return cross_entropy(y, scale * (logits - one_hot * ops.take(margins, y)[:, None]))


def focal_loss(y, logits, gamma: float):
    """Per-example softmax focal loss ``(1 - p_t)^gamma * CE`` with ``p_t = exp(-CE)``."""
    ce = cross_entropy(y, logits)
    return ops.power(ops.maximum(-ops.expm1(-ce), _FOCAL_FLOOR), float(gamma)) * ce


# ------------------------------------------------------------------------------------------------ the loss
@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One ``--loss`` with its constants: what the models call (:func:`long_tail_loss`), plain data.

    Attributes:
        name: One of :data:`LOSSES`.
        reduction: ``--class_weight_reduction``, for the class-weighted losses and DRW.
        class_weights: Effective-number weights ``[C]`` (``class_balanced``, ``class_balanced_focal``, DRW).
        drw: Whether ``class_weights`` are DRW's: switched on by the model's ``drw_active`` variable.
        offsets: Logit offsets ``[C]`` (``logit_adjusted``, ``balanced_softmax``).
        margins: LDAM margins ``[C]``.
        scale: LDAM's logit scale ``s``.
        focal_gamma: The focal exponent.
    """

    name: str = "ce"
    reduction: str = "weighted_mean"
    class_weights: tuple | None = None
    drw: bool = False
    offsets: tuple | None = None
    margins: tuple | None = None
    scale: float = LDAM_SCALE
    focal_gamma: float = 2.0

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"--loss={self.name!r} is invalid: it must be one of {', '.join(LOSSES)}")
        losses.check_reduction(self.reduction)
        if self.drw and self.name not in DRW_LOSSES:
            raise ValueError(f"--drw_epoch needs --loss in {', '.join(DRW_LOSSES)}, got {self.name!r}")
        needs = {"class_weights": self.name in _CLASS_WEIGHTED or self.drw,
                 "offsets": self.name in ("logit_adjusted", "balanced_softmax"), "margins": self.name == "ldam"}
        for field, needed in needs.items():
            if needed and getattr(self, field) is None:
                raise ValueError(f"--loss={self.name} needs {field}")
        for field in needs:  # tuples of floats, so the spec is hashable and JSON-ready
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, tuple(float(v) for v in value))

    @classmethod
    def from_counts(cls, name: str, counts, *, reweight_beta: float = 0.9999,
                    reduction: str = "weighted_mean", la_tau: float = 1.0, focal_gamma: float = 2.0,
                    drw: bool = False) -> LossSpec:
        """The loss ``name`` with its constants computed from the training split's class counts.

        Args:
            name: One of :data:`LOSSES`.
            counts: Training examples per class (of the long-tailed split the loss sees).
            reweight_beta: The effective-number beta of the class weights (class-balanced losses, DRW).
            reduction: How weighted losses reduce (``--class_weight_reduction``).
            la_tau: Logit adjustment's ``tau``.
            focal_gamma: The focal exponent.
            drw: DRW weights (switched on per epoch by the model's ``drw_active``).
        """
        needs_weights = name in _CLASS_WEIGHTED or drw
        return cls(
            name=name, reduction=reduction, drw=drw, focal_gamma=float(focal_gamma),
            class_weights=losses.effective_number_weights(counts, reweight_beta) if needs_weights else None,
            offsets=(logit_adjustments(counts, la_tau) if name == "logit_adjusted"
                     else balanced_softmax_offsets(counts) if name == "balanced_softmax" else None),
            margins=ldam_margins(counts) if name == "ldam" else None,
        )

    @classmethod
    def from_settings(cls, settings, counts) -> LossSpec:
        """:meth:`from_counts` from a run config's ``loss``, ``reweight_beta``, ``class_weight_reduction``,
        ``la_tau``, ``focal_gamma`` and ``drw_epoch`` (a run config's loss block,
        :class:`~hlrs_tf.config.blocks.LossConfig`)."""
        return cls.from_counts(
            settings.loss, counts, reweight_beta=settings.reweight_beta, reduction=settings.class_weight_reduction,
            la_tau=settings.la_tau, focal_gamma=settings.focal_gamma, drw=settings.drw_epoch > 0,
        )

    @classmethod
    def for_run(cls, settings, num_classes: int, class_counts=None) -> LossSpec:
        """The loss of a run (:meth:`from_settings`) from the class counts of its long-tailed training split;
        equal counts if they are not known (a dry run)."""
        counts = np.ones(num_classes) if class_counts is None else class_counts
        return cls.from_settings(settings, counts)

    @property
    def weighted(self) -> bool:
        """Whether the reduction is class-weighted (always, or by DRW)."""
        return self.class_weights is not None

    def syncs_replicas(self) -> bool:
        """True when this loss all-reduces across replicas here (the global weight sum of ``weighted_mean``):
        a pass computing it must be traced inline (see :func:`hlrs_tf.search.bilevel.traced_once`)."""
        return self.weighted and losses.reduction_syncs_replicas(self.reduction)

    def to_config(self) -> dict:
        """Plain-dict view (JSON-ready; ``LossSpec(**spec.to_config())`` rebuilds it)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def summary(self, counts, **settings) -> dict:
        """The ``class_counts.json`` content: the counts and priors the loss was built from, and its constants.

        Args:
            counts: The class counts given to :meth:`from_counts`.
            **settings: Settings to record with them (e.g. ``la_tau``, ``reweight_beta``, ``drw_epoch``).
        """
        counts = _check_counts(counts)
        out = {"loss": self.name, "counts": [int(c) for c in counts], "num_examples": int(counts.sum()),
               "priors": class_priors(counts).tolist(), **settings}
        if self.weighted:
            out.update(class_weights=list(self.class_weights), class_weight_reduction=self.reduction, drw=self.drw)
        if self.offsets is not None:
            out["logit_offsets"] = list(self.offsets)
        if self.margins is not None:
            out.update(ldam_margins=list(self.margins), ldam_scale=self.scale)
        if self.name in ("focal", "class_balanced_focal"):
            out["focal_gamma"] = self.focal_gamma
        return out

    def run_summary(self, counts, settings) -> dict:
        """:meth:`summary` with a run config's loss block (``class_counts.json`` of a search or retraining)."""
        return self.summary(counts, reweight_beta=settings.reweight_beta, la_tau=settings.la_tau,
                            focal_gamma=settings.focal_gamma, drw_epoch=settings.drw_epoch)


def per_example_loss(y, logits, spec: LossSpec):
    """The unreduced loss ``[B]`` (float32) of ``spec.name``, before any class weight."""
    if spec.name in ("logit_adjusted", "balanced_softmax"):
        return adjusted_cross_entropy(y, logits, spec.offsets)
    if spec.name == "ldam":
        return ldam_cross_entropy(y, logits, spec.margins, spec.scale)
    if spec.name in ("focal", "class_balanced_focal"):
        return focal_loss(y, logits, spec.focal_gamma)
    return cross_entropy(y, logits)  # ce, class_balanced


def class_weights_now(spec: LossSpec, drw_active=None):
    """The class weights in force: ``None`` (unweighted), the fixed weights, or DRW's ``1 + a (w - 1)``.

    Args:
        spec: The loss.
        drw_active: DRW's switch, 0 or 1 (the model's non-trainable variable); required when ``spec.drw``.
    """
    if not spec.weighted:
        return None
    w = ops.convert_to_tensor(np.asarray(spec.class_weights, np.float32))
    if not spec.drw:
        return w
    if drw_active is None:
        raise ValueError("a DRW loss needs the model's drw_active variable")
    # Equal weights before the switch (the reference's beta 0): the weighted mean is then the plain mean.
    return 1.0 + ops.cast(drw_active, "float32") * (w - 1.0)


def long_tail_loss(y, logits, spec: LossSpec, drw_active=None):
    """The loss of ``spec`` on a batch: this replica's share of the global-batch value (see the module docstring).

    The one dispatcher of :class:`hlrs_tf.search.bilevel.DartsSearchModel` (both levels) and
    :class:`hlrs_tf.train.model.RetrainModel`.

    Args:
        y: Integer labels ``[B]`` (or ``[B, 1]``).
        logits: ``[B, C]`` logits (any float dtype; the loss is float32).
        spec: The loss and its constants.
        drw_active: DRW's switch (0 or 1), for a DRW loss.

    Returns:
        Scalar float32 loss.
    """
    return losses.reduce_over_batch(per_example_loss(y, logits, spec), y, class_weights_now(spec, drw_active),
                                    spec.reduction)


def drw_active(epoch: int, drw_epoch: int) -> float:
    """DRW's switch at 0-based ``epoch``: 1.0 from ``drw_epoch`` on, else 0.0; always 0.0 when ``drw_epoch`` is
    0 (no DRW). LDAM-DRW's ``cifar_train.py`` ``idx = epoch // 160`` with ``drw_epoch = 160``."""
    return 1.0 if 0 < drw_epoch <= epoch else 0.0


class DRWSchedule(EpochSchedule):
    """Assigns DRW's switch (:func:`drw_active`) to the model's ``drw_active`` variable at the start of every
    epoch and logs it as ``drw_active`` (an :class:`~hlrs_tf.runtime.callbacks.EpochSchedule`).

    The variable is read inside the traced step (:func:`class_weights_now`), so the weights change without
    retracing; a resumed run (``initial_epoch``) gets the right weights whatever the checkpoint held.

    Args:
        drw_epoch: The first 0-based epoch with class-balanced weights (``--drw_epoch``, > 0).
    """

    def __init__(self, drw_epoch: int):
        if drw_epoch < 1:
            raise ValueError(f"--drw_epoch must be >= 1 for DRW, got {drw_epoch}")
        self.drw_epoch = int(drw_epoch)
        needed = "DRWSchedule needs a model built with a DRW loss (its drw_active variable)"
        super().__init__({"drw_active": (lambda epoch: drw_active(epoch, self.drw_epoch),
                                         model_variable("drw_active", needed_by=needed))})
