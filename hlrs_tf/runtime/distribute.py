"""``tf.distribute`` strategies for the search: one device, several GPUs, several hosts.

:func:`make_strategy` turns the ``--strategy`` name into a ``tf.distribute.Strategy``:

* ``default`` -- ``tf.distribute.get_strategy()``, the no-op default strategy (one device);
* ``mirrored`` -- ``MirroredStrategy`` over every visible GPU; with ``cpu_replicas=N > 1`` over N logical CPU
  devices instead (for testing data parallelism on a CPU-only machine);
* ``multi_worker`` -- ``MultiWorkerMirroredStrategy`` from the ``TF_CONFIG`` environment variable (one process
  per host, all started with the same flags and their own ``task.index``);
* ``auto`` -- ``multi_worker`` if ``TF_CONFIG`` names more than one worker, ``mirrored`` if there is more than one
  GPU (or ``cpu_replicas > 1``), else ``default``.

How a distributed search is meant to run (Keras 3 ``fit`` under a strategy):

* Create the strategy first -- before any other TensorFlow op: the CPU split must happen before TF initialises
  its devices, and ``MultiWorkerMirroredStrategy`` must configure the collective runtime at start-up -- then
  build the model *and both optimizers* inside ``strategy.scope()`` (docs/method.md T11) and call ``fit`` there.
* The tf.data dataset yields **global** batches: Keras passes it through ``experimental_distribute_dataset``,
  which splits each global batch into ``num_replicas_in_sync`` equal per-replica slices (and, with several
  workers, shards the work between them). So ``--batch_size`` stays the global batch, and a run gives the same
  result as one device with that batch (with synchronised BN, :mod:`hlrs_tf.runtime.sync_bn`). It must be a multiple of
  the replica count (:func:`check_global_batch_size`): Keras' losses scale each replica's mean by
  ``1 / replicas``, which is the global mean only for equal slices.
* Only the chief writes the work directory (:func:`is_chief`). Under ``multi_worker`` every worker must still run
  the same callbacks (saving reads variables and metrics, which can involve collectives), so the other workers
  write into a throw-away temporary directory (:func:`worker_workdir`), as the Keras multi-worker guide does for
  checkpoints. Likewise only the chief holds the work directory's lock (:func:`workdir_lock`).
* ``jit_compile`` stays off with more than one replica (docs/method.md T9).
* Two Keras 3.15 quirks need the model's cooperation (:class:`PrebuiltModelMixin`, :func:`step_logs`): under a
  strategy ``fit`` draws a batch from a throw-away iterator of the training set (which advances tf.data's
  reshuffle seeds: a different stream than on one device), and under multi-worker it fails to reduce the scalar
  logs a custom ``train_step`` returns.

With both and synchronised BN, the bilevel search over 2 replicas (mirrored over 2 logical CPUs, or 2 local
workers) matches one device with the same global batch to ~1e-8 in the alphas (``tests/test_distribute.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

import tensorflow as tf

from hlrs_tf.config.choices import STRATEGIES
from hlrs_tf.runtime.workdir import WorkdirLock

__all__ = [
    "STRATEGIES",
    "DistributeError",
    "PrebuiltModelMixin",
    "WorkerInfo",
    "check_global_batch_size",
    "global_batch_size",
    "is_chief",
    "is_multi_worker",
    "make_strategy",
    "parse_tf_config",
    "per_replica_batch_size",
    "step_logs",
    "workdir_lock",
    "worker_info",
    "worker_workdir",
]


# Task types that train (TF_CONFIG may also name "evaluator" or "ps", which hold no replica here).
_TRAINING_TASKS = ("chief", "worker")

TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\' '
    "(the same cluster on every host, index 0, 1, ... per host)"
)


class DistributeError(ValueError):
    """A strategy that cannot be set up; the message names the flag or variable and what to do.

    A ``ValueError``, like :class:`hlrs_tf.config.search.ConfigError`, so the CLI reports it the same way.
    """


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Where this process stands in a (possibly multi-worker) run.

    Attributes:
        task_type: ``"chief"``, ``"worker"`` (or another TF_CONFIG type); ``None`` without ``TF_CONFIG``.
        task_id: Index of this task within its type (0 without ``TF_CONFIG``).
        num_workers: Training processes in the cluster (chief + workers; 1 without ``TF_CONFIG``).
        is_chief: Whether this process writes the work directory.
    """

    task_type: str | None
    task_id: int
    num_workers: int
    is_chief: bool


