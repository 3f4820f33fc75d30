"""Subprocess worker of ``tests/test_losses.py``: the class-weighted loss over 2 replicas against one device.

The CPU must be split into 2 logical devices before TensorFlow initialises, which pytest's process has long
done, so this runs in a process of its own and prints ``RESULT <json>`` as its last stdout line:

* ``shares``: :func:`hlrs_tf.losses.reweighting.class_weighted_cross_entropy` on each replica's slice of a long-tailed
  global batch (``strategy.run``); the sum of the replicas' shares and of their logit-variable gradients,
  the single-device value, and (control) what averaging each replica's *local* weighted mean would give.
* ``fit``: :class:`hlrs_tf.search.bilevel.DartsSearchModel` on a toy network (a dense layer whose bias is the
  "architecture" variable), two bilevel steps with ``fit``, one device against ``MirroredStrategy``, per
  reduction and order: max |difference| of weights, alphas and logged losses.

With the argument ``long_tail`` (``tests/test_long_tail_losses.py``) it does the same for every loss of
:mod:`hlrs_tf.losses.long_tail` instead (DRW off and on): ``shares`` of :func:`long_tail_loss` and their
gradients, and ``fit`` cases of the search model with a :class:`LossSpec`.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hlrs_tf.runtime.cli import prepare_process

prepare_process()

from hlrs_tf.runtime import distribute  # noqa: E402  (imports TF; creates no op)

# A long-tailed global batch of 8 whose two halves (the replicas' slices) have very different weight sums:
# the head class fills the first half, the tail classes the second.
LABELS = [0, 0, 0, 0, 0, 1, 2, 3]
COUNTS = [1000, 100, 10, 1]
FEATURES = 6


def _data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(LABELS), FEATURES)).astype("float32")
    x_val = rng.normal(size=(len(LABELS), FEATURES)).astype("float32")
    y = np.asarray(LABELS, "int32")
    y_val = y[::-1].copy()  # the tail classes on the other replica in the architecture batch
    return x, y, x_val, y_val


def _kernel0():
    """The dense kernel every run starts from (the toy network initialises to zeros, then gets this)."""
    import numpy as np

    return np.random.default_rng(1).normal(size=(FEATURES, len(COUNTS))).astype("float32")


def _toy_network_class():
    import keras

    class ToyNet(keras.layers.Layer):
        """Logits ``x W + alpha``: ``W`` is a weight, ``alpha`` the architecture variable (``arch_variables``)."""

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], len(COUNTS)), initializer="zeros", name="kernel")
            self.alpha = self.add_weight(shape=(len(COUNTS),), initializer="zeros", name="alpha")

        @property
        def arch_variables(self):
            return [self.alpha]

        def call(self, x, training=None):
            return keras.ops.matmul(x, self.kernel) + self.alpha

    return ToyNet


def shares_main(strategy) -> dict:
    import numpy as np
    import tensorflow as tf

    from hlrs_tf.losses.reweighting import class_weighted_cross_entropy, effective_number_weights

    weights = effective_number_weights(COUNTS).astype("float32")
    x, y, _, _ = _data()
    kernel0 = _kernel0()
    out = {}
    for reduction in ("weighted_mean", "batch_mean"):
        def loss_and_grad(xb, yb, kernel):
            with tf.GradientTape() as tape:
                tape.watch(kernel)
                loss = class_weighted_cross_entropy(yb, tf.matmul(xb, kernel), weights, reduction)
            return loss, tape.gradient(loss, kernel)

        single_loss, single_grad = tf.function(loss_and_grad)(tf.constant(x), tf.constant(y), tf.constant(kernel0))

        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(LABELS))
        xb, yb = next(iter(strategy.experimental_distribute_dataset(ds)))
        kernel = tf.constant(kernel0)  # the same logits function on every replica

        @tf.function
        def replicated(xb, yb):
            loss, grad = strategy.run(loss_and_grad, args=(xb, yb, kernel))
            local_labels = strategy.experimental_local_results(yb)
            return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, grad, axis=None), local_labels)

        loss_sum, grad_sum, local_labels = replicated(xb, yb)
        # Control: the mean over replicas of each replica's own weighted mean (no global weight sum).
        logits = x @ kernel0
        ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]
        naive, start = [], 0
        for labels in local_labels:
            n = len(labels.numpy())
            sl = slice(start, start + n)
            w = weights[y[sl]]
            naive.append(float((w * ce[sl]).sum() / w.sum()))
            start += n
        out[reduction] = {
            "single": float(single_loss), "replicated": float(loss_sum),
            "d_grad": float(np.abs(grad_sum.numpy() - single_grad.numpy()).max()),
            "grad_scale": float(np.abs(single_grad.numpy()).max()),
            "naive_local_mean": float(np.mean(naive)),
            "slices": [labels.numpy().tolist() for labels in local_labels],
        }
    return out


def _fit_once(strategy, reduction: str, order: str, steps: int, loss=None, drw_active=None):
    import keras
    import tensorflow as tf

    from hlrs_tf.losses.reweighting import effective_number_weights
    from hlrs_tf.search.bilevel import DartsSearchModel

    x, y, x_val, y_val = _data()
    ds = tf.data.Dataset.from_tensor_slices(((x, y), (x_val, y_val))).batch(len(LABELS)).repeat()
    kernel0 = _kernel0()
    with strategy.scope():
        if loss is None:
            model = DartsSearchModel(
                _toy_network_class()(name="toy"), order=order,
                class_weights=effective_number_weights(COUNTS).tolist(), class_weight_reduction=reduction,
            )
        else:
            model = DartsSearchModel(_toy_network_class()(name="toy"), order=order, loss=loss)
            if drw_active is not None:
                model.drw_active.assign(drw_active)
        # Large learning rates so two steps move the variables far beyond float round-off.
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), arch_optimizer=keras.optimizers.Adam(0.1))
        model.build_all((FEATURES,))
        model.network.kernel.assign(kernel0)
    history = model.fit(ds, epochs=steps, steps_per_epoch=1, verbose=0, shuffle=False)
    return {
        "kernel": model.network.kernel.numpy(), "alpha": model.network.alpha.numpy(),
        "loss": history.history["loss"], "arch_loss": history.history["arch_loss"],
    }


def fit_main(strategy, steps: int = 2) -> dict:
    import numpy as np
    import tensorflow as tf

    from hlrs_tf.runtime import sync_bn

    out = {}
    # With synchronised BN off, multi-replica passes are nested tf.functions (darts_model.traced_once) unless
    # the model inlines them for the weighted mean's all-reduce: "nosync" covers that path.
    cases = [(r, o, True) for r in ("weighted_mean", "batch_mean") for o in ("first", "second")]
    cases += [("weighted_mean", o, False) for o in ("first", "second")]
    for reduction, order, sync in cases:
        sync_bn.set_enabled(sync)
        try:
            single = _fit_once(tf.distribute.get_strategy(), reduction, order, steps)
            mirrored = _fit_once(strategy, reduction, order, steps)
        finally:
            sync_bn.set_enabled(True)
        diff = lambda k: float(np.max(np.abs(np.asarray(single[k]) - np.asarray(mirrored[k]))))  # noqa: E731
        out[f"{reduction}/{order}" + ("" if sync else "/nosync")] = {
            "d_kernel": diff("kernel"), "d_alpha": diff("alpha"), "d_loss": diff("loss"),
            "d_arch_loss": diff("arch_loss"),
            "kernel_moved": float(np.abs(single["kernel"] - _kernel0()).max()),
            "alpha_moved": float(np.abs(single["alpha"]).max()),
            "loss": single["loss"], "mirrored_loss": mirrored["loss"],
        }
    return out


def _long_tail_specs() -> dict:
    """Every long-tail loss on COUNTS (focal with gamma 2), plus LDAM and focal with DRW switched off and on."""
    from hlrs_tf.losses.long_tail import LOSSES, LossSpec

    specs = {name: (LossSpec.from_counts(name, COUNTS), None) for name in LOSSES}
    for name in ("ldam", "focal"):
        for active in (0.0, 1.0):
            specs[f"{name}_drw{int(active)}"] = (LossSpec.from_counts(name, COUNTS, drw=True), active)
    return specs


def long_tail_shares_main(strategy) -> dict:
    """Replicas' shares of each long-tail loss (and of its kernel gradient) against one device."""
    import numpy as np
    import tensorflow as tf

    from hlrs_tf.losses.long_tail import long_tail_loss

    x, y, _, _ = _data()
    kernel0 = _kernel0()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(LABELS))
    xb, yb = next(iter(strategy.experimental_distribute_dataset(ds)))
    out = {}
    for key, (spec, active) in _long_tail_specs().items():
        drw = None if active is None else tf.constant(active)

        def loss_and_grad(xb, yb, kernel, spec=spec, drw=drw):
            with tf.GradientTape() as tape:
                tape.watch(kernel)
                loss = long_tail_loss(yb, tf.matmul(xb, kernel), spec, drw)
            return loss, tape.gradient(loss, kernel)

        single_loss, single_grad = tf.function(loss_and_grad)(tf.constant(x), tf.constant(y), tf.constant(kernel0))
        kernel = tf.constant(kernel0)

        @tf.function
        def replicated(xb, yb, fn=loss_and_grad):
            loss, grad = strategy.run(fn, args=(xb, yb, kernel))
            return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, grad, axis=None))

        loss_sum, grad_sum = replicated(xb, yb)
        out[key] = {"single": float(single_loss), "replicated": float(loss_sum),
                    "d_grad": float(np.abs(grad_sum.numpy() - single_grad.numpy()).max()),
                    "grad_scale": float(np.abs(single_grad.numpy()).max())}
    return out


