"""Subprocess worker of ``tests/test_distribute.py`` (the strategy must be created before TF initialises devices,
which pytest's process has long done).

Modes (the last stdout line is ``RESULT <json>``):

* ``mirrored``: in one process split the CPU into 2 logical devices, then for each order run the same few
  bilevel steps (``fit``) on one device and on ``MirroredStrategy`` over the 2 devices, with synchronised BN (and,
  as a control, without); report max |difference| of alphas, weights, BN statistics and per-step losses, how far
  the replicas' copies differ, and each replica's genotype.
* ``multi_worker``: one worker of a ``MultiWorkerMirroredStrategy`` run (``TF_CONFIG`` set by the test), or with
  ``--strategy default`` the single-device reference; two steps, then the genotype, the alphas and where the
  genotype file was written (``worker_workdir``). ``--nodes 4`` builds the model with ``trainer.build_model``;
  fewer nodes use :func:`tiny_model` (same compile, much shorter tracing).

Until ``hlrs_tf/space/ops.py`` and ``hlrs_tf/search/bilevel.py`` carry the proposed patches, this script applies them at
run time (:func:`install_sync_bn_hook`, :func:`install_keras_fixes`); each reports which way it went.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hlrs_tf.runtime.cli import prepare_process

prepare_process()  # the commands' settings (the parent test's environment wins)

from hlrs_tf.runtime import distribute  # noqa: E402  (imports TF; creates no op)


def install_sync_bn_hook() -> str:
    """Makes ``ops.BatchNorm`` use synchronised statistics under >1 replicas; returns how."""
    import tensorflow as tf

    from hlrs_tf.runtime import sync_bn
    from hlrs_tf.space import ops

    if "sync_bn" in inspect.getsource(ops.BatchNorm.call):
        return "ops.py"
    original = ops.BatchNorm.call

    def call(self, x, training=None):
        # The proposed ops.py change, verbatim in effect: the training branch defers to sync_bn when needed.
        if training and sync_bn.should_sync():
            channels = x.shape[-1]
            scale = self.gamma if self.affine else tf.ones((channels,), x.dtype)
            offset = self.beta if self.affine else tf.zeros((channels,), x.dtype)
            return sync_bn.sync_batch_norm(self, x, scale, offset)
        return original(self, x, training=training)

    ops.BatchNorm.call = call
    return "test hook"


def install_keras_fixes() -> str:
    """Applies :class:`hlrs_tf.runtime.distribute.PrebuiltModelMixin` and
    :func:`hlrs_tf.runtime.distribute.step_logs` to ``DartsSearchModel`` unless ``search/bilevel.py`` already uses
    them (the proposed patch); returns which.

    Without them, under a strategy Keras trains on a differently shuffled stream than one device (its symbolic
    build draws from a fresh iterator) and ``MultiWorkerMirroredStrategy`` crashes reducing scalar logs.
    """
    from hlrs_tf.search.bilevel import DartsSearchModel

    applied = []
    if not issubclass(DartsSearchModel, distribute.PrebuiltModelMixin):
        # Exactly the proposed `class DartsSearchModel(PrebuiltModelMixin, keras.Model)`, at run time.
        DartsSearchModel.__bases__ = (distribute.PrebuiltModelMixin, *DartsSearchModel.__bases__)
        applied.append("PrebuiltModelMixin")
    if "step_logs" not in inspect.getsource(DartsSearchModel.train_step):
        original = DartsSearchModel.train_step

        def train_step(self, data):
            return distribute.step_logs(original(self, data))

        DartsSearchModel.train_step = train_step
        applied.append("step_logs")
    return ("test hook: " + ", ".join(applied)) if applied else "search/bilevel.py"


def digits_search_data(batch_size: int):
    from hlrs_tf.data.long_tail import stratified_split
    from hlrs_tf.data.pipeline import search_dataset
    from hlrs_tf.data.sources import load_dataset

    ds = load_dataset("digits")
    idx_w, idx_a = stratified_split(ds.y_train, 0.5, seed=0)
    train_ds, _ = search_dataset(
        ds.x_train[idx_w], ds.y_train[idx_w], ds.x_train[idx_a], ds.y_train[idx_a], ds.spec, batch_size, seed=0
    )
    return ds.spec, train_ds


def local_values(strategy, variable):
    """Per-replica numpy copies of a (Keras) variable."""
    import numpy as np

    return [np.asarray(v.numpy()) for v in strategy.experimental_local_results(variable.value)]


# ------------------------------------------------------------------------------------------------ mirrored
def tiny_model(order: str, total_steps: int, nodes: int = 2):
    """A small supernet compiled exactly like ``trainer.build_model``; ``nodes`` intermediate nodes per cell
    (4 in DARTS) -- fewer edges, much shorter tracing, which is what these runs spend their time on."""
    import keras

    from hlrs_tf.testing import small_search_model

    return small_search_model(
        order=order, learning_rate=keras.optimizers.schedules.CosineDecay(0.025, decay_steps=total_steps, alpha=0.04),
        network_kwargs=dict(steps=nodes, multiplier=nodes, name="supernet"),
    )


def run_once(strategy, order: str, steps: int, global_batch: int, time_steps: int, nodes: int):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)  # the tf.data shuffle depends on the global seed too: same stream in every run
    _, train_ds = digits_search_data(global_batch)
    with strategy.scope():
        model = tiny_model(order, total_steps=steps + time_steps + 1, nodes=nodes)
    t0 = time.perf_counter()
    # One step per epoch: history then holds every step's loss.
    history = model.fit(train_ds, epochs=steps, steps_per_epoch=1, verbose=0, shuffle=False)
    fit_s = time.perf_counter() - t0
    weights, alphas = model.split_variables()
    out = {
        "fit_s": fit_s,
        "loss": history.history["loss"],
        "arch_loss": history.history["arch_loss"],
        "alphas": [np.asarray(a.numpy()) for a in alphas],
        "weights": [np.asarray(w.numpy()) for w in weights],
        "stats": [np.asarray(v.numpy()) for v in model.non_trainable_variables],
        "genotype": model.genotype().to_json(),
    }
    if strategy.num_replicas_in_sync > 1:
        from hlrs_tf.space.genotypes import derive_genotype

        def spread(variables):
            worst = 0.0
            for v in variables:
                copies = local_values(strategy, v)
                worst = max(worst, max(float(np.max(np.abs(c - copies[0]))) for c in copies))
            return worst

        out["replica_spread_trainable"] = spread(model.trainable_variables)
        out["replica_spread_stats"] = spread(model.non_trainable_variables)
        normal = local_values(strategy, model.network.alphas_normal)
        reduce = local_values(strategy, model.network.alphas_reduce)
        out["replica_genotypes"] = [
            derive_genotype(n, r, steps=nodes, multiplier=nodes).to_json() for n, r in zip(normal, reduce)
        ]
    if time_steps:
        # The train function is traced already: this measures steady-state step time.
        t0 = time.perf_counter()
        model.fit(train_ds, epochs=1, steps_per_epoch=time_steps, verbose=0, shuffle=False)
        out["step_s"] = (time.perf_counter() - t0) / time_steps
    return out


def max_diff(a, b) -> float:
    import numpy as np

    if isinstance(a, list):
        return max((max_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def mirrored_main(args) -> dict:
    strategy = distribute.make_strategy("mirrored", cpu_replicas=2)  # before any other TF op
    import tensorflow as tf

    from hlrs_tf.runtime import sync_bn

    hook = install_sync_bn_hook()
    build_hook = install_keras_fixes() if args.build_fix else "off"
    result = {"replicas": strategy.num_replicas_in_sync, "hook": hook, "build_hook": build_hook, "orders": {},
              "per_replica_batch": distribute.check_global_batch_size(args.batch, strategy)}
    try:
        distribute.check_global_batch_size(args.batch - 1, strategy)
        result["odd_batch_error"] = None
    except distribute.DistributeError as e:
        result["odd_batch_error"] = str(e)
    for order in args.orders.split(","):
        sync_bn.set_enabled(True)
        single = run_once(tf.distribute.get_strategy(), order, args.steps, args.batch, args.time_steps, args.nodes)
        variants = {"sync": True, "nosync": False} if order in args.control.split(",") else {"sync": True}
        res = {"single_fit_s": single["fit_s"], "single_step_s": single.get("step_s"), "loss": single["loss"],
               "single_genotype": single["genotype"]}
        for label, enabled in variants.items():
            sync_bn.set_enabled(enabled)
            mirrored = run_once(strategy, order, args.steps, args.batch, args.time_steps, args.nodes)
            res[label] = {
                "fit_s": mirrored["fit_s"],
                "step_s": mirrored.get("step_s"),
                "loss": mirrored["loss"],
                "d_alphas": max_diff(single["alphas"], mirrored["alphas"]),
                "d_weights": max_diff(single["weights"], mirrored["weights"]),
                "d_stats": max_diff(single["stats"], mirrored["stats"]),
                "d_loss": max_diff(single["loss"], mirrored["loss"]),
                "d_arch_loss": max_diff(single["arch_loss"], mirrored["arch_loss"]),
                "alpha_change": max_diff(single["alphas"], run_init_alphas(order, args.nodes)),
                "replica_spread_trainable": mirrored["replica_spread_trainable"],
                "replica_spread_stats": mirrored["replica_spread_stats"],
                "replica_genotypes": mirrored["replica_genotypes"],
                "genotype": mirrored["genotype"],
            }
        sync_bn.set_enabled(True)
        result["orders"][order] = res
    return result


_INIT_ALPHAS = {}


def run_init_alphas(order, nodes):
    """Alphas at initialisation (same seed), to size the differences against how far training moved them."""
    import numpy as np

    if order not in _INIT_ALPHAS:
        model = tiny_model(order, total_steps=2, nodes=nodes)
        _INIT_ALPHAS[order] = [np.asarray(a.numpy()) for a in model.split_variables()[1]]
    return _INIT_ALPHAS[order]


# ------------------------------------------------------------------------------------------------ multi-worker
def multi_worker_main(args) -> dict:
    strategy = distribute.make_strategy(args.strategy)  # first: MWMS configures the collective runtime
    hook = install_sync_bn_hook()
    build_hook = install_keras_fixes() if args.build_fix else "off"
    import keras

    from hlrs_tf.config.search import SearchConfig
    from hlrs_tf.search.task import build_model

    info = distribute.worker_info(strategy)
    per_replica = distribute.check_global_batch_size(args.batch, strategy)
    config = SearchConfig.create(dataset="digits", channels=4, layers=3, batch_size=args.batch, epochs=1,
                          steps_per_epoch=args.steps, order=args.order, seed=0)
    spec, train_ds = digits_search_data(config.batch_size)
    with strategy.scope():
        keras.utils.set_random_seed(config.runtime.seed)
        if args.nodes == 4:
            model = build_model(config, spec, total_steps=args.steps)  # the trainer's own model
        else:
            model = tiny_model(args.order, total_steps=args.steps, nodes=args.nodes)
    t0 = time.perf_counter()
    history = model.fit(train_ds, epochs=1, steps_per_epoch=args.steps, verbose=0, shuffle=False)
    fit_s = time.perf_counter() - t0
    genotype = model.genotype()
    with distribute.worker_workdir(args.workdir, strategy) as out_dir:
        genotype.save(os.path.join(out_dir, "genotype.json"))
        wrote = os.path.join(out_dir, "genotype.json")
    return {
        "task_type": info.task_type,
        "task_id": info.task_id,
        "num_workers": info.num_workers,
        "is_chief": info.is_chief,
        "replicas": strategy.num_replicas_in_sync,
        "per_replica_batch": per_replica,
        "hook": hook,
        "build_hook": build_hook,
        "fit_s": fit_s,
        "loss": history.history["loss"],
        "genotype": genotype.to_json(),
        "alphas": [a.numpy().tolist() for a in model.split_variables()[1]],
        "wrote": wrote,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("mirrored")
    m.add_argument("--orders", default="first,second")
    m.add_argument("--control", default="first", help="orders that also run without sync BN")
    m.add_argument("--steps", type=int, default=3)
    m.add_argument("--batch", type=int, default=8, help="global batch")
    m.add_argument("--time_steps", type=int, default=0, help="extra steps timed after tracing")
    m.add_argument("--nodes", type=int, default=2, help="intermediate nodes per cell")
    m.add_argument("--build_fix", type=int, default=1, help="apply install_keras_fixes (0: see why)")
    w = sub.add_parser("multi_worker")
    w.add_argument("--strategy", default="multi_worker")
    w.add_argument("--order", default="first")
    w.add_argument("--steps", type=int, default=2)
    w.add_argument("--batch", type=int, default=8, help="global batch")
    w.add_argument("--workdir", required=True)
    w.add_argument("--build_fix", type=int, default=1, help="apply install_keras_fixes")
    w.add_argument("--nodes", type=int, default=4, help="4: trainer.build_model; fewer: tiny_model (faster)")
    args = parser.parse_args(argv)
    result = mirrored_main(args) if args.mode == "mirrored" else multi_worker_main(args)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