# ------------------------------------------------------------------------------------------------ TF_CONFIG
def _tf_config_error(cause: str) -> DistributeError:
    return DistributeError(f"TF_CONFIG is invalid: {cause}; it must be JSON like {TF_CONFIG_EXAMPLE}")


def parse_tf_config(environ=None) -> dict | None:
    """Reads and checks the ``TF_CONFIG`` environment variable.

    Args:
        environ: Mapping to read instead of ``os.environ`` (tests).

    Returns:
        The parsed dict, or ``None`` when ``TF_CONFIG`` is unset or empty.

    Raises:
        DistributeError: If it is not JSON, lacks ``cluster``/``task``, or its task is not in the cluster.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        return None
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise _tf_config_error(f"not JSON ({e})") from None
    if not isinstance(config, dict):
        raise _tf_config_error("not a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _tf_config_error('it has no "cluster" object')
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise _tf_config_error(f'cluster "{kind}" must be a list of "host:port" strings, got {addresses!r}')
    if not any(cluster.get(kind) for kind in _TRAINING_TASKS):
        raise _tf_config_error('the cluster has no "worker" (or "chief") task')
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _tf_config_error('it has no "task" object with "type" and "index"')
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise _tf_config_error(f'task type {kind!r} is not in the cluster ({", ".join(cluster)})')
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise _tf_config_error(f'task index {index!r} is out of range for the {len(cluster[kind])} "{kind}" task(s)')
    return config


def _num_workers(config: dict | None) -> int:
    if not config:
        return 1
    return sum(len(config["cluster"].get(kind, [])) for kind in _TRAINING_TASKS)


def _chief_of(task_type: str | None, task_id: int, cluster: dict | None) -> bool:
    # Keras' multi-worker rule: the "chief" task if the cluster has one, else worker 0; no cluster at all means
    # a single process, which is its own chief.
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = bool(cluster and cluster.get("chief"))
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_info(strategy: tf.distribute.Strategy | None = None) -> WorkerInfo:
    """This process's task in the cluster.

    Args:
        strategy: Read the task from its cluster resolver when it has one (``MultiWorkerMirroredStrategy``);
            otherwise from ``TF_CONFIG``.

    Returns:
        A :class:`WorkerInfo`.
    """
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and getattr(resolver, "task_type", None) is not None:
        cluster = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        num = sum(len(cluster.get(kind, [])) for kind in _TRAINING_TASKS) or 1
        return WorkerInfo(task_type, task_id, num, _chief_of(task_type, task_id, cluster))
    config = parse_tf_config()
    if not config:
        return WorkerInfo(None, 0, 1, True)
    task_type, task_id = config["task"]["type"], int(config["task"]["index"])
    return WorkerInfo(task_type, task_id, _num_workers(config), _chief_of(task_type, task_id, config["cluster"]))


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the work directory (always true outside multi-worker training)."""
    return worker_info(strategy).is_chief


