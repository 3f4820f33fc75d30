"""Stops a search at the first non-finite loss, before a broken state reaches a checkpoint.

A DARTS search that diverges (too high a weight or architecture learning rate, a corrupt image) produces NaN or
Inf losses, and from then on NaN weights and alphas; a checkpoint written after that makes every resume start
from garbage. :class:`NonFiniteLossGuard` checks ``loss`` and ``arch_loss`` after every step and, at the end of
each epoch, every model variable (the last step of an epoch can turn the weights non-finite while its own loss,
computed before the update, was still finite). On the first non-finite value it sets
``model.stop_training = True``, records and raises :class:`NonFiniteLossError`.

Raising -- rather than only stopping -- is what keeps the checkpoint clean: Keras' ``fit`` still calls every
callback's ``on_epoch_end`` after ``stop_training`` is set, but an exception from a callback ends ``fit`` at once.
So put the guard **before** the checkpoint callback (``EpochCheckpoint``) in the callback list: callbacks run in
list order, and the guard's ``on_epoch_end`` check must come first.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from hlrs_tf.runtime.workdir import read_json, state_file

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or variable; the message says where and what to do.

    Attributes:
        epoch: 1-based epoch in which it happened.
        step: 1-based step within that epoch (``None`` when found by the end-of-epoch variable check).
        key: The log key (``"loss"``, ``"arch_loss"``) or ``"variables"``.
        value: The offending value (for ``"variables"``: the first non-finite variable's path).
    """

    def __init__(self, message: str, epoch: int, step: int | None, key: str, value):
        super().__init__(message)
        self.epoch, self.step, self.key, self.value = epoch, step, key, value


def _to_numpy(value) -> np.ndarray:
    # Logs hold Python floats, numpy values or tensors (under MultiWorkerMirroredStrategy shape (1,)); variables
    # and tensors have .numpy() (np.asarray on a Keras variable warns under numpy 2).
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value, dtype=np.float64)


def _is_finite(value) -> bool:
    return bool(np.all(np.isfinite(_to_numpy(value))))


def _as_float(value) -> float:
    array = _to_numpy(value).reshape(-1)
    return float(array[0]) if array.size else math.nan


def _current_lr(optimizer) -> float | None:
    if optimizer is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (TypeError, ValueError, AttributeError):
        return None


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/Inf loss (per step) or model variable (per epoch) and raises.

    Args:
        checkpoint_dir: The run's checkpoint folder; its ``state.json`` names the last good epoch in the message.
        monitor: Log keys to check after every step (the bilevel model logs ``loss`` and ``arch_loss``).
        check_variables: Also check every model variable at the end of each epoch (cheap: one pass over the
            weights, alphas and BN statistics).

    Attributes:
        error: The :class:`NonFiniteLossError` raised, or ``None``.
    """

    def __init__(self, checkpoint_dir: str | None = None, monitor=("loss", "arch_loss"),
                 check_variables: bool = True):
        super().__init__()
        self.monitor = tuple(monitor)
        self.checkpoint_dir = checkpoint_dir
        self.check_variables = bool(check_variables)
        self.error: NonFiniteLossError | None = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.error = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for key in self.monitor:
            if logs and key in logs and not _is_finite(logs[key]):
                self._fail(key, _as_float(logs[key]), step=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch
        for key in self.monitor:
            if logs and key in logs and not _is_finite(logs[key]):
                self._fail(key, _as_float(logs[key]), step=None)
        if self.check_variables:
            for variable in self.model.variables:
                if not _is_finite(variable):
                    self._fail("variables", variable.path, step=None)

    # ---------------------------------------------------------------- the error
    def _last_checkpoint(self) -> str:
        if not self.checkpoint_dir:
            return f"the checkpoint of the last complete epoch ({self._epoch}) is kept"
        state = read_json(state_file(self.checkpoint_dir), error=None)
        try:
            done = int(state["epoch"])
        except (ValueError, KeyError, TypeError):  # none yet, or unreadable (None)
            return f"no checkpoint was written to {self.checkpoint_dir} yet"
        return f"the last good checkpoint (epoch {done}) in {self.checkpoint_dir} is kept"

    def _fail(self, key: str, value, step: int | None):
        epoch = self._epoch + 1
        where = f"epoch {epoch}, step {step}" if step is not None else f"the end of epoch {epoch}"
        what = (f"non-finite {key} ({value})" if key != "variables"
                else f"a non-finite model variable ({value})")
        lr = _current_lr(getattr(self.model, "optimizer", None))
        arch_lr = _current_lr(getattr(self.model, "arch_optimizer", None))
        hints = []
        if lr is not None:
            hints.append(f"--learning_rate (now {lr:.3g})")
        if arch_lr is not None:
            hints.append(f"--arch_learning_rate (now {arch_lr:.3g})")
        hint = " or ".join(hints) or "the learning rates"
        message = (
            f"{what} at {where}: training stopped and epoch {epoch} was not saved; {self._last_checkpoint()}. "
            f"The search diverged: lower {hint} (or check the input data for NaN/Inf) and run again."
        )
        self.model.stop_training = True
        self.error = NonFiniteLossError(message, epoch, step, key, value)
        raise self.error
