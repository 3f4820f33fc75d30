"""The work directory of a run: one folder holding everything a run writes, written atomically.

Layout (a contract tools and tests rely on)::

    flags.cfg               effective flags, usable again as --flagfile
    model_summary.json      {"weight_params", "arch_params", ...}
    genotype.json           final genotype
    genotypes/epoch_NNN.json  genotype after every epoch (1-based)
    skip_cap.json           with --max_skip_connect: what the cap replaced, per epoch (hlrs_tf.search.collapse)
    history.csv             one row per epoch (Keras CSVLogger)
    metrics.json            test-set evaluation of the supernet
    class_counts.json       class counts and priors of the training split, and the loss' constants
    tensorboard/            scalars, alpha heatmaps, genotype text
    checkpoints/            per-epoch state to resume from (state.json: also an early stop, hlrs_tf.search.collapse)
    .lock                   held by the run using the folder (:class:`WorkdirLock`)

This module is the one owner of these names (:class:`Workdir`'s properties; :class:`Workdir` with
``create=False`` names the files of a folder it only reads, as ``hlrs_tf.compare`` does), of reading them back
(:func:`read_json`), of the resume checks (:func:`check_same_run`) and of the history truncation of a resume
(:func:`truncate_history`).

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed over the target, so
a crash never leaves a half-written genotype or checkpoint that looks complete.

One run at a time: a run holds :class:`WorkdirLock` on its folder for its whole lifetime, so a second run on
the same folder (a rerun started too early, a hand-started run inside a comparison's folder) is refused at
once instead of writing the same files and resuming from a half-written epoch.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import tempfile
import warnings

from hlrs_tf.config.schema import flag_lines

#: Name of the lock file inside a work directory.
LOCK_FILENAME = ".lock"
#: Name of a run's final genotype (also what ``--genotype=<search work directory>`` reads).
GENOTYPE_FILENAME = "genotype.json"
#: Name of the checkpoint state inside ``checkpoints/``: the last complete epoch (:mod:`hlrs_tf.runtime.callbacks`).
STATE_FILENAME = "state.json"


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj) -> None:
    """Writes ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def state_file(checkpoint_dir: str) -> str:
    """The ``state.json`` of a ``checkpoints/`` folder: written last by each epoch's checkpoint, it names the last
    complete epoch (:class:`hlrs_tf.runtime.callbacks.EpochCheckpoint`)."""
    return os.path.join(checkpoint_dir, STATE_FILENAME)


def read_json(path: str, *, error: type[Exception] | None = ValueError, what: str = "cannot read",
              advice: str = "delete it (or use a new --workdir)"):
    """Reads a JSON file of a work directory; ``None`` when it does not exist.

    Args:
        path: The file.
        error: The exception raised for a file that cannot be read or parsed, with the message
            ``"<what> <path>: <reason>; <advice>"``; ``None`` returns ``None`` for it too (a reader that treats
            a half-written or foreign file as absent, e.g. ``hlrs_tf.compare`` looking for finished runs).
        what: The message's start.
        advice: What the user should do, the message's end.
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        if error is None:
            return None
        raise error(f"{what} {path}: {e}; {advice}") from e


def default_workdir(name: str, root: str = "runs") -> str:
    """A new folder name ``runs/<UTC timestamp>-<name>`` (not created)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return os.path.join(root, f"{stamp}-{safe}")


def _unusable(path: str, e: OSError, what: str = "work directory", flag: str = "--workdir") -> OSError:
    return OSError(f"cannot use {what} {path} ({e.strerror or e}): pass a writable {flag} with free space")


class WorkdirInUseError(OSError):
    """Another live process holds the lock of a work directory (the message names it: pid, host, start)."""


