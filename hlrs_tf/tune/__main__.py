"""Tune the HLRS hyperparameters with keras-tuner: the command-line entry point.

    python -m hlrs_tf.tune --flagfile=configs/tune.cfg --workdir=runs/tune

Every search flag sets the base search of the trials; ``--tune`` lists what to tune (architecture lr,
schedule kind, mixing kind, warm-up epochs, freeze threshold), ``--max_trials`` and ``--tuner`` (random or
bayesian) the search over them. Each trial is a full search under ``<workdir>/trials/<id>/``, scored by
balanced accuracy on the validation (architecture) split. Rerunning the same command resumes: finished
trials are kept, an interrupted one continues from its checkpoints. The best settings land in
``<workdir>/best_flags.cfg``: ``python -m hlrs_tf.search --flagfile=<workdir>/best_flags.cfg``.
"""

from __future__ import annotations

from absl import flags

from hlrs_tf.config import flags as config_flags  # imports no TensorFlow
from hlrs_tf.config.search import SearchConfig
from hlrs_tf.runtime import cli

config_flags.define_search_flags()  # every search flag sets the trials' base search

flags.DEFINE_list("tune", ["arch_learning_rate", "arch_lr_schedule", "mixing", "warmup_epochs",
                           "freeze_threshold"], "Hyperparameters to tune.")
flags.DEFINE_integer("max_trials", 8, "Trials in total (finished ones count after a restart).")
flags.DEFINE_enum("tuner", "random", ["random", "bayesian"], "keras-tuner oracle.")
flags.DEFINE_list("arch_lr_range", ["1e-4", "3e-3"], "min,max of the log-uniform architecture learning rate.")

FLAGS = config_flags.FLAGS
PROG = "hlrs_tf.tune"


def _errors() -> tuple[type[Exception], ...]:
    from hlrs_tf.data.spec import DatasetError
    from hlrs_tf.runtime.callbacks import CheckpointError

    return DatasetError, CheckpointError


def _tune() -> None:
    from hlrs_tf.experiments.tuning import TuneConfig, run_tuning
    from hlrs_tf.runtime.workdir import default_workdir

    try:
        lo, hi = (float(v) for v in FLAGS.arch_lr_range)
    except ValueError:
        COMMAND.fail(f"--arch_lr_range={','.join(FLAGS.arch_lr_range)} is invalid: it must be two numbers min,max")
    config = TuneConfig(config_flags.config_from_flags(SearchConfig, FLAGS), tuple(FLAGS.tune), FLAGS.max_trials,
                        FLAGS.tuner, (lo, hi))
    root = FLAGS.workdir or default_workdir(f"{config.base.data.dataset}-tune")
    best = run_tuning(config, root, verbose=config.base.runtime.verbose)
    if not best:
        COMMAND.fail(f"no trial finished; see {root}/trials.csv and the trials' work directories")
    print(f"best trial {best['trial_id']}: val_balanced_accuracy={best['val_balanced_accuracy']:.4f} "
          f"{best['values']}")
    print(f"best flags: {root}/best_flags.cfg  (python -m hlrs_tf.search --flagfile={root}/best_flags.cfg)")


COMMAND = cli.Command(PROG, _tune, lazy_errors=_errors)
main, run = COMMAND.main, COMMAND.run


if __name__ == "__main__":
    run()
