"""Typed configuration of a search run.

The CLI (:mod:`hlrs_tf.config.search_flags`) turns absl flags into a :class:`SearchConfig`; the library only ever
sees this object. Defaults are the paper setting of docs/method.md M3 (DARTS on CIFAR-10-LT: 50 epochs, batch 64,
C=16, 8 cells, SGD 0.025 cosine to 0.001, momentum 0.9, wd 3e-4, clip 5; Adam 3e-4, betas (0.5, 0.999), wd 1e-3).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from hlrs_tf.config.choices import CLASS_WEIGHT_REDUCTIONS, DRW_LOSSES, LOSSES, STRATEGIES
from hlrs_tf.data.samplers import SAMPLERS
from hlrs_tf.losses.bbn_mixing import MIXING_SCHEDULES
from hlrs_tf.runtime.precision import PRECISIONS, SECOND_ORDER_REASON
from hlrs_tf.search.schedules import ARCH_LR_SCHEDULES
from hlrs_tf.space.genotypes import STEPS

ORDERS = ("first", "second")
CELL_IMPLS = ("fused", "direct")
# LOSSES, DRW_LOSSES, CLASS_WEIGHT_REDUCTIONS and STRATEGIES: hlrs_tf.config.choices.
#: How weights are initialised (hlrs_tf.space.init): PyTorch's defaults as the reference, or Keras' own.
INITS = ("reference", "keras")
#: Edges of a derived normal cell (2 per intermediate node), the range of the skip guards' counts.
MAX_SKIP_EDGES = 2 * STEPS

# The paper's five methods (docs/method.md M7) as presets of the pieces below. A preset only fills in the
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
#: The paper's five methods: the ones ``hlrs_tf.compare`` runs by default.
PAPER_METHODS = tuple(METHOD_PRESETS)
# PC-DARTS (Xu et al. 2020): partial channels K=4 + edge normalisation, on DARTS and on HLRS. Its reference also
# freezes the architecture for the first 15 of 50 epochs (--warmup_epochs) and searches at batch 256, which are
# budget choices left to the run's own flags.
METHOD_PRESETS["pcdarts"] = dict(METHOD_PRESETS["darts"], partial_channels=4)
METHOD_PRESETS["pcdarts_hlrs"] = dict(METHOD_PRESETS["hlrs"], partial_channels=4)
# The long-tail losses of issue 19 (hlrs_tf.losses.long_tail) on plain DARTS, on both levels of the search.
# LDAM-DRW switches its weights on at 80% of the epochs, as the reference (epoch 160 of 200): 40 of the default
# 50; a run with other --epochs sets --drw_epoch itself (the config refuses drw_epoch >= epochs).
METHOD_PRESETS["darts_la"] = dict(METHOD_PRESETS["darts"], loss="logit_adjusted")
METHOD_PRESETS["darts_bsm"] = dict(METHOD_PRESETS["darts"], loss="balanced_softmax")
METHOD_PRESETS["darts_ldam_drw"] = dict(METHOD_PRESETS["darts"], loss="ldam", drw_epoch=40)
METHOD_PRESETS["darts_focal"] = dict(METHOD_PRESETS["darts"], loss="focal")
METHOD_PRESETS["darts_cb_focal"] = dict(METHOD_PRESETS["darts"], loss="class_balanced_focal")
METHODS = tuple(METHOD_PRESETS)


# Flags added after runs were already written: a flags.cfg without one ran with this value
# (hlrs_tf.runtime.workdir.check_same_run). --precision counts as a change (resuming float32 checkpoints in bfloat16
# would mix two runs), so it is refused like any other. --init: runs written before it existed were initialised the
# Keras way. --class_weight_reduction: the class-weighted loss was sum(w_y CE) / batch size (Keras' sample_weight)
# before it existed. --partial_channels (issue 18): runs before it were DARTS (K=1). --max_skip_connect,
# --stop_on_skip (issue 18): the collapse guards were off. The long-tail loss settings (--la_tau, --focal_gamma,
# --drw_epoch; issue 19) had no effect before them: their defaults.
ADDED_FLAG_DEFAULTS = {"precision": "float32", "init": "keras", "class_weight_reduction": "batch_mean",
                       "partial_channels": "1", "max_skip_connect": "-1", "stop_on_skip": "0",
                       "la_tau": "1.0", "focal_gamma": "2.0", "drw_epoch": "0"}


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
    class_weight_reduction: str = "weighted_mean"  # sum(w*CE)/sum(w) (LDAM-DRW) or sum(w*CE)/batch
    la_tau: float = 1.0  # logit_adjusted: CE(z + tau log prior)
    focal_gamma: float = 2.0  # focal, class_balanced_focal: (1 - p_t)^gamma
    drw_epoch: int = 0  # DRW: class-balanced weights from this 0-based epoch on (0 = no DRW)
    bbn: bool = False
    mixing: str = "parabolic"
    arch_lr_schedule: str = "constant"
    freeze_threshold: float = 0.5
    warmup_epochs: int = 0
    # Collapse guards (issue 18), both off by default
    max_skip_connect: int = -1  # P-DARTS: at most N skip edges in the derived normal cell; -1 = off
    stop_on_skip: int = 0  # DARTS+: stop once the normal cell has >= N skip edges; 0 = off
    # Search space
    channels: int = 16
    layers: int = 8
    init: str = "reference"  # PyTorch default init (kaiming-uniform a=sqrt(5)) or "keras" (glorot, zero bias)
    cell_impl: str = "fused"  # "direct": the per-edge reference computation (slower, same function)
    partial_channels: int = 1  # PC-DARTS' K: mixed ops on C // K channels + edge normalisation (1 = DARTS)
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
    precision: str = "float32"  # Keras dtype policy of the supernet (hlrs_tf.runtime.precision)
    eval_batch_size: int = 256
    verbose: int = 1
    threads: int = 0

    def __post_init__(self):
        check_floats(self)  # every float setting: finite and in its range (FLOAT_RANGES)
        require(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        require(self.order == "first" or self.precision == "float32", "precision", self.precision,
                f"float32 with --order=second ({SECOND_ORDER_REASON})")
        require(self.method in METHODS, "method", self.method, f"one of {', '.join(METHODS)}")
        for flag in ("weight_sampler", "arch_sampler"):
            require(getattr(self, flag) in SAMPLERS, flag, getattr(self, flag), f"one of {', '.join(SAMPLERS)}")
        check_loss_settings(self)
        require(self.init in INITS, "init", self.init, f"one of {', '.join(INITS)}")
        require(self.mixing in MIXING_SCHEDULES, "mixing", self.mixing, f"one of {', '.join(MIXING_SCHEDULES)}")
        require(self.arch_lr_schedule in ARCH_LR_SCHEDULES, "arch_lr_schedule", self.arch_lr_schedule,
                f"one of {', '.join(ARCH_LR_SCHEDULES)}")
        require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", self.warmup_epochs,
                f"an integer in [0, epochs={self.epochs})")
        require(self.max_skip_connect == -1 or 0 <= self.max_skip_connect <= MAX_SKIP_EDGES, "max_skip_connect",
                self.max_skip_connect, f"-1 (off) or an integer in [0, {MAX_SKIP_EDGES}] (skip_connect edges kept "
                "in the derived normal cell)")
        require(0 <= self.stop_on_skip <= MAX_SKIP_EDGES, "stop_on_skip", self.stop_on_skip,
                f"0 (off) or an integer in [1, {MAX_SKIP_EDGES}] (skip_connect edges of the normal cell that stop "
                "the search)")
        if self.bbn:
            # BBN fixes its samplers (uniform + reversed) and its loss (the mixed CE).
            for flag in ("weight_sampler", "arch_sampler"):
                require(getattr(self, flag) == "uniform", flag, getattr(self, flag),
                        "uniform with --bbn (the conventional branch samples uniformly; the re-balancing "
                        "branch always uses the reversed sampler)")
            require(self.loss == "ce", "loss", self.loss, "ce with --bbn (BBN's loss is its mixed cross-entropy)")
            require(self.drw_epoch == 0, "drw_epoch", self.drw_epoch, "0 with --bbn (BBN's loss is its mixed "
                    "cross-entropy)")
        require(self.strategy in STRATEGIES, "strategy", self.strategy, f"one of {', '.join(STRATEGIES)}")
        require(self.cpu_replicas >= 0, "cpu_replicas", self.cpu_replicas,
                "an integer >= 0 (N > 1: mirror over N logical CPU devices)")
        require(self.order in ORDERS, "order", self.order, f"one of {', '.join(ORDERS)}")
        require(self.cell_impl in CELL_IMPLS, "cell_impl", self.cell_impl, f"one of {', '.join(CELL_IMPLS)}")
        require(self.channels >= 2 and self.channels % 2 == 0, "channels", self.channels, "an even integer >= 2")
        require(self.partial_channels >= 1, "partial_channels", self.partial_channels, "an integer >= 1 (1 = DARTS)")
        require(self.channels % self.partial_channels == 0, "partial_channels", self.partial_channels,
                f"a divisor of channels={self.channels} (each mixed op works on channels // K of them; e.g. "
                f"K=4 with channels 8, 12, 16)")
        require(self.layers >= 3, "layers", self.layers, "an integer >= 3 (reductions at L//3 and 2L//3)")
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch, "an integer >= 0 (0 = full split)")
        require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "an integer >= 1")
        require(self.threads >= 0, "threads", self.threads, "an integer >= 0 (0 = all cores)")

    @property
    def skip_cap(self) -> int | None:
        """``max_skip_connect`` as the library takes it: ``None`` when the cap is off."""
        return None if self.max_skip_connect < 0 else self.max_skip_connect

    @classmethod
    def for_method(cls, method: str, **overrides) -> SearchConfig:
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


def check_loss_settings(settings, error: type[Exception] = ConfigError) -> None:
    """Refuses a bad ``--loss`` / ``--class_weight_reduction`` / ``--drw_epoch`` of a search or retraining config.

    ``settings`` has the fields ``loss``, ``class_weight_reduction``, ``drw_epoch`` and ``epochs`` (the float
    settings ``la_tau``, ``focal_gamma`` and ``reweight_beta`` are checked by :func:`check_floats`).

    Raises:
        error: Naming the flag and the allowed values.
    """
    require(settings.loss in LOSSES, "loss", settings.loss, f"one of {', '.join(LOSSES)}", error)
    require(settings.class_weight_reduction in CLASS_WEIGHT_REDUCTIONS, "class_weight_reduction",
            settings.class_weight_reduction, f"one of {', '.join(CLASS_WEIGHT_REDUCTIONS)}", error)
    require(0 <= settings.drw_epoch < settings.epochs, "drw_epoch", settings.drw_epoch,
            f"an integer in [0, epochs={settings.epochs}) (0 = no DRW; DRW weights from this 0-based epoch on)",
            error)
    require(settings.drw_epoch == 0 or settings.loss in DRW_LOSSES, "drw_epoch", settings.drw_epoch,
            f"0 with --loss={settings.loss} (DRW re-weights --loss={', '.join(DRW_LOSSES)}; the other losses "
            f"are already class-weighted or class-adjusted)", error)


def require(ok: bool, flag: str, value, allowed: str, error: type[Exception] = ConfigError) -> None:
    """Refuses a setting unless ``ok``: ``--<flag>=<value> is invalid: it must be <allowed>``.

    Raises:
        error: (:class:`ConfigError` by default) when ``ok`` is false.
    """
    if not ok:
        raise error(f"--{flag}={value!r} is invalid: it must be {allowed}")


@dataclasses.dataclass(frozen=True)
class FloatRange:
    """The allowed values of a float setting: a finite number in an interval.

    Attributes:
        interval: ``"[low, high]"``, with ``(`` or ``)`` for an open end. ``high`` may be ``inf`` (no upper
            bound; the value must still be finite) or the name of another setting of the same config, which is
            then the bound (``learning_rate_min`` in ``[0, learning_rate]``).
        note: What the number is, added to the refusal.
    """

    interval: str
    note: str = ""

    def _bounds(self) -> tuple[bool, float, str, bool]:
        text = self.interval.strip()
        low, high = (part.strip() for part in text[1:-1].split(","))
        return text[0] == "(", float(low), high, text[-1] == ")"

    def allows(self, value, settings) -> bool:
        """Whether ``value`` is a finite real number in the interval (``settings`` supplies a named bound)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        low_open, low, high, high_open = self._bounds()
        high = float(getattr(settings, high)) if high.isidentifier() and high != "inf" else float(high)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    def describe(self, settings=None) -> str:
        """The allowed values in words, e.g. ``in [0, 1)`` or ``> 0 and finite`` (``settings``: the value of a
        bound named by another setting is shown too)."""
        low_open, _, high, _ = self._bounds()
        if high == "inf":
            low = self.interval.strip()[1:].split(",")[0].strip()
            text = "a finite number" if low == "-inf" else f"{'>' if low_open else '>='} {low} and finite"
        else:
            text = f"in {self.interval}"
            if high.isidentifier() and settings is not None:
                text += f" (--{high}={getattr(settings, high)!r})"
        return f"{text} ({self.note})" if self.note else text


