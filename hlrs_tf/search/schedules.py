"""Per-epoch schedules of a search: BBN's mixing factor ``alpha_T`` and HLRS' architecture learning rate.

Both are pure functions of the 0-based epoch index ``T`` and the number of epochs ``T_max`` (docs/method.md
M4 and M5), so each is tested on its own; :class:`HLRSCallback` is the only stateful part; it
evaluates them once per epoch and pushes the values into the model:

* ``alpha_T`` (BBN mixing): ``parabolic`` (BBN's default) ``1 - (T/T_max)^2``, ``linear`` ``1 - T/T_max``,
  ``cosine`` ``0.5 * (1 + cos(pi T/T_max))``, ``constant`` 0.5. Linear and cosine are symmetric,
  ``alpha(t) + alpha(1 - t) = 1`` in normalised time ``t = T/T_max``.
* ``eta_a(T)`` (HLRS): ``constant`` (plain DARTS), ``mixing`` (``eta_a0 * alpha_T``, the default HLRS),
  ``parabolic`` / ``cosine`` / ``linear`` (the same shapes as above applied to ``eta_a0``, independent of the
  mixing schedule), ``freeze`` (``eta_a0`` while ``alpha_T >= threshold``, then 0), plus an optional
  warm-up of K epochs with ``eta_a = 0``.

The paper's exact HLRS formula could not be recovered; these forms cover it. Error messages name the
command-line flags because that is where a bad value comes from, but nothing here reads flags.
"""

from __future__ import annotations

import dataclasses
import math

import keras

MIXING_SCHEDULES = ("parabolic", "linear", "cosine", "constant")
ARCH_LR_SCHEDULES = ("constant", "mixing", "parabolic", "cosine", "linear", "freeze")


# --------------------------------------------------------------------------------------------------
# Validation (shared by the functions, the config and the callback).


def _check_epoch(epoch, total_epochs) -> float:
    """Validates ``(epoch, total_epochs)`` and returns the normalised time ``t = epoch / total_epochs``."""
    if total_epochs < 1:
        raise ValueError(f"total_epochs must be >= 1 (--epochs), got {total_epochs}")
    if not 0 <= epoch <= total_epochs:
        raise ValueError(f"epoch must be in [0, total_epochs={total_epochs}], got {epoch}")
    return float(epoch) / float(total_epochs)


def _check_mixing(kind: str) -> None:
    if kind not in MIXING_SCHEDULES:
        raise ValueError(f"--mixing must be one of {', '.join(MIXING_SCHEDULES)}; got {kind!r}")


def _check_arch_lr_args(kind: str, base_lr: float, mixing: str, freeze_threshold: float,
                        warmup_epochs: int) -> None:
    if kind not in ARCH_LR_SCHEDULES:
        raise ValueError(f"--arch_lr_schedule must be one of {', '.join(ARCH_LR_SCHEDULES)}; got {kind!r}")
    _check_mixing(mixing)
    # `not (x >= 0)` also rejects NaN.
    if not (base_lr >= 0.0 and math.isfinite(base_lr)):
        raise ValueError(f"the base architecture learning rate (--arch_learning_rate) must be a finite "
                         f"value >= 0, got {base_lr}")
    if not 0.0 <= freeze_threshold <= 1.0:
        raise ValueError(f"--freeze_threshold must be in [0, 1], got {freeze_threshold}")
    if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
        raise ValueError(f"--warmup_epochs must be an integer >= 0, got {warmup_epochs}")


# --------------------------------------------------------------------------------------------------
# The pure schedules.


def _decay(kind: str, t: float) -> float:
    """The shared decay shapes, from 1 at ``t = 0`` to 0 at ``t = 1`` (0.5 throughout for ``constant``)."""
    if kind == "parabolic":
        return 1.0 - t * t
    if kind == "linear":
        return 1.0 - t
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 0.5  # constant


