"""Shared plumbing of the command-line entry points: one clear error line, exit status 2, no traceback.

absl's own handling of a bad flag prints ``FATAL Flags parsing error: ...`` plus a help hint and exits 1;
every hlrs_tf command instead reports it like any other bad input: ``<prog>: error: <cause>`` on stderr,
exit status 2.

It also holds the process set-up every entry point does before it imports TensorFlow
(:func:`prepare_process`): TensorFlow reads these settings once, at import. Which of them apply depends on
whether a GPU is expected (:mod:`hlrs_tf.runtime.devices`).
"""

from __future__ import annotations

import ctypes
import os
import sys

from absl import flags


def fail(prog: str, message: str) -> None:
    """Prints ``<prog>: error: <message>`` (one line) and exits with status 2."""
    message = " ".join(str(message).split())  # one line, whatever the exception text looked like
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


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
