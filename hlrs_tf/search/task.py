"""Runs a DARTS search from a :class:`~hlrs_tf.config.search.SearchConfig` into a work directory.

Data flows one way: config -> data (long-tailed, stratified split, tf.data) -> supernet + bilevel model ->
``fit`` with the logging callbacks -> genotype, history, TensorBoard, checkpoints -> test-set evaluation. The
steps are the retraining's, in one skeleton (:func:`hlrs_tf.runtime.run.drive`); :class:`SearchTask` fills them in.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from hlrs_tf.config.search import ADDED_FLAG_DEFAULTS, SearchConfig
from hlrs_tf.data.long_tail import class_counts, stratified_split
from hlrs_tf.data.long_tail_metrics import balanced_accuracy, evaluation_report
from hlrs_tf.data.pipeline import eval_dataset, search_dataset, search_steps_per_epoch
from hlrs_tf.data.sources import load_long_tailed
from hlrs_tf.data.spec import ArrayDataset, DatasetSpec
from hlrs_tf.losses.long_tail import DRWSchedule, LossSpec
from hlrs_tf.runtime import precision
from hlrs_tf.runtime.callbacks import CSVHistory, EpochCheckpoint, LearningRateLogger, TensorBoardWriter
from hlrs_tf.runtime.cli import onednn_enabled
from hlrs_tf.runtime.devices import configure_devices, set_thread_pools, visible_devices
from hlrs_tf.runtime.diagrams import plot_genotype
from hlrs_tf.runtime.distribute import check_global_batch_size, make_strategy, workdir_lock, worker_workdir
from hlrs_tf.runtime.optimizers import arch_optimizer, weight_optimizer
from hlrs_tf.runtime.run import RunData, drive
from hlrs_tf.runtime.workdir import Workdir, atomic_write_json
from hlrs_tf.search.bbn import BBNSearchModel, BBNSearchNetwork
from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.search.callbacks import (
    AlphaHeatmaps,
    AlphaMovementLogger,
    GenotypeLogger,
    HLRSCallback,
    model_alpha_movement,
)
from hlrs_tf.search.collapse import SkipConnectStop, kept_genotype, load_skip_cap
from hlrs_tf.search.guards import NonFiniteLossGuard
from hlrs_tf.space.init import apply_init
from hlrs_tf.space.supernet import SearchNetwork


@dataclasses.dataclass
class SearchResult:
    """What a finished search returns (everything is also in the work directory)."""

    workdir: str
    genotype: object
    metrics: dict | None
    history: dict


def configure_threads(threads: int = 0) -> None:
    """Thread pools for the search step on CPU: ``threads`` ops side by side, each op on one thread.

    A supernet step is thousands of small, memory-bound ops with many independent branches (the candidate
    ops of every edge). Running independent ops side by side beats splitting each op across the cores:
    on 2 cores (C=16, 8 cells, batch 64) a first-order step took 5.6 s with 1 intra-op x 2 inter-op threads,
    6.3 s with TensorFlow's default (2 x 2, which oversubscribes) and 8.2 s with 2 x 1 (benchmarks/NOTES.md).
    Call before TensorFlow runs any op.

    Args:
        threads: Cores to use (inter-op threads); 0 = all of them (``os.cpu_count()``).
    """
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(threads or os.cpu_count() or 1)


def configure_graph_optimizer() -> None:
    """Switches grappler off for the search on CPU: it costs start-up and gives the step nothing there.

    Measured on the paper-size supernet (benchmarks/NOTES.md): the full grappler costs ~6 s of start-up for no
    step time. Its memory optimizer, the one pass kept before, lowered peak RSS while each pass of the step
    was traced inline; with the passes traced once (``darts_model.traced_once``) it costs 5 s (first order)
    and 20 s (second order) of start-up for the same step time; peak RSS is 5.76 GB instead of 5.64 GB (first
    order) and 7.42 GB instead of 7.54 GB (second order) without it.
    TensorFlow still inlines the nested pass functions and prunes what the step does not use without it.
    """
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def configure_runtime(config: SearchConfig) -> tf.distribute.Strategy:
    """Devices, thread counts, the distribution strategy and seeds, in the order TensorFlow needs (call first).

    The thread layout and grappler off were measured on CPU: they apply only when TensorFlow lists no GPU
    (:func:`hlrs_tf.runtime.devices.configure_devices`, which enables memory growth on the GPUs it lists). With GPUs,
    TensorFlow's own thread pools (both at ``config.runtime.threads`` when it is set) and grappler, whose layout
    optimizer and remapper serve cuDNN.

    Returns:
        The ``tf.distribute`` strategy of ``config.distribution.strategy`` (the default strategy on one device).
    """
    cpu_only = configure_devices().cpu_only
    if cpu_only:
        configure_threads(config.runtime.threads)
        configure_graph_optimizer()
    else:
        set_thread_pools(config.runtime.threads)
    precision.warn_if_slow(config.runtime.precision, cpu_only)  # e.g. bfloat16 emulated on an AVX2-only CPU
    # Before any op: splitting the CPU into logical devices and starting the collective runtime of
    # MultiWorkerMirroredStrategy both need TensorFlow's devices not yet initialised.
    strategy = make_strategy(config.distribution.strategy, config.distribution.cpu_replicas)
    check_global_batch_size(config.batch_size, strategy)
    keras.utils.set_random_seed(config.runtime.seed)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    return strategy


def build_model(config: SearchConfig, spec: DatasetSpec, total_steps: int,
                class_counts=None) -> DartsSearchModel:
    """Builds and compiles the bilevel search model (both optimizers built, nothing left to trace twice).

    Args:
        config: The run config (``bbn`` picks the BBN supernet and loss, ``loss`` the loss of both levels).
        spec: Dataset spec (input shape, classes).
        total_steps: Weight steps of the whole search (length of the cosine schedule).
        class_counts: Training examples per class, the loss' priors and counts
            (:meth:`~hlrs_tf.losses.long_tail.LossSpec.for_run`).
    """
    common = dict(
        order=config.order,
        weight_decay=config.optimizer.weight_decay,
        arch_weight_decay=config.arch.arch_weight_decay,
        grad_clip=config.optimizer.grad_clip,
    )
    if config.bbn:
        network = BBNSearchNetwork(
            config.channels, spec.num_classes, config.layers, cell_impl=config.cell_impl, name="bbn_supernet",
            dtype=config.runtime.precision, partial_channels=config.partial_channels,
        )
        model = BBNSearchModel(network, name="bbn_search", **common)
    else:
        network = SearchNetwork(
            config.channels, spec.num_classes, config.layers, cell_impl=config.cell_impl, name="supernet",
            # The network's dtype policy (hlrs_tf.runtime.precision); the wrapper stays float32.
            dtype=config.runtime.precision,
            partial_channels=config.partial_channels,
        )
        model = DartsSearchModel(network, loss=LossSpec.for_run(config.objective, spec.num_classes, class_counts),
                                 name="darts_search", **common)
    # mixed_float16: both in a LossScaleOptimizer, which delegates the arch lr that HLRS sets per epoch.
    model.compile(optimizer=weight_optimizer(config.optimizer, total_steps, config.runtime.precision),
                  arch_optimizer=arch_optimizer(config.arch, config.runtime.precision))
    model.build_all(spec.image_shape)
    # Once built (the initialiser needs the fans), before any checkpoint is restored over it (run_search).
    apply_init(network, config.init, config.runtime.seed)
    return model


def model_summary(model: DartsSearchModel, spec: DatasetSpec, config: SearchConfig, **extra) -> dict:
    """The ``model_summary.json`` content."""
    weights, alphas = model.split_variables()
    count = lambda vs: int(sum(np.prod(v.shape) for v in vs))  # noqa: E731
    return {
        "weight_params": count(weights),
        "arch_params": count(alphas),
        "non_trainable_params": count(model.non_trainable_variables),
        "dataset": spec.name,
        "input_shape": list(spec.image_shape),
        "num_classes": spec.num_classes,
        "channels": config.channels,
        "layers": config.layers,
        "order": config.order,
        "cell_impl": config.cell_impl,
        "partial_channels": config.partial_channels,
        "method": config.method,
        "bbn": config.bbn,
        "loss": config.objective.loss,
        "weight_sampler": config.weight_sampler,
        "arch_sampler": config.arch_sampler,
        "mixing": config.mixing,
        "arch_lr_schedule": config.arch.arch_lr_schedule,
        "precision": precision.policy_name(model.network),  # the network's dtype policy (--precision)
        "onednn": onednn_enabled(),  # which CPU kernels ran: timings differ ~2x (hlrs_tf.runtime.cli.prepare_process)
        "devices": visible_devices().names(),  # GPU names or ["cpu"] (hlrs_tf.runtime.devices)
        **extra,
    }


def run_search(
    config: SearchConfig, workdir: str, flags_text: str | None = None, dry_run: bool = False
) -> SearchResult:
    """Runs one search and writes its work directory.

    Args:
        config: The run config.
        workdir: Work directory path (created).
        flags_text: Effective flags to save as ``flags.cfg`` (the CLI passes them).
        dry_run: Build model and data specs, write ``flags.cfg`` and ``model_summary.json``, run nothing.

    Under a ``tf.distribute`` strategy (``config.distribution.strategy``) the model, both optimizers and ``fit``
    live in its scope, ``config.batch_size`` is the global batch, and only the chief writes ``workdir``; other workers
    write into a temporary directory and resume from the chief's checkpoints (a shared file system).

    The chief holds ``workdir``'s lock for the whole run, ``dry_run`` included
    (:func:`hlrs_tf.runtime.distribute.workdir_lock`): a second run on the same folder is refused before anything.

    Returns:
        A :class:`SearchResult`.

    Raises:
        hlrs_tf.runtime.workdir.WorkdirInUseError: Another process is using ``workdir``.
    """
    # Locked before the strategy exists: a refused run builds nothing and, under multi-worker, never starts the
    # collective runtime the other workers would wait on.
    with workdir_lock(workdir):
        strategy = configure_runtime(config)
        with worker_workdir(workdir, strategy) as write_dir, strategy.scope():
            # A non-chief worker writes into a folder of its own (write_dir) and resumes from the chief's.
            return drive(SearchTask(config, workdir), Workdir(write_dir), flags_text, dry_run)


class SearchTask:
    """A search, for :func:`hlrs_tf.runtime.run.drive`.

    Args:
        config: The run config.
        chief_workdir: The chief's work directory: every worker restores the chief's checkpoint, so all of them
            continue from the same epoch (the chief's own folder on one machine).
    """

    added_flag_defaults = ADDED_FLAG_DEFAULTS

    def __init__(self, config: SearchConfig, chief_workdir: str):
        self.config = config
        self.chief_workdir = chief_workdir
        self.genotype_logger = None
        self.skip_stop = None

    def check_resume(self, wd: Workdir) -> None:
        """Nothing beyond the flags: the search space is the flags' (``--channels``, ``--layers``, ...)."""

    def result(self, wd: Workdir) -> SearchResult:
        return SearchResult(wd.path, None, None, {})

    def dry_run_summary(self, spec) -> dict:
        return model_summary(build_model(self.config, spec, total_steps=1), spec, self.config)

    def load_data(self, wd: Workdir) -> RunData:
        config = self.config
        # Before anything is built: a class left without an image on either search split is refused from the
        # counts.
        ds, x_lt, y_lt = load_long_tailed(config.data, config.runtime.seed, config.data.train_portion)
        train_counts = class_counts(y_lt, ds.spec.num_classes)
        idx_w, idx_a = stratified_split(y_lt, config.data.train_portion, seed=config.runtime.seed)
        split = (x_lt[idx_w], y_lt[idx_w], x_lt[idx_a], y_lt[idx_a])
        steps = config.steps_per_epoch or search_steps_per_epoch(len(idx_w), len(idx_a), config.batch_size)
        summary = {"train_class_counts": train_counts.tolist(), "weight_split": len(idx_w),
                   "arch_split": len(idx_a), "steps_per_epoch": steps}
        return RunData(train_counts, steps, summary, {"dataset": ds, "split": split})

    def build_model(self, data: RunData) -> DartsSearchModel:
        spec = data.extra["dataset"].spec
        return build_model(self.config, spec, total_steps=self.config.epochs * data.steps,
                           class_counts=data.train_counts)

    def restore(self, model, wd: Workdir) -> tuple[EpochCheckpoint, int, int]:
        config = self.config
        # The collapse guards of issue 18 (hlrs_tf.search.collapse): the P-DARTS cap on every derived genotype
        # and the DARTS+ stop, whose record the checkpoint carries.
        self.genotype_logger = GenotypeLogger(wd, max_skip_connect=config.skip_cap)
        self.skip_stop = SkipConnectStop(config.stop_on_skip, config.arch.warmup_epochs, self.genotype_logger)
        checkpoint = EpochCheckpoint(wd.checkpoint_dir, extra_state=self.skip_stop.checkpoint_state)
        chief_checkpoint = EpochCheckpoint(Workdir(self.chief_workdir, create=False).checkpoint_dir)
        initial_epoch = min(chief_checkpoint.restore(model), config.epochs)
        # A search the DARTS+ rule stopped stays stopped: its last checkpoint says so (hlrs_tf.search.collapse).
        self.skip_stop.record = chief_checkpoint.saved_state().get("early_stop")
        if self.skip_stop.record:
            print(f"the search stopped early after epoch {self.skip_stop.record['epoch']} "
                  f"(--{self.skip_stop.record['rule']}): not training further")
        return checkpoint, initial_epoch, initial_epoch if self.skip_stop.record else config.epochs

    def train_dataset(self, data: RunData, initial_epoch: int):
        config = self.config
        train_ds, _ = search_dataset(
            *data.extra["split"], data.extra["dataset"].spec, config.batch_size, config.runtime.seed,
            config.data.augment,
            skip_batches=initial_epoch * data.steps, weight_sampler=config.weight_sampler,
            arch_sampler=config.arch_sampler, bbn=config.bbn,
        )
        return train_ds

    def model_summary(self, model, data: RunData) -> dict:
        return model_summary(model, data.extra["dataset"].spec, self.config)

    def callbacks(self, model, wd: Workdir, checkpoint: EpochCheckpoint, data: RunData,
                  initial_epoch: int) -> tuple[list, dict]:
        config = self.config
        callbacks = [
            NonFiniteLossGuard(wd.checkpoint_dir),  # first: a NaN batch ends fit before anything saves the epoch
            # Sets this epoch's arch lr and alpha_T before any step, and logs both (every method, so
            # runs compare column for column; alpha_T only drives the loss when bbn is on).
            HLRSCallback(config.arch, config.epochs, config.mixing),
            # DRW's weights, logged as drw_active
            *([DRWSchedule(config.objective.drw_epoch)] if config.objective.drw_epoch else []),
            LearningRateLogger(),
            self.genotype_logger,
            self.skip_stop,  # after the genotype it counts, before the writers and the checkpoint that persists a stop
            AlphaMovementLogger(),  # before the writers: alpha_max_softmax, alpha_range, ... every epoch
            TensorBoardWriter(wd.tensorboard_dir, [AlphaHeatmaps(self.genotype_logger)]),
            CSVHistory(wd.history_file, append=initial_epoch > 0),
            checkpoint,
        ]
        return callbacks, {}

    def finish(self, model, wd: Workdir, data: RunData, history) -> SearchResult:
        config, ds, split = self.config, data.extra["dataset"], data.extra["split"]
        genotype, guards = final_genotype(model, wd, config, self.skip_stop.record)
        genotype.save(wd.genotype_file)
        plot_genotype(genotype, wd.path)  # normal.png, reduce.png
        metrics = evaluate(model, ds, data.train_counts, config)
        # The architecture (validation) split, never the test set, is what tuning may select on.
        metrics["validation"] = validation_metrics(model, split[2], split[3], ds.spec, config)
        # The final alphas' distance from uniform: a genotype derived from alphas that never moved is noise.
        metrics.update(model_alpha_movement(model))
        metrics.update(guards)
        atomic_write_json(wd.metrics_file, metrics)
        return SearchResult(wd.path, genotype, metrics, history.history)


def final_genotype(model, wd: Workdir, config: SearchConfig, early_stop: dict | None) -> tuple[object, dict]:
    """The search's final genotype and what the collapse guards did to it (issue 18, :mod:`hlrs_tf.search.collapse`).

    Without an early stop it is derived from the final alphas (capped by ``--max_skip_connect``, like every
    epoch's); after one it is the saved genotype of the epoch the stop keeps.

    Returns:
        ``(genotype, guards)``; ``guards`` goes into ``metrics.json``: ``early_stop`` (the stop record, or
        ``None``) and ``skip_cap`` (``{"max_skip_connect", "genotype_epoch", "replaced"}``: the cap and the
        replacements behind the final genotype; ``replaced`` is ``[]`` without a cap).
    """
    replaced: list[dict] = []
    if early_stop:
        epoch = int(early_stop["kept_genotype_epoch"])
        genotype = kept_genotype(wd, early_stop)
        if config.skip_cap is not None:
            replaced = load_skip_cap(wd, epoch) or []
    else:
        epoch = config.epochs
        genotype = model.genotype(max_skip_connect=config.skip_cap, replaced=replaced)
    skip_cap = {"max_skip_connect": config.skip_cap, "genotype_epoch": epoch, "replaced": replaced}
    return genotype, {"early_stop": early_stop, "skip_cap": skip_cap}


def evaluate(model, ds: ArrayDataset, train_counts, config: SearchConfig) -> dict:
    """Test-set evaluation of the supernet: top-1, per-class and many/medium/few-shot accuracy."""
    test = eval_dataset(ds.x_test, ds.y_test, ds.spec, config.runtime.eval_batch_size)
    logits = model.predict(test, verbose=0)
    return evaluation_report(
        ds.y_test, logits, train_counts, ds.spec.num_classes,
        dataset=ds.spec.name, imbalance_ratio=config.data.imbalance_ratio,
    )


def validation_metrics(model, x_val, y_val, spec: DatasetSpec, config: SearchConfig) -> dict:
    """Supernet top-1 and balanced accuracy on the (long-tailed) architecture split, un-augmented.

    Balanced accuracy (mean per-class recall) weighs every class equally although the split is long-tailed;
    it is the objective of ``hlrs_tf.tune``.
    """
    logits = model.predict(eval_dataset(x_val, y_val, spec, config.runtime.eval_batch_size), verbose=0)
    pred = np.argmax(logits, axis=-1)
    y = np.asarray(y_val).reshape(-1)
    return {
        "top1": float(np.mean(pred == y)),
        "balanced_accuracy": balanced_accuracy(y, pred, spec.num_classes),
        "num_examples": int(len(y)),
    }