class WorkdirLock:
    """An exclusive lock on a work directory, held for a run's lifetime (a context manager).

    ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a lock file (``<path>/.lock`` by default). The kernel drops the lock
    when the holder's last descriptor closes, so also when it dies (SIGKILL, OOM kill): a lock file left behind
    by a dead run never blocks the next one, and nothing needs cleaning up. The file itself stays; what it
    holds (``pid``, ``host``, ``started``, written by the holder after locking) only means anything while it
    is locked, and is read only to name the holder in the refusal. The descriptor is not inherited by
    subprocesses (Python opens files non-inheritable), so a run's child processes never keep its lock alive.

    On NFS (v4, or v3 with lockd) Linux implements ``flock`` with byte-range locks the server sees, so runs on
    different hosts exclude each other too. A file system without locks (e.g. Lustre mounted without
    ``flock``) gives a warning and the run goes on unlocked, as it would without this class.

    Args:
        path: The folder the lock protects (named in the refusal).
        lock_file: The lock file (its folder is created); default ``<path>/.lock``. A folder that is replaced
            by renaming (an export target) needs one outside it, see :meth:`beside`.
        what: How the refusal names the folder.
        flag: The flag the refusal suggests changing.

    Raises:
        WorkdirInUseError: On entering (:meth:`acquire`), when another process holds the lock.
        OSError: On entering, when the folder or the lock file cannot be created.
    """

    def __init__(self, path: str, lock_file: str | None = None, what: str = "work directory",
                 flag: str = "--workdir"):
        self.path = path
        self.lock_file = os.path.abspath(lock_file or os.path.join(path, LOCK_FILENAME))
        self.what = what
        self.flag = flag
        self._fd: int | None = None

    @classmethod
    def beside(cls, path: str, what: str = "export target", flag: str = "--out") -> WorkdirLock:
        """A lock on ``path`` kept in ``<parent>/.<name>.lock``: it survives ``path`` being renamed over."""
        path = os.path.abspath(path)
        return cls(path, os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock"), what, flag)

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> WorkdirLock:
        """Takes the lock or refuses at once (never waits); returns ``self``."""
        if self._fd is not None:
            raise RuntimeError(f"{self.lock_file} is already locked by this object")
        try:
            os.makedirs(os.path.dirname(self.lock_file), exist_ok=True)
            # Read-write: on NFS an exclusive flock is a write lock, which needs a descriptor open for writing.
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _unusable(self.path, e, self.what, self.flag) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirInUseError(self._refusal(holder)) from None
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                warnings.warn(f"cannot lock {self.what} {self.path} ({e.strerror}): its file system has no "
                              "locks, so make sure no other run uses it", RuntimeWarning, stacklevel=2)
                return self
            raise
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
        except OSError as e:  # a full disk: refused here rather than at the first checkpoint
            os.close(fd)
            raise _unusable(self.path, e, self.what, self.flag) from e
        self._fd = fd
        return self

    def release(self) -> None:
        """Drops the lock (closing the descriptor releases it); a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _refusal(self, holder: dict) -> str:
        if holder.get("pid"):
            who = f"pid {holder['pid']} on host {holder.get('host', '?')} (started {holder.get('started', '?')})"
        else:  # locked an instant ago: the holder has not written its details yet
            who = "another process"
        return f"{self.what} {self.path} is in use by {who}: wait for it or pass another {self.flag}"


def _read_holder(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


class Workdir:
    """Paths of a run's work directory.

    Args:
        path: The folder.
        create: Create it, with its sub-folders, and check it can be written; ``False`` only names the files of
            a folder that is read (it need not exist).

    Raises:
        OSError: If the folder cannot be created or written (checked up front, before any work is done).
    """

    def __init__(self, path: str, create: bool = True):
        self.path = os.path.abspath(path)
        if not create:
            return
        try:
            for sub in ("", "genotypes", "tensorboard", "checkpoints"):
                os.makedirs(os.path.join(self.path, sub), exist_ok=True)
            # os.access says yes to root on a read-only mount; writing a probe file is the real test.
            probe = os.path.join(self.path, f".write_probe.{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise _unusable(self.path, e) from e

    def file(self, name: str) -> str:
        """Absolute path of ``name`` inside the work directory."""
        return os.path.join(self.path, name)

    @property
    def flags_file(self) -> str:
        return self.file("flags.cfg")

    @property
    def summary_file(self) -> str:
        return self.file("model_summary.json")

    @property
    def genotype_file(self) -> str:
        return self.file(GENOTYPE_FILENAME)

    def epoch_genotype_file(self, epoch: int) -> str:
        """``genotypes/epoch_NNN.json`` for a 1-based epoch number."""
        return self.file(os.path.join("genotypes", f"epoch_{epoch:03d}.json"))

    @property
    def skip_cap_file(self) -> str:
        """``skip_cap.json``: the ``--max_skip_connect`` replacements of every epoch
        (:mod:`hlrs_tf.search.collapse`)."""
        return self.file("skip_cap.json")

    @property
    def history_file(self) -> str:
        return self.file("history.csv")

    @property
    def metrics_file(self) -> str:
        return self.file("metrics.json")

    @property
    def class_counts_file(self) -> str:
        """``class_counts.json``: the counts and priors the loss was built from, and its constants (LDAM
        margins, logit offsets, class weights; :meth:`hlrs_tf.losses.long_tail.LossSpec.summary`)."""
        return self.file("class_counts.json")

    @property
    def tensorboard_dir(self) -> str:
        return self.file("tensorboard")

    @property
    def checkpoint_dir(self) -> str:
        return self.file("checkpoints")

    @property
    def state_file(self) -> str:
        """``checkpoints/state.json``: present once an epoch is checkpointed (a run to resume)."""
        return state_file(self.checkpoint_dir)

    @property
    def run_file(self) -> str:
        """``run.json``: wall time and command of a stage run by ``hlrs_tf.compare``."""
        return self.file("run.json")

    @property
    def has_checkpoint(self) -> bool:
        """Whether an epoch of a run is checkpointed here (a rerun resumes it)."""
        return os.path.exists(self.state_file)


# Flags that may change between an interrupted run and its resumption (they do not change the result).
RESUMABLE_CHANGES = ("verbose", "threads", "eval_batch_size", "strategy", "cpu_replicas")


def check_same_run(wd: Workdir, flags_text: str, added_defaults: dict[str, str]) -> None:
    """Refuses to resume a checkpointed run with different settings (it would silently mix two runs).

    Args:
        wd: The work directory.
        flags_text: The new run's effective flags.
        added_defaults: The value of each flag added after runs were written, for a ``flags.cfg`` without it
            (``hlrs_tf.config.search.ADDED_FLAG_DEFAULTS``, ``hlrs_tf.config.train.ADDED_FLAG_DEFAULTS``).

    Raises:
        ValueError: Naming the flags that differ and what to do.
    """
    if not wd.has_checkpoint or not os.path.exists(wd.flags_file):
        return
    with open(wd.flags_file) as f:
        old = {**added_defaults, **flag_lines(f.read())}
    new = {**added_defaults, **flag_lines(flags_text)}
    diff = sorted(k for k in set(old) | set(new)
                  if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if diff:
        changes = ", ".join(f"--{k}={old.get(k)} -> {new.get(k)}" for k in diff)
        raise ValueError(f"work directory {wd.path} holds a checkpointed run with other settings ({changes}): "
                         f"rerun with its flags (--flagfile={wd.flags_file}) to resume, or use a new --workdir")


def truncate_history(path: str, epochs_done: int) -> None:
    """Keeps only the ``history.csv`` rows of the epochs a resume restores (a kill can fall between the row
    and the checkpoint of an epoch; that epoch is run again and must not appear twice)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return
    kept = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",", 1)[0]) < epochs_done]
    atomic_write_text(path, "\n".join(kept) + "\n")
