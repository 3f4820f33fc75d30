"""Compare the paper's methods over several seeds, on retrained architectures: the command-line entry point.

    python -m hlrs_tf.compare --flagfile=configs/compare.cfg --workdir=runs/compare

For every method x seed: the search, the derivation of its genotype, the retraining of that genotype from
scratch with one protocol shared by every method (``--retrain_flagfile``), and the test evaluation of both the
supernet and the retrained network (:mod:`hlrs_tf.experiments.comparison`). ``--retrain=none`` compares supernets only.

Every search flag is accepted and passed on to each search (explicit ones only, so each ``--method`` preset
still applies); the search's data flags are also passed to each retraining, after the retrain flagfile, so
both stages see the same data. ``--methods`` and ``--seeds`` choose the grid; ``--workdir`` holds one folder
per run (``<method>/seed_<s>/search`` and ``.../train``) plus ``comparison.csv``, ``comparison.md``,
``accuracy.png`` and ``schedules.png``. Rerunning the same command skips finished stages and resumes an
interrupted one from its checkpoints. ``--report_only`` redraws the tables, verdicts and plots from what has
finished. The harness locks ``--workdir`` while it runs (a second compare on it is refused); each stage locks
its own sub-workdir, in its own process.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile

from absl import flags

from hlrs_tf.config import flags as config_flags  # imports no TensorFlow
from hlrs_tf.config.search import METHODS, PAPER_METHODS, ConfigError, SearchConfig
from hlrs_tf.runtime import cli

config_flags.define_search_flags()  # every search flag sets the searches of the comparison

flags.DEFINE_list(
    "methods", list(PAPER_METHODS),
    f"Methods to compare (any of {', '.join(METHODS)}; by default the paper's five); a method may carry search "
    "flags of its own after colons, e.g. hlrs:mixing=linear (one arm per entry; configs/compare_mixing.cfg).",
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method runs once per seed.")
flags.DEFINE_bool("report_only", False, "Only (re)write the tables, verdicts and plots from the finished runs.")
flags.DEFINE_enum("retrain", "derived", ["derived", "none"],
                  "derived: retrain each search's derived genotype from scratch (the paper's protocol) and "
                  "report both the supernet and the retrained network; none: compare supernets only.")
# The repository checkout this package is in (hlrs_tf/compare/__main__.py -> three levels up).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
flags.DEFINE_string(
    "retrain_flagfile", os.path.join(REPO_ROOT, "configs", "retrain_compare.cfg"),
    "Flagfile of hlrs_tf.train: the retraining protocol shared by every method (default: the repository's "
    "configs/retrain_compare.cfg, a scaled-down DARTS evaluation setting). The search's data flags win over it.",
)
flags.DEFINE_string("baseline", "darts", "Method the others are compared with, seed by seed (paired differences "
                    "and verdicts); given explicitly, it must be one of --methods (by default the paired part "
                    "is left out when darts is not compared).")

FLAGS = config_flags.FLAGS
# Set per run by the harness, or not a search setting: never passed on.
_NOT_PASSED = {"method", "seed", "workdir", "dry_run", "verbose"}
# The search settings every retraining takes from the search, so both stages see the same data: always passed
# (the effective value, so a dataset in the retrain flagfile cannot differ from the searched one) ...
_DATA_FOR_RETRAIN = ("dataset", "data_dir", "manual_dir", "fashion_mnist_dir", "imbalance_ratio")
# ... and run settings passed when given explicitly.
_RUN_FOR_RETRAIN = ("init", "deterministic", "threads", "eval_batch_size")


PROG = "hlrs_tf.compare"


def fail(message: str) -> None:
    """Prints one error line and exits with status 2."""
    COMMAND.fail(message)


def search_args(flag_values=FLAGS) -> list[str]:
    """The search flags given explicitly (command line or flagfile), as arguments for each run."""
    args = []
    for name in SearchConfig.setting_names():
        flag = flag_values[name]
        if name not in _NOT_PASSED and flag.present and flag.value is not None:
            args.append(flag.serialize())
    return args


def retrain_args(flag_values=FLAGS) -> list[str]:
    """The arguments of every retraining: the retrain flagfile, then the search's data and run flags."""
    args = [f"--flagfile={os.path.abspath(flag_values.retrain_flagfile)}"]
    for name in _DATA_FOR_RETRAIN:
        if flag_values[name].value is not None:
            args.append(flag_values[name].serialize())
    for name in _RUN_FOR_RETRAIN:
        if flag_values[name].present:
            args.append(flag_values[name].serialize())
    return args


