"""The bilevel DARTS trainer as a ``keras.Model`` with a custom ``train_step``.

Each step takes ``((x_train, y_train), (x_val, y_val))`` -- a batch of the weight split and a batch of the
architecture split -- and does, as the reference DARTS does:

1. the **architecture step** on the validation batch (Adam on the alphas, coupled L2 ``1e-3``), first order
   (gradient of the validation loss with the weights fixed) or second order (unrolled, below);
2. the **weight step** on the training batch (SGD + momentum on the weights, coupled L2 ``3e-4``, gradient
   clipped to global norm 5 before the decay is added, as ``clip_grad_norm_`` + ``SGD(weight_decay=...)``).

Keras' own ``weight_decay`` options are decoupled decay; the reference adds ``wd * v`` to the gradient, so
that is what happens here (docs/method.md T5).

Second order follows the reference's finite-difference form (docs/method.md M3), written with
``stateless_call`` so no variable is ever perturbed in place -- which keeps it correct under
MirroredStrategy, where an in-place perturbation of a mirrored variable from replica context is silently
wrong (docs/method.md T10):

* virtual step ``w' = w - xi (mu * buf + g_train + wd * w)``, ``xi`` the current weight lr. Keras' SGD keeps
  ``m = mu * m - lr * g`` (the lr is inside the buffer), so ``-xi * mu * buf`` is ``mu * m``: the virtual step
  is exactly the step the optimizer would take next;
* ``dalpha = grad_a L_val(w', a)`` and ``v = grad_w' L_val(w', a)``;
* ``H v ~ (grad_a L_train(w + eps v, a) - grad_a L_train(w - eps v, a)) / (2 eps)``, ``eps = 0.01 / ||v||``;
* architecture gradient ``dalpha - xi * H v``.

That is five forward/backward passes where first order runs two (three of them with weight gradients, against
one), so a second-order step costs ~2.4-2.8x a first-order one here; the reference's "about 2x" counts
PyTorch's first-order step, whose architecture pass computes the weight gradients too. A one-sided difference
reusing the virtual step's pass at ``(w, a)`` would save one pass (~2.1x) but was measured to change the
architecture gradient by 79-93% (relative norm) on small supernets: the Hessian-vector product of this
piecewise-smooth loss (ReLU, max pooling) is far from its linearisation at ``eps * ||v|| = 0.01``, so the
scheme matters as much as the signal, and the reference's central difference is kept.

BatchNorm statistics computed by these virtual passes are discarded; the real forward passes update them.

Mixed precision (:mod:`hlrs_tf.runtime.precision`), first order only: the network computes in bfloat16 / float16, the
losses and all gradients reaching the optimizers are float32. With ``mixed_float16`` both optimizers are
``LossScaleOptimizer`` s: each pass differentiates its loss times the scale of the optimizer its gradients are
for and divides the scale out at once (:func:`hlrs_tf.runtime.precision.gradients`), so the clipping and the coupled
decay see true gradients; :func:`hlrs_tf.runtime.precision.apply_gradients` leaves the overflow check and the scale
updates to the optimizers. Second order refuses a mixed network (``precision.SECOND_ORDER_REASON``): its
finite difference moves the weights by less than bfloat16 / float16 can resolve.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from hlrs_tf.losses import reweighting as losses
from hlrs_tf.losses.long_tail import LossSpec, long_tail_loss
from hlrs_tf.runtime import precision, sync_bn
from hlrs_tf.runtime.distribute import PrebuiltModelMixin, step_logs
from hlrs_tf.space.supernet import SearchNetwork, split_variables

ORDERS = ("first", "second")


def num_replicas() -> int:
    """Replicas in sync of the current ``tf.distribute`` strategy (1 outside any)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def traced_once(fn):
    """``fn`` as a ``tf.function`` of its own when called while a step is being traced, else ``fn`` itself.

    A step runs the same forward/backward pass on other batches or other variable values: twice in first
    order (architecture and weight pass), five times in second order. Traced inline, every call adds its own
    copy of the pass -- 15k graph ops at C=16 / 8 cells, built in Python at ~0.5 ms each -- and that was half of
    the start-up. A nested ``tf.function`` is traced once and called as a function op. When TensorFlow
    instantiates the step it inlines the calls and drops what a call's results do not reach (the weight
    gradients of the architecture pass), so the step runs the same kernels as before (benchmarks/NOTES.md:
    same step time, Python trace 12.2 -> 6.6 s at quickstart size). Eager calls (tests, debugging) stay
    plain Python, and so do passes with synchronised BN over several replicas: its cross-replica sums are
    synchronisation points (``merge_call``), which TensorFlow refuses inside a nested ``tf.function``, so a
    multi-replica step is traced inline as before.

    Args:
        fn: The pass, a function of tensors (nests of tensors) only.

    Returns:
        A new ``tf.function`` of ``fn`` inside a trace (one per traced step), ``fn`` outside or when BN
        synchronises replicas.
    """
    if not tf.inside_function() or sync_bn.should_sync():
        return fn
    return tf.function(fn, autograph=False)


