"""Typed configuration of a search run.

:class:`SearchConfig` composes the blocks of :mod:`hlrs_tf.config.blocks` (data, loss, weight optimiser,
architecture optimiser and schedule, distribution, runtime) with the search's own settings (method, samplers,
BBN, collapse guards, search space, budget). The CLI (:mod:`hlrs_tf.config.flags`) turns absl flags into it;
the library only ever sees this object. Defaults are the paper setting of docs/method.md M3 (DARTS on
CIFAR-10-LT: 50 epochs, batch 64, C=16, 8 cells, SGD 0.025 cosine to 0.001, momentum 0.9, wd 3e-4, clip 5;
Adam 3e-4, betas (0.5, 0.999), wd 1e-3).
"""

from __future__ import annotations

import dataclasses

from hlrs_tf.config.blocks import (
    ArchOptimizer,
    DistributionConfig,
    LossConfig,
    RuntimeConfig,
    SearchData,
    WeightOptimizer,
)
from hlrs_tf.config.schema import (
    FLOAT_RANGES,
    ConfigError,
    FloatRange,
    Settings,
    block,
    check_floats,
    float_settings,
    require,
    setting,
)
from hlrs_tf.data.samplers import SAMPLERS
from hlrs_tf.losses.bbn_mixing import MIXING_SCHEDULES
from hlrs_tf.runtime.precision import SECOND_ORDER_REASON
from hlrs_tf.space.genotypes import STEPS

__all__ = ["ADDED_FLAG_DEFAULTS", "FLOAT_RANGES", "METHODS", "METHOD_PRESETS", "PAPER_METHODS", "ConfigError",
           "FloatRange", "SearchConfig", "check_floats", "float_settings", "require"]

ORDERS = ("first", "second")
CELL_IMPLS = ("fused", "direct")
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


