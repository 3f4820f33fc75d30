"""Shared test setup: the commands' process settings (quiet TensorFlow, oneDNN kernels), repository paths.

``TF_ENABLE_ONEDNN_OPTS=0 bash scripts/test.sh`` runs the whole suite on TensorFlow's own kernels instead.
"""

import os
import sys

from hlrs_tf.cli import prepare_process

prepare_process()  # before TensorFlow is imported; subprocesses inherit the environment

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
