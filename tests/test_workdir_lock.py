"""One run per work directory: the ``flock`` lock of :class:`hlrs_tf.runtime.workdir.WorkdirLock`, between real
processes.

The holder is always another process (a tiny ``python -c`` that takes the lock, says so on stdout and holds it
until its stdin closes), because the point is what a *second* run sees; a SIGKILLed holder shows that the
kernel drops the lock with the process, so the lock file it leaves behind blocks nothing. The commands under
test (search, train, export, compare) are real ``python -m`` processes refused with exit status 2 and one line.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from hlrs_tf.runtime.workdir import LOCK_FILENAME, WorkdirInUseError, WorkdirLock

# Takes the lock (argv[2] == "beside": an export target's lock) and holds it until stdin closes.
_HOLD = """
import sys
from hlrs_tf.runtime.workdir import WorkdirLock
lock = WorkdirLock.beside(sys.argv[1]) if sys.argv[2] == "beside" else WorkdirLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""

# Tries once: exit 0 and "acquired" when the lock was free, exit 3 and the refusal otherwise.
_TRY = """
import sys
from hlrs_tf.runtime.workdir import WorkdirInUseError, WorkdirLock
try:
    WorkdirLock(sys.argv[1]).acquire()
except WorkdirInUseError as e:
    print(e)
    sys.exit(3)
print("acquired")
"""

_STARTED = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


@pytest.fixture
def held(repo_root, child_env):
    """``held(path, beside=False)``: a context manager, a child process holding the lock of ``path``."""

    @contextlib.contextmanager
    def held(path, beside=False):
        """A child process holding the lock of ``path`` (synchronised on its "locked" line, no sleeps)."""
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), "beside" if beside else "inside"],
                                cwd=repo_root, env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline() == "locked\n", "the holder did not get the lock"
            yield proc
        finally:
            if proc.poll() is None:
                proc.stdin.close()  # the holder returns from stdin.read() and exits normally
            proc.wait(timeout=60)

    return held


@pytest.fixture
def try_lock(repo_root, child_env):
    """``try_lock(path)``: whether another process can take the lock of ``path`` now (and its refusal line)."""

    def try_lock(path):
        """Whether another process can take the lock of ``path`` now (and its refusal line when not)."""
        proc = subprocess.run([sys.executable, "-c", _TRY, str(path)], cwd=repo_root, env=child_env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode in (0, 3), proc.stderr
        return proc.returncode == 0, proc.stdout.strip()

    return try_lock


def refusal(what, path, pid, flag):
    return re.compile(rf"{re.escape(what)} {re.escape(str(path))} is in use by pid {pid} on host "
                      rf"{re.escape(socket.gethostname())} \(started {_STARTED}\): wait for it or pass another "
                      rf"{re.escape(flag)}")


# --------------------------------------------------------------------------------------------- the lock itself
def test_second_process_is_refused_naming_the_holder(tmp_path, held, try_lock):
    wd = tmp_path / "runs" / "x"
    with held(wd) as holder:
        with pytest.raises(WorkdirInUseError) as err:
            WorkdirLock(str(wd)).acquire()
        assert isinstance(err.value, OSError)  # every command already reports OSError as one line
        assert refusal("work directory", wd, holder.pid, "--workdir").fullmatch(str(err.value)), str(err.value)
        ok, line = try_lock(wd)
        assert not ok and refusal("work directory", wd, holder.pid, "--workdir").fullmatch(line), line
        info = json.loads((wd / LOCK_FILENAME).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
    assert holder.returncode == 0
    assert try_lock(wd)[0]  # the holder exited normally: free


def test_released_on_normal_exit_and_on_exception(tmp_path, try_lock):
    wd = str(tmp_path / "wd")
    with WorkdirLock(wd) as lock:
        assert lock.locked and os.path.isdir(wd)
        ok, line = try_lock(wd)
        assert not ok and refusal("work directory", wd, os.getpid(), "--workdir").fullmatch(line), line
    assert not lock.locked and try_lock(wd)[0]

    with pytest.raises(ZeroDivisionError):
        with WorkdirLock(wd):
            assert not try_lock(wd)[0]
            raise ZeroDivisionError
    assert try_lock(wd)[0]


def test_sigkilled_holder_leaves_no_stale_lock(tmp_path, held, try_lock):
    wd = tmp_path / "wd"
    with held(wd) as holder:
        assert not try_lock(wd)[0]
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    # The lock file stays, still naming the dead holder, and blocks nothing: the kernel dropped the lock.
    assert json.loads((wd / LOCK_FILENAME).read_text())["pid"] == holder.pid
    with WorkdirLock(str(wd)) as lock:
        assert lock.locked
        assert json.loads((wd / LOCK_FILENAME).read_text())["pid"] == os.getpid()


def test_export_lock_sits_beside_the_target(tmp_path):
    out = tmp_path / "export" / "digits"
    lock = WorkdirLock.beside(str(out))
    assert lock.lock_file == str(tmp_path / "export" / ".digits.lock")
    with lock:
        os.makedirs(out)
        os.replace(out, tmp_path / "export" / "renamed")  # what an export does to the folder
        with pytest.raises(WorkdirInUseError, match=r"export target .*digits is in use by pid .*pass another --out"):
            WorkdirLock.beside(str(out)).acquire()


# ------------------------------------------------------------------------------------------ chief-only rule
def _tf_config(index):
    return json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker",
                                                                                       "index": index}})


