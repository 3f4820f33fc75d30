"""BBN's cumulative learning maths: the mixing factor ``alpha_T``, the mixed feature and the mixed loss.

docs/method.md M4. One module for the search (:mod:`hlrs_tf.search.bbn`, the HLRS schedules of
:mod:`hlrs_tf.search.schedules`) and the retraining and export (:mod:`hlrs_tf.space.derived_network`,
:mod:`hlrs_tf.train`), so neither of the latter imports the search stack.

Follows the BBN reference, Megvii-Nanjing/BBN ``lib/core/combiner.py`` (``Combiner.bbn_mix``): there
``l = 1 - ((epoch - 1) / div_epoch) ** 2`` with a 1-based epoch, the features are mixed as
``2 * cat(l * f_c, (1 - l) * f_r)`` and the loss is ``l * CE(z, y_c) + (1 - l) * CE(z, y_r)``; inference weighs
both branches equally. Departures: the epoch here is 0-based (``T = epoch - 1`` of the reference, so the first
epoch has ``alpha = 1`` in both); ``T_max`` is always the number of epochs, where the reference stretches it to
100 and 200 for its 90- and 180-epoch schedules (``div_epoch``); and besides the reference's parabolic decay there are
``linear``, ``cosine`` and ``constant`` (0.5) schedules (the reference's commented-out alternatives).

The schedule half is plain Python (the configuration validates ``--mixing`` against :data:`MIXING_SCHEDULES`
without importing a tensor library); :func:`bbn_mix` and :func:`bbn_loss` import ``keras.ops`` when called,
which happens once per trace.
"""

from __future__ import annotations

import math

__all__ = ["MIXING_SCHEDULES", "bbn_loss", "bbn_mix", "check_mixing", "decay", "mixing_factor", "normalized_time"]

#: The ``alpha_T`` schedules (``--mixing``); ``parabolic`` is BBN's.
MIXING_SCHEDULES = ("parabolic", "linear", "cosine", "constant")


def normalized_time(epoch, total_epochs) -> float:
    """Validates ``(epoch, total_epochs)`` and returns the normalised time ``t = epoch / total_epochs``.

    Raises:
        ValueError: ``total_epochs < 1`` (the message names ``--epochs``) or ``epoch`` outside
            ``[0, total_epochs]``.
    """
    if total_epochs < 1:
        raise ValueError(f"total_epochs must be >= 1 (--epochs), got {total_epochs}")
    if not 0 <= epoch <= total_epochs:
        raise ValueError(f"epoch must be in [0, total_epochs={total_epochs}], got {epoch}")
    return float(epoch) / float(total_epochs)


def check_mixing(kind: str) -> None:
    """Raises ``ValueError`` naming ``--mixing`` unless ``kind`` is one of :data:`MIXING_SCHEDULES`."""
    if kind not in MIXING_SCHEDULES:
        raise ValueError(f"--mixing must be one of {', '.join(MIXING_SCHEDULES)}; got {kind!r}")


def decay(kind: str, t: float) -> float:
    """The decay shapes shared by ``alpha_T`` and HLRS, from 1 at ``t = 0`` to 0 at ``t = 1`` (0.5 throughout
    for ``constant``)."""
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
        total_epochs: ``T_max``, the number of epochs of the run (>= 1).

    Returns:
        ``alpha_T`` in ``[0, 1]``.

    Raises:
        ValueError: On an unknown ``kind`` (the message names ``--mixing``) or an epoch out of range.
    """
    check_mixing(kind)
    return decay(kind, normalized_time(epoch, total_epochs))


def bbn_mix(f_c, f_r, alpha):
    """BBN's mixed feature ``2 * concat(alpha * f_c, (1 - alpha) * f_r)`` (``concat(f_c, f_r)`` at 0.5)."""
    from keras import ops

    alpha = ops.cast(alpha, f_c.dtype)
    return ops.concatenate([2.0 * alpha * f_c, 2.0 * (1.0 - alpha) * f_r], axis=-1)


def bbn_loss(loss_fn, logits, y_c, y_r, alpha):
    """BBN's mixed loss ``alpha * L(z, y_c) + (1 - alpha) * L(z, y_r)`` on the mixed logits ``z``.

    Args:
        loss_fn: A Keras loss (e.g. sparse categorical cross-entropy from logits).
        logits: Mixed logits ``z``.
        y_c: Labels of the conventional batch.
        y_r: Labels of the re-balancing batch.
        alpha: ``alpha_T`` (scalar tensor or float).
    """
    from keras import ops

    alpha = ops.cast(alpha, "float32")
    return alpha * loss_fn(y_c, logits) + (1.0 - alpha) * loss_fn(y_r, logits)
