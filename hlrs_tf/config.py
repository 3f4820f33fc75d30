"""Typed configuration of a search run.

The CLI (:mod:`hlrs_tf.flags`) turns absl flags into a :class:`SearchConfig`; the library only ever sees this
object. Defaults are the paper setting of SPEC.md (DARTS on CIFAR-10-LT: 50 epochs, batch 64, C=16, 8 cells,
SGD 0.025 cosine to 0.001, momentum 0.9, wd 3e-4, clip 5; Adam 3e-4, betas (0.5, 0.999), wd 1e-3).
"""

from __future__ import annotations

import dataclasses

ORDERS = ("first", "second")


class ConfigError(ValueError):
    """An invalid setting; the message names the flag and the allowed values."""


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search run needs.

    Attributes mirror the flags of the same name (see ``python -m hlrs_tf.search --helpfull``).
    """

    # Data
    dataset: str = "cifar10"
    data_dir: str | None = None
    manual_dir: str | None = None
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    imbalance_ratio: float = 100.0
    train_portion: float = 0.5
    augment: bool = True
    # Search space
    channels: int = 16
    layers: int = 8
    # Optimisation
    epochs: int = 50
    batch_size: int = 64
    steps_per_epoch: int = 0  # 0: one pass over the smaller search split
    order: str = "first"
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_learning_rate: float = 3e-4
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    # Run
    seed: int = 0
    deterministic: bool = False
    eval_batch_size: int = 256
    verbose: int = 1
    threads: int = 0

    def __post_init__(self):
        _check(self.order in ORDERS, "order", self.order, f"one of {', '.join(ORDERS)}")
        _check(self.imbalance_ratio >= 1, "imbalance_ratio", self.imbalance_ratio, "a number >= 1 (N_max / N_min)")
        _check(0 < self.train_portion < 1, "train_portion", self.train_portion, "in (0, 1)")
        _check(self.channels >= 2 and self.channels % 2 == 0, "channels", self.channels, "an even integer >= 2")
        _check(self.layers >= 3, "layers", self.layers, "an integer >= 3 (reductions at L//3 and 2L//3)")
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch, "an integer >= 0 (0 = full split)")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(
            0 <= self.learning_rate_min <= self.learning_rate,
            "learning_rate_min", self.learning_rate_min, "in [0, learning_rate]",
        )
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.grad_clip > 0, "grad_clip", self.grad_clip, "> 0")
        _check(self.arch_learning_rate >= 0, "arch_learning_rate", self.arch_learning_rate, ">= 0")
        _check(0 <= self.arch_beta1 < 1, "arch_beta1", self.arch_beta1, "in [0, 1)")
        _check(0 <= self.arch_beta2 < 1, "arch_beta2", self.arch_beta2, "in [0, 1)")
        _check(self.arch_weight_decay >= 0, "arch_weight_decay", self.arch_weight_decay, ">= 0")
        _check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "an integer >= 1")
        _check(self.threads >= 0, "threads", self.threads, "an integer >= 0 (0 = TensorFlow's default)")

    def to_dict(self) -> dict:
        """Plain-dict view (JSON-ready)."""
        return dataclasses.asdict(self)


def _check(ok: bool, flag: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"--{flag}={value!r} is invalid: it must be {allowed}")
