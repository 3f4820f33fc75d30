"""The Keras callbacks every run uses, search and retraining alike.

- :class:`EpochSchedule`: one callback for every value that changes once per epoch and is read by the traced
  step through a variable (HLRS' architecture learning rate and BBN's ``alpha_T`` in a search, ``alpha_T`` and
  the drop-path probability in a retraining, DRW's switch in both). The presets that fill it in sit with their
  method: :class:`hlrs_tf.search.callbacks.HLRSCallback`, :class:`hlrs_tf.train.callbacks.MixingSchedule` and
  ``DropPathSchedule``, :class:`hlrs_tf.losses.long_tail.DRWSchedule`.
- :class:`LearningRateLogger`: the learning rates in the epoch logs.
- :class:`TensorBoardWriter`: every numeric epoch log as a scalar, plus the add-ons a run plugs in (the
  search's alpha heatmaps, :class:`hlrs_tf.search.callbacks.AlphaHeatmaps`; the retraining's genotype card,
  :class:`hlrs_tf.train.callbacks.GenotypeCard`), all into one event file.
- :class:`CSVHistory`: ``history.csv``, safe to resume into.
- :class:`EpochCheckpoint`: what a resume needs after every epoch, ``state.json`` last.

Callbacks run in list order and share the epoch ``logs`` dict, so the ones that *add* entries go before the
ones that *write* them (:class:`TensorBoardWriter`, :class:`CSVHistory`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from hlrs_tf.runtime.workdir import atomic_write_json, atomic_write_text, read_json, state_file

__all__ = ["CSVHistory", "CheckpointError", "EpochCheckpoint", "EpochSchedule", "LearningRateLogger",
           "TensorBoardWriter"]

#: Where a value of an :class:`EpochSchedule` goes: the variable of the model to assign, or ``None`` to only log
#: it. May raise, naming what the model lacks.
Target = Callable[[object], "keras.Variable | None"]


class EpochSchedule(keras.callbacks.Callback):
    """Assigns per-epoch values to variables of the model at every epoch's start and logs them at its end.

    Every value is a pure function of the 0-based epoch (Keras passes the true epoch index, also when ``fit``
    resumes with ``initial_epoch``, so a resumed run continues each schedule where it stopped, whatever the
    checkpoint held). The variables are read inside the traced step, so the new values take effect without
    retracing, and an optimizer's learning rate is assigned in place: the optimizer and its state stay. List it
    before the callbacks that write logs.

    Args:
        schedules: ``{log name: (value, target)}``: ``value(epoch)`` gives the float of a 0-based epoch,
            ``target(model)`` the variable to assign it to (``None``: the model has no such variable, the value
            is only logged). Evaluated in order; a target that raises stops the epoch before it starts.

    Attributes:
        values: The current epoch's values by log name (empty before the first epoch).
    """

    def __init__(self, schedules: dict[str, tuple[Callable[[int], float], Target]]):
        super().__init__()
        self.schedules = dict(schedules)
        self.values: dict[str, float] = {}

    def on_epoch_begin(self, epoch, logs=None):
        values = {}
        for name, (value, target) in self.schedules.items():
            values[name] = float(value(epoch))
            variable = target(self.model)
            if variable is not None:
                variable.assign(values[name])
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.values)


def model_variable(name: str, needed_by: str | None = None) -> Target:
    """A :data:`Target`: the model's ``keras.Variable`` attribute ``name``.

    Args:
        name: The attribute (e.g. ``bbn_alpha``).
        needed_by: If given, a model without the variable is refused with ``ValueError`` naming it (e.g.
            ``"DRWSchedule needs a model built with a DRW loss (its drw_active variable)"``); else the value is
            only logged for such a model.
    """

    def target(model):
        variable = getattr(model, name, None)
        if isinstance(variable, keras.Variable):
            return variable
        if needed_by:
            raise ValueError(needed_by)
        return None

    return target


def _current_lr(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the weight learning rate (``lr``) and, for a model with one, the architecture learning rate
    (``arch_lr``) to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["lr"] = _current_lr(self.model.optimizer)
        if getattr(self.model, "arch_optimizer", None) is not None:
            logs["arch_lr"] = _current_lr(self.model.arch_optimizer)


class TensorBoardWriter(keras.callbacks.Callback):
    """Writes every numeric epoch log as a scalar ``epoch/<name>`` at step ``epoch + 1``, and what its add-ons
    write, into one event file under ``log_dir``.

    An add-on has either or both of ``write_start(model)`` (called once at step 0 when training begins) and
    ``write_epoch(model, step)`` (called after the scalars of every epoch); each is called inside the writer's
    default context, so it only calls ``tf.summary.*``.

    Args:
        log_dir: The run's ``tensorboard/`` folder.
        add_ons: The add-ons, called in order.
    """

    def __init__(self, log_dir: str, add_ons: Sequence = ()):
        super().__init__()
        self.log_dir = log_dir
        self.add_ons = tuple(add_ons)
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)
        starts = [a.write_start for a in self.add_ons if hasattr(a, "write_start")]
        if starts:
            with self._writer.as_default(step=0):
                for write in starts:
                    write(self.model)
            self._writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        with self._writer.as_default(step=step):
            for key, value in (logs or {}).items():
                if np.ndim(value) == 0 and np.isfinite(float(value)):
                    tf.summary.scalar(f"epoch/{key}", float(value))
            for add_on in self.add_ons:
                if hasattr(add_on, "write_epoch"):
                    add_on.write_epoch(self.model, step)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class CSVHistory(keras.callbacks.CSVLogger):
    """Keras' ``CSVLogger`` without the empty ``val_*`` columns it adds when a run has no validation data, and
    safe to resume into a file written with other columns.

    ``CSVLogger`` appending to an existing file keeps its header and writes the new rows under it, so a run
    resumed after a version that logs more columns (e.g. the skip guards' ``skip_replaced``) would put its
    values under other columns' names. Here the first epoch of an appending run compares the header with its
    columns and, if they differ, rewrites the file once under the union of both (sorted, as CSVLogger sorts):
    the old rows get ``NA`` for the new columns and the new rows ``NA`` for the dropped ones, CSVLogger's mark
    for a missing value.

    Args:
        filename: The ``history.csv`` path.
        validation_metrics: What a run that evaluates every few epochs (``validation_freq``) evaluates: their
            ``val_*`` columns are made at the first epoch even when it has no evaluation (the columns are fixed
            then), so the later epochs' values are kept; the epochs without one get ``NA``.
        **kwargs: Forwarded to ``CSVLogger`` (``append=True`` continues a resumed run's file).
    """

    def __init__(self, filename, validation_metrics=(), **kwargs):
        super().__init__(filename, **kwargs)
        self.validation_metrics = tuple(validation_metrics)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and logs:
            # fixed at the first epoch, as in CSVLogger
            self.keys = sorted(set(logs) | {f"val_{m}" for m in self.validation_metrics})
            if self.append and not self.append_header:  # appending to a file that has a header
                self._merge_columns()
        super().on_epoch_end(epoch, logs)

    def _merge_columns(self) -> None:
        with open(self.filename, newline="") as f:
            reader = csv.DictReader(f, delimiter=self.sep)
            old = list(reader.fieldnames or [])
            rows = list(reader)
        if old == ["epoch", *self.keys]:
            return
        self.keys = sorted(set(self.keys) | (set(old) - {"epoch"}))
        self.csv_file.close()
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=["epoch", *self.keys], restval="NA", delimiter=self.sep)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.filename, text.getvalue())  # the work directory's one atomic write
        self.csv_file = open(self.filename, "a")  # CSVLogger closes it in on_train_end


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back; the message says which and what to do."""


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves what a resume needs after every epoch: all model variables (weights, alphas, BN statistics) and
    every optimizer's variables (the weight optimizer, and a search's architecture optimizer), then
    ``state.json`` naming the last complete epoch.

    ``state.json`` is written last and atomically, so a checkpoint it names is complete; the previous
    epoch's files are removed only after that.

    Args:
        directory: The run's ``checkpoints/`` folder.
        extra_state: Called at every epoch end; the entries of the dict it returns are added to that epoch's
            ``state.json``, in the same atomic write (e.g. an early stop,
            :meth:`hlrs_tf.search.collapse.SkipConnectStop.checkpoint_state`). Read them back with
            :meth:`saved_state`.
    """

    def __init__(self, directory: str, extra_state=None):
        super().__init__()
        self.directory = directory
        self.extra_state = extra_state

    @property
    def state_file(self) -> str:
        """The ``state.json`` of the checkpoint folder."""
        return state_file(self.directory)

    def _paths(self, epoch: int) -> tuple[str, str]:
        stem = os.path.join(self.directory, f"epoch_{epoch:03d}")
        return stem + ".weights.h5", stem + ".optimizers.npz"

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        weights_path, opt_path = self._paths(done)
        self.model.save_weights(weights_path)
        arrays = {}
        for name, opt in _named_optimizers(self.model):
            for i, v in enumerate(opt.variables):
                arrays[f"{name}/{i:04d}"] = keras.ops.convert_to_numpy(v)
        tmp = opt_path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, opt_path)
        previous = self._read_state()
        atomic_write_json(
            self.state_file,
            {"epoch": done, "weights": os.path.basename(weights_path), "optimizers": os.path.basename(opt_path),
             **(self.extra_state() if self.extra_state else {})},
        )
        if previous and previous.get("epoch") != done:
            for p in self._paths(previous["epoch"]):
                if os.path.exists(p):
                    os.remove(p)

    def saved_state(self) -> dict:
        """The last complete epoch's ``state.json`` (``{}`` without a checkpoint), with any extra state.

        Raises:
            CheckpointError: If ``state.json`` is corrupt.
        """
        return self._read_state() or {}

    def _read_state(self) -> dict | None:
        return read_json(self.state_file, error=CheckpointError, what="corrupt checkpoint state",
                         advice="delete the folder to start over")

    def restore(self, model) -> int:
        """Loads the last complete epoch's variables into ``model`` and its (built) optimizers.

        Returns:
            The number of completed epochs restored (0 when there is no checkpoint).

        Raises:
            CheckpointError: If the files named by ``state.json`` are missing or do not fit the model.
        """
        state = self._read_state()
        if not state:
            return 0
        weights_path = os.path.join(self.directory, state["weights"])
        opt_path = os.path.join(self.directory, state["optimizers"])
        try:
            model.load_weights(weights_path)
            with np.load(opt_path) as arrays:
                for name, opt in _named_optimizers(model):
                    keys = sorted(k for k in arrays.files if k.startswith(name + "/"))
                    if len(keys) != len(opt.variables):
                        raise ValueError(f"{name} has {len(opt.variables)} variables, checkpoint {len(keys)}")
                    for key, var in zip(keys, opt.variables):
                        var.assign(arrays[key])
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"cannot restore checkpoint epoch {state['epoch']} from {self.directory}: {e}; "
                "delete the folder (or use a new --workdir) to start over"
            ) from e
        return int(state["epoch"])


def _named_optimizers(model) -> list:
    """The model's optimizers to checkpoint: the weight optimizer, and the architecture one if it has one."""
    named = [("optimizer", model.optimizer)]
    if getattr(model, "arch_optimizer", None) is not None:
        named.append(("arch_optimizer", model.arch_optimizer))
    return named