def check_retrain_protocol(args: list[str], python: str = sys.executable) -> None:
    """Refuses an invalid retraining protocol before any search starts: a ``--dry_run`` of hlrs_tf.train with
    the shared arguments (builds the network, trains nothing; a few seconds) in a throw-away directory.

    Raises:
        ValueError: With the retraining's own one-line error (it names the flag).
    """
    with tempfile.TemporaryDirectory(prefix="hlrs-compare-check-") as tmp:
        proc = subprocess.run([python, "-m", "hlrs_tf.train", *args, "--genotype=DARTS_V2", "--dry_run",
                               f"--workdir={tmp}/train", "--verbose=0"], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise ValueError(f"the retraining protocol is invalid ({' '.join(args)}): "
                         f"{lines[-1] if lines else f'exit {proc.returncode}'}")


def _compare() -> None:
    from hlrs_tf.experiments.comparison import CompareConfig, parse_arm, report, run_all
    from hlrs_tf.runtime.workdir import WorkdirLock, atomic_write_text, default_workdir

    try:
        arms = {spec: parse_arm(spec) for spec in FLAGS.methods}
    except ValueError as e:
        fail(str(e))
    unknown = [spec for spec, (method, _) in arms.items() if method not in METHODS]
    if unknown:
        fail(f"--methods has {unknown}: each must be one of {', '.join(METHODS)}")
    settable = set(SearchConfig.setting_names()) - _NOT_PASSED
    for spec, (_, overrides) in arms.items():
        for name, _ in overrides:
            if name not in settable:
                fail(f"--methods has {spec!r}: {name!r} is not a search flag a method can set")
    try:
        seeds = tuple(int(s) for s in FLAGS.seeds)
    except ValueError:
        fail(f"--seeds={','.join(FLAGS.seeds)} is invalid: it must be a comma-separated list of integers")
    retrain = FLAGS.retrain == "derived"
    if retrain and not os.path.isfile(FLAGS.retrain_flagfile):
        fail(f"--retrain_flagfile={FLAGS.retrain_flagfile} is not a file: give the flagfile of the shared "
             "retraining protocol (configs/retrain_compare.cfg in the repository), or --retrain=none")
    baseline = FLAGS.baseline if FLAGS.baseline in FLAGS.methods else ""  # "": no paired comparison
    if FLAGS["baseline"].present and not baseline:
        fail(f"--baseline={FLAGS.baseline} is invalid: it must be one of --methods ({','.join(FLAGS.methods)})")
    try:
        config = CompareConfig(tuple(FLAGS.methods), seeds, tuple(search_args()),
                               retrain_args=tuple(retrain_args()) if retrain else (), retrain=retrain,
                               baseline=baseline)
        # Fail now, not after an hour: every method's search config must be valid.
        explicit = {name: FLAGS[name].value for name in SearchConfig.setting_names()
                    if name not in _NOT_PASSED and FLAGS[name].present}
        for spec in config.methods:
            method, overrides = arms[spec]
            own = {}
            for name, value in overrides:
                flag = copy.deepcopy(FLAGS[name])
                try:
                    flag.parse(value)
                except (flags.IllegalFlagValueError, ValueError) as e:
                    raise ConfigError(f"--methods has {spec!r}: --{name}={value} is invalid: {e}") from None
                own[name] = flag.value
            SearchConfig.for_method(method, **{**explicit, **own})
        if retrain and not FLAGS.report_only:
            check_retrain_protocol(list(config.retrain_args))
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
             f"--retrain={FLAGS.retrain}", f"--baseline={config.baseline}", *config.search_args,
             *([f"--retrain_flagfile={os.path.abspath(FLAGS.retrain_flagfile)}"] if retrain else [])]) + "\n")
        failed = [] if FLAGS.report_only else run_all(config, root)
        print(report(config, root))
    finally:
        lock.release()
    print(f"comparison: {root}/comparison.md, comparison.csv, accuracy.png, schedules.png")
    if failed:
        fail(f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun the same command to retry them")


# The body reports its own bad input (fail), each where it is found.
COMMAND = cli.Command(PROG, _compare, errors=())
main, run = COMMAND.main, COMMAND.run


if __name__ == "__main__":
    run()
