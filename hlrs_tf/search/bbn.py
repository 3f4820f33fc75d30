"""BBN (Bilateral-Branch Network) on the DARTS supernet, and its bilevel search model.

docs/method.md M4. The supernet up to (not including) its last cell is the **trunk**, shared by two **branch
cells**, both copies of the last cell and both driven by the shared alphas of their cell type:

* the *conventional* branch sees batches of a uniform sampler, the *re-balancing* branch batches of the
  reversed sampler (class ``i`` drawn with probability proportional to ``N_max / N_i``);
* their globally pooled features ``f_c`` and ``f_r`` go through **one** classifier:
  ``z = W(2 * concat(alpha_T * f_c, (1 - alpha_T) * f_r))``;
* the loss is ``alpha_T * CE(z, y_c) + (1 - alpha_T) * CE(z, y_r)`` -- for the weight step and, on batches of
  the architecture split drawn the same way, for the architecture step;
* inference weights both branches equally (``alpha = 0.5``): ``z = W(concat(f_c, f_r))`` on one image batch.

The mixing maths (``alpha_T``, the mixed feature and loss) is :mod:`hlrs_tf.losses.bbn_mixing`, shared with the
retraining; :class:`~hlrs_tf.search.callbacks.HLRSCallback` assigns ``alpha_T`` once per epoch to the model's
non-trainable ``bbn_alpha`` variable, which the traced step reads.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from hlrs_tf.losses.bbn_mixing import bbn_loss, bbn_mix
from hlrs_tf.runtime.precision import policy_scope
from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.space.supernet import SearchNetwork


@keras.saving.register_keras_serializable(package="hlrs_tf")
class BBNSearchNetwork(SearchNetwork):
    """The DARTS supernet as a BBN: shared trunk, conventional and re-balancing branch cells, one classifier.

    The conventional branch is the supernet's own last cell (``cells[-1]``); the re-balancing branch is a
    second cell of the same type and shape with its own weights. Both read the cell-type alphas, so the
    genotype is derived exactly as for the plain supernet. Takes the arguments of
    :class:`~hlrs_tf.space.supernet.SearchNetwork`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        last = self.cells[-1]
        with policy_scope(self.dtype_policy):  # the network's dtype policy, as for its other cells
            self.rebalancing_cell = self.make_cell(last.channels, last.reduction, last.reduction_prev,
                                                   name="cell_rebalancing")
        # The classifier (built on first call) sees the concatenation of both branches: 2 * feature_dim.

    @property
    def trunk(self) -> list:
        """The shared cells (all but the last)."""
        return self.cells[:-1]

    def _branch_inputs(self, x, training=None):
        s0, s1 = self.stem(x, training=training)
        return self.run_cells(s0, s1, self.trunk, training=training)

    def _branch_features(self, s0, s1, cell, training=None):
        return ops.mean(self.run_cell(cell, s0, s1, training=training), axis=(1, 2))

    def branch_features(self, x, branch: str, training=None):
        """Pooled features of one branch on its own batch (``branch`` is ``"conventional"`` or ``"rebalancing"``)."""
        if branch not in ("conventional", "rebalancing"):
            raise ValueError(f"branch must be 'conventional' or 'rebalancing', got {branch!r}")
        cell = self.cells[-1] if branch == "conventional" else self.rebalancing_cell
        s0, s1 = self._branch_inputs(x, training=training)
        return self._branch_features(s0, s1, cell, training=training)

    def mixed_logits(self, x_c, x_r, alpha, training=None):
        """BBN's training logits: each batch through the trunk and its branch, features mixed by ``alpha``.

        The two batches pass the trunk separately, as in BBN (batch statistics are per batch).
        """
        f_c = self.branch_features(x_c, "conventional", training=training)
        f_r = self.branch_features(x_r, "rebalancing", training=training)
        return self.classifier(bbn_mix(f_c, f_r, alpha))

    def features(self, x, training=None):
        """Inference features: the trunk once, both branch cells, ``concat(f_c, f_r)`` (equal weights)."""
        s0, s1 = self._branch_inputs(x, training=training)
        f_c = self._branch_features(s0, s1, self.cells[-1], training=training)
        f_r = self._branch_features(s0, s1, self.rebalancing_cell, training=training)
        return bbn_mix(f_c, f_r, 0.5)


@keras.saving.register_keras_serializable(package="hlrs_tf")
class BBNSearchModel(DartsSearchModel):
    """Bilevel DARTS search with BBN's mixed loss on both levels (first and second order).

    Each side of a step is ``(x_c, y_c, x_r, y_r)``: a conventional and a re-balancing batch. The model
    input for the mixed forward pass is the pair ``(x_c, x_r)``; a single image tensor gives the
    equal-weight inference logits (``predict`` / ``evaluate``). ``bbn_alpha`` is a non-trainable variable
    (initially 1, the parabolic schedule's first value) that the schedule callback assigns each epoch.

    Args:
        network: A :class:`BBNSearchNetwork`.
        **kwargs: Forwarded to :class:`~hlrs_tf.search.bilevel.DartsSearchModel`.
    """

    def __init__(self, network: BBNSearchNetwork, **kwargs):
        super().__init__(network, **kwargs)
        self.bbn_alpha = keras.Variable(1.0, trainable=False, dtype="float32", name="bbn_alpha")

    def call(self, x, training=None):
        if isinstance(x, (tuple, list)):
            x_c, x_r = x
            return self.network.mixed_logits(x_c, x_r, self.bbn_alpha, training=training)
        return self.network(x, training=training)

    def _inputs(self, batch):
        x_c, _, x_r, _ = batch
        return (x_c, x_r)

    def _loss_from_logits(self, batch, logits):
        _, y_c, _, y_r = batch
        return bbn_loss(self.loss_fn, logits, y_c, y_r, self.bbn_alpha)

    def _update_accuracy(self, tracker, batch, logits):
        # BBN's training accuracy: the mixed-label accuracy alpha * acc(z, y_c) + (1 - alpha) * acc(z, y_r).
        _, y_c, _, y_r = batch
        alpha = tf.fill(tf.shape(y_c), tf.cast(self.bbn_alpha, tf.float32))
        tracker.update_state(y_c, logits, sample_weight=alpha)
        tracker.update_state(y_r, logits, sample_weight=1.0 - alpha)

    def build_all(self, input_shape) -> None:
        # The mixed path builds the re-balancing cell, the inference path the classifier on 2 * features.
        dummy = ops.zeros((2, *input_shape))
        self((dummy, dummy), training=False)
        super().build_all(input_shape)