def mixing_factor(kind: str, epoch: int, total_epochs: int) -> float:
    """BBN's mixing factor ``alpha_T``: the weight of the conventional branch at epoch ``epoch``.

    Args:
        kind: One of :data:`MIXING_SCHEDULES`.
        epoch: 0-based epoch index ``T``, in ``[0, total_epochs]``.
        total_epochs: ``T_max``, the number of epochs of the search (>= 1).

    Returns:
        ``alpha_T`` in ``[0, 1]``.

    Raises:
        ValueError: On an unknown ``kind`` (the message names ``--mixing``) or an epoch out of range.
    """
    _check_mixing(kind)
    return _decay(kind, _check_epoch(epoch, total_epochs))


def arch_learning_rate(kind: str, epoch: int, total_epochs: int, base_lr: float, *,
                       mixing: str = "parabolic", freeze_threshold: float = 0.5,
                       warmup_epochs: int = 0) -> float:
    """HLRS' architecture learning rate ``eta_a(T)`` for epoch ``epoch``.

    Args:
        kind: One of :data:`ARCH_LR_SCHEDULES`.
        epoch: 0-based epoch index ``T``, in ``[0, total_epochs]``.
        total_epochs: ``T_max`` (>= 1).
        base_lr: ``eta_a0`` (>= 0), the rate of plain DARTS.
        mixing: The ``alpha_T`` schedule that ``mixing`` and ``freeze`` follow (ignored by the others, but
            still validated so a bad flag fails whatever the schedule).
        freeze_threshold: ``freeze`` keeps ``base_lr`` while ``alpha_T >= freeze_threshold``, in ``[0, 1]``.
        warmup_epochs: Epochs ``T < warmup_epochs`` get 0 (architecture frozen while the weights warm up).
            The schedule is not shifted: after the warm-up it is evaluated at the true epoch.

    Returns:
        The learning rate (>= 0).

    Raises:
        ValueError: On an unknown schedule or an invalid value; the message names the flag.
    """
    _check_arch_lr_args(kind, base_lr, mixing, freeze_threshold, warmup_epochs)
    t = _check_epoch(epoch, total_epochs)
    if epoch < warmup_epochs:
        return 0.0
    base_lr = float(base_lr)
    if kind == "constant":
        return base_lr
    if kind == "mixing":
        return base_lr * _decay(mixing, t)
    if kind == "freeze":
        # Evaluated per epoch, not latched: every alpha_T schedule is non-increasing, so once below the
        # threshold it stays below and the two are the same.
        return base_lr if _decay(mixing, t) >= freeze_threshold else 0.0
    return base_lr * _decay(kind, t)  # parabolic / cosine / linear


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The schedule settings of a search, validated on construction (so a bad flag fails before training).

    Attributes:
        arch_lr_schedule: One of :data:`ARCH_LR_SCHEDULES` (``constant`` = plain DARTS).
        mixing: One of :data:`MIXING_SCHEDULES`, BBN's ``alpha_T``.
        base_arch_lr: ``eta_a0``, DARTS' 3e-4.
        freeze_threshold: ``alpha_T`` below which ``freeze`` sets the rate to 0.
        warmup_epochs: Leading epochs with architecture learning rate 0.
    """

    arch_lr_schedule: str = "constant"
    mixing: str = "parabolic"
    base_arch_lr: float = 3e-4
    freeze_threshold: float = 0.5
    warmup_epochs: int = 0

    def __post_init__(self):
        _check_arch_lr_args(self.arch_lr_schedule, self.base_arch_lr, self.mixing, self.freeze_threshold,
                            self.warmup_epochs)

    def arch_lr(self, epoch: int, total_epochs: int) -> float:
        """``eta_a`` at ``epoch`` (see :func:`arch_learning_rate`)."""
        return arch_learning_rate(
            self.arch_lr_schedule, epoch, total_epochs, self.base_arch_lr, mixing=self.mixing,
            freeze_threshold=self.freeze_threshold, warmup_epochs=self.warmup_epochs,
        )

    def alpha(self, epoch: int, total_epochs: int) -> float:
        """``alpha_T`` at ``epoch`` (see :func:`mixing_factor`)."""
        return mixing_factor(self.mixing, epoch, total_epochs)


# --------------------------------------------------------------------------------------------------
# The callback.


class HLRSCallback(keras.callbacks.Callback):
    """Sets the architecture learning rate and BBN's ``alpha_T`` at the start of every epoch, and logs both.

    At ``on_epoch_begin`` it assigns ``eta_a(T)`` to ``model.arch_optimizer.learning_rate`` in place -- the
    optimizer is never replaced, so Adam's moments and iteration counter carry across epochs -- and, if the
    model owns a ``keras.Variable`` named ``bbn_alpha`` (the BBN model does), assigns ``alpha_T`` to it.
    Both are variables read inside the traced train step, so the new values take effect without retracing.
    At ``on_epoch_end`` it puts ``arch_lr`` and ``bbn_alpha`` into the epoch logs; list it before the
    callbacks that write logs (``CSVHistory``, ``TensorBoardLogger``).

    Keras passes the true epoch index, also when ``fit`` resumes with ``initial_epoch``, so a resumed run
    continues the schedule where it stopped.

    Args:
        schedule: The schedule settings.
        total_epochs: ``T_max``, the ``epochs`` given to ``fit`` (the full search, not what is left of it).
    """

    def __init__(self, schedule: ScheduleConfig, total_epochs: int):
        super().__init__()
        if total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1 (--epochs), got {total_epochs}")
        self.schedule = schedule
        self.total_epochs = int(total_epochs)
        self.arch_lr = None
        self.alpha = None

    def on_epoch_begin(self, epoch, logs=None):
        self.alpha = self.schedule.alpha(epoch, self.total_epochs)
        self.arch_lr = self.schedule.arch_lr(epoch, self.total_epochs)
        optimizer = getattr(self.model, "arch_optimizer", None)
        if optimizer is None:
            raise ValueError("HLRSCallback needs a model compiled with an arch_optimizer")
        learning_rate = optimizer.learning_rate
        if not isinstance(learning_rate, keras.Variable):
            # A LearningRateSchedule is evaluated from the iteration count and cannot be assigned.
            raise TypeError("the arch_optimizer must be built with a float learning rate for HLRSCallback, "
                            f"got {type(learning_rate).__name__}")
        learning_rate.assign(self.arch_lr)
        bbn_alpha = getattr(self.model, "bbn_alpha", None)
        if isinstance(bbn_alpha, keras.Variable):
            bbn_alpha.assign(self.alpha)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.arch_lr is not None:
            logs["arch_lr"] = float(self.arch_lr)
            logs["bbn_alpha"] = float(self.alpha)


def drw_active(epoch: int, drw_epoch: int) -> float:
    """DRW's switch at 0-based ``epoch``: 1.0 from ``drw_epoch`` on, else 0.0; always 0.0 when ``drw_epoch`` is
    0 (no DRW). LDAM-DRW's ``cifar_train.py`` ``idx = epoch // 160`` with ``drw_epoch = 160``."""
    return 1.0 if 0 < drw_epoch <= epoch else 0.0


class DRWSchedule(keras.callbacks.Callback):
    """Assigns DRW's switch (:func:`drw_active`) to the model's ``drw_active`` variable at the start of every
    epoch and logs it as ``drw_active``.

    The variable is read inside the traced step (:func:`hlrs_tf.losses.long_tail.class_weights_now`), so the
    weights change without retracing; Keras passes the true epoch index, so a resumed run (``initial_epoch``)
    gets the right weights whatever the checkpoint held. List it before the callbacks that write logs.

    Args:
        drw_epoch: The first 0-based epoch with class-balanced weights (``--drw_epoch``, > 0).
    """

    def __init__(self, drw_epoch: int):
        super().__init__()
        if drw_epoch < 1:
            raise ValueError(f"--drw_epoch must be >= 1 for DRW, got {drw_epoch}")
        self.drw_epoch = int(drw_epoch)
        self._value = None

    def on_epoch_begin(self, epoch, logs=None):
        self._value = drw_active(epoch, self.drw_epoch)
        variable = getattr(self.model, "drw_active", None)
        if not isinstance(variable, keras.Variable):
            raise ValueError("DRWSchedule needs a model built with a DRW loss (its drw_active variable)")
        variable.assign(self._value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._value is not None:
            logs["drw_active"] = self._value
