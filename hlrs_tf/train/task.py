"""Retrains a derived genotype from scratch, from a :class:`~hlrs_tf.config.train.TrainConfig`, into a work
directory (the DARTS evaluation protocol, on the long-tailed training set).

Data flows one way: config -> genotype + data (long-tailed training set, balanced test set, crop/flip/cutout)
-> :class:`~hlrs_tf.space.derived_network.DerivedNetwork` in a :class:`~hlrs_tf.train.model.RetrainModel` ->
``fit`` with the logging callbacks -> test-set evaluation -> ``model.keras``. The steps are the search's, in one
skeleton (:func:`hlrs_tf.runtime.run.drive`); :class:`RetrainTask` fills them in.

Work directory (the search's contract, :mod:`hlrs_tf.runtime.workdir`, plus the model)::

    flags.cfg             effective flags, usable again as --flagfile
    model_summary.json    parameter counts (PyTorch-style; with and without the auxiliary head), data (the class
                          counts trained on and, with --holdout_fraction, held out), setup
    genotype.json         the genotype trained (a copy; a resume checks it is the same)
    normal.png reduce.png cell diagrams
    history.csv           one row per epoch: loss, accuracy, aux_loss, lr, drop_path_prob (bbn_alpha, drw_active,
                          val_*)
    tensorboard/          the same scalars, the genotype and the diagrams
    checkpoints/          per-epoch state: rerunning the same command resumes after the last complete epoch
    metrics.json          test top-1, per-class, many/medium/few-shot accuracy
    class_counts.json     class counts and priors of the long-tailed training set, and the loss' constants
    model.keras           the trained network (inference; self-describing: dataset, mean/std, class names)

The library never reads absl flags.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf

from hlrs_tf.config.train import ADDED_FLAG_DEFAULTS, TrainConfig
from hlrs_tf.data.long_tail import class_counts, holdout_split
from hlrs_tf.data.long_tail_metrics import evaluation_report
from hlrs_tf.data.pipeline import cutout_length_for, eval_dataset, retrain_dataset, retrain_steps_per_epoch
from hlrs_tf.data.sources import load_long_tailed
from hlrs_tf.data.spec import ArrayDataset, DatasetSpec
from hlrs_tf.losses.long_tail import DRWSchedule, LossSpec
from hlrs_tf.runtime import precision
from hlrs_tf.runtime.callbacks import CSVHistory, EpochCheckpoint, LearningRateLogger, TensorBoardWriter
from hlrs_tf.runtime.cli import onednn_enabled
from hlrs_tf.runtime.devices import configure_devices, set_thread_pools, visible_devices
from hlrs_tf.runtime.diagrams import plot_genotype
from hlrs_tf.runtime.optimizers import weight_optimizer
from hlrs_tf.runtime.run import RunData, drive
from hlrs_tf.runtime.workdir import (
    Workdir,
    WorkdirLock,
    atomic_write_json,
)
from hlrs_tf.space.derived_network import DerivedNetwork
from hlrs_tf.space.genotypes import Genotype, GenotypeError, get_genotype
from hlrs_tf.space.init import apply_init
from hlrs_tf.train.callbacks import DropPathSchedule, GenotypeCard, MixingSchedule
from hlrs_tf.train.model import RetrainModel

__all__ = ["MODEL_FILENAME", "RetrainResult", "RetrainTask", "build_network", "build_model", "run_retrain",
           "save_network"]

#: File name of the trained network in a train work directory.
MODEL_FILENAME = "model.keras"

@dataclasses.dataclass
class RetrainResult:
    """What a finished retraining returns (everything is also in the work directory)."""

    workdir: str
    genotype: Genotype
    metrics: dict | None
    history: dict


def configure_runtime(config: TrainConfig) -> None:
    """Devices (memory growth on every GPU TensorFlow lists: :func:`hlrs_tf.runtime.devices.configure_devices`), thread
    counts and seeds (call before building anything). Retraining has no CPU-only thread or grappler settings:
    ``config.runtime.threads`` sets both pools on any device."""
    devices = configure_devices()
    set_thread_pools(config.runtime.threads)
    precision.warn_if_slow(config.runtime.precision, devices.cpu_only)  # e.g. bfloat16 emulated on an AVX2-only CPU
    keras.utils.set_random_seed(config.runtime.seed)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()


def spec_metadata(spec: DatasetSpec) -> dict:
    """The dataset facts a deployed model needs, kept in the network's config (and so in ``model.keras``)."""
    return {
        "dataset": spec.name,
        "image_shape": [int(d) for d in spec.image_shape],
        "num_classes": int(spec.num_classes),
        "mean": [float(m) for m in spec.mean],
        "std": [float(s) for s in spec.std],
        "class_names": list(spec.class_names) if spec.class_names else None,
    }