def long_tail_fit_main(strategy, steps: int = 2) -> dict:
    """Two bilevel steps with a few long-tail losses, one device against 2 replicas."""
    import numpy as np

    specs = _long_tail_specs()
    cases = [("logit_adjusted", "first"), ("balanced_softmax", "first"), ("ldam_drw1", "first"),
             ("class_balanced_focal", "second"), ("focal", "first")]
    out = {}
    for key, order in cases:
        spec, active = specs[key]
        single = _fit_once(tf_default_strategy(), spec.reduction, order, steps, loss=spec, drw_active=active)
        mirrored = _fit_once(strategy, spec.reduction, order, steps, loss=spec, drw_active=active)
        diff = lambda k: float(np.max(np.abs(np.asarray(single[k]) - np.asarray(mirrored[k]))))  # noqa: E731
        out[f"{key}/{order}"] = {
            "d_kernel": diff("kernel"), "d_alpha": diff("alpha"), "d_loss": diff("loss"),
            "d_arch_loss": diff("arch_loss"),
            "kernel_moved": float(np.abs(single["kernel"] - _kernel0()).max()),
            "alpha_moved": float(np.abs(single["alpha"]).max()),
        }
    return out


def tf_default_strategy():
    import tensorflow as tf

    return tf.distribute.get_strategy()


def main() -> None:
    strategy = distribute.make_strategy("mirrored", cpu_replicas=2)  # before any other TF op
    if sys.argv[1:] == ["long_tail"]:
        result = {"replicas": strategy.num_replicas_in_sync, "shares": long_tail_shares_main(strategy),
                  "fit": long_tail_fit_main(strategy)}
    else:
        result = {"replicas": strategy.num_replicas_in_sync, "shares": shares_main(strategy),
                  "fit": fit_main(strategy)}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
