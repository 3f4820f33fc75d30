"""Retrain a derived genotype from scratch (DARTS evaluation protocol, long-tailed data): the entry point.

    python -m hlrs_tf.train --genotype=runs/<search>/genotype.json --flagfile=configs/retrain_quick.cfg
    python -m hlrs_tf.train --genotype=DARTS_V2 --flagfile=configs/retrain.cfg     # paper setting (GPU)

Flags -> typed config -> :func:`hlrs_tf.train.task.run_retrain`. Bad input ends with one clear line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

from absl import app

from hlrs_tf.runtime import cli

cli.prepare_process()  # before TensorFlow is imported: log level, oneDNN kernels, malloc arenas
from hlrs_tf.config import train_flags  # noqa: E402
from hlrs_tf.config.train import ConfigError  # noqa: E402

FLAGS = train_flags.FLAGS
PROG = "hlrs_tf.train"


def fail(message: str) -> None:
    """Prints one error line and exits with status 2."""
    cli.fail(PROG, message)


def main(argv) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    try:
        config = train_flags.config_from_flags(FLAGS)
    except ConfigError as e:
        fail(str(e))

    from hlrs_tf.data.spec import DatasetError
    from hlrs_tf.runtime.callbacks import CheckpointError
    from hlrs_tf.runtime.workdir import default_workdir
    from hlrs_tf.train import task as retrainer

    workdir = FLAGS.workdir or default_workdir(f"{config.dataset}-train")
    try:
        result = retrainer.run_retrain(
            config, workdir, flags_text=train_flags.effective_flags(FLAGS), dry_run=FLAGS.dry_run
        )
    except (DatasetError, CheckpointError, OSError, ValueError) as e:
        # ValueError covers ConfigError and GenotypeError; messages name the flag or the file.
        fail(str(e))
    if FLAGS.dry_run:
        print(f"dry run: wrote {result.workdir}/flags.cfg and model_summary.json")
        return
    m = result.metrics
    print(f"work directory: {result.workdir}")
    print(f"model: {result.workdir}/{retrainer.MODEL_FILENAME}")
    print(
        f"test top-1 {m['top1']:.4f} | many {m['many_shot']} | medium {m['medium_shot']} | few {m['few_shot']}"
    )


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=cli.flags_parser(PROG))


if __name__ == "__main__":
    run()
