"""Shared test setup: the commands' process settings (quiet TensorFlow, oneDNN kernels) and the test harness.

``TF_ENABLE_ONEDNN_OPTS=0 bash scripts/test.sh`` runs the whole suite on TensorFlow's own kernels instead.

Fixtures (session scope, so module-scoped fixtures of the test files can request them too); test files take
them as arguments and never import from this module:

- ``repo_root``: the repository's path (the working directory of the commands the tests start).
- ``run_cli``: ``run_cli(module, *args, cwd=repo_root, timeout=900)`` runs ``python -m <module> <args>`` in a
  fresh process with ``child_env`` and returns the ``subprocess.CompletedProcess``.
- ``child_env``: the environment every child process of the tests needs: ``os.environ`` with the repository
  prepended to ``PYTHONPATH``. Shared by the whole session: copy it (``dict(child_env, NAME=value)``) to add
  variables, never change it in place.
- ``replica_worker``: ``replica_worker(*args)`` runs ``tests/losses_replica_worker.py`` (the losses under
  MirroredStrategy over 2 logical CPUs) and returns its result.

Markers:

- ``isolated``: the test runs in a fresh deterministic process with one thread in each pool (see below).
- ``slow``: the test starts another Python process (a real command, a worker or an isolated test).
  ``pytest -m 'not slow'`` leaves these out, for a quick loop. It is added automatically (in
  ``pytest_collection_modifyitems``) to every test whose fixtures, direct or through other fixtures, include
  ``run_cli`` or ``child_env``, and to every ``isolated`` test; a test that starts a process without either
  fixture carries ``@pytest.mark.slow`` itself.
"""

import os
import sys

from hlrs_tf.runtime.cli import prepare_process

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
    config.addinivalue_line(
        "markers",
        "slow: starts another Python process (a real command, a worker or an isolated test); "
        "`pytest -m 'not slow'` leaves these out",
    )


# Fixtures that start processes (replica_worker requests child_env).
_SLOW_FIXTURES = ("run_cli", "child_env", "kill_beside_reference", "run_side_by_side")


def pytest_collection_modifyitems(config, items):
    """Marks ``slow`` every test that requests ``run_cli`` or ``child_env`` (directly or through other fixtures)
    or is ``isolated``: each of them starts another Python process."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            continue
        starts_a_process = any(name in getattr(item, "fixturenames", ()) for name in _SLOW_FIXTURES)
        if starts_a_process or item.get_closest_marker("isolated") is not None:
            item.add_marker(pytest.mark.slow)


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


def _child_env():
    """``os.environ`` with the repository prepended to ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(module, *args, cwd=REPO, timeout=900):
    """Runs ``python -m <module> <args>`` in a fresh process; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=_child_env(), capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def repo_root():
    """The repository's path."""
    return REPO


@pytest.fixture(name="run_cli", scope="session")
def run_cli_fixture():
    """The ``run_cli`` function: ``run_cli(module, *args, cwd=REPO, timeout=900)`` -> CompletedProcess."""
    return run_cli


def run_side_by_side(commands, timeout, cwd=REPO, what="run"):
    """Starts every ``(argv, env)`` at once (in ``cwd``), waits for each (``timeout`` seconds per wait; on
    expiry all are killed and the test fails naming ``what``) and asserts that each exited 0. Returns their
    ``(stdout, stderr)`` texts in order.

    For independent children (and the workers of one cluster): pytest is serial, so a second child uses the
    core the first leaves idle. Output goes to temporary files, not pipes: a child whose pipe nobody reads
    while another is being waited for would block once the pipe is full (a worker of a cluster, so blocked,
    would hang its peers' collectives).
    """
    import subprocess
    import tempfile

    files, procs = [], []
    try:
        for argv, env in commands:
            files.append((tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")))
            procs.append(subprocess.Popen(argv, cwd=cwd, env=env, stdout=files[-1][0], stderr=files[-1][1]))
        for p in procs:
            p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {timeout} s")
    finally:  # a failure above leaves no child running
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for pair in files:
        for f in pair:
            f.seek(0)
        outputs.append(tuple(f.read() for f in pair))
        for f in pair:
            f.close()
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, f"{' '.join(map(str, p.args))} failed ({p.returncode}):\n{err[-4000:]}"
    return outputs


@pytest.fixture(name="run_side_by_side", scope="session")
def run_side_by_side_fixture():
    """The :func:`run_side_by_side` function."""
    return run_side_by_side


def kill_beside_reference(args, reference, interrupted, epoch, timeout=600):
    """Runs ``python -m <args> --workdir=<reference>`` to the end and, side by side, the same command in
    ``interrupted``, SIGKILLed as soon as its ``checkpoints/state.json`` records ``epoch`` or later.

    The resume tests' pattern. The two runs are independent (own work directories; the tests pass
    ``--deterministic``, so no value depends on how they share the cores), so the reference costs no wall
    time of its own on two cores; the sharing only slows the interrupted run's epochs, which widens the window
    the kill must land in (the state is polled every 20 ms). stderr goes to ``<workdir>.err``, a file: an
    unread pipe would block a child once full. Returns the epoch the killed run's state records.
    """
    import json
    import signal
    import subprocess
    import time

    procs = []
    try:
        for workdir in (reference, interrupted):
            with open(f"{workdir}.err", "w") as err:
                procs.append(subprocess.Popen([sys.executable, "-m", *args, f"--workdir={workdir}"], cwd=REPO,
                                              env=_child_env(), stdout=subprocess.DEVNULL, stderr=err))
        ref, victim = procs
        state = os.path.join(interrupted, "checkpoints", "state.json")
        deadline = time.time() + timeout
        while time.time() < deadline and victim.poll() is None:
            if os.path.exists(state) and json.load(open(state))["epoch"] >= epoch:
                break
            time.sleep(0.02)
        assert victim.poll() is None, "the run finished before it could be interrupted"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        ref.wait(timeout=900)
        assert ref.returncode == 0, open(f"{reference}.err").read()[-3000:]
    finally:  # a failed assertion leaves no child running
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return json.load(open(state))["epoch"]


@pytest.fixture(name="kill_beside_reference", scope="session")
def kill_beside_reference_fixture():
    """The :func:`kill_beside_reference` function."""
    return kill_beside_reference


@pytest.fixture(scope="session")
def replica_worker(repo_root, child_env):
    """``replica_worker(*args)`` runs ``tests/losses_replica_worker.py <args>`` (the losses under MirroredStrategy
    over 2 logical CPUs against one device) in a fresh process and returns the JSON of its ``RESULT`` line."""
    import json
    import subprocess

    def run(*args):
        env = dict(child_env)
        env.pop("TF_CONFIG", None)  # one process of its own, not a worker of a cluster
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        worker = os.path.join(repo_root, "tests", "losses_replica_worker.py")
        # The timeout catches a hung all-reduce.
        proc = subprocess.run([sys.executable, worker, *args], cwd=repo_root, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, proc.stderr[-4000:]
        return json.loads(lines[-1][len("RESULT "):])

    return run


@pytest.fixture(scope="session")
def child_env():
    """The environment of the tests' child processes: ``os.environ`` plus the repository on ``PYTHONPATH``.

    Shared by the session: copy it (``dict(child_env, NAME=value)``) to add variables, never change it."""
    return _child_env()