@pytest.mark.parametrize("tf_config,locks", [(None, True), (_tf_config(0), True), (_tf_config(1), False)],
                         ids=["single-process", "chief", "worker"])
def test_only_the_chief_locks(monkeypatch, tmp_path, tf_config, locks, try_lock):
    from hlrs_tf.runtime import distribute

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    wd = tmp_path / "shared"
    with distribute.workdir_lock(str(wd)):
        assert (wd / LOCK_FILENAME).exists() is locks  # a worker does not even create the folder
        assert try_lock(wd)[0] is not locks
    assert try_lock(wd)[0]


# ------------------------------------------------------------------------------- the commands, end to end
SEARCH = ["--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3", "--batch_size=16",
          "--epochs=1", "--steps_per_epoch=1", "--verbose=0"]


def _one_line_refusal(proc, prog, what, path, pid, flag):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: ") and refusal(what, path, pid, flag).fullmatch(
        last[len(f"{prog}: error: "):]), last


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry_run"])
def test_search_refused_while_another_process_holds_the_workdir(tmp_path, dry_run, held, run_cli):
    wd = tmp_path / "search"
    with held(wd) as holder:
        proc = run_cli("hlrs_tf.search", *SEARCH, f"--workdir={wd}", *(["--dry_run"] if dry_run else []),
                       timeout=300)
        assert holder.poll() is None
    _one_line_refusal(proc, "hlrs_tf.search", "work directory", wd, holder.pid, "--workdir")
    assert os.listdir(wd) == [LOCK_FILENAME]  # refused before writing anything (flags.cfg included)


def test_train_refused_while_another_process_holds_the_workdir(tmp_path, held, run_cli):
    wd = tmp_path / "train"
    with held(wd) as holder:
        proc = run_cli("hlrs_tf.train", "--genotype=DARTS_V2", "--dataset=digits", "--channels=4", "--layers=3",
                       "--dry_run", f"--workdir={wd}", timeout=300)
    _one_line_refusal(proc, "hlrs_tf.train", "work directory", wd, holder.pid, "--workdir")
    assert os.listdir(wd) == [LOCK_FILENAME]


def test_export_refused_while_another_process_exports_to_out(tmp_path, held, run_cli):
    from hlrs_tf.config.train import TrainConfig
    from hlrs_tf.data.sources import dataset_spec
    from hlrs_tf.space.genotypes import DARTS_V2
    from hlrs_tf.train.task import build_network, save_network

    config = TrainConfig.create(genotype="DARTS_V2", dataset="digits", channels=4, layers=3)
    model = str(tmp_path / "model.keras")
    save_network(build_network(config, DARTS_V2, dataset_spec("digits")), model)
    out = tmp_path / "export" / "digits"
    with held(out, beside=True) as holder:
        proc = run_cli("hlrs_tf.export", f"--model={model}", f"--out={out}", "--num_images=8", timeout=300)
    _one_line_refusal(proc, "hlrs_tf.export", "export target", out, holder.pid, "--out")
    assert os.listdir(tmp_path / "export") == [".digits.lock"]  # no --out, no staging folder


def test_compare_refused_while_another_process_holds_its_workdir(tmp_path, held, run_cli):
    root = tmp_path / "compare"
    with held(root) as holder:
        proc = run_cli("hlrs_tf.compare", *SEARCH, "--methods=darts", "--seeds=0", f"--workdir={root}",
                       timeout=300)
    _one_line_refusal(proc, "hlrs_tf.compare", "work directory", root, holder.pid, "--workdir")
    assert os.listdir(root) == [LOCK_FILENAME]  # no compare_flags.cfg, no sub-run started


def test_tuning_locks_its_root(tmp_path, held):
    from hlrs_tf.config.search import SearchConfig
    from hlrs_tf.experiments.tuning import TuneConfig, run_tuning

    root = tmp_path / "tune"
    config = TuneConfig(SearchConfig.create(dataset="digits", channels=4, layers=3, epochs=1, steps_per_epoch=1),
                        max_trials=1)
    with held(root) as holder:
        with pytest.raises(WorkdirInUseError) as err:
            run_tuning(config, str(root), verbose=0)
    assert refusal("work directory", root, holder.pid, "--workdir").fullmatch(str(err.value)), str(err.value)
    assert os.listdir(root) == [LOCK_FILENAME]  # keras-tuner never started
