"""Typed configuration of a retraining run (a derived genotype trained from scratch).

:class:`TrainConfig` composes the blocks of :mod:`hlrs_tf.config.blocks` (data, loss, weight optimiser, runtime)
with the retraining's own settings. The CLI (:mod:`hlrs_tf.config.flags`) turns absl flags into it; the library
(:mod:`hlrs_tf.train.task`) only ever sees this object. Defaults are the DARTS CIFAR evaluation setting
(``train.py`` of the reference) on the long-tailed training set: C=36, 20 cells, 600 epochs, batch 96,
SGD lr 0.025 with cosine decay to 0, momentum 0.9, weight decay 3e-4, gradient clip 5, auxiliary head weight
0.4, drop-path ramped to 0.2, cutout 16 (scaled to the image size); cross-entropy, or a long-tail ``--loss``
(:mod:`hlrs_tf.losses.long_tail`).
"""

from __future__ import annotations

import dataclasses

from hlrs_tf.config.blocks import LossConfig, RuntimeConfig, TrainData, WeightOptimizer
from hlrs_tf.config.schema import ConfigError, Settings, block, require, setting
from hlrs_tf.config.search import ADDED_FLAG_DEFAULTS as SEARCH_ADDED_FLAG_DEFAULTS
from hlrs_tf.config.search import INITS, require_bbn_loss
from hlrs_tf.losses.bbn_mixing import MIXING_SCHEDULES

__all__ = ["ADDED_FLAG_DEFAULTS", "ConfigError", "TrainConfig"]

# Flags added to hlrs_tf.train after runs were written (see hlrs_tf.config.search.ADDED_FLAG_DEFAULTS): before --loss
# and its settings existed a retraining was plain cross-entropy, which these defaults are (the search's old
# --class_weight_reduction=batch_mean does not apply: no retraining was class-weighted).
ADDED_FLAG_DEFAULTS = {**SEARCH_ADDED_FLAG_DEFAULTS, "loss": "ce", "reweight_beta": "0.9999",
                       "class_weight_reduction": "weighted_mean", "holdout_fraction": "0.0"}


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Everything a retraining run needs: its blocks and its own settings.

    Each setting is a flag of the same name (``python -m hlrs_tf.train --helpfull``); see
    :class:`~hlrs_tf.config.schema.Settings` for the flat view.
    """

    #: hlrs_tf.train has always written its booleans as absl serialises them (--augment, --nocutout).
    FLAGFILE_BOOL_STYLE = "absl"

    genotype: str = setting(
        "", "The architecture: a preset name (DARTS_V1, DARTS_V2), a genotype JSON file, or a search work directory "
        "(its genotype.json). Required.")
    data: TrainData = block(TrainData)
    # Network
    channels: int = setting(36, "Initial channels C of the derived network.", lower_bound=2)
    layers: int = setting(20, "Number of cells.", lower_bound=3)
    auxiliary: bool = setting(True, "Auxiliary head after cell 2L//3 (training only).")
    auxiliary_weight: float = setting(0.4, "Weight of the auxiliary loss.")
    drop_path_prob: float = setting(0.2, "Drop-path probability reached at the last epoch (ramped linearly from 0).")
    bbn: bool = setting(False, "BBN head: the last cell as conventional and re-balancing branches on the shared "
                        "trunk, mixed loss (for a BBN-searched genotype).")
    mixing: str = setting("parabolic", "BBN mixing factor alpha_T over the epochs.", choices=MIXING_SCHEDULES)
    init: str = setting(
        "reference", "Weight initialisation: reference (PyTorch's defaults, as the DARTS code: kaiming-uniform "
        "a=sqrt(5) for conv and dense kernels, uniform classifier bias) or keras (glorot-uniform, zero biases).",
        choices=INITS)
    # Loss: the search's choices and semantics, on the main and the auxiliary logits.
    objective: LossConfig = block(LossConfig)
    # Optimisation: DARTS' train.py decays to 0
    epochs: int = setting(600, "Training epochs.", lower_bound=1)
    batch_size: int = setting(96, "Batch size.", lower_bound=1)
    steps_per_epoch: int = setting(0, "Steps per epoch; 0 = one pass over the training set.", lower_bound=0)
    optimizer: WeightOptimizer = block(lambda: WeightOptimizer(learning_rate_min=0.0))
    # Run
    validation_freq: int = setting(0, "Evaluate on the test set every N epochs (val_* columns); 0 = only at the end.",
                                   lower_bound=0)
    runtime: RuntimeConfig = block(RuntimeConfig)

    def __post_init__(self):
        super().__post_init__()  # the choices above; each block checked its own settings
        require(bool(self.genotype and self.genotype.strip()), "genotype", self.genotype,
                "a preset name (DARTS_V1, DARTS_V2), a genotype JSON file or a search work directory")
        require(self.channels >= 2 and self.channels % 2 == 0, "channels", self.channels, "an even integer >= 2")
        require(self.layers >= 3, "layers", self.layers, "an integer >= 3 (reductions at L//3 and 2L//3)")
        require(
            not (self.bbn and self.auxiliary and 2 * self.layers // 3 >= self.layers - 1), "layers", self.layers,
            "an integer >= 4 with --bbn and --auxiliary (the auxiliary head must sit before the branch cells)",
        )
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        self.objective.check_epochs(self.epochs)
        if self.bbn:  # BBN's loss is its mixed cross-entropy (hlrs_tf.losses.bbn_mixing.bbn_loss), as in the search
            require_bbn_loss(self.objective)
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch,
                "an integer >= 0 (0 = one pass over the training set)")
        require(self.validation_freq >= 0, "validation_freq", self.validation_freq,
                "an integer >= 0 (0 = test only at the end)")
