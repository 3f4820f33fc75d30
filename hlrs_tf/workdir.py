"""The work directory of a run: one folder holding everything a run writes, written atomically.

Layout (a contract tools and tests rely on)::

    flags.cfg               effective flags, usable again as --flagfile
    model_summary.json      {"weight_params", "arch_params", ...}
    genotype.json           final genotype
    genotypes/epoch_NNN.json  genotype after every epoch (1-based)
    history.csv             one row per epoch (Keras CSVLogger)
    metrics.json            test-set evaluation of the supernet
    tensorboard/            scalars, alpha heatmaps, genotype text
    checkpoints/            per-epoch state to resume from

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed over the target, so
a crash never leaves a half-written genotype or checkpoint that looks complete.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile


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


def default_workdir(name: str, root: str = "runs") -> str:
    """A new folder name ``runs/<UTC timestamp>-<name>`` (not created)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return os.path.join(root, f"{stamp}-{safe}")


class Workdir:
    """Paths of a run's work directory.

    Args:
        path: The folder (created, with its sub-folders).

    Raises:
        OSError: If the folder cannot be created or written (checked up front, before any work is done).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        try:
            for sub in ("", "genotypes", "tensorboard", "checkpoints"):
                os.makedirs(os.path.join(self.path, sub), exist_ok=True)
            # os.access says yes to root on a read-only mount; writing a probe file is the real test.
            probe = os.path.join(self.path, f".write_probe.{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise OSError(f"cannot use work directory {self.path} ({e.strerror or e}): pass a writable "
                          f"--workdir with free space") from e

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
        return self.file("genotype.json")

    def epoch_genotype_file(self, epoch: int) -> str:
        """``genotypes/epoch_NNN.json`` for a 1-based epoch number."""
        return self.file(os.path.join("genotypes", f"epoch_{epoch:03d}.json"))

    @property
    def history_file(self) -> str:
        return self.file("history.csv")

    @property
    def metrics_file(self) -> str:
        return self.file("metrics.json")

    @property
    def tensorboard_dir(self) -> str:
        return self.file("tensorboard")

    @property
    def checkpoint_dir(self) -> str:
        return self.file("checkpoints")
