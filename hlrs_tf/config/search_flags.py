"""Command-line flags of ``hlrs_tf.search``, each defined once, and their conversion to a typed config.

Flags come from the command line and from flagfiles (``--flagfile=configs/lt.cfg``; a flagfile may contain
``--flagfile=...`` lines, so configs nest; later flags win). Only the entry points import this module; the
library receives a :class:`~hlrs_tf.config.search.SearchConfig`.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from hlrs_tf.config.choices import STRATEGIES
from hlrs_tf.config.loss_flags import define_loss_flags
from hlrs_tf.config.search import CELL_IMPLS, INITS, METHOD_PRESETS, METHODS, ORDERS, SearchConfig
from hlrs_tf.data.samplers import SAMPLERS
from hlrs_tf.losses.bbn_mixing import MIXING_SCHEDULES
from hlrs_tf.runtime.precision import PRECISIONS
from hlrs_tf.search.schedules import ARCH_LR_SCHEDULES

_D = SearchConfig()  # defaults live in one place: the dataclass

# Data
flags.DEFINE_string(
    "dataset", _D.dataset,
    "fashion_mnist (Debian files, offline), digits (scikit-learn), cifar10, cifar100, any tfds image "
    "classification name, npz:<file.npz> (x_train, y_train, x_test, y_test) or folder:<dir> (one sub-folder "
    "per class).",
)
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir (prepared datasets).")
flags.DEFINE_string(
    "manual_dir", None, "Folder holding a dataset's original archive (e.g. cifar-10-binary.tar.gz) for tfds."
)
flags.DEFINE_string("fashion_mnist_dir", _D.fashion_mnist_dir, "Folder of the Fashion-MNIST IDX .gz files.")
flags.DEFINE_float(
    "imbalance_ratio", _D.imbalance_ratio,
    "N_max / N_min of the long-tailed training set (1 = keep the data as it is).", lower_bound=1.0,
)
flags.DEFINE_float("train_portion", _D.train_portion, "Share of the training set used for the weights "
                   "(the rest trains the architecture); split stratified per class.")
flags.DEFINE_bool("augment", _D.augment, "Random crop + flip on both search splits (as the reference).")
# Method: presets of the pieces below (docs/method.md M7); explicit flags override the preset.
flags.DEFINE_enum(
    "method", _D.method, list(METHODS),
    "Preset of the paper's table: darts (CE, uniform), darts_resample (class-balanced sampler for the weight "
    "step), darts_reweight (class-balanced CE, effective number), darts_bbn (BBN mixed loss), hlrs (BBN + the "
    "HLRS arch-lr schedule 'mixing'); beyond the paper: pcdarts and pcdarts_hlrs (darts and hlrs with "
    "--partial_channels=4), and darts with a long-tail loss on both levels: darts_la (logit_adjusted), darts_bsm "
    "(balanced_softmax), darts_ldam_drw (ldam, --drw_epoch=40), darts_focal (focal), darts_cb_focal "
    "(class_balanced_focal). Flags given explicitly win over the preset.",
)
flags.DEFINE_enum("weight_sampler", _D.weight_sampler, list(SAMPLERS),
                  "Sampler of the weight-step batches (preset by --method).")
flags.DEFINE_enum("arch_sampler", _D.arch_sampler, list(SAMPLERS),
                  "Sampler of the architecture-step batches (preset by --method).")
define_loss_flags(_D, __name__, preset=" (preset by --method)")
flags.DEFINE_bool("bbn", _D.bbn, "BBN on the supernet: shared trunk, conventional + re-balancing branch cells, "
                  "mixed loss on both levels (preset by --method).")
flags.DEFINE_enum("mixing", _D.mixing, list(MIXING_SCHEDULES), "BBN mixing factor alpha_T over the epochs.")
flags.DEFINE_enum(
    "arch_lr_schedule", _D.arch_lr_schedule, list(ARCH_LR_SCHEDULES),
    "HLRS: architecture lr per epoch: constant (DARTS), mixing (eta0 * alpha_T), parabolic, cosine, linear, "
    "freeze (eta0 until alpha_T < --freeze_threshold, then 0). Preset by --method.",
)
flags.DEFINE_float("freeze_threshold", _D.freeze_threshold, "alpha_T below which 'freeze' stops the alphas.")
flags.DEFINE_integer("warmup_epochs", _D.warmup_epochs,
                     "First K epochs with architecture lr 0 (weights warm up, alphas frozen; PC-DARTS: 15 of 50).")
# Collapse guards (issue 18)
flags.DEFINE_integer(
    "max_skip_connect", _D.max_skip_connect,
    "P-DARTS rule at derivation: the normal cell keeps at most N skip_connect edges; each extra one, weakest skip "
    "weight first, is replaced by its edge's next-best op or its node's next-best edge. Applies to every "
    "epoch's genotype and the final one; the reduction cell is not capped. -1 = off.",
)
flags.DEFINE_integer(
    "stop_on_skip", _D.stop_on_skip,
    "DARTS+ early stop: end the search after the first epoch (past --warmup_epochs) whose uncapped normal cell "
    "has >= N skip_connect edges, and keep the previous epoch's genotype. A rerun does not train on. 0 = off.",
)
# Search space
flags.DEFINE_integer("channels", _D.channels, "Initial channels C of the supernet.", lower_bound=2)
flags.DEFINE_integer("layers", _D.layers, "Number of cells L of the supernet.", lower_bound=3)
flags.DEFINE_enum(
    "init", _D.init, list(INITS),
    "Weight initialisation: reference (PyTorch's defaults, as the DARTS code: kaiming-uniform a=sqrt(5) for "
    "conv and dense kernels, uniform classifier bias) or keras (glorot-uniform, zero biases).",
)
flags.DEFINE_integer(
    "partial_channels", _D.partial_channels,
    "PC-DARTS' K (Xu et al. 2020): each mixed op sees 1/K of its input's channels (the rest bypass it, then a "
    "channel shuffle), and each node weights its incoming edges by softmaxed betas (architecture variables). "
    "1 = DARTS. channels must be divisible by K. Preset to 4 by --method=pcdarts / pcdarts_hlrs.",
    lower_bound=1,
)
# Optimisation
flags.DEFINE_integer("epochs", _D.epochs, "Search epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", _D.batch_size, "Batch size of each of the two splits.", lower_bound=1)
flags.DEFINE_integer(
    "steps_per_epoch", _D.steps_per_epoch, "Steps per epoch; 0 = one pass over the smaller split.", lower_bound=0
)
flags.DEFINE_enum(
    "cell_impl", _D.cell_impl, list(CELL_IMPLS),
    "How search cells are computed: fused (fast) or direct (one layer per candidate op, the reference form; "
    "same function, for verification).",
)
flags.DEFINE_enum("order", _D.order, list(ORDERS), "DARTS approximation: first or second (unrolled) order.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Initial weight learning rate (SGD, cosine decay).")
flags.DEFINE_float("learning_rate_min", _D.learning_rate_min, "Final weight learning rate of the cosine decay.")
flags.DEFINE_float("momentum", _D.momentum, "SGD momentum.")
flags.DEFINE_float("weight_decay", _D.weight_decay, "Coupled L2 on the weights.")
flags.DEFINE_float("grad_clip", _D.grad_clip, "Global-norm clip of the weight gradient.")
flags.DEFINE_float("arch_learning_rate", _D.arch_learning_rate, "Adam learning rate of the alphas.")
flags.DEFINE_float("arch_beta1", _D.arch_beta1, "Adam beta_1 of the alphas.")
flags.DEFINE_float("arch_beta2", _D.arch_beta2, "Adam beta_2 of the alphas.")
flags.DEFINE_float("arch_weight_decay", _D.arch_weight_decay, "Coupled L2 on the alphas.")
# Distribution
flags.DEFINE_enum(
    "strategy", _D.strategy, list(STRATEGIES),
    "auto: multi_worker if TF_CONFIG names several workers, mirrored if there are several GPUs, else default; "
    "default: one device; mirrored: MirroredStrategy over all GPUs (or --cpu_replicas logical CPUs); "
    "multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG. --batch_size is the global batch.",
)
flags.DEFINE_integer("cpu_replicas", _D.cpu_replicas,
                     "N > 1: mirror over N logical CPU devices (testing data parallelism without GPUs).")
# Run
flags.DEFINE_integer("seed", _D.seed, "Seed of the long-tail subsampling, the split, the data order and init.")
flags.DEFINE_bool("deterministic", _D.deterministic, "TensorFlow op determinism: the same seed gives the same "
                  "genotype and history (slower). Without it runs with the same seed may differ slightly.")
flags.DEFINE_enum(
    "precision", _D.precision, list(PRECISIONS),
    "Keras dtype policy of the supernet: float32, or mixed precision (bfloat16 / float16 compute, float32 "
    "variables, alphas, BN statistics, logits, loss and optimizer state; mixed_float16 with loss scaling). "
    "bfloat16 is fast on CPUs with avx512_bf16/amx_bf16 and emulated (slower) on AVX2-only ones.",
)
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Batch size of the test-set evaluation.", lower_bound=1)
flags.DEFINE_integer("verbose", _D.verbose, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
flags.DEFINE_integer(
    "threads", _D.threads, "Cores for the search step: inter-op threads, one thread per op (0 = all cores). With a "
    "GPU: both TensorFlow thread pools (0 = TensorFlow's default).", lower_bound=0
)
flags.DEFINE_string("workdir", None, "Run directory; default: a new folder under runs/.")
flags.DEFINE_bool("dry_run", False, "Build the model and data specs, write flags.cfg and model_summary.json, "
                  "run nothing (works offline for every dataset name).")

FLAGS = flags.FLAGS
# Flags that describe where/whether to run rather than what: left out of a run's flags.cfg.
_NOT_SAVED = ("workdir", "dry_run")


def config_from_flags(flag_values=FLAGS) -> SearchConfig:
    """Builds the typed config from parsed flags: defaults < the ``--method`` preset < explicit flags.

    A flag counts as explicit when it was given on the command line or in a flagfile.

    Raises:
        ConfigError: Naming a bad flag and its allowed values.
    """
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(SearchConfig)}
    for name, value in METHOD_PRESETS[values["method"]].items():
        if not flag_values[name].present:
            values[name] = value
    return SearchConfig(**values)


def effective_flags(config: SearchConfig) -> str:
    """The effective settings of a run as flagfile text (one ``--name=value`` per line).

    Written from the config (after the method preset), so rerunning with ``--flagfile=<workdir>/flags.cfg``
    repeats the run exactly.
    """
    return config.to_flagfile(exclude=_NOT_SAVED)
