"""Guards against DARTS' collapse to skip connections (issue 18): the DARTS+ early stop and the records of both
guards.

DARTS' normal cell drifts towards parameter-free ``skip_connect`` edges the longer it searches (Zela et al.
2020; Liang et al. 2019). Two guards, each off by default and logged every epoch:

* ``--max_skip_connect=N``, the P-DARTS rule at derivation, lives in :func:`hlrs_tf.space.genotypes.cap_skip_connect`
  (applied by :class:`hlrs_tf.search.callbacks.GenotypeLogger` every epoch and by the trainer to the final genotype).
  What it replaced is kept per epoch in ``skip_cap.json`` (:func:`save_skip_cap`) so the record of whichever
  epoch's genotype becomes final can go into ``metrics.json``.
* ``--stop_on_skip=N``, the DARTS+ rule (Liang et al. 2019, "DARTS+: Improved Differentiable Architecture
  Search with Early Stopping", criterion 1: stop when the normal cell has two or more skip connections):
  :class:`SkipConnectStop`. Decisions, and why:

  - It counts the *uncapped* normal cell (the plain DARTS derivation, as DARTS+ does): a cap would hide the
    very collapse the rule watches for.
  - It does not fire during ``--warmup_epochs``: the architecture learning rate is 0 there, so the genotype is
    the initial alphas' (initialisation noise, often with several skips), not a result of the search.
  - On a stop after epoch ``k`` the genotype of epoch ``k - 1`` (``genotypes/epoch_NNN.json``) is the final
    one: epoch ``k``'s has already collapsed. When ``k`` is 1 (no warm-up) there is no earlier derived
    genotype -- before the first epoch the alphas are initialisation noise -- so epoch 1's own is kept, and
    ``kept_genotype_epoch`` says so.
  - The stop is part of the checkpoint: ``checkpoints/state.json`` of epoch ``k`` carries the stop record
    (:meth:`SkipConnectStop.checkpoint_state`), written in the same atomic write as the epoch itself, so a
    rerun of the same command restores epoch ``k``, sees the stop and trains no further; deleting the
    checkpoints (to start over) deletes the stop with them.
"""

from __future__ import annotations

import keras

from hlrs_tf.runtime.workdir import Workdir, atomic_write_json, read_json
from hlrs_tf.space.genotypes import Genotype, GenotypeError

__all__ = ["STOP_RULE", "SkipConnectStop", "save_skip_cap", "load_skip_cap", "kept_genotype"]

#: The ``rule`` of an early-stop record, named after its flag.
STOP_RULE = "stop_on_skip"


class SkipConnectStop(keras.callbacks.Callback):
    """The DARTS+ early stop: ends the search after the first epoch whose uncapped normal cell has at least
    ``threshold`` skip connections (see the module docstring for the decisions).

    Logs ``stop_on_skip`` every epoch (1 in the epoch that stopped, else 0). Put it after the
    :class:`~hlrs_tf.search.callbacks.GenotypeLogger` it reads and before the writers (``CSVHistory``) and the
    :class:`~hlrs_tf.runtime.callbacks.EpochCheckpoint` that saves :meth:`checkpoint_state`.

    Args:
        threshold: ``--stop_on_skip``; 0 never stops.
        warmup_epochs: ``--warmup_epochs``; the rule is not applied in these first epochs.
        genotype_logger: Source of each epoch's uncapped skip count (``last_normal_skip_uncapped``).

    Attributes:
        record: ``None``, or after a stop the dict that goes into ``metrics.json["early_stop"]``: ``epoch``
            (1-based), ``rule`` (:data:`STOP_RULE`), ``normal_skip_connect`` (the uncapped count that fired),
            ``threshold``, ``warmup_epochs`` and ``kept_genotype_epoch``.
    """

    def __init__(self, threshold: int, warmup_epochs: int, genotype_logger):
        super().__init__()
        self.threshold = threshold
        self.warmup_epochs = warmup_epochs
        self.genotype_logger = genotype_logger
        self.record: dict | None = None

    def fires(self, epoch: int, normal_skip_connect: int) -> bool:
        """Whether the rule stops the search after 1-based ``epoch`` with this uncapped skip count."""
        return self.threshold > 0 and epoch > self.warmup_epochs and normal_skip_connect >= self.threshold

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        count = self.genotype_logger.last_normal_skip_uncapped
        fired = self.fires(done, count)
        if logs is not None:
            logs[STOP_RULE] = int(fired)
        if fired:
            self.model.stop_training = True
            self.record = {
                "epoch": done,
                "rule": STOP_RULE,
                "normal_skip_connect": count,
                "threshold": self.threshold,
                "warmup_epochs": self.warmup_epochs,
                "kept_genotype_epoch": max(done - 1, 1),
            }
            print(f"early stop after epoch {done}: the normal cell has {count} skip connections "
                  f"(--{STOP_RULE}={self.threshold}); keeping the genotype of epoch "
                  f"{self.record['kept_genotype_epoch']}")

    def checkpoint_state(self) -> dict:
        """What the epoch's checkpoint state must carry: ``{"early_stop": record}`` after a stop, else ``{}``."""
        return {"early_stop": self.record} if self.record else {}


def save_skip_cap(workdir: Workdir, epoch: int, max_skip_connect: int, replaced: list[dict]) -> None:
    """Adds one epoch's cap record to ``skip_cap.json`` (``{"max_skip_connect": N, "replaced": {"1": [...]}}``).

    A resumed epoch overwrites its entry, so the file always describes the genotype files next to it.
    """
    path = workdir.skip_cap_file
    data = read_json(path, error=GenotypeError) or {}
    by_epoch = data.get("replaced", {})
    by_epoch[str(epoch)] = replaced
    atomic_write_json(path, {"max_skip_connect": max_skip_connect, "replaced": by_epoch})


def load_skip_cap(workdir: Workdir, epoch: int) -> list[dict] | None:
    """The cap record of 1-based ``epoch`` from ``skip_cap.json``; ``None`` when it has none."""
    data = read_json(workdir.skip_cap_file, error=GenotypeError)
    return None if data is None else data.get("replaced", {}).get(str(epoch))


def kept_genotype(workdir: Workdir, early_stop: dict) -> Genotype:
    """The final genotype of a stopped search: the saved genotype of ``early_stop["kept_genotype_epoch"]``.

    Raises:
        GenotypeError: The epoch's genotype file is missing or invalid (the message names it).
    """
    return Genotype.load(workdir.epoch_genotype_file(int(early_stop["kept_genotype_epoch"])))