def build_network(config: TrainConfig, genotype: Genotype, spec: DatasetSpec) -> DerivedNetwork:
    """Builds the derived network for a dataset (all sub-layers built, auxiliary head and branches included) and
    initialises it as ``config.init`` says (:func:`hlrs_tf.space.init.apply_init`)."""
    network = DerivedNetwork(
        genotype, config.channels, spec.num_classes, config.layers, auxiliary=config.auxiliary, bbn=config.bbn,
        metadata=spec_metadata(spec), name="derived_network",
        dtype=config.runtime.precision,  # hlrs_tf.runtime.precision
    )
    network.build((None, *spec.image_shape))
    # Once built (the initialiser needs the fans), before any checkpoint is restored over it (run_retrain).
    apply_init(network, config.init, config.runtime.seed)
    return network


def build_model(config: TrainConfig, network: DerivedNetwork, spec: DatasetSpec,
                total_steps: int, class_counts=None) -> RetrainModel:
    """Wraps, compiles and builds the training model: SGD + momentum, cosine decay per step over the run, the
    loss of ``config.objective.loss`` from ``class_counts`` (the long-tailed training set's; equal counts if
    omitted)."""
    model = RetrainModel(
        network, auxiliary_weight=config.auxiliary_weight, weight_decay=config.optimizer.weight_decay,
        grad_clip=config.optimizer.grad_clip, loss=LossSpec.for_run(config.objective, spec.num_classes, class_counts),
        name="retrain",
    )
    # mixed_float16: in a LossScaleOptimizer; the train step unscales before clipping.
    model.compile(optimizer=weight_optimizer(config.optimizer, total_steps, config.runtime.precision))
    model.build_all(spec.image_shape)
    return model


def model_summary(network: DerivedNetwork, config: TrainConfig, spec: DatasetSpec, **extra) -> dict:
    """The ``model_summary.json`` content."""
    return {
        **network.parameter_counts(),
        "genotype": network.genotype.to_dict(),
        "dataset": spec.name,
        "input_shape": list(spec.image_shape),
        "num_classes": spec.num_classes,
        "channels": config.channels,
        "layers": config.layers,
        "auxiliary": config.auxiliary,
        "bbn": config.bbn,
        "precision": precision.policy_name(network),  # the network's dtype policy (--precision)
        "onednn": onednn_enabled(),  # which CPU kernels ran (hlrs_tf.runtime.cli.prepare_process)
        "devices": visible_devices().names(),  # GPU names or ["cpu"] (hlrs_tf.runtime.devices)
        **extra,
    }


