"""keras-tuner over the HLRS hyperparameters: each trial is a complete search, scored on validation data.

A trial takes the base :class:`~hlrs_tf.config.search.SearchConfig`, replaces the tuned settings (architecture lr,
schedule kind, mixing kind, warm-up epochs, freeze threshold) with the trial's values, and runs
:func:`hlrs_tf.search.task.run_search` into ``<workdir>/trials/<trial_id>/``. The objective is
``val_balanced_accuracy``: the supernet's mean per-class recall on the architecture (validation) split --
never the test set -- so every class counts the same although the split is long-tailed.

keras-tuner keeps its oracle in ``<workdir>/tuner/``. Restarting after an interruption reloads it: finished
trials are kept, and the trial that was running is retried with the same id and values, so its search resumes
from its own checkpoints. The best settings are written as a search flagfile, ``best_flags.cfg``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os

import keras
import keras_tuner

from hlrs_tf.config.search import SearchConfig
from hlrs_tf.losses.bbn_mixing import MIXING_SCHEDULES
from hlrs_tf.runtime.workdir import WorkdirLock, atomic_write_json, atomic_write_text
from hlrs_tf.search.schedules import ARCH_LR_SCHEDULES

TUNABLE = ("arch_learning_rate", "arch_lr_schedule", "mixing", "warmup_epochs", "freeze_threshold")
TUNERS = ("random", "bayesian")
OBJECTIVE = "val_balanced_accuracy"


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """What to tune.

    Attributes:
        base: The search every trial starts from (its method preset included).
        space: Names from :data:`TUNABLE` to tune; the others keep the base values.
        max_trials: Trials in total (a restart counts the finished ones).
        tuner: ``random`` or ``bayesian`` (Gaussian-process) search.
        arch_lr_range: ``(min, max)`` of the log-uniform architecture learning rate.
    """

    base: SearchConfig
    space: tuple[str, ...] = TUNABLE
    max_trials: int = 8
    tuner: str = "random"
    arch_lr_range: tuple[float, float] = (1e-4, 3e-3)

    def __post_init__(self):
        unknown = [s for s in self.space if s not in TUNABLE]
        if unknown or not self.space:
            raise ValueError(f"--tune is {list(self.space)}: each entry must be one of {', '.join(TUNABLE)}")
        if self.max_trials < 1:
            raise ValueError(f"--max_trials={self.max_trials} is invalid: it must be an integer >= 1")
        if self.tuner not in TUNERS:
            raise ValueError(f"--tuner={self.tuner!r} is invalid: it must be one of {', '.join(TUNERS)}")
        lo, hi = self.arch_lr_range
        if not 0 < lo <= hi:
            raise ValueError(f"--arch_lr_range={lo},{hi} is invalid: it must be 0 < min <= max")


def hyperparameters(config: TuneConfig) -> keras_tuner.HyperParameters:
    """The search space, declared up front so the very first trial is already a sample of it."""
    hp = keras_tuner.HyperParameters()
    base = config.base
    for name in config.space:
        if name == "arch_learning_rate":
            lo, hi = config.arch_lr_range
            if lo == hi:
                hp.Fixed(name, lo)
            else:
                hp.Float(name, lo, hi, sampling="log")
        elif name == "arch_lr_schedule":
            hp.Choice(name, list(ARCH_LR_SCHEDULES))
        elif name == "mixing":
            hp.Choice(name, list(MIXING_SCHEDULES))
        elif name == "warmup_epochs":
            top = max(0, (base.epochs - 1) // 2)  # at most half the search frozen
            hp.Fixed(name, 0) if top == 0 else hp.Int(name, 0, top)
        elif name == "freeze_threshold":
            hp.Float(name, 0.2, 0.8, step=0.1)
    return hp


def trial_config(base: SearchConfig, values: dict) -> SearchConfig:
    """The base config with a trial's values (validated like any config)."""
    names = set(SearchConfig.setting_names())
    return base.replace(**{k: v for k, v in values.items() if k in names})


class _SearchTrials:
    """Mixin: a keras-tuner tuner whose trial is one search (``run_trial`` is keras-tuner's hook for this)."""

    def __init__(self, base: SearchConfig, root: str, **kwargs):
        super().__init__(**kwargs)
        self.base = base
        self.root = root

    def run_trial(self, trial, *args, **kwargs):
        from hlrs_tf.search.task import run_search  # heavy; only when a trial really runs

        config = trial_config(self.base, trial.hyperparameters.values)
        workdir = os.path.join(self.root, "trials", trial.trial_id)
        keras.backend.clear_session()  # a fresh graph per trial: memory stays flat over many trials
        result = run_search(config, workdir, flags_text=config.to_flagfile(exclude=("verbose",)))
        return {OBJECTIVE: float(result.metrics["validation"]["balanced_accuracy"])}


class RandomSearchTuner(_SearchTrials, keras_tuner.RandomSearch):
    """Random search over the HLRS hyperparameters."""


class BayesianTuner(_SearchTrials, keras_tuner.BayesianOptimization):
    """Gaussian-process Bayesian optimisation over the HLRS hyperparameters."""


def make_tuner(config: TuneConfig, root: str):
    """The tuner, reloading ``<root>/tuner`` when it exists (resume)."""
    cls = RandomSearchTuner if config.tuner == "random" else BayesianTuner
    return cls(
        base=config.base,
        root=root,
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        max_trials=config.max_trials,
        hyperparameters=hyperparameters(config),
        seed=config.base.runtime.seed,
        directory=root,
        project_name="tuner",
        overwrite=False,
    )


def write_results(tuner, config: TuneConfig, root: str) -> dict:
    """Writes ``trials.csv`` (every trial), ``best_flags.cfg`` (a search flagfile) and ``best.json``.

    Returns:
        The ``best.json`` content (``{}`` when no trial finished).
    """
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trial_id", "status", OBJECTIVE, *config.space])
    for t in trials:
        score = t.score if t.score is not None else ""
        w.writerow([t.trial_id, t.status, score, *(t.hyperparameters.values.get(k, "") for k in config.space)])
    atomic_write_text(os.path.join(root, "trials.csv"), buf.getvalue())
    best_trials = tuner.oracle.get_best_trials(1)
    if not best_trials:
        return {}
    best = best_trials[0]
    best_config = trial_config(config.base, best.hyperparameters.values)
    atomic_write_text(os.path.join(root, "best_flags.cfg"),
                      f"# best of {len(trials)} trials: {OBJECTIVE}={best.score:.4f} (trial {best.trial_id})\n"
                      + best_config.to_flagfile(exclude=("workdir", "dry_run")))
    out = {"trial_id": best.trial_id, OBJECTIVE: best.score, "values": best.hyperparameters.values,
           "trials": len(trials)}
    atomic_write_json(os.path.join(root, "best.json"), out)
    return out


def run_tuning(config: TuneConfig, root: str, verbose: int = 1) -> dict:
    """Runs (or resumes) the tuning into ``root``; returns the ``best.json`` content.

    ``root`` is locked while it runs (:class:`~hlrs_tf.runtime.workdir.WorkdirLock`; a second tuning on it raises
    :class:`~hlrs_tf.runtime.workdir.WorkdirInUseError`); each trial's search, in this process, locks its own
    ``trials/<id>/``.
    """
    with WorkdirLock(root):
        tuner = make_tuner(config, root)
        tuner.search(verbose=verbose)
        return write_results(tuner, config, root)
