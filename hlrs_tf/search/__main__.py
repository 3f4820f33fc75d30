"""DARTS search on long-tailed data: the command-line entry point.

    python -m hlrs_tf.search --flagfile=configs/quickstart.cfg   # minutes on 2 CPU cores, Fashion-MNIST-LT
    python -m hlrs_tf.search --flagfile=configs/lt.cfg           # the paper setting (CIFAR-10-LT, GPU)

Flags -> typed config -> :func:`hlrs_tf.search.task.run_search`. Bad input ends with one clear line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

from absl import app

from hlrs_tf.runtime import cli

cli.prepare_process()  # before TensorFlow is imported: log level, oneDNN kernels, malloc arenas
from hlrs_tf.config import search_flags as cli_flags  # noqa: E402
from hlrs_tf.config.search import ConfigError  # noqa: E402

FLAGS = cli_flags.FLAGS


PROG = "hlrs_tf.search"


def fail(message: str) -> None:
    """Prints one error line and exits with status 2."""
    cli.fail(PROG, message)


def main(argv) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    try:
        config = cli_flags.config_from_flags(FLAGS)
    except ConfigError as e:
        fail(str(e))

    from hlrs_tf.data.spec import DatasetError
    from hlrs_tf.runtime.callbacks import CheckpointError
    from hlrs_tf.runtime.workdir import default_workdir
    from hlrs_tf.search import task as trainer
    from hlrs_tf.search.guards import NonFiniteLossError

    workdir = FLAGS.workdir or default_workdir(f"{config.dataset}-search")
    try:
        result = trainer.run_search(
            config, workdir, flags_text=cli_flags.effective_flags(config), dry_run=FLAGS.dry_run
        )
    except (DatasetError, CheckpointError, NonFiniteLossError, OSError, ValueError) as e:
        # ValueError covers ConfigError and e.g. a batch_size larger than the split: messages name the flag.
        fail(str(e))
    if FLAGS.dry_run:
        print(f"dry run: wrote {result.workdir}/flags.cfg and model_summary.json")
        return
    m = result.metrics
    print(f"work directory: {result.workdir}")
    print(f"genotype: {result.workdir}/genotype.json")
    print(
        f"supernet test top-1 {m['top1']:.4f} | many {m['many_shot']} | medium {m['medium_shot']} | "
        f"few {m['few_shot']}"
    )


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=cli.flags_parser(PROG))


if __name__ == "__main__":
    run()
