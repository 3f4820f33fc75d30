"""DARTS search on long-tailed data: the command-line entry point.

    python -m hlrs_tf.search --flagfile=configs/quickstart.cfg   # minutes on 2 CPU cores, Fashion-MNIST-LT
    python -m hlrs_tf.search --flagfile=configs/lt.cfg           # the paper setting (CIFAR-10-LT, GPU)

Flags -> typed config -> :func:`hlrs_tf.search.task.run_search`. Bad input ends with one clear line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

from hlrs_tf.config import flags as config_flags  # imports no TensorFlow: cli.Command sets the process up first
from hlrs_tf.config.search import SearchConfig
from hlrs_tf.runtime import cli

config_flags.define_search_flags(module_name=__name__)  # listed by --help
FLAGS = config_flags.FLAGS
PROG = "hlrs_tf.search"


def _errors() -> tuple[type[Exception], ...]:
    from hlrs_tf.data.spec import DatasetError
    from hlrs_tf.runtime.callbacks import CheckpointError
    from hlrs_tf.search.guards import NonFiniteLossError

    return DatasetError, CheckpointError, NonFiniteLossError


def _search() -> None:
    config = config_flags.config_from_flags(SearchConfig, FLAGS)
    from hlrs_tf.runtime.workdir import default_workdir
    from hlrs_tf.search.task import run_search

    workdir = FLAGS.workdir or default_workdir(f"{config.data.dataset}-search")
    result = run_search(config, workdir, flags_text=config_flags.effective_flags(config), dry_run=FLAGS.dry_run)
    cli.report_run(result, FLAGS.dry_run, f"genotype: {result.workdir}/genotype.json", "supernet test")


COMMAND = cli.Command(PROG, _search, lazy_errors=_errors)
main, run = COMMAND.main, COMMAND.run


if __name__ == "__main__":
    run()
