"""Callbacks of a retraining run: drop-path ramp, BBN mixing factor, checkpoints and TensorBoard.

They complement :mod:`hlrs_tf.search.callbacks` (whose ``LearningRateLogger`` and ``CSVHistory`` a retraining uses as
they are) where the search versions assume a second, architecture optimizer or alphas.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from hlrs_tf.search.callbacks import EpochCheckpoint
from hlrs_tf.search.schedules import mixing_factor


def drop_path_probability(epoch: int, epochs: int, max_prob: float) -> float:
    """The reference's linear ramp ``max_prob * epoch / epochs`` (0-based epoch: 0 in the first epoch)."""
    return float(max_prob) * float(epoch) / float(max(epochs, 1))


class DropPathSchedule(keras.callbacks.Callback):
    """Assigns the network's ``drop_path_prob`` at the start of every epoch and logs it as ``drop_path_prob``.

    Args:
        max_prob: Probability reached at the end of training (0.2 in DARTS).
        epochs: Number of training epochs.
    """

    def __init__(self, max_prob: float, epochs: int):
        super().__init__()
        self.max_prob, self.epochs = float(max_prob), int(epochs)
        self._value = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._value = drop_path_probability(epoch, self.epochs, self.max_prob)
        self.model.network.drop_path_prob.assign(self._value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["drop_path_prob"] = self._value


class MixingSchedule(keras.callbacks.Callback):
    """Assigns BBN's ``alpha_T`` (:func:`hlrs_tf.search.schedules.mixing_factor`) to ``model.bbn_alpha`` per epoch.

    Args:
        kind: Mixing schedule name (``parabolic``, ``linear``, ``cosine``, ``constant``).
        epochs: Number of training epochs.
    """

    def __init__(self, kind: str, epochs: int):
        super().__init__()
        self.kind, self.epochs = kind, int(epochs)
        self._value = 1.0

    def on_epoch_begin(self, epoch, logs=None):
        self._value = mixing_factor(self.kind, epoch, self.epochs)
        self.model.bbn_alpha.assign(self._value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["bbn_alpha"] = self._value


class RetrainCheckpoint(EpochCheckpoint):
    """:class:`hlrs_tf.search.callbacks.EpochCheckpoint` for a retraining: the same files and guarantees
    (``epoch_NNN.weights.h5``, ``epoch_NNN.optimizers.npz``, then ``state.json`` written last and atomically);
    a model without an ``arch_optimizer`` simply has one optimizer to save.
    """


class ScalarTensorBoard(keras.callbacks.Callback):
    """Writes every numeric epoch log as a TensorBoard scalar (``epoch/<name>``), plus, once, the genotype as
    text and its cell diagrams as images.

    Args:
        log_dir: The run's ``tensorboard/`` folder.
        genotype: The trained genotype.
        diagrams: ``{"normal": png_path, "reduce": png_path}`` written before training (optional).
    """

    def __init__(self, log_dir: str, genotype=None, diagrams: dict | None = None):
        super().__init__()
        self.log_dir, self.genotype, self.diagrams = log_dir, genotype, diagrams or {}
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=0):
            if self.genotype is not None:
                tf.summary.text("genotype", "```\n" + self.genotype.to_json() + "\n```")
            for cell, path in self.diagrams.items():
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        image = tf.io.decode_png(f.read(), channels=4)
                    tf.summary.image(f"cells/{cell}", image[None])
        self._writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        with self._writer.as_default(step=epoch + 1):
            for key, value in (logs or {}).items():
                if np.ndim(value) == 0 and np.isfinite(float(value)):
                    tf.summary.scalar(f"epoch/{key}", float(value))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