def save_network(network: DerivedNetwork, path: str) -> None:
    """Saves the network as ``.keras`` atomically (a temporary ``.keras`` in the same folder, then renamed)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp.keras")
    try:
        network.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_retrain(config: TrainConfig, workdir: str, flags_text: str | None = None,
                dry_run: bool = False) -> RetrainResult:
    """Retrains ``config.genotype`` and writes the work directory (see the module docstring).

    Args:
        config: The run config.
        workdir: Work directory path (created). Rerunning on it resumes after the last complete epoch. Locked
            for the whole run (:class:`~hlrs_tf.runtime.workdir.WorkdirLock`, ``dry_run`` included).
        flags_text: Effective flags to save as ``flags.cfg`` (the CLI passes them).
        dry_run: Build the network, write ``flags.cfg`` and ``model_summary.json``, train nothing.

    Returns:
        A :class:`RetrainResult`.

    Raises:
        GenotypeError: unknown preset, missing or invalid genotype file, or a workdir of another genotype.
        hlrs_tf.data.spec.DatasetError: the dataset cannot be loaded.
        ValueError: a workdir holding a checkpointed run with other flags
            (:func:`hlrs_tf.runtime.workdir.check_same_run`), or e.g. a batch size larger than the training set (the
            message names the flag).
        hlrs_tf.runtime.callbacks.CheckpointError: a checkpoint that cannot be restored.
        hlrs_tf.runtime.workdir.WorkdirInUseError: another process is using ``workdir``.
    """
    genotype = get_genotype(config.genotype)
    with WorkdirLock(workdir):
        wd = Workdir(workdir)
        configure_runtime(config)
        return drive(RetrainTask(config, genotype), wd, flags_text, dry_run)


class RetrainTask:
    """A retraining, for :func:`hlrs_tf.runtime.run.drive`.

    Args:
        config: The run config.
        genotype: The genotype to train (``config.genotype`` resolved).
    """

    added_flag_defaults = ADDED_FLAG_DEFAULTS

    def __init__(self, config: TrainConfig, genotype: Genotype):
        self.config, self.genotype = config, genotype
        self.diagrams: dict = {}

    def check_resume(self, wd: Workdir) -> None:
        """A resume must train the genotype the checkpoints belong to."""
        if not wd.has_checkpoint or not os.path.exists(wd.genotype_file):
            return
        previous = Genotype.load(wd.genotype_file)
        if previous != self.genotype:
            raise GenotypeError(
                f"{wd.path} holds checkpoints of another genotype ({wd.genotype_file}); "
                "use a new --workdir to train this one"
            )

    def result(self, wd: Workdir) -> RetrainResult:
        return RetrainResult(wd.path, self.genotype, None, {})

    def dry_run_summary(self, spec) -> dict:
        return model_summary(build_network(self.config, self.genotype, spec), self.config, spec)

    def load_data(self, wd: Workdir) -> RunData:
        config = self.config
        # Before anything is built or written: a class left without a training image is refused from the counts.
        ds, x_lt, y_lt = load_long_tailed(config.data, config.runtime.seed)
        spec = ds.spec
        (x_lt, y_lt), holdout = holdout_split(x_lt, y_lt, config.data.holdout_fraction, config.runtime.seed)
        train_counts = class_counts(y_lt, spec.num_classes)
        holdout_counts = {} if holdout is None else {
            "holdout_class_counts": class_counts(holdout[1], spec.num_classes).tolist()}
        steps = config.steps_per_epoch or retrain_steps_per_epoch(len(y_lt), config.batch_size)
        cutout = cutout_length_for(spec.image_shape, config.data.cutout_length) if config.data.cutout else 0
        self.genotype.save(wd.genotype_file)
        self.diagrams = plot_genotype(self.genotype, wd.path)
        summary = {"train_class_counts": train_counts.tolist(), **holdout_counts, "num_train": int(len(y_lt)),
                   "steps_per_epoch": steps, "cutout_length": cutout}
        return RunData(train_counts, steps, summary, {"dataset": ds, "train": (x_lt, y_lt), "cutout": cutout})

    def build_model(self, data: RunData) -> RetrainModel:
        spec = data.extra["dataset"].spec
        network = build_network(self.config, self.genotype, spec)
        return build_model(self.config, network, spec, total_steps=self.config.epochs * data.steps,
                           class_counts=data.train_counts)

    def restore(self, model, wd: Workdir) -> tuple[EpochCheckpoint, int, int]:
        checkpoint = EpochCheckpoint(wd.checkpoint_dir)
        return checkpoint, min(checkpoint.restore(model), self.config.epochs), self.config.epochs

    def train_dataset(self, data: RunData, initial_epoch: int):
        config = self.config
        return retrain_dataset(
            *data.extra["train"], data.extra["dataset"].spec, config.batch_size, config.runtime.seed,
            augment=config.data.augment,
            cutout_length=data.extra["cutout"], skip_batches=initial_epoch * data.steps, bbn=config.bbn,
        )

    def model_summary(self, model, data: RunData) -> dict:
        return model_summary(model.network, self.config, data.extra["dataset"].spec)

    def callbacks(self, model, wd: Workdir, checkpoint: EpochCheckpoint, data: RunData,
                  initial_epoch: int) -> tuple[list, dict]:
        config, ds = self.config, data.extra["dataset"]
        callbacks = [DropPathSchedule(config.drop_path_prob, config.epochs)]
        if config.bbn:
            callbacks.append(MixingSchedule(config.mixing, config.epochs))
        if config.objective.drw_epoch:
            callbacks.append(DRWSchedule(config.objective.drw_epoch))  # DRW's weights, logged as drw_active
        callbacks += [
            LearningRateLogger(),
            TensorBoardWriter(wd.tensorboard_dir, [GenotypeCard(self.genotype, self.diagrams)]),
            # RetrainModel.test_step's metrics: the val_* columns exist from the first epoch on.
            CSVHistory(wd.history_file, validation_metrics=("accuracy", "loss") if config.validation_freq else (),
                       append=initial_epoch > 0),
            checkpoint,
        ]
        fit_kwargs = {}
        if config.validation_freq:
            fit_kwargs = dict(
                validation_data=eval_dataset(ds.x_test, ds.y_test, ds.spec, config.runtime.eval_batch_size),
                validation_freq=config.validation_freq,
            )
        return callbacks, fit_kwargs

    def finish(self, model, wd: Workdir, data: RunData, history) -> RetrainResult:
        metrics = evaluate(model, data.extra["dataset"], data.train_counts, self.config)
        atomic_write_json(wd.metrics_file, metrics)
        save_network(model.network, wd.file(MODEL_FILENAME))
        return RetrainResult(wd.path, self.genotype, metrics, history.history)


def evaluate(model: RetrainModel, ds: ArrayDataset, train_counts, config: TrainConfig) -> dict:
    """Balanced test-set evaluation: top-1, per-class and many/medium/few-shot accuracy."""
    test = eval_dataset(ds.x_test, ds.y_test, ds.spec, config.runtime.eval_batch_size)
    logits = model.predict(test, verbose=0)
    return evaluation_report(
        ds.y_test, logits, train_counts, ds.spec.num_classes,
        dataset=ds.spec.name, imbalance_ratio=config.data.imbalance_ratio, genotype=config.genotype,
        channels=config.channels, layers=config.layers, epochs=config.epochs, bbn=config.bbn,
    )
