"""Typed configuration of a retraining run (a derived genotype trained from scratch).

The CLI (:mod:`hlrs_tf.config.train_flags`) turns absl flags into a :class:`TrainConfig`; the library
(:mod:`hlrs_tf.train.task`) only ever sees this object. Defaults are the DARTS CIFAR evaluation setting
(``train.py`` of the reference) on the long-tailed training set: C=36, 20 cells, 600 epochs, batch 96,
SGD lr 0.025 with cosine decay to 0, momentum 0.9, weight decay 3e-4, gradient clip 5, auxiliary head weight
0.4, drop-path ramped to 0.2, cutout 16 (scaled to the image size); cross-entropy, or a long-tail ``--loss``
(:mod:`hlrs_tf.losses.long_tail`).
"""

from __future__ import annotations

import dataclasses

from hlrs_tf.config.search import ADDED_FLAG_DEFAULTS as SEARCH_ADDED_FLAG_DEFAULTS
from hlrs_tf.config.search import INITS, ConfigError, check_floats, check_loss_settings, require
from hlrs_tf.losses.bbn_mixing import MIXING_SCHEDULES
from hlrs_tf.runtime.precision import PRECISIONS

__all__ = ["ADDED_FLAG_DEFAULTS", "ConfigError", "TrainConfig"]

# Flags added to hlrs_tf.train after runs were written (see hlrs_tf.config.search.ADDED_FLAG_DEFAULTS): before --loss
# and its settings existed a retraining was plain cross-entropy, which these defaults are (the search's old
# --class_weight_reduction=batch_mean does not apply: no retraining was class-weighted).
ADDED_FLAG_DEFAULTS = {**SEARCH_ADDED_FLAG_DEFAULTS, "loss": "ce", "reweight_beta": "0.9999",
                       "class_weight_reduction": "weighted_mean", "holdout_fraction": "0.0"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a retraining run needs.

    Attributes mirror the flags of the same name (see ``python -m hlrs_tf.train --helpfull``).
    """

    # What to train
    genotype: str = ""  # preset name (DARTS_V1, DARTS_V2), genotype JSON file or search work directory
    # Data
    dataset: str = "cifar10"
    data_dir: str | None = None
    manual_dir: str | None = None
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    imbalance_ratio: float = 100.0
    holdout_fraction: float = 0.0  # share of each class held out of training for post-hoc calibration (0: none)
    augment: bool = True
    cutout: bool = True
    cutout_length: int = 0  # 0: 16 scaled to the image size
    # Network
    channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    bbn: bool = False
    mixing: str = "parabolic"
    init: str = "reference"  # PyTorch default init (hlrs_tf.space.init) or "keras"
    # Loss (hlrs_tf.losses.long_tail; the same choices and semantics as the search's --loss)
    loss: str = "ce"
    reweight_beta: float = 0.9999
    class_weight_reduction: str = "weighted_mean"
    la_tau: float = 1.0
    focal_gamma: float = 2.0
    drw_epoch: int = 0  # DRW: class-balanced weights from this 0-based epoch on (0 = no DRW)
    # Optimisation
    epochs: int = 600
    batch_size: int = 96
    steps_per_epoch: int = 0  # 0: one pass over the long-tailed training set
    learning_rate: float = 0.025
    learning_rate_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # Run
    validation_freq: int = 0  # evaluate on the test set every N epochs (0: only at the end)
    seed: int = 0
    deterministic: bool = False
    precision: str = "float32"  # Keras dtype policy of the network (hlrs_tf.runtime.precision); export is float32
    eval_batch_size: int = 256
    verbose: int = 1
    threads: int = 0

    def __post_init__(self):
        check_floats(self)  # every float setting: finite and in its range (config.FLOAT_RANGES)
        require(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        require(bool(self.genotype and self.genotype.strip()), "genotype", self.genotype,
                "a preset name (DARTS_V1, DARTS_V2), a genotype JSON file or a search work directory")
        require(self.cutout_length >= 0, "cutout_length", self.cutout_length,
                "an integer >= 0 (0 = 16 scaled to the image size)")
        require(self.channels >= 2 and self.channels % 2 == 0, "channels", self.channels, "an even integer >= 2")
        require(self.layers >= 3, "layers", self.layers, "an integer >= 3 (reductions at L//3 and 2L//3)")
        require(
            not (self.bbn and self.auxiliary and 2 * self.layers // 3 >= self.layers - 1), "layers", self.layers,
            "an integer >= 4 with --bbn and --auxiliary (the auxiliary head must sit before the branch cells)",
        )
        require(self.init in INITS, "init", self.init, f"one of {', '.join(INITS)}")
        require(self.mixing in MIXING_SCHEDULES, "mixing", self.mixing, f"one of {', '.join(MIXING_SCHEDULES)}")
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        check_loss_settings(self)
        if self.bbn:  # BBN's loss is its mixed cross-entropy (hlrs_tf.losses.bbn_mixing.bbn_loss), as in the search
            require(self.loss == "ce", "loss", self.loss, "ce with --bbn (BBN's loss is its mixed cross-entropy)")
            require(self.drw_epoch == 0, "drw_epoch", self.drw_epoch,
                    "0 with --bbn (BBN's loss is its mixed cross-entropy)")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch,
                "an integer >= 0 (0 = one pass over the training set)")
        require(self.validation_freq >= 0, "validation_freq", self.validation_freq,
                "an integer >= 0 (0 = test only at the end)")
        require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "an integer >= 1")
        require(self.threads >= 0, "threads", self.threads, "an integer >= 0 (0 = TensorFlow's default)")

    @classmethod
    def from_flags_text(cls, text: str) -> TrainConfig:
        """The config a run's ``flags.cfg`` describes (``--name=value`` and ``--[no]name`` lines, as
        :func:`hlrs_tf.config.train_flags.effective_flags` writes them); flags this version does not know are skipped,
        flags the file lacks (added later) take their defaults. No absl: the flags of another command can be
        defined in the reading process (``hlrs_tf.post_hoc``).

        Raises:
            ConfigError: a value of the wrong type, or one the config refuses (naming the flag).
        """
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for line in text.splitlines():
            if not line.startswith("--"):
                continue
            name, equals, raw = line[2:].partition("=")
            if not equals:  # a boolean: --name or --noname
                name, raw = ((name[2:], "false") if name.startswith("no") and types.get(name[2:]) in ("bool", bool)
                             else (name, "true"))
            kind = types.get(name)
            if kind is None:
                continue
            kind = kind if isinstance(kind, str) else kind.__name__
            try:
                values[name] = {"bool": lambda v: {"true": True, "false": False}[v.lower()], "int": int,
                                "float": float}.get(kind, str)(raw)
            except (KeyError, ValueError):
                raise ConfigError(f"--{name}={raw} is invalid: it must be of type {kind}") from None
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain-dict view (JSON-ready)."""
        return dataclasses.asdict(self)
