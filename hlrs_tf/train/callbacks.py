"""The retraining's own Keras callbacks: the drop-path ramp, BBN's mixing factor and the genotype card.

They plug into the callbacks every run uses (:mod:`hlrs_tf.runtime.callbacks`): :class:`DropPathSchedule` and
:class:`MixingSchedule` are :class:`~hlrs_tf.runtime.callbacks.EpochSchedule` presets, :class:`GenotypeCard` is an
add-on of the :class:`~hlrs_tf.runtime.callbacks.TensorBoardWriter`.
"""

from __future__ import annotations

import os

import tensorflow as tf

from hlrs_tf.losses.bbn_mixing import mixing_factor
from hlrs_tf.runtime.callbacks import EpochSchedule, model_variable


def drop_path_probability(epoch: int, epochs: int, max_prob: float) -> float:
    """The reference's linear ramp ``max_prob * epoch / epochs`` (0-based epoch: 0 in the first epoch)."""
    return float(max_prob) * float(epoch) / float(max(epochs, 1))


def _drop_path_variable(model):
    return model.network.drop_path_prob


class DropPathSchedule(EpochSchedule):
    """Assigns the network's ``drop_path_prob`` at the start of every epoch and logs it as ``drop_path_prob``.

    Args:
        max_prob: Probability reached at the end of training (0.2 in DARTS).
        epochs: Number of training epochs.
    """

    def __init__(self, max_prob: float, epochs: int):
        self.max_prob, self.epochs = float(max_prob), int(epochs)
        super().__init__({"drop_path_prob": (
            lambda epoch: drop_path_probability(epoch, self.epochs, self.max_prob), _drop_path_variable)})


class MixingSchedule(EpochSchedule):
    """Assigns BBN's ``alpha_T`` (:func:`hlrs_tf.losses.bbn_mixing.mixing_factor`) to ``model.bbn_alpha`` per
    epoch and logs it as ``bbn_alpha``.

    Args:
        kind: Mixing schedule name (``parabolic``, ``linear``, ``cosine``, ``constant``).
        epochs: Number of training epochs.
    """

    def __init__(self, kind: str, epochs: int):
        self.kind, self.epochs = kind, int(epochs)
        needed = "MixingSchedule needs a BBN model (its bbn_alpha variable)"
        super().__init__({"bbn_alpha": (lambda epoch: mixing_factor(self.kind, epoch, self.epochs),
                                        model_variable("bbn_alpha", needed_by=needed))})


class GenotypeCard:
    """The retraining's add-on of the :class:`~hlrs_tf.runtime.callbacks.TensorBoardWriter`: once, at step 0, the
    genotype as text and its cell diagrams as images (``cells/normal``, ``cells/reduce``).

    Args:
        genotype: The trained genotype.
        diagrams: ``{"normal": png_path, "reduce": png_path}`` written before training (optional).
    """

    def __init__(self, genotype=None, diagrams: dict | None = None):
        self.genotype, self.diagrams = genotype, diagrams or {}

    def write_start(self, model) -> None:
        if self.genotype is not None:
            tf.summary.text("genotype", "```\n" + self.genotype.to_json() + "\n```")
        for cell, path in self.diagrams.items():
            if os.path.exists(path):
                with open(path, "rb") as f:
                    image = tf.io.decode_png(f.read(), channels=4)
                tf.summary.image(f"cells/{cell}", image[None])