@dataclasses.dataclass(frozen=True)
class SearchConfig(Settings):
    """Everything a search run needs: its blocks and its own settings.

    Each setting is a flag of the same name (``python -m hlrs_tf.search --helpfull``); the flat view
    (:meth:`~hlrs_tf.config.schema.Settings.create`, ``flat``, ``replace``) names settings the same way
    wherever they sit: ``SearchConfig.create(learning_rate=0.1).optimizer.learning_rate == 0.1``.
    """

    data: SearchData = block(SearchData)
    # Method (see METHOD_PRESETS): samplers, loss, BBN, HLRS
    method: str = setting(
        "darts",
        "Preset of the paper's table: darts (CE, uniform), darts_resample (class-balanced sampler for the weight "
        "step), darts_reweight (class-balanced CE, effective number), darts_bbn (BBN mixed loss), hlrs (BBN + the "
        "HLRS arch-lr schedule 'mixing'); beyond the paper: pcdarts and pcdarts_hlrs (darts and hlrs with "
        "--partial_channels=4), and darts with a long-tail loss on both levels: darts_la (logit_adjusted), "
        "darts_bsm (balanced_softmax), darts_ldam_drw (ldam, --drw_epoch=40), darts_focal (focal), darts_cb_focal "
        "(class_balanced_focal). Flags given explicitly win over the preset.", choices=METHODS)
    weight_sampler: str = setting("uniform", "Sampler of the weight-step batches.", choices=SAMPLERS)
    arch_sampler: str = setting("uniform", "Sampler of the architecture-step batches.", choices=SAMPLERS)
    objective: LossConfig = block(LossConfig)
    bbn: bool = setting(False, "BBN on the supernet: shared trunk, conventional + re-balancing branch cells, mixed "
                        "loss on both levels.")
    mixing: str = setting("parabolic", "BBN mixing factor alpha_T over the epochs.", choices=MIXING_SCHEDULES)
    arch: ArchOptimizer = block(ArchOptimizer)
    # Collapse guards (issue 18), both off by default
    max_skip_connect: int = setting(
        -1, "P-DARTS rule at derivation: the normal cell keeps at most N skip_connect edges; each extra one, weakest "
        "skip weight first, is replaced by its edge's next-best op or its node's next-best edge. Applies to every "
        "epoch's genotype and the final one; the reduction cell is not capped. -1 = off.")
    stop_on_skip: int = setting(
        0, "DARTS+ early stop: end the search after the first epoch (past --warmup_epochs) whose uncapped normal "
        "cell has >= N skip_connect edges, and keep the previous epoch's genotype. A rerun does not train on. "
        "0 = off.")
    # Search space
    channels: int = setting(16, "Initial channels C of the supernet.", lower_bound=2)
    layers: int = setting(8, "Number of cells L of the supernet.", lower_bound=3)
    init: str = setting(
        "reference", "Weight initialisation: reference (PyTorch's defaults, as the DARTS code: kaiming-uniform "
        "a=sqrt(5) for conv and dense kernels, uniform classifier bias) or keras (glorot-uniform, zero biases).",
        choices=INITS)
    cell_impl: str = setting(
        "fused", "How search cells are computed: fused (fast) or direct (one layer per candidate op, the reference "
        "form; same function, for verification).", choices=CELL_IMPLS)
    partial_channels: int = setting(
        1, "PC-DARTS' K (Xu et al. 2020): each mixed op sees 1/K of its input's channels (the rest bypass it, then "
        "a channel shuffle), and each node weights its incoming edges by softmaxed betas (architecture "
        "variables). 1 = DARTS. channels must be divisible by K.", lower_bound=1)
    # Budget and optimisation
    epochs: int = setting(50, "Search epochs.", lower_bound=1)
    batch_size: int = setting(64, "Batch size of each of the two splits.", lower_bound=1)
    steps_per_epoch: int = setting(0, "Steps per epoch; 0 = one pass over the smaller split.", lower_bound=0)
    order: str = setting("first", "DARTS approximation: first or second (unrolled) order.", choices=ORDERS)
    optimizer: WeightOptimizer = block(WeightOptimizer)
    distribution: DistributionConfig = block(DistributionConfig)
    runtime: RuntimeConfig = block(RuntimeConfig)

    def __post_init__(self):
        super().__post_init__()  # the choices above; each block checked its own settings
        require(self.order == "first" or self.runtime.precision == "float32", "precision", self.runtime.precision,
                f"float32 with --order=second ({SECOND_ORDER_REASON})")
        self.objective.check_epochs(self.epochs)
        require(self.arch.warmup_epochs < self.epochs, "warmup_epochs", self.arch.warmup_epochs,
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
            require_bbn_loss(self.objective)
        require(self.channels >= 2 and self.channels % 2 == 0, "channels", self.channels, "an even integer >= 2")
        require(self.partial_channels >= 1, "partial_channels", self.partial_channels, "an integer >= 1 (1 = DARTS)")
        require(self.channels % self.partial_channels == 0, "partial_channels", self.partial_channels,
                f"a divisor of channels={self.channels} (each mixed op works on channels // K of them; e.g. "
                f"K=4 with channels 8, 12, 16)")
        require(self.layers >= 3, "layers", self.layers, "an integer >= 3 (reductions at L//3 and 2L//3)")
        require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch, "an integer >= 0 (0 = full split)")

    @property
    def skip_cap(self) -> int | None:
        """``max_skip_connect`` as the library takes it: ``None`` when the cap is off."""
        return None if self.max_skip_connect < 0 else self.max_skip_connect

    @classmethod
    def for_method(cls, method: str, **overrides) -> SearchConfig:
        """The config of a method preset; ``overrides`` (flat names) win over the preset, the preset over
        defaults.

        Raises:
            ConfigError: On an unknown method or an invalid setting.
        """
        if method not in METHOD_PRESETS:
            raise ConfigError(f"--method={method!r} is invalid: it must be one of {', '.join(METHODS)}")
        return cls.create(**{**METHOD_PRESETS[method], "method": method, **overrides})

    @classmethod
    def from_flag_values(cls, values: dict, explicit: set) -> SearchConfig:
        """The config of parsed flags: defaults < the ``--method`` preset < the flags in ``explicit`` (given on
        the command line or in a flagfile)."""
        preset = {k: v for k, v in METHOD_PRESETS[values.get("method", "darts")].items() if k not in explicit}
        return cls.create(**{**values, **preset})


def require_bbn_loss(objective: LossConfig) -> None:
    """Refuses a loss other than BBN's own with ``--bbn`` (search and retraining alike).

    Raises:
        ConfigError: Naming ``--loss`` or ``--drw_epoch``.
    """
    require(objective.loss == "ce", "loss", objective.loss, "ce with --bbn (BBN's loss is its mixed cross-entropy)")
    require(objective.drw_epoch == 0, "drw_epoch", objective.drw_epoch,
            "0 with --bbn (BBN's loss is its mixed cross-entropy)")
