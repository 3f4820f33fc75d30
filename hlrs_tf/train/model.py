"""Training wrapper of a derived network: the DARTS evaluation-protocol ``train_step`` (optionally BBN).

Per step, as the reference DARTS ``train.py``:

* loss = L(logits, y) + ``auxiliary_weight`` (0.4) * L(aux_logits, y) while the auxiliary head exists, with
  ``L`` the run's ``--loss`` (:func:`hlrs_tf.losses.long_tail.long_tail_loss`; cross-entropy by default), on
  both heads as the reference's one ``criterion``;
* gradient clipped to global norm ``grad_clip`` (5), *then* coupled L2 ``weight_decay * w`` added (the
  reference's ``clip_grad_norm_`` followed by ``SGD(weight_decay=...)``; Keras' own ``weight_decay`` would be
  decoupled, docs/method.md T5), then SGD with momentum (cosine learning rate, set by the optimizer's schedule);
* drop-path probability: the network's ``drop_path_prob`` variable, assigned per epoch by
  :class:`hlrs_tf.train.callbacks.DropPathSchedule`.

With a BBN network each element is ``((x_c, y_c), (x_r, y_r))`` and the loss is BBN's mixed loss
``alpha * CE(z, y_c) + (1 - alpha) * CE(z, y_r)`` (and the same mix of the two auxiliary losses), with
``alpha`` the non-trainable ``bbn_alpha`` variable assigned per epoch by
:class:`hlrs_tf.train.callbacks.MixingSchedule`.

Mixed precision (:mod:`hlrs_tf.runtime.precision`): the network computes in bfloat16 / float16, its logits and the
losses are float32; with ``mixed_float16`` the optimizer is a ``LossScaleOptimizer`` and the gradient is
unscaled before the clipping (:func:`hlrs_tf.runtime.precision.gradients`).

The test-set ``loss`` of ``evaluate`` (``val_loss``) stays the plain cross-entropy whatever ``--loss``, so runs
with different losses compare on one scale.

This model is for training only (single device); what is saved and exported is its ``network``.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from hlrs_tf.losses.bbn_mixing import bbn_loss
from hlrs_tf.losses.long_tail import LossSpec, long_tail_loss
from hlrs_tf.runtime import precision
from hlrs_tf.space.derived_network import DerivedNetwork


@keras.saving.register_keras_serializable(package="hlrs_tf")
class RetrainModel(keras.Model):
    """Trains a :class:`~hlrs_tf.space.derived_network.DerivedNetwork` with the DARTS evaluation recipe.

    Compile with the weight optimizer (``model.compile(optimizer=SGD(...))``), call :meth:`build_all`, then
    ``fit`` on :func:`hlrs_tf.data.pipeline.retrain_dataset`. ``predict`` / ``evaluate`` take plain ``(x, y)``.

    Args:
        network: The derived network.
        auxiliary_weight: Weight of the auxiliary loss (0.4).
        weight_decay: Coupled L2 (3e-4).
        grad_clip: Global-norm clip (5).
        loss: The training loss (:class:`hlrs_tf.losses.long_tail.LossSpec`; default cross-entropy). With BBN
            the loss is BBN's mixed cross-entropy and this must be plain ``ce``. A DRW loss gives the model a
            non-trainable ``drw_active`` variable that :class:`hlrs_tf.losses.long_tail.DRWSchedule` assigns per epoch.
        **kwargs: Forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        network: DerivedNetwork,
        auxiliary_weight: float = 0.4,
        weight_decay: float = 3e-4,
        grad_clip: float = 5.0,
        loss: LossSpec | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.loss_spec = LossSpec() if loss is None else loss
        if network.bbn and self.loss_spec.name != "ce":
            raise ValueError(f"--loss={self.loss_spec.name!r} is invalid: it must be ce with --bbn (BBN's loss is "
                             "its mixed cross-entropy)")
        self.network = network
        self.auxiliary_weight = float(auxiliary_weight)
        self.weight_decay = float(weight_decay)
        self.grad_clip = float(grad_clip)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.aux_loss_tracker = keras.metrics.Mean(name="aux_loss")
        # BBN's alpha_T; 1.0 is the parabolic schedule's first value. Unused without BBN.
        self.bbn_alpha = keras.Variable(1.0, trainable=False, dtype="float32", name="bbn_alpha")
        # DRW's switch (hlrs_tf.losses.long_tail.DRWSchedule); only with DRW, so other runs' checkpoints are unchanged.
        self.drw_active = (keras.Variable(0.0, trainable=False, dtype="float32", name="drw_active")
                           if self.loss_spec.drw else None)

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.layers.serialize(self.network),
            "auxiliary_weight": self.auxiliary_weight,
            "weight_decay": self.weight_decay,
            "grad_clip": self.grad_clip,
            "loss": self.loss_spec.to_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.layers.deserialize(config["network"])
        config["loss"] = LossSpec(**config["loss"])
        return cls(**config)

    def build(self, input_shape):
        del input_shape  # build_all builds the network explicitly

    def call(self, x, training=None):
        return self.network(x, training=training)

    @property
    def metrics(self):
        trackers = [self.loss_tracker, self.accuracy_tracker]
        return trackers + ([self.aux_loss_tracker] if self.network.auxiliary else [])

    def compile(self, optimizer, **kwargs):
        """Compiles with the weight optimizer (``jit_compile`` off by default: slower on CPU, docs/method.md T9)."""
        kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, **kwargs)

    def build_all(self, image_shape) -> None:
        """Builds the network, the optimizer and the metrics before ``fit`` (one trace, nothing built lazily).

        Args:
            image_shape: ``(H, W, C)``.
        """
        if not self.network.built:
            self.network.build((None, *image_shape))
        self.built = True
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.trainable_variables)
        for m in self.metrics:
            m.reset_state()

    @staticmethod
    def _accuracy(y, logits):
        return ops.mean(ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(y, "int64")), "float32"))

    def _loss(self, y, logits):
        """The training loss of one head's logits (``self.loss_spec``)."""
        return long_tail_loss(y, logits, self.loss_spec, self.drw_active)

    def _step_losses(self, data):
        """``(total loss, main loss, aux loss or None, accuracy)`` of one training element."""
        network = self.network
        if network.bbn:
            (x_c, y_c), (x_r, y_r) = data
            alpha = self.bbn_alpha
            logits, aux_c, aux_r = network.forward_bbn(x_c, x_r, alpha, training=True)
            loss = bbn_loss(self.loss_fn, logits, y_c, y_r, alpha)
            aux_loss = None
            if aux_c is not None:
                aux_loss = alpha * self.loss_fn(y_c, aux_c) + (1.0 - alpha) * self.loss_fn(y_r, aux_r)
            accuracy = alpha * self._accuracy(y_c, logits) + (1.0 - alpha) * self._accuracy(y_r, logits)
        else:
            x, y = data
            logits, aux = network.forward(x, training=True)
            loss = self._loss(y, logits)
            aux_loss = self._loss(y, aux) if aux is not None else None
            accuracy = self._accuracy(y, logits)
        total = loss if aux_loss is None else loss + self.auxiliary_weight * aux_loss
        return total, loss, aux_loss, accuracy

    def train_step(self, data):
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            total, loss, aux_loss, accuracy = self._step_losses(data)
        grads = precision.gradients(tape, total, variables, precision.loss_scale(self.optimizer))

        def clip_and_decay(gs):
            # Single device: the plain global-norm clip is the reference's clip_grad_norm_.
            gs, _ = tf.clip_by_global_norm(gs, self.grad_clip)
            return [g + self.weight_decay * v for g, v in zip(gs, variables)]

        precision.apply_gradients(self.optimizer, grads, variables, clip_and_decay)
        self.loss_tracker.update_state(total)
        self.accuracy_tracker.update_state(accuracy)
        if aux_loss is not None:
            self.aux_loss_tracker.update_state(aux_loss)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data[:2]
        logits = self.network(x, training=False)
        self.loss_tracker.update_state(self.loss_fn(y, logits))
        self.accuracy_tracker.update_state(self._accuracy(y, logits), sample_weight=ops.shape(y)[0])
        return {m.name: m.result() for m in self.metrics if m is not self.aux_loss_tracker}
