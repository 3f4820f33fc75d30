"""Retrain a derived genotype from scratch (DARTS evaluation protocol, long-tailed data): the entry point.

    python -m hlrs_tf.train --genotype=runs/<search>/genotype.json --flagfile=configs/retrain_quick.cfg
    python -m hlrs_tf.train --genotype=DARTS_V2 --flagfile=configs/retrain.cfg     # paper setting (GPU)

Flags -> typed config -> :func:`hlrs_tf.train.task.run_retrain`. Bad input ends with one clear line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

from hlrs_tf.config import flags as config_flags  # imports no TensorFlow: cli.Command sets the process up first
from hlrs_tf.config.train import TrainConfig
from hlrs_tf.runtime import cli

config_flags.define_train_flags(module_name=__name__)  # listed by --help
FLAGS = config_flags.FLAGS
PROG = "hlrs_tf.train"


def _errors() -> tuple[type[Exception], ...]:
    from hlrs_tf.data.spec import DatasetError
    from hlrs_tf.runtime.callbacks import CheckpointError

    return DatasetError, CheckpointError


def _train() -> None:
    config = config_flags.config_from_flags(TrainConfig, FLAGS)
    from hlrs_tf.runtime.workdir import default_workdir
    from hlrs_tf.train import task as retrainer

    workdir = FLAGS.workdir or default_workdir(f"{config.data.dataset}-train")
    result = retrainer.run_retrain(config, workdir, flags_text=config_flags.effective_flags(config),
                                   dry_run=FLAGS.dry_run)
    cli.report_run(result, FLAGS.dry_run, f"model: {result.workdir}/{retrainer.MODEL_FILENAME}", "test")


COMMAND = cli.Command(PROG, _train, lazy_errors=_errors)
main, run = COMMAND.main, COMMAND.run


if __name__ == "__main__":
    run()