def clip_by_global_norm(grads, clip_norm: float):
    """Clips gradients by the global norm of the *aggregated* gradient.

    Under MirroredStrategy each replica holds its share of the gradient (Keras losses are scaled by
    ``1 / num_replicas``); clipping those locally would clip a different vector than a single device does
    (docs/method.md T7). So the norm is taken of the all-reduced sum, and every replica scales by the same factor.

    Args:
        grads: List of gradient tensors (this replica's share).
        clip_norm: Maximum global norm.

    Returns:
        ``(clipped_grads, global_norm)``.
    """
    ctx = tf.distribute.get_replica_context()
    total = grads
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm(total)
    scale = clip_norm / tf.maximum(norm, clip_norm)
    return [g * scale for g in grads], norm


@keras.saving.register_keras_serializable(package="hlrs_tf")
class DartsSearchModel(PrebuiltModelMixin, keras.Model):
    """DARTS bilevel search: architecture step then weight step, first or second order.

    Compile with both optimizers: ``model.compile(optimizer=sgd, arch_optimizer=adam)``; then ``fit`` on a
    dataset of ``((x_train, y_train), (x_val, y_val))`` pairs. ``call`` runs the supernet (for ``predict`` /
    ``evaluate`` on plain ``(x, y)`` data).

    Args:
        network: The supernet (:class:`~hlrs_tf.space.supernet.SearchNetwork` or a layer with the same
            ``arch_variables`` / ``genotype()`` interface).
        order: ``"first"`` or ``"second"``.
        weight_decay: Coupled L2 on the weights (3e-4).
        arch_weight_decay: Coupled L2 on the alphas (1e-3).
        grad_clip: Global-norm clip of the weight gradient (5).
        class_weights: Optional per-class loss weights (re-weighting, e.g.
            :func:`hlrs_tf.losses.reweighting.effective_number_weights`): each example's cross-entropy is scaled by the
            weight of its class, on both levels; ``None`` is plain cross-entropy. A shorthand for
            ``loss=LossSpec("class_balanced", reduction, class_weights)``; not with ``loss``.
        class_weight_reduction: How the weighted loss reduces over the batch
            (:func:`hlrs_tf.losses.reweighting.class_weighted_cross_entropy`): ``"weighted_mean"``, ``sum(w_y CE) /
            sum(w_y)``
            over the global batch, or ``"batch_mean"``, ``sum(w_y CE) / batch size``. Unused without
            ``class_weights``.
        loss: The loss of both levels (:class:`hlrs_tf.losses.long_tail.LossSpec`, ``--loss``); ``None``: from
            ``class_weights``. A DRW loss gives the model a non-trainable ``drw_active`` variable (0 or 1) that
            :class:`hlrs_tf.losses.long_tail.DRWSchedule` assigns per epoch.
        **kwargs: Forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        network: SearchNetwork,
        order: str = "first",
        weight_decay: float = 3e-4,
        arch_weight_decay: float = 1e-3,
        grad_clip: float = 5.0,
        class_weights=None,
        class_weight_reduction: str = "weighted_mean",
        loss: LossSpec | dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.network = network
        self.order = order
        self.weight_decay = float(weight_decay)
        self.arch_weight_decay = float(arch_weight_decay)
        self.grad_clip = float(grad_clip)
        if loss is None:
            name = "ce" if class_weights is None else "class_balanced"
            loss = LossSpec(name, losses.check_reduction(class_weight_reduction), class_weights)
        elif class_weights is not None:
            raise ValueError("give the class weights in `loss` (a LossSpec), not both")
        self.loss_spec = LossSpec(**loss) if isinstance(loss, dict) else loss
        # DRW's switch, assigned per epoch (hlrs_tf.losses.long_tail.DRWSchedule); only with DRW, so the variables
        # (and so the checkpoints) of every other run are unchanged.
        self.drw_active = (keras.Variable(0.0, trainable=False, dtype="float32", name="drw_active")
                           if self.loss_spec.drw else None)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.arch_loss_tracker = keras.metrics.Mean(name="arch_loss")
        self.arch_accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="arch_accuracy")
        self.arch_optimizer = None

    @property
    def class_weights(self) -> list | None:
        """The loss' class weights (``None`` when it is not class-weighted); part of :attr:`loss_spec`."""
        return None if not self.loss_spec.weighted else list(self.loss_spec.class_weights)

    @property
    def class_weight_reduction(self) -> str:
        """How the class-weighted loss reduces over the batch; part of :attr:`loss_spec`."""
        return self.loss_spec.reduction

    # ---------------------------------------------------------------- Keras plumbing
    def build(self, input_shape):
        del input_shape  # the network builds on its first call (see ops.CompositeLayer)

    def call(self, x, training=None):
        return self.network(x, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.arch_loss_tracker, self.arch_accuracy_tracker]

    def compile(self, optimizer, arch_optimizer, **kwargs):
        """Compiles with the weight optimizer and the architecture optimizer.

        Args:
            optimizer: Optimizer of the network weights (SGD with momentum in DARTS).
            arch_optimizer: Optimizer of the alphas (Adam). Give it a float learning rate so a callback can
                set it per epoch (a ``LearningRateSchedule`` cannot be assigned; docs/method.md T13).
            **kwargs: Forwarded to ``keras.Model.compile`` (``jit_compile`` defaults to False: XLA is ~10x
                slower on CPU and fails under MirroredStrategy).
        """
        kwargs.setdefault("jit_compile", False)
        if self.order == "second" and self.network.compute_dtype != "float32":
            raise ValueError(f"order='second' needs a float32 network, not {self.network.dtype_policy.name}: "
                             f"{precision.SECOND_ORDER_REASON}")
        super().compile(optimizer=optimizer, **kwargs)
        self.arch_optimizer = arch_optimizer

    def build_all(self, input_shape) -> None:
        """Builds every layer, both optimizers and the metrics before ``fit``.

        Without this Keras builds lazily inside ``fit`` by calling the model symbolically on the zipped
        training element, which traces twice and crashes under a strategy (docs/method.md T3).

        Args:
            input_shape: Image shape ``(H, W, C)``.
        """
        dummy = ops.zeros((2, *input_shape))
        self(dummy, training=False)
        weights, alphas = self.split_variables()
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(weights)
        if self.arch_optimizer is not None and not self.arch_optimizer.built:
            self.arch_optimizer.build(alphas)
        # Metrics are built lazily by their first update_state; give them one so nothing builds under trace.
        for m in self.metrics:
            m.reset_state()

    def split_variables(self):
        """``(weight_variables, arch_variables)``, split by identity."""
        return split_variables(self, self.network.arch_variables)

    def genotype(self, max_skip_connect: int | None = None, replaced: list | None = None):
        """The genotype derived from the current alphas (arguments as :meth:`SearchNetwork.genotype`)."""
        return self.network.genotype(max_skip_connect=max_skip_connect, replaced=replaced)

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.layers.serialize(self.network),
            "order": self.order,
            "weight_decay": self.weight_decay,
            "arch_weight_decay": self.arch_weight_decay,
            "grad_clip": self.grad_clip,
            "class_weight_reduction": self.class_weight_reduction,  # also in "loss"; kept for readers
            "loss": self.loss_spec.to_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.layers.deserialize(config["network"])
        if "loss" in config:  # the LossSpec carries the weights and the reduction
            config.pop("class_weights", None)
            config.pop("class_weight_reduction", None)
        return cls(**config)

    # ---------------------------------------------------------------- batches and losses (BBN overrides)
    # A "batch" is one side of a step: ``(x, y)`` here, ``(x_c, y_c, x_r, y_r)`` for BBN. These three hooks
    # are all that differs between the loss variants; the bilevel step below is written against them.
    def _inputs(self, batch):
        """The model input of a batch."""
        return batch[0]

    def _loss_from_logits(self, batch, logits):
        """The loss of a batch given its logits: ``self.loss_spec`` (``hlrs_tf.losses.long_tail.long_tail_loss``).

        This replica's share under a strategy, as Keras' losses: the shares sum to the global-batch loss.
        """
        return long_tail_loss(batch[1], logits, self.loss_spec, self.drw_active)

    def _traced_pass(self, fn):
        """``traced_once(fn)``, or ``fn`` itself when the loss all-reduces across replicas.

        The weighted mean needs the global batch's weight sum, a ``merge_call`` under MirroredStrategy, which
        TensorFlow refuses inside a nested ``tf.function`` (as synchronised BN's sums; see :func:`traced_once`).
        With synchronised BN on (the default) a multi-replica pass is inline anyway; this covers it switched off.
        """
        if self.loss_spec.syncs_replicas():
            return fn
        return traced_once(fn)

    def _update_accuracy(self, tracker, batch, logits):
        tracker.update_state(batch[1], logits)

    def _loss(self, batch, training=True):
        """Loss and logits of one batch with the current variables."""
        logits = self(self._inputs(batch), training=training)
        return self._loss_from_logits(batch, logits), logits

    def _stateless_loss(self, trainable_values, non_trainable_values, batch):
        """Loss and logits at given variable values, without touching the variables (for the unrolled step)."""
        logits, _ = self.stateless_call(trainable_values, non_trainable_values, self._inputs(batch), training=True)
        return self._loss_from_logits(batch, logits), logits

    # ---------------------------------------------------------------- the bilevel step
    # No tensor-dependent Python control flow here or below, so autograph's source conversion (~1 s of
    # start-up at the paper size) is skipped.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        train_batch, val_batch = data
        weights, alphas = self.split_variables()

        # The step runs the same forward/backward pass several times; each is traced once (see traced_once).
        loss_and_grads = self._traced_pass(self._loss_and_grads)
        if self.order == "first":
            arch_loss, arch_logits, arch_grads = self._first_order_arch_grads(val_batch, loss_and_grads)
        else:
            arch_loss, arch_logits, arch_grads = self._second_order_arch_grads(
                train_batch, val_batch, weights, alphas
            )
        scale = 1.0 / num_replicas()  # the decay term must sum to wd * a over replicas
        precision.apply_gradients(
            self.arch_optimizer, arch_grads, alphas,
            lambda gs: [g + (self.arch_weight_decay * scale) * a for g, a in zip(gs, alphas)],
        )

        def clip_and_decay(gs):  # on the true gradient: clip first, then the coupled decay (the reference)
            gs, _ = clip_by_global_norm(gs, self.grad_clip)
            return [g + (self.weight_decay * scale) * w for g, w in zip(gs, weights)]

        loss, logits, grads, _ = loss_and_grads(train_batch, precision.loss_scale(self.optimizer))
        precision.apply_gradients(self.optimizer, grads, weights, clip_and_decay)

        unscale = float(num_replicas())  # trackers want the plain mean loss (trap 6)
        self.loss_tracker.update_state(loss * unscale)
        self._update_accuracy(self.accuracy_tracker, train_batch, logits)
        self.arch_loss_tracker.update_state(arch_loss * unscale)
        self._update_accuracy(self.arch_accuracy_tracker, val_batch, arch_logits)
        return step_logs({m.name: m.result() for m in self.metrics})  # MWMS-safe shape

    def _loss_and_grads(self, batch, loss_scale=None):
        """``(loss, logits, weight_grads, arch_grads)`` of one batch at the current variables.

        Both gradient groups are returned so that one trace serves the architecture pass and the weight pass;
        inside a traced step the group a pass does not use is never computed (see :func:`traced_once`).
        ``loss_scale``: the loss scale of the optimizer the gradients are for (``None``: no loss scaling); the
        gradients returned are unscaled (:func:`hlrs_tf.runtime.precision.gradients`).
        """
        weights, alphas = self.split_variables()
        with tf.GradientTape() as tape:
            loss, logits = self._loss(batch, training=True)
        grads = precision.gradients(tape, loss, weights + alphas, loss_scale)
        return loss, logits, grads[: len(weights)], grads[len(weights) :]

    def _first_order_arch_grads(self, val_batch, loss_and_grads=None):
        loss_scale = precision.loss_scale(self.arch_optimizer)
        loss, logits, _, arch_grads = (loss_and_grads or self._loss_and_grads)(val_batch, loss_scale)
        return loss, logits, arch_grads

    def _stateless_loss_and_grads(self, assemble, w_vals, a_vals, non_trainable, batch):
        """``(loss, logits, weight_grads, arch_grads)`` at given weight and alpha values (the unrolled passes)."""
        with tf.GradientTape() as tape:
            tape.watch(w_vals)
            tape.watch(a_vals)
            loss, logits = self._stateless_loss(assemble(w_vals, a_vals), non_trainable, batch)
        grads = tape.gradient(loss, list(w_vals) + list(a_vals))
        return loss, logits, grads[: len(w_vals)], grads[len(w_vals) :]

    def _momentum_values(self, weights):
        """Keras SGD momentum buffers (``m = mu m - lr g``) for ``weights``; zeros without momentum."""
        opt = precision.base_optimizer(self.optimizer)  # the SGD inside a LossScaleOptimizer
        if getattr(opt, "momentum", 0.0) and getattr(opt, "momentums", None):
            return [opt.momentums[opt._get_variable_index(w)] for w in weights], float(opt.momentum)
        return [tf.zeros_like(w) for w in weights], 0.0

    def _second_order_arch_grads(self, train_batch, val_batch, weights, alphas):
        trainable = self.trainable_variables
        arch_ids = {id(a) for a in alphas}
        w_pos = [i for i, v in enumerate(trainable) if id(v) not in arch_ids]
        a_pos = [i for i, v in enumerate(trainable) if id(v) in arch_ids]
        # Tensors, not the variables ``v.value`` is on this backend: the shared pass below must see the same
        # argument types in every call, or it is traced again.
        non_trainable = [tf.convert_to_tensor(v) for v in self.non_trainable_variables]
        w_vals = [tf.convert_to_tensor(v) for v in weights]
        a_vals = [tf.convert_to_tensor(v) for v in alphas]

        def assemble(ws, as_):
            values = [None] * len(trainable)
            for i, w in zip(w_pos, ws):
                values[i] = w
            for i, a in zip(a_pos, as_):
                values[i] = a
            return values

        xi = ops.cast(self.optimizer.learning_rate, "float32")
        # All four passes are one function of (weights, alphas, batch), traced once (see traced_once). Always
        # float32, without loss scaling (see compile: second order refuses mixed precision).
        grads_at = self._traced_pass(
            lambda ws, as_, batch: self._stateless_loss_and_grads(assemble, ws, as_, non_trainable, batch)
        )

        # 1. Virtual weight step w' on the training batch.
        _, _, g_train, _ = grads_at(w_vals, a_vals, train_batch)
        # Each replica holds its share of the gradient (losses are scaled by 1/replicas); the virtual step
        # and v must be the global ones, identical on every replica.
        ctx = tf.distribute.get_replica_context()
        replicated = ctx is not None and ctx.num_replicas_in_sync > 1
        if replicated:
            g_train = ctx.all_reduce(tf.distribute.ReduceOp.SUM, g_train)
        momentums, mu = self._momentum_values(weights)
        w_virtual = [
            w + mu * m - xi * (g + self.weight_decay * w)
            for w, m, g in zip(w_vals, momentums, g_train)
        ]

        # 2. Validation loss at (w', a): dalpha and v.
        loss_val, logits_val, v, d_alpha = grads_at(w_virtual, a_vals, val_batch)
        if replicated:
            v = ctx.all_reduce(tf.distribute.ReduceOp.SUM, v)

        # 3. Hessian-vector product by central differences around w.
        eps = 0.01 / (tf.linalg.global_norm(v) + 1e-12)

        def arch_grad_at(sign):
            ws = [w + sign * eps * vi for w, vi in zip(w_vals, v)]
            return grads_at(ws, a_vals, train_batch)[3]

        g_plus = arch_grad_at(1.0)
        # The two passes are independent, so the executor would run them side by side and hold both passes'
        # activations at once; one after the other costs no time on a busy CPU and keeps the peak down.
        with tf.control_dependencies(g_plus):
            g_minus = arch_grad_at(-1.0)
        arch_grads = [
            da - xi * (gp - gm) / (2.0 * eps) for da, gp, gm in zip(d_alpha, g_plus, g_minus)
        ]
        return loss_val, logits_val, arch_grads
