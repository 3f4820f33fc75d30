"""Shared plumbing of the command-line entry points: one clear error line, exit status 2, no traceback.

Every ``python -m hlrs_tf.<command>`` is a :class:`Command`: its ``__main__.py`` defines the flags (the configuration
modules import no TensorFlow) and a body that turns them into a typed config and runs the library; the
:class:`Command` does the rest, once for all of them:

* the process set-up TensorFlow reads once, at import (:func:`prepare_process`), before the body imports it.
  Which settings apply depends on whether a GPU is expected (:mod:`hlrs_tf.runtime.devices`);
* flag errors: absl's own handling prints ``FATAL Flags parsing error: ...`` plus a help hint and exits 1;
  every hlrs_tf command instead reports it like any other bad input, ``<prog>: error: <cause>`` on stderr,
  exit status 2 (:func:`flags_parser`);
* positional arguments refused, and the exceptions that mean bad input (a missing dataset, a corrupt
  checkpoint, an invalid setting) reported as that one line.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

from absl import app, flags


def fail(prog: str, message: str, status: int = 2) -> None:
    """Prints ``<prog>: error: <message>`` (one line) and exits with ``status`` (2: bad input)."""
    message = " ".join(str(message).split())  # one line, whatever the exception text looked like
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(status)


class Command:
    """One ``python -m hlrs_tf.<command>`` entry point (see the module docstring).

    Args:
        prog: The command's name in its messages (``hlrs_tf.search``).
        body: Runs the command once the flags are parsed (no arguments; it reads its module's flags). It may
            call :meth:`fail` itself.
        errors: The exception types that mean bad input, reported as one line with exit status 2 (by default
            ``OSError`` and ``ValueError``: the configuration's, the genotype's and the data checks' errors are
            ``ValueError`` subclasses whose messages name the flag or the file).
        lazy_errors: Returns more such types; called only when the body raises something else, so that the
            entry point imports the modules defining them (and TensorFlow) only when it needs them.
    """

    def __init__(self, prog: str, body: Callable[[], None],
                 errors: tuple[type[Exception], ...] = (OSError, ValueError),
                 lazy_errors: Callable[[], tuple[type[Exception], ...]] | None = None):
        self.prog = prog
        self.body = body
        self.errors = tuple(errors)
        self.lazy_errors = lazy_errors

    def fail(self, message: str, status: int = 2) -> None:
        """Prints one error line naming the command and exits with ``status``."""
        fail(self.prog, message, status)

    def main(self, argv) -> None:
        """The ``absl.app.run`` main: ``argv`` is what the flags left (the program name alone, or refused)."""
        if len(argv) > 1:
            self.fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
        try:
            self.body()
        except Exception as e:  # not SystemExit: fail() has reported its own error
            if isinstance(e, self.errors) or (self.lazy_errors is not None and isinstance(e, self.lazy_errors())):
                self.fail(str(e))
            raise

    def run(self) -> None:
        """The entry point: process settings, then flags parsed by :func:`flags_parser`, then :meth:`main`."""
        prepare_process()
        app.run(self.main, flags_parser=flags_parser(self.prog))


def report_run(result, dry_run: bool, written: str, accuracy: str) -> None:
    """The closing lines of a search or retraining command: the work directory, what it wrote and its test
    accuracy (top-1, many/medium/few-shot); after a dry run, the two files it writes.

    Args:
        result: The run's result (``workdir``, ``metrics``).
        dry_run: Whether the run was a dry run.
        written: The line naming the main artefact (``genotype: <path>``).
        accuracy: What the accuracy is of (``supernet test``).
    """
    if dry_run:
        print(f"dry run: wrote {result.workdir}/flags.cfg and model_summary.json")
        return
    m = result.metrics
    print(f"work directory: {result.workdir}")
    print(written)
    print(f"{accuracy} top-1 {m['top1']:.4f} | many {m['many_shot']} | medium {m['medium_shot']} | few {m['few_shot']}")


def flags_parser(prog: str, flag_values=flags.FLAGS):
    """An ``absl.app.run(..., flags_parser=...)`` parser that turns flag errors into :func:`fail`."""

    def parse(argv):
        try:
            return flag_values(argv)
        except flags.Error as e:
            fail(prog, f"{e} (see --helpfull)")

    return parse


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Caps glibc's malloc arenas (``M_ARENA_MAX``) for this process, unless ``MALLOC_ARENA_MAX`` is set.

    glibc gives threads their own arenas (up to 8 per core); with TensorFlow's executor threads handing large
    activation buffers back and forth, freed memory stays spread over many arenas and peak RSS grows. At
    C=16, 8 cells, batch 64 the search step peaked at 6.3-6.9 GB with the default and 5.9 GB with 2 arenas, at
    the same step time (benchmarks/NOTES.md). Call before TensorFlow starts its threads; a no-op without glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, int(arenas))  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def prepare_process() -> None:
    """Process settings TensorFlow reads once: call at the top of an entry point, before importing it.

    * TensorFlow missing, or ``tensorflow`` and ``tensorflow-cpu`` both installed: one line naming the fix
      (:func:`hlrs_tf.runtime.devices.tensorflow_install_problem`), exit status 2.
    * ``TF_CPP_MIN_LOG_LEVEL=2``: no C++ info/warning lines on the console.

    Only when no GPU is expected (:func:`hlrs_tf.runtime.devices.gpu_expected`, a guess without importing
    TensorFlow; the thread and grappler settings wait for TensorFlow's own device list,
    :func:`hlrs_tf.runtime.devices.configure_devices`):

    * ``TF_ENABLE_ONEDNN_OPTS=1``: oneDNN's CPU kernels. On the search step they are 2-2.4x faster than
      TensorFlow's own (Eigen) kernels (benchmarks/NOTES.md), and every kernel the networks use is checked
      against Eigen's by ``tests/test_onednn_kernels.py``. ``TF_ENABLE_ONEDNN_OPTS=0`` in the environment
      turns them off (a value already set always wins). With a GPU, TensorFlow's default stays.
    * glibc malloc capped at 2 arenas (:func:`limit_malloc_arenas`; measured on the CPU step's buffers).
    """
    from hlrs_tf.runtime import devices as runtime  # imports no TensorFlow

    problem = runtime.tensorflow_install_problem()
    if problem:
        fail("hlrs_tf", problem)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not runtime.gpu_expected():
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        limit_malloc_arenas()


def onednn_enabled() -> bool:
    """Whether this process runs oneDNN's kernels (TensorFlow's own answer; imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port  # the flag TF itself consults

    return bool(_pywrap_util_port.IsMklEnabled())
