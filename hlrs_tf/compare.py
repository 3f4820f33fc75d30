"""Compare the paper's methods over several seeds: the command-line entry point.

    python -m hlrs_tf.compare --flagfile=configs/compare.cfg    # about an hour on 2 CPU cores

Every search flag is accepted and passed on to each run (explicit ones only, so each ``--method`` preset
still applies); ``--methods`` and ``--seeds`` choose the grid; ``--workdir`` holds one sub-workdir per run
plus ``comparison.csv``, ``comparison.md``, ``accuracy.png`` and ``schedules.png``. Rerunning the same
command skips finished runs and resumes an interrupted one. ``--report_only`` rewrites the table and plots
from what has finished. The harness locks ``--workdir`` while it runs (a second compare on it is refused); each
run locks its own sub-workdir, in its own process.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags

from hlrs_tf import cli

cli.prepare_process()  # before TensorFlow is imported: log level, oneDNN kernels, malloc arenas
from hlrs_tf import flags as cli_flags  # noqa: E402  (defines every search flag)
from hlrs_tf.config import METHODS, ConfigError, SearchConfig  # noqa: E402

flags.DEFINE_list("methods", list(METHODS), f"Methods to compare (any of {', '.join(METHODS)}).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method runs once per seed.")
flags.DEFINE_bool("report_only", False, "Only (re)write the table and plots from the finished runs.")

FLAGS = cli_flags.FLAGS
# Set per run by the harness, or not a search setting: never passed on.
_NOT_PASSED = {"method", "seed", "workdir", "dry_run", "verbose"}


PROG = "hlrs_tf.compare"


def fail(message: str) -> None:
    """Prints one error line and exits with status 2."""
    cli.fail(PROG, message)


def search_args(flag_values=FLAGS) -> list[str]:
    """The search flags given explicitly (command line or flagfile), as arguments for each run."""
    args = []
    for f in dataclasses.fields(SearchConfig):
        flag = flag_values[f.name]
        if f.name not in _NOT_PASSED and flag.present and flag.value is not None:
            args.append(flag.serialize())
    return args


def main(argv) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    from hlrs_tf.comparison import CompareConfig, report, run_all
    from hlrs_tf.workdir import WorkdirLock, atomic_write_text, default_workdir

    unknown = [m for m in FLAGS.methods if m not in METHODS]
    if unknown:
        fail(f"--methods has {unknown}: each must be one of {', '.join(METHODS)}")
    try:
        seeds = tuple(int(s) for s in FLAGS.seeds)
    except ValueError:
        fail(f"--seeds={','.join(FLAGS.seeds)} is invalid: it must be a comma-separated list of integers")
    try:
        config = CompareConfig(tuple(FLAGS.methods), seeds, tuple(search_args()))
        # Fail now, not after an hour: every method's search config must be valid.
        explicit = {f.name: FLAGS[f.name].value for f in dataclasses.fields(SearchConfig)
                    if f.name not in _NOT_PASSED and FLAGS[f.name].present}
        for method in config.methods:
            SearchConfig.for_method(method, **explicit)
    except (ConfigError, ValueError) as e:
        fail(str(e))

    root = FLAGS.workdir or default_workdir("compare")
    try:
        # The searches run in their own processes and lock their own sub-workdirs: none waits on this one.
        lock = WorkdirLock(root).acquire()
    except OSError as e:
        fail(str(e))
    try:
        atomic_write_text(os.path.join(root, "compare_flags.cfg"), "\n".join(
            [f"--methods={','.join(config.methods)}", f"--seeds={','.join(map(str, seeds))}",
             *config.search_args]) + "\n")
        failed = [] if FLAGS.report_only else run_all(config, root)
        print(report(config, root))
    finally:
        lock.release()
    print(f"comparison: {root}/comparison.csv, comparison.md, accuracy.png, schedules.png")
    if failed:
        fail(f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun the same command to retry them")


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=cli.flags_parser(PROG))


if __name__ == "__main__":
    run()
