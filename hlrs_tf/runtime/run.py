"""One run skeleton for the search and the retraining: the steps both take, in one order, written once.

A run fills in a :class:`Task` (:class:`hlrs_tf.search.task.SearchTask`, :class:`hlrs_tf.train.task.RetrainTask`);
:func:`drive` takes it through a work directory (:mod:`hlrs_tf.runtime.workdir`):

1. a resume must continue the same run (:meth:`Task.check_resume`, then the flags against ``flags.cfg``,
   :func:`~hlrs_tf.runtime.workdir.check_same_run`); then ``flags.cfg`` is written;
2. a dry run builds the model from the dataset's spec alone, writes ``model_summary.json`` and stops;
3. the data (:meth:`Task.load_data`; an impossible long-tail profile is refused here, before anything is built);
4. the model, timed (``build_s``);
5. the checkpoint of the last complete epoch restored (:meth:`Task.restore`): weights, optimizer state, and so
   the learning-rate schedule's position;
6. ``class_counts.json``, the training stream from the restored position, ``model_summary.json``;
7. the callbacks, the history of a resumed run cut back to the restored epochs, ``fit``;
8. :meth:`Task.finish`: evaluation and the artefacts (``metrics.json`` last).

The lock, the devices and the distribution strategy are set up by the caller (``run_search``, ``run_retrain``),
which differ there: the search may run under ``tf.distribute``, where a worker writes into its own folder.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

from hlrs_tf.data.sources import dataset_spec
from hlrs_tf.runtime.callbacks import EpochCheckpoint
from hlrs_tf.runtime.workdir import Workdir, atomic_write_json, atomic_write_text, check_same_run, truncate_history

__all__ = ["RunData", "Task", "drive"]


@dataclasses.dataclass
class RunData:
    """What :meth:`Task.load_data` returns: what the later steps need to know about the data.

    Attributes:
        train_counts: Training examples per class (the loss' counts and priors; ``class_counts.json``).
        steps: Training steps per epoch.
        summary: Data entries of ``model_summary.json`` (e.g. ``train_class_counts``, ``steps_per_epoch``).
        extra: The task's own data (arrays, splits, the dataset), for its later steps.
    """

    train_counts: Any
    steps: int
    summary: dict
    extra: dict


class Task(Protocol):
    """What a run fills in for :func:`drive`. ``config`` is its run config (``epochs``, ``verbose`` and the loss
    settings are read here); ``added_flag_defaults`` the values of the flags added after runs were written."""

    config: Any
    added_flag_defaults: dict[str, str]

    def check_resume(self, wd: Workdir) -> None:
        """Refuses a work directory whose checkpoints belong to another run (beyond the flags)."""

    def dry_run_summary(self, spec) -> dict:
        """Builds the model for the dataset's spec alone and returns ``model_summary.json`` (a dry run)."""

    def load_data(self, wd: Workdir) -> RunData:
        """Loads the data (refusing an impossible profile before anything is built)."""

    def build_model(self, data: RunData):
        """Builds and compiles the model (built, so that a checkpoint can be restored into it)."""

    def restore(self, model, wd: Workdir) -> tuple[EpochCheckpoint, int, int]:
        """The checkpoint callback, and the epochs ``(initial, end)`` of ``fit`` after restoring the last one."""

    def train_dataset(self, data: RunData, initial_epoch: int):
        """The training stream, positioned after ``initial_epoch`` epochs."""

    def model_summary(self, model, data: RunData) -> dict:
        """``model_summary.json`` (``build_s`` and the data entries are added by :func:`drive`)."""

    def callbacks(self, model, wd: Workdir, checkpoint: EpochCheckpoint, data: RunData,
                  initial_epoch: int) -> tuple[list, dict]:
        """The callbacks of ``fit`` (the checkpoint last) and any other ``fit`` arguments (validation)."""

    def finish(self, model, wd: Workdir, data: RunData, history) -> Any:
        """Evaluates, writes the artefacts (``metrics.json`` last) and returns the run's result."""

    def result(self, wd: Workdir) -> Any:
        """The result of a dry run."""


def drive(task: Task, wd: Workdir, flags_text: str | None, dry_run: bool = False):
    """Runs ``task`` into ``wd`` (see the module docstring).

    Args:
        task: The run.
        wd: The work directory written.
        flags_text: Effective flags to save as ``flags.cfg``; ``None`` skips the resume check and the file.
        dry_run: Build the model, write ``flags.cfg`` and ``model_summary.json``, run nothing.

    Returns:
        The task's result.
    """
    config = task.config
    # A resume must continue the same run: checked before anything in the work directory is overwritten.
    task.check_resume(wd)
    if flags_text is not None:
        check_same_run(wd, flags_text, task.added_flag_defaults)
        atomic_write_text(wd.flags_file, flags_text)

    if dry_run:
        spec = dataset_spec(config.data.dataset, config.data.data_dir)
        t0 = time.perf_counter()
        summary = task.dry_run_summary(spec)
        atomic_write_json(wd.summary_file, {**summary, "dry_run": True,
                                            "build_s": round(time.perf_counter() - t0, 2)})
        return task.result(wd)

    data = task.load_data(wd)
    t0 = time.perf_counter()
    model = task.build_model(data)
    build_s = time.perf_counter() - t0
    # Resume: a rerun of the same command continues after the last complete epoch, with the weights, the
    # optimizers' state (and so the learning-rate schedules' position) and the data stream restored.
    checkpoint, initial_epoch, end_epoch = task.restore(model, wd)
    atomic_write_json(wd.class_counts_file, model.loss_spec.run_summary(data.train_counts, config.objective))
    train_ds = task.train_dataset(data, initial_epoch)
    atomic_write_json(wd.summary_file, {**task.model_summary(model, data), **data.summary,
                                        "build_s": round(build_s, 2)})
    callbacks, fit_kwargs = task.callbacks(model, wd, checkpoint, data, initial_epoch)
    if initial_epoch:
        truncate_history(wd.history_file, initial_epoch)
        print(f"resuming from the checkpoint of epoch {initial_epoch} in {wd.checkpoint_dir}")
    history = model.fit(train_ds, epochs=end_epoch, initial_epoch=initial_epoch, steps_per_epoch=data.steps,
                        callbacks=callbacks, verbose=config.runtime.verbose, shuffle=False,  # tf.data shuffles
                        **fit_kwargs)
    return task.finish(model, wd, data, history)
