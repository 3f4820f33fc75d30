"""Shared test setup: the commands' process settings (quiet TensorFlow, oneDNN kernels), repository paths.

``TF_ENABLE_ONEDNN_OPTS=0 bash scripts/test.sh`` runs the whole suite on TensorFlow's own kernels instead.
"""

import os
import sys

from hlrs_tf.cli import prepare_process

prepare_process()  # before TensorFlow is imported; subprocesses inherit the environment

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests marked ``isolated`` run in a fresh process of their own, with TensorFlow's op determinism and one
# thread in each pool: their result must not depend on what earlier tests of the session left behind (the
# grappler options, thread pools or determinism an in-process search sets) or on how threads split a sum.
ISOLATED_ENV = "HLRS_TEST_ISOLATED"
if os.environ.get(ISOLATED_ENV):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
else:
    # The thread layout of an in-process search (trainer.configure_threads with --threads=0), set before any
    # test runs an op: TensorFlow refuses to change it once initialised, so whichever test file first touches
    # TensorFlow (e.g. reading event files) would otherwise make every later in-process search fail.
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(os.cpu_count() or 1)


def pytest_configure(config):
    config.addinivalue_line("markers", "isolated: run in a fresh deterministic one-thread process (conftest.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs an ``isolated`` test as ``python -m pytest <node id>`` in a child process and reports its result."""
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(ISOLATED_ENV):
        return None
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
        cwd=REPO, env={**os.environ, ISOLATED_ENV: "1"}, capture_output=True, text=True, timeout=1200,
    )
    if proc.returncode != 0:
        pytest.fail(f"isolated run failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}",
                    pytrace=False)
    return True


@pytest.fixture
def repo_root():
    return REPO


def run_cli(module, *args, cwd=REPO, timeout=900):
    """Runs ``python -m <module> <args>`` in a fresh process; returns the CompletedProcess."""
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