#: The range of every float setting of the search, retraining and export configs, by flag name (one meaning
#: per name across the commands). A float setting missing here must still be finite.
FLOAT_RANGES: dict[str, FloatRange] = {
    "imbalance_ratio": FloatRange("[1, inf)", "N_max / N_min"),
    "train_portion": FloatRange("(0, 1)", "share of each class on the weight split"),
    "holdout_fraction": FloatRange("[0, 1)", "share of each class held out for post-hoc calibration; 0 = none"),
    "reweight_beta": FloatRange("[0, 1)"),  # the effective number (1 - beta^n) / (1 - beta) needs beta < 1
    "la_tau": FloatRange("[0, inf)", "logit adjustment's tau; 0 = plain cross-entropy"),
    "focal_gamma": FloatRange("[0, inf)", "the focal exponent; 0 = plain cross-entropy"),
    "freeze_threshold": FloatRange("[0, 1]"),  # compared with alpha_T, which lies in [0, 1]
    "learning_rate": FloatRange("(0, inf)"),
    "learning_rate_min": FloatRange("[0, learning_rate]"),  # the end of a decay from learning_rate
    "momentum": FloatRange("[0, 1)"),  # 1 or more: the velocity never decays
    "weight_decay": FloatRange("[0, inf)"),
    "grad_clip": FloatRange("(0, inf)"),  # a global-norm bound: 0 would zero every step
    "arch_learning_rate": FloatRange("[0, inf)"),  # 0: the alphas stay as initialised
    "arch_beta1": FloatRange("[0, 1)"),  # Adam's moment decays
    "arch_beta2": FloatRange("[0, 1)"),
    "arch_weight_decay": FloatRange("[0, inf)"),
    "auxiliary_weight": FloatRange("[0, inf)"),
    "drop_path_prob": FloatRange("[0, 1)"),  # 1 would drop every path
    "tolerance": FloatRange("(0, inf)", "largest allowed |logit difference|"),
}
_ANY_FINITE = FloatRange("(-inf, inf)")


def float_settings(config_class) -> tuple[str, ...]:
    """Names of the float settings (fields annotated ``float``) of a config dataclass, in field order."""
    return tuple(f.name for f in dataclasses.fields(config_class) if f.type in (float, "float"))


def check_floats(settings, error: type[Exception] = ConfigError) -> None:
    """Refuses a float setting of a config dataclass that is not finite or outside its :data:`FLOAT_RANGES`.

    The one check of every float flag of every command (called from the configs' ``__post_init__``, so
    library callers get it too). Fields are checked in order, so a bound named by another setting
    (``learning_rate``) has been checked before it is used.

    Raises:
        error: (:class:`ConfigError` by default) naming the flag, the value and the allowed range, e.g.
            ``--learning_rate=inf is invalid: it must be > 0 and finite``.
    """
    for name in float_settings(type(settings)):
        value = getattr(settings, name)
        allowed = FLOAT_RANGES.get(name, _ANY_FINITE)
        require(allowed.allows(value, settings), name, value, allowed.describe(settings), error)
