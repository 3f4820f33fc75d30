"""Typed configuration of a search run.

The CLI (:mod:`hlrs_tf.flags`) turns absl flags into a :class:`SearchConfig`; the library only ever sees this
object. Defaults are the paper setting of SPEC.md (DARTS on CIFAR-10-LT: 50 epochs, batch 64, C=16, 8 cells,
SGD 0.025 cosine to 0.001, momentum 0.9, wd 3e-4, clip 5; Adam 3e-4, betas (0.5, 0.999), wd 1e-3).
"""

from __future__ import annotations

import dataclasses

from hlrs_tf.data import SAMPLERS
from hlrs_tf.distribute import STRATEGIES
from hlrs_tf.schedules import ARCH_LR_SCHEDULES, MIXING_SCHEDULES

ORDERS = ("first", "second")
CELL_IMPLS = ("fused", "direct")
LOSSES = ("ce", "class_balanced")

# The paper's five methods (SPEC.md section 7) as presets of the pieces below. A preset only fills in the
# settings that were not given explicitly: ``--method=hlrs --arch_lr_schedule=freeze`` is HLRS with freezing.
METHOD_PRESETS = {
    "darts": dict(weight_sampler="uniform", arch_sampler="uniform", loss="ce", bbn=False,
                  arch_lr_schedule="constant"),
    # Re-sampling applies to the weight step; the architecture step keeps DARTS' uniform validation batches.
    "darts_resample": dict(weight_sampler="class_balanced", arch_sampler="uniform", loss="ce", bbn=False,
                           arch_lr_schedule="constant"),
    "darts_reweight": dict(weight_sampler="uniform", arch_sampler="uniform", loss="class_balanced", bbn=False,
                           arch_lr_schedule="constant"),
    "darts_bbn": dict(weight_sampler="uniform", arch_sampler="uniform", loss="ce", bbn=True,
                      arch_lr_schedule="constant"),
    "hlrs": dict(weight_sampler="uniform", arch_sampler="uniform", loss="ce", bbn=True,
                 arch_lr_schedule="mixing"),
}
METHODS = tuple(METHOD_PRESETS)


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
    # Method (see METHOD_PRESETS): samplers, loss, BBN, HLRS
    method: str = "darts"
    weight_sampler: str = "uniform"
    arch_sampler: str = "uniform"
    loss: str = "ce"
    reweight_beta: float = 0.9999
    bbn: bool = False
    mixing: str = "parabolic"
    arch_lr_schedule: str = "constant"
    freeze_threshold: float = 0.5
    warmup_epochs: int = 0
    # Search space
    channels: int = 16
    layers: int = 8
    cell_impl: str = "fused"  # "direct": the per-edge reference computation (slower, same function)
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
    # Distribution
    strategy: str = "auto"
    cpu_replicas: int = 0
    # Run
    seed: int = 0
    deterministic: bool = False
    eval_batch_size: int = 256
    verbose: int = 1
    threads: int = 0

    def __post_init__(self):
        _check(self.method in METHODS, "method", self.method, f"one of {', '.join(METHODS)}")
        for flag in ("weight_sampler", "arch_sampler"):
            _check(getattr(self, flag) in SAMPLERS, flag, getattr(self, flag), f"one of {', '.join(SAMPLERS)}")
        _check(self.loss in LOSSES, "loss", self.loss, f"one of {', '.join(LOSSES)}")
        _check(0 <= self.reweight_beta < 1, "reweight_beta", self.reweight_beta, "in [0, 1)")
        _check(self.mixing in MIXING_SCHEDULES, "mixing", self.mixing, f"one of {', '.join(MIXING_SCHEDULES)}")
        _check(self.arch_lr_schedule in ARCH_LR_SCHEDULES, "arch_lr_schedule", self.arch_lr_schedule,
               f"one of {', '.join(ARCH_LR_SCHEDULES)}")
        _check(0 <= self.freeze_threshold <= 1, "freeze_threshold", self.freeze_threshold, "in [0, 1]")
        _check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", self.warmup_epochs,
               f"an integer in [0, epochs={self.epochs})")
        if self.bbn:
            # BBN fixes its samplers (uniform + reversed) and its loss (the mixed CE).
            for flag in ("weight_sampler", "arch_sampler"):
                _check(getattr(self, flag) == "uniform", flag, getattr(self, flag),
                       "uniform with --bbn (the conventional branch samples uniformly; the re-balancing "
                       "branch always uses the reversed sampler)")
            _check(self.loss == "ce", "loss", self.loss, "ce with --bbn (BBN's loss is its mixed cross-entropy)")
        _check(self.strategy in STRATEGIES, "strategy", self.strategy, f"one of {', '.join(STRATEGIES)}")
        _check(self.cpu_replicas >= 0, "cpu_replicas", self.cpu_replicas,
               "an integer >= 0 (N > 1: mirror over N logical CPU devices)")
        _check(self.order in ORDERS, "order", self.order, f"one of {', '.join(ORDERS)}")
        _check(self.cell_impl in CELL_IMPLS, "cell_impl", self.cell_impl, f"one of {', '.join(CELL_IMPLS)}")
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
        _check(self.threads >= 0, "threads", self.threads, "an integer >= 0 (0 = all cores)")

    @classmethod
    def for_method(cls, method: str, **overrides) -> "SearchConfig":
        """The config of a method preset; ``overrides`` win over the preset (and the preset over defaults).

        Raises:
            ConfigError: On an unknown method or an invalid setting.
        """
        if method not in METHOD_PRESETS:
            raise ConfigError(f"--method={method!r} is invalid: it must be one of {', '.join(METHODS)}")
        return cls(**{**METHOD_PRESETS[method], "method": method, **overrides})

    def to_flagfile(self, exclude=()) -> str:
        """The settings as flagfile text, one ``--name=value`` per line (every field, preset resolved), so
        ``--flagfile=<file>`` repeats exactly this config.

        Args:
            exclude: Field names to leave out.
        """
        lines = []
        for name, value in self.to_dict().items():
            if name in exclude or value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            lines.append(f"--{name}={value}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """Plain-dict view (JSON-ready)."""
        return dataclasses.asdict(self)


def _check(ok: bool, flag: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"--{flag}={value!r} is invalid: it must be {allowed}")
