"""HLRS: the per-epoch architecture learning rate of a search, beside BBN's mixing factor ``alpha_T``.

Both are pure functions of the 0-based epoch index ``T`` and the number of epochs ``T_max`` (docs/method.md
M4 and M5), so each is tested on its own. ``alpha_T`` lives in :mod:`hlrs_tf.losses.bbn_mixing` (the retraining uses
it too); :class:`hlrs_tf.search.callbacks.HLRSCallback` evaluates both once per epoch and pushes them into the model:

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

import math

from hlrs_tf.losses.bbn_mixing import check_mixing, decay, normalized_time

ARCH_LR_SCHEDULES = ("constant", "mixing", "parabolic", "cosine", "linear", "freeze")


# --------------------------------------------------------------------------------------------------
# Validation (of the function; the config refuses the same values earlier, naming the flag).


def _check_arch_lr_args(kind: str, base_lr: float, mixing: str, freeze_threshold: float,
                        warmup_epochs: int) -> None:
    if kind not in ARCH_LR_SCHEDULES:
        raise ValueError(f"--arch_lr_schedule must be one of {', '.join(ARCH_LR_SCHEDULES)}; got {kind!r}")
    check_mixing(mixing)
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
    t = normalized_time(epoch, total_epochs)
    if epoch < warmup_epochs:
        return 0.0
    base_lr = float(base_lr)
    if kind == "constant":
        return base_lr
    if kind == "mixing":
        return base_lr * decay(mixing, t)
    if kind == "freeze":
        # Evaluated per epoch, not latched: every alpha_T schedule is non-increasing, so once below the
        # threshold it stays below and the two are the same.
        return base_lr if decay(mixing, t) >= freeze_threshold else 0.0
    return base_lr * decay(kind, t)  # parabolic / cosine / linear
