"""The blocks the search and retraining configs are made of: data, loss, weight optimiser, architecture optimiser
and its schedule, distribution, runtime.

Each block is what one part of the pipeline reads whole: :func:`hlrs_tf.data.sources.load_long_tailed` takes the
data block, :meth:`hlrs_tf.losses.long_tail.LossSpec.for_run` the loss block,
:func:`hlrs_tf.runtime.optimizers.weight_optimizer` the weight optimiser, the search's HLRS callback the
architecture optimiser, every command's process set-up the runtime block. The help text of each flag sits
beside its field (:func:`hlrs_tf.config.schema.setting`); defaults are the paper settings of docs/method.md M3.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses

from hlrs_tf.config.choices import CLASS_WEIGHT_REDUCTIONS, DRW_LOSSES, LOSSES, STRATEGIES
from hlrs_tf.config.schema import Settings, require, setting
from hlrs_tf.runtime.precision import PRECISIONS
from hlrs_tf.search.schedules import ARCH_LR_SCHEDULES, arch_learning_rate

__all__ = ["ArchOptimizer", "DataConfig", "DistributionConfig", "LossConfig", "RuntimeConfig", "SearchData",
           "TrainData", "WeightOptimizer"]


@dataclasses.dataclass(frozen=True)
class DataConfig(Settings):
    """Where the images come from and how the long-tailed training set is drawn (search, retraining, post-hoc)."""

    dataset: str = setting(
        "cifar10",
        "fashion_mnist (Debian files, offline), digits (scikit-learn), cifar10, cifar100, any tfds image "
        "classification name, npz:<file.npz> (x_train, y_train, x_test, y_test) or folder:<dir> (one sub-folder "
        "per class).")
    data_dir: str | None = setting(None, "tensorflow-datasets data_dir (prepared datasets).")
    manual_dir: str | None = setting(
        None, "Folder holding a dataset's original archive (e.g. cifar-10-binary.tar.gz) for tfds.")
    fashion_mnist_dir: str = setting("/usr/share/datasets/fashion-mnist", "Folder of the Fashion-MNIST IDX .gz files.")
    imbalance_ratio: float = setting(
        100.0, "N_max / N_min of the long-tailed training set (1 = keep the data as it is); the test set stays "
        "balanced.", lower_bound=1.0)
    augment: bool = setting(True, "Random crop + horizontal flip of the training images, as the reference (in the "
                            "search, on both splits).")


@dataclasses.dataclass(frozen=True)
class SearchData(DataConfig):
    """The data of a search: the long-tailed set split per class into a weight and an architecture split."""

    train_portion: float = setting(0.5, "Share of the training set used for the weights (the rest trains the "
                                   "architecture); split stratified per class.")


@dataclasses.dataclass(frozen=True)
class TrainData(DataConfig):
    """The data of a retraining: a held-out share for post-hoc calibration, and cutout."""

    holdout_fraction: float = setting(
        0.0, "Share of each class of the long-tailed training set held out of training (stratified, seeded by "
        "--seed), the validation split on which `python -m hlrs_tf.post_hoc` chooses tau; 0 = train on "
        "everything.")
    cutout: bool = setting(True, "Cutout: zero one square per training image after normalisation.")
    cutout_length: int = setting(0, "Cutout side in pixels; 0 = 16 scaled to the image (16 at 32x32).", lower_bound=0)

    def __post_init__(self):
        super().__post_init__()
        require(self.cutout_length >= 0, "cutout_length", self.cutout_length,
                "an integer >= 0 (0 = 16 scaled to the image size)")


@dataclasses.dataclass(frozen=True)
class LossConfig(Settings):
    """The training loss (:mod:`hlrs_tf.losses.long_tail`): the same choices and meaning in search and retraining.

    Whether DRW's epoch lies inside the run is the composing config's check (it knows ``epochs``).
    """

    loss: str = setting(
        "ce",
        "ce; class_balanced (CE weighted by the effective number of samples); logit_adjusted (Menon et al.: "
        "CE(z + tau log prior)); balanced_softmax (Ren et al.: CE(z + log n)); ldam (Cao et al.: margins "
        "0.5 n^-1/4 / max, scale 30; with --drw_epoch for LDAM-DRW); focal (Lin et al.: (1 - p_t)^gamma CE); "
        "class_balanced_focal (focal weighted by the effective number). Priors and counts are the long-tailed "
        "training split's, saved to class_counts.json.", choices=LOSSES)
    reweight_beta: float = setting(
        0.9999, "beta of the effective number (class_balanced, class_balanced_focal, DRW weights).")
    class_weight_reduction: str = setting(
        "weighted_mean",
        "Reduction of the class-weighted losses (and DRW): weighted_mean, sum(w_y l) / sum(w_y) over the batch "
        "(LDAM-DRW's F.cross_entropy(weight=w); the step size does not depend on the batch's mean weight), or "
        "batch_mean, sum(w_y l) / batch size (Cui et al.'s TF code; at ratio 100 about 5.8x smaller steps than "
        "plain CE).", choices=CLASS_WEIGHT_REDUCTIONS)
    la_tau: float = setting(1.0, "tau of --loss=logit_adjusted (0 = plain CE).")
    focal_gamma: float = setting(2.0, "gamma of --loss=focal / class_balanced_focal (0 = plain / class-balanced CE).")
    drw_epoch: int = setting(
        0, f"DRW (deferred re-weighting, LDAM-DRW) for --loss={', '.join(DRW_LOSSES)}: unweighted before this "
        "0-based epoch, effective-number weights (--reweight_beta) from it on; 0 = no DRW. Logged as drw_active.",
        lower_bound=0)

    def check_epochs(self, epochs: int) -> None:
        """Refuses a DRW epoch outside a run of ``epochs`` epochs, or DRW on a loss it cannot re-weight.

        Raises:
            ConfigError: Naming ``--drw_epoch`` and the allowed values.
        """
        require(0 <= self.drw_epoch < epochs, "drw_epoch", self.drw_epoch,
                f"an integer in [0, epochs={epochs}) (0 = no DRW; DRW weights from this 0-based epoch on)")
        require(self.drw_epoch == 0 or self.loss in DRW_LOSSES, "drw_epoch", self.drw_epoch,
                f"0 with --loss={self.loss} (DRW re-weights --loss={', '.join(DRW_LOSSES)}; the other losses "
                f"are already class-weighted or class-adjusted)")


@dataclasses.dataclass(frozen=True)
class WeightOptimizer(Settings):
    """SGD with momentum on the network weights, its learning rate decayed by a per-step cosine
    (:func:`hlrs_tf.runtime.optimizers.weight_optimizer`), coupled weight decay and a global-norm clip."""

    learning_rate: float = setting(0.025, "Initial weight learning rate (SGD, cosine decay per step).")
    learning_rate_min: float = setting(0.001, "Final weight learning rate of the cosine decay.")
    momentum: float = setting(0.9, "SGD momentum.")
    weight_decay: float = setting(3e-4, "Coupled L2 on the weights.")
    grad_clip: float = setting(5.0, "Global-norm clip of the weight gradient.")


@dataclasses.dataclass(frozen=True)
class ArchOptimizer(Settings):
    """The architecture optimiser (Adam on the alphas, and the betas of PC-DARTS) and its per-epoch learning rate.

    The one owner of the architecture learning rate: the search's optimiser starts at ``arch_learning_rate``
    and :class:`hlrs_tf.search.callbacks.HLRSCallback` sets it each epoch to :meth:`lr` (HLRS,
    :mod:`hlrs_tf.search.schedules`).
    """

    arch_learning_rate: float = setting(3e-4, "Adam learning rate of the alphas (eta_a0 of the HLRS schedules).")
    arch_beta1: float = setting(0.5, "Adam beta_1 of the alphas.")
    arch_beta2: float = setting(0.999, "Adam beta_2 of the alphas.")
    arch_weight_decay: float = setting(1e-3, "Coupled L2 on the alphas.")
    arch_lr_schedule: str = setting(
        "constant",
        "HLRS: architecture lr per epoch: constant (DARTS), mixing (eta0 * alpha_T), parabolic, cosine, linear, "
        "freeze (eta0 until alpha_T < --freeze_threshold, then 0).", choices=ARCH_LR_SCHEDULES)
    freeze_threshold: float = setting(0.5, "alpha_T below which 'freeze' stops the alphas.")
    warmup_epochs: int = setting(
        0, "First K epochs with architecture lr 0 (weights warm up, alphas frozen; PC-DARTS: 15 of 50).")

    def __post_init__(self):
        super().__post_init__()
        require(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "an integer >= 0")

    def lr(self, epoch: int, total_epochs: int, mixing: str = "parabolic") -> float:
        """``eta_a`` at the 0-based ``epoch`` of ``total_epochs`` (:func:`hlrs_tf.search.schedules.arch_learning_rate`;
        ``mixing`` is BBN's ``alpha_T`` schedule, which ``mixing`` and ``freeze`` follow; it validates ``mixing``)."""
        return arch_learning_rate(self.arch_lr_schedule, epoch, total_epochs, self.arch_learning_rate,
                                  mixing=mixing, freeze_threshold=self.freeze_threshold,
                                  warmup_epochs=self.warmup_epochs)


@dataclasses.dataclass(frozen=True)
class DistributionConfig(Settings):
    """Data parallelism of the search (:mod:`hlrs_tf.runtime.distribute`)."""

    strategy: str = setting(
        "auto",
        "auto: multi_worker if TF_CONFIG names several workers, mirrored if there are several GPUs, else default; "
        "default: one device; mirrored: MirroredStrategy over all GPUs (or --cpu_replicas logical CPUs); "
        "multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG. --batch_size is the global batch.",
        choices=STRATEGIES)
    cpu_replicas: int = setting(0, "N > 1: mirror over N logical CPU devices (testing data parallelism without GPUs).")

    def __post_init__(self):
        super().__post_init__()
        require(self.cpu_replicas >= 0, "cpu_replicas", self.cpu_replicas,
                "an integer >= 0 (N > 1: mirror over N logical CPU devices)")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(Settings):
    """How a run executes: seed, determinism, precision, cores, evaluation batch, verbosity."""

    seed: int = setting(0, "Seed of the long-tail subsampling, the splits, the data order, augmentation and "
                        "initialisation.")
    deterministic: bool = setting(
        False, "TensorFlow op determinism: the same seed gives the same results (slower). Without it runs with "
        "the same seed may differ slightly.")
    precision: str = setting(
        "float32",
        "Keras dtype policy of the network: float32, or mixed precision (bfloat16 / float16 compute, float32 "
        "variables, alphas, BN statistics, logits, loss and optimizer state; mixed_float16 with loss scaling). "
        "bfloat16 is fast on CPUs with avx512_bf16/amx_bf16 and emulated (slower) on AVX2-only ones. A retrained "
        "model.keras keeps the policy; hlrs_tf.export always writes float32.", choices=PRECISIONS)
    eval_batch_size: int = setting(256, "Batch size of the test-set evaluation.", lower_bound=1)
    verbose: int = setting(1, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
    threads: int = setting(
        0, "CPU cores the run uses (0 = all of them). The search on CPU runs this many ops side by side, one "
        "thread each (its supernet is thousands of small independent ops); retraining, and the search on a GPU, "
        "give both TensorFlow thread pools this many threads.", lower_bound=0)

    def __post_init__(self):
        super().__post_init__()
        require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "an integer >= 1")
        require(self.threads >= 0, "threads", self.threads, "an integer >= 0 (0 = all cores)")
