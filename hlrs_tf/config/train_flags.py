"""Command-line flags of ``hlrs_tf.train``, each defined once from the :class:`TrainConfig` defaults.

Flags come from the command line and from flagfiles (``--flagfile=configs/retrain.cfg``; flagfiles nest; later
flags win). Only the entry point :mod:`hlrs_tf.train` imports this module (absl flags are process-global, and
the search flags define some of the same names); the library receives a
:class:`~hlrs_tf.config.train.TrainConfig`.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from hlrs_tf.config.loss_flags import define_loss_flags
from hlrs_tf.config.search import INITS
from hlrs_tf.config.train import TrainConfig
from hlrs_tf.losses.bbn_mixing import MIXING_SCHEDULES
from hlrs_tf.runtime.precision import PRECISIONS

_D = TrainConfig(genotype="DARTS_V2")  # defaults live in one place: the dataclass (genotype has none)

# What to train
flags.DEFINE_string(
    "genotype", None,
    "The architecture: a preset name (DARTS_V1, DARTS_V2), a genotype JSON file, or a search work directory "
    "(its genotype.json). Required.",
)
# Data
flags.DEFINE_string(
    "dataset", _D.dataset,
    "fashion_mnist (Debian files, offline), digits (scikit-learn), cifar10, cifar100, any tfds image "
    "classification name, npz:<file.npz> (x_train, y_train, x_test, y_test) or folder:<dir>.",
)
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir (prepared datasets).")
flags.DEFINE_string(
    "manual_dir", None, "Folder holding a dataset's original archive (e.g. cifar-10-binary.tar.gz) for tfds."
)
flags.DEFINE_string("fashion_mnist_dir", _D.fashion_mnist_dir, "Folder of the Fashion-MNIST IDX .gz files.")
flags.DEFINE_float(
    "imbalance_ratio", _D.imbalance_ratio,
    "N_max / N_min of the long-tailed training set (1 = keep the data as it is); the test set stays balanced.",
    lower_bound=1.0,
)
flags.DEFINE_float(
    "holdout_fraction", _D.holdout_fraction,
    "Share of each class of the long-tailed training set held out of training (stratified, seeded by --seed), "
    "the validation split on which `python -m hlrs_tf.post_hoc` chooses tau; 0 = train on everything.",
)
flags.DEFINE_bool("augment", _D.augment, "Random crop + horizontal flip (as the reference).")
flags.DEFINE_bool("cutout", _D.cutout, "Cutout: zero one square per training image after normalisation.")
flags.DEFINE_integer(
    "cutout_length", _D.cutout_length, "Cutout side in pixels; 0 = 16 scaled to the image (16 at 32x32).",
    lower_bound=0,
)
# Network
flags.DEFINE_integer("channels", _D.channels, "Initial channels C of the derived network.", lower_bound=2)
flags.DEFINE_integer("layers", _D.layers, "Number of cells.", lower_bound=3)
flags.DEFINE_bool("auxiliary", _D.auxiliary, "Auxiliary head after cell 2L//3 (training only).")
flags.DEFINE_float("auxiliary_weight", _D.auxiliary_weight, "Weight of the auxiliary loss.")
flags.DEFINE_float("drop_path_prob", _D.drop_path_prob, "Drop-path probability reached at the last epoch "
                   "(ramped linearly from 0).")
flags.DEFINE_bool("bbn", _D.bbn, "BBN head: the last cell as conventional and re-balancing branches on the "
                  "shared trunk, mixed loss (for a BBN-searched genotype).")
flags.DEFINE_enum("mixing", _D.mixing, list(MIXING_SCHEDULES), "BBN mixing factor alpha_T over the epochs.")
flags.DEFINE_enum(
    "init", _D.init, list(INITS),
    "Weight initialisation: reference (PyTorch's defaults, as the DARTS code: kaiming-uniform a=sqrt(5) for "
    "conv and dense kernels, uniform classifier bias) or keras (glorot-uniform, zero biases).",
)
# Loss: the search's choices and semantics (hlrs_tf.losses.long_tail), on the main and the auxiliary logits.
define_loss_flags(_D, __name__)
# Optimisation
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", _D.batch_size, "Batch size.", lower_bound=1)
flags.DEFINE_integer(
    "steps_per_epoch", _D.steps_per_epoch, "Steps per epoch; 0 = one pass over the training set.", lower_bound=0
)
flags.DEFINE_float("learning_rate", _D.learning_rate, "Initial learning rate (SGD, cosine decay per step).")
flags.DEFINE_float("learning_rate_min", _D.learning_rate_min, "Final learning rate of the cosine decay.")
flags.DEFINE_float("momentum", _D.momentum, "SGD momentum.")
flags.DEFINE_float("weight_decay", _D.weight_decay, "Coupled L2 on all weights.")
flags.DEFINE_float("grad_clip", _D.grad_clip, "Global-norm clip of the gradient.")
# Run
flags.DEFINE_integer("validation_freq", _D.validation_freq,
                     "Evaluate on the test set every N epochs (val_* columns); 0 = only at the end.", lower_bound=0)
flags.DEFINE_integer("seed", _D.seed, "Seed of the long-tail subsampling, the data order, augmentation and init.")
flags.DEFINE_bool("deterministic", _D.deterministic, "TensorFlow op determinism (slower).")
flags.DEFINE_enum(
    "precision", _D.precision, list(PRECISIONS),
    "Keras dtype policy of the network: float32, or mixed precision (bfloat16 / float16 compute, float32 "
    "variables, BN statistics, logits, loss and optimizer state; mixed_float16 with loss scaling). model.keras "
    "keeps the policy; hlrs_tf.export always writes float32.",
)
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Batch size of the test-set evaluation.", lower_bound=1)
flags.DEFINE_integer("verbose", _D.verbose, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
flags.DEFINE_integer("threads", _D.threads, "TensorFlow intra/inter-op threads (0 = default).", lower_bound=0)
flags.DEFINE_string("workdir", None, "Run directory; default: a new folder under runs/. Rerunning the same "
                    "command on it resumes from the last complete epoch.")
flags.DEFINE_bool("dry_run", False, "Build the model, write flags.cfg and model_summary.json, train nothing.")

FLAGS = flags.FLAGS
# Flags that describe where/whether to run rather than what: left out of a run's flags.cfg.
_NOT_SAVED = ("workdir", "dry_run")


def config_from_flags(flag_values=FLAGS) -> TrainConfig:
    """Builds the typed config from parsed flags (raises ``ConfigError`` naming a bad flag)."""
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(TrainConfig)}
    values["genotype"] = values["genotype"] or ""
    return TrainConfig(**values)


def effective_flags(flag_values=FLAGS) -> str:
    """The effective flags as flagfile text (one ``--name=value`` per line), usable again as ``--flagfile``."""
    lines = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in _NOT_SAVED:
            continue
        flag = flag_values[field.name]
        if flag.value is None:
            continue
        lines.append(flag.serialize())
    return "\n".join(lines) + "\n"