@contextlib.contextmanager
def worker_workdir(workdir: str, strategy: tf.distribute.Strategy | None = None):
    """Context giving the directory this process should *write* to: ``workdir`` on the chief, a temporary
    directory (removed on exit) on any other worker.

    Non-chief workers must still run every callback that saves (checkpoint, history, TensorBoard): under
    ``MultiWorkerMirroredStrategy`` reading metrics and variables can be collective, and a worker that skips it
    leaves the others waiting. Their copies are identical to the chief's and are thrown away.

    Note that a *resume* must read the chief's checkpoint on every worker (a shared file system), not the
    worker's empty temporary directory, or the workers would start from different epochs.

    Args:
        workdir: The run's work directory.
        strategy: The strategy (its cluster resolver says which task this is).

    Yields:
        The path to write to.
    """
    info = worker_info(strategy)
    if info.is_chief:
        yield workdir
        return
    tmp = tempfile.mkdtemp(prefix=f"hlrs_{info.task_type}{info.task_id}_")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def workdir_lock(workdir: str, strategy: tf.distribute.Strategy | None = None):
    """The lock that keeps other runs out of ``workdir`` (:class:`~hlrs_tf.runtime.workdir.WorkdirLock`): the chief's.

    On the chief (every single-process run) a context holding the lock; on any other worker a no-op context.
    The workers of one multi-worker run all use the same ``--workdir`` on a shared file system, but only the
    chief writes it (:func:`worker_workdir`): a worker that tried to lock it would be refused by its own chief.

    Args:
        workdir: The run's work directory.
        strategy: As for :func:`worker_info`; ``None`` reads ``TF_CONFIG``, so the lock can be taken before the
            strategy exists (a refused chief then never starts the collective runtime its workers wait on).

    Returns:
        A context manager.
    """
    if worker_info(strategy).is_chief:
        return WorkdirLock(workdir)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ strategies
def _check_name(name: str) -> None:
    if name not in STRATEGIES:
        raise DistributeError(f"--strategy={name!r} is invalid: it must be one of {', '.join(STRATEGIES)}")


def _split_cpu(replicas: int) -> list[str]:
    """Splits the first physical CPU into ``replicas`` logical devices; returns their names."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as e:
        # TF refuses once its runtime is initialised. That is fine if it was already split the same way (a second
        # make_strategy call in the same process); anything else cannot be fixed from here.
        current = tf.config.get_logical_device_configuration(cpu) or []
        if len(current) != replicas:
            raise DistributeError(
                f"--cpu_replicas={replicas} cannot be applied: TensorFlow has already initialised its devices "
                f"({e}). Create the strategy (make_strategy) at the start of the program, before any other "
                "TensorFlow operation, or run with --cpu_replicas=0"
            ) from None
    return [f"/cpu:{i}" for i in range(replicas)]


def _mirrored(cpu_replicas: int) -> tf.distribute.Strategy:
    if cpu_replicas > 1:
        return tf.distribute.MirroredStrategy(_split_cpu(cpu_replicas))
    # All visible GPUs (one CPU replica when there are none). NCCL all-reduce on GPUs is MirroredStrategy's default.
    return tf.distribute.MirroredStrategy()


def _multi_worker(config: dict | None) -> tf.distribute.Strategy:
    if not config:
        raise DistributeError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable (the cluster and this process's task), "
            f"e.g. {TF_CONFIG_EXAMPLE}"
        )
    # AUTO picks NCCL on GPUs and RING (gRPC) on CPUs.
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (RuntimeError, ValueError) as e:
        raise DistributeError(
            f"--strategy=multi_worker could not start: {e}. Create the strategy at the start of the program, before "
            "any other TensorFlow operation, and check that every TF_CONFIG address is reachable"
        ) from None


def make_strategy(name: str = "auto", cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """Builds the distribution strategy named by ``--strategy``.

    Call it first thing, before any other TensorFlow operation (see the module docstring).

    Args:
        name: One of :data:`STRATEGIES`.
        cpu_replicas: ``N > 1`` splits the CPU into N logical devices and mirrors over them (testing data
            parallelism without GPUs); 0 or 1 leaves devices alone. Only for ``mirrored`` and ``auto``.

    Returns:
        The strategy; build the model and both optimizers inside its ``scope()``.

    Raises:
        DistributeError: Unknown name, bad ``cpu_replicas``, missing or invalid ``TF_CONFIG``, or devices already
            initialised.
    """
    _check_name(name)
    if isinstance(cpu_replicas, bool) or not isinstance(cpu_replicas, int) or cpu_replicas < 0:
        raise DistributeError(
            f"--cpu_replicas={cpu_replicas!r} is invalid: it must be an integer >= 0 "
            "(0 or 1: leave the CPU alone; N > 1: mirror over N logical CPU devices)"
        )
    if cpu_replicas > 1 and name in ("default", "multi_worker"):
        raise DistributeError(
            f"--cpu_replicas={cpu_replicas} is invalid with --strategy={name}: it only applies to mirrored or auto"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return _mirrored(cpu_replicas)
    config = parse_tf_config()  # validated for "auto" too: a broken TF_CONFIG must not be silently ignored
    if name == "multi_worker":
        return _multi_worker(config)
    # auto
    if _num_workers(config) > 1:
        if cpu_replicas > 1:
            raise DistributeError(
                f"--cpu_replicas={cpu_replicas} is invalid with a multi-worker TF_CONFIG: each worker uses its "
                "own devices; unset TF_CONFIG to test mirrored on one CPU"
            )
        return _multi_worker(config)
    if cpu_replicas > 1 or len(tf.config.list_physical_devices("GPU")) > 1:
        return _mirrored(cpu_replicas)
    return tf.distribute.get_strategy()


# ------------------------------------------------------------------------------------------------ Keras fixes
def is_multi_worker(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether ``strategy`` (default: the current one) is a ``MultiWorkerMirroredStrategy``."""
    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def step_logs(logs: dict) -> dict:
    """Makes a custom ``train_step``'s returned logs survive Keras' per-replica reduction under multi-worker.

    Keras 3.15's TF trainer reduces step outputs with ``strategy.reduce("MEAN", v, axis=0)`` under
    ``MultiWorkerMirroredStrategy`` (hard-coded ``reduction="auto"``; ``distribute_reduction_method`` is not
    consulted), which fails for the scalar metric results every ``train_step`` returns ("Invalid reduction
    dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388). Shape ``(1,)`` reduces to the
    scalar mean over replicas. Elsewhere the logs are returned unchanged.

    Call as the last line of ``train_step``: ``return distribute.step_logs({m.name: m.result() ...})``.
    """
    if not is_multi_worker():
        return logs
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}


class PrebuiltModelMixin:
    """Mixin for a ``keras.Model`` that builds itself before ``fit`` (e.g. ``DartsSearchModel.build_all``).

    Under a strategy Keras 3.15's ``fit`` draws one batch from a *fresh* iterator of the training dataset to
    build the model symbolically (``_maybe_symbolic_build``), even when everything is built. With
    ``shuffle(reshuffle_each_iteration=True)`` every iterator of a dataset gets new shuffle seeds, so the run
    then trains on a different stream than the same run on one device (and under multi-worker the symbolic
    build also fails on the zipped bilevel batch). This skips it once the model and its optimizers are built.
    Put it first in the bases: ``class DartsSearchModel(PrebuiltModelMixin, keras.Model)``.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        optimizers = [getattr(self, "optimizer", None), getattr(self, "arch_optimizer", None)]
        if self.built and all(o is None or o.built for o in optimizers):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


# ------------------------------------------------------------------------------------------------ batch sizes
def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """Global batch for a per-replica batch: ``per_replica * num_replicas_in_sync`` (what the dataset yields)."""
    strategy = strategy or tf.distribute.get_strategy()
    return int(per_replica) * int(strategy.num_replicas_in_sync)


def check_global_batch_size(global_batch: int, strategy: tf.distribute.Strategy | None = None,
                            flag: str = "batch_size") -> int:
    """Checks that a global batch splits evenly over the replicas; returns the per-replica batch.

    Args:
        global_batch: The dataset's batch size (``--batch_size``).
        strategy: The strategy (default: the current one).
        flag: Flag name for the message.

    Raises:
        DistributeError: If it is not a positive multiple of ``num_replicas_in_sync``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = int(strategy.num_replicas_in_sync)
    if global_batch < 1 or global_batch % replicas:
        raise DistributeError(
            f"--{flag}={global_batch} is invalid: with {replicas} replicas it must be a positive multiple of "
            f"{replicas} (it is the global batch, split evenly over the replicas)"
        )
    return global_batch // replicas


def per_replica_batch_size(global_batch: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """Per-replica slice of a global batch (see :func:`check_global_batch_size`)."""
    return check_global_batch_size(global_batch, strategy)
