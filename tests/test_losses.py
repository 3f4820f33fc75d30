"""The class-weighted cross-entropy (``hlrs_tf.losses.reweighting``): both reductions against numpy oracles
written from the references' semantics, the effective-learning-rate difference, the model and trainer plumbing, and the
weighted mean over 2 replicas (MirroredStrategy over 2 logical CPUs, in a subprocess) against one device.

Oracles (numpy, float64):

* ``weighted_mean``: PyTorch's ``F.cross_entropy(logits, y, weight=w)`` (kaidic/LDAM-DRW ``cifar_train.py``),
  documented as ``sum_i w[y_i] * ce_i / sum_i w[y_i]``;
* ``batch_mean``: Cui et al.'s TensorFlow code / Keras ``sample_weight``: ``sum_i w[y_i] * ce_i / B``.
"""


import keras
import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.config import choices as config_lib
from hlrs_tf.config.search import SearchConfig
from hlrs_tf.data.sources import load_dataset
from hlrs_tf.losses import reweighting as losses
from hlrs_tf.losses.reweighting import class_weighted_cross_entropy, effective_number_weights
from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.space.supernet import SearchNetwork

# CIFAR-10-LT at imbalance ratio 100 (Cui et al.'s profile n_i = 5000 * 0.01^(i/9)).
CIFAR10_LT_100 = np.floor(5000 * 0.01 ** (np.arange(10) / 9))
# The loss is float32: a log-sum-exp over 10 logits of size ~3 and a sum over 64 examples. Measured errors
# against float64 are ~1e-7 relative; 2e-6 (~16 float32 ulps) leaves room for summation order only.
RTOL = 2e-6


def ce_np(y, logits):
    """Per-example cross-entropy in float64: logsumexp(z) - z_y."""
    z = np.asarray(logits, np.float64)
    m = z.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    return lse - z[np.arange(len(y)), y]


def torch_weighted_ce(y, logits, w):
    """``F.cross_entropy(logits, y, weight=w)`` (reduction 'mean'): sum(w_y * ce) / sum(w_y)."""
    wy = np.asarray(w, np.float64)[y]
    return float((wy * ce_np(y, logits)).sum() / wy.sum())


def batch_mean_ce(y, logits, w):
    """Cui et al.'s reduction: sum(w_y * ce) / batch size."""
    wy = np.asarray(w, np.float64)[y]
    return float((wy * ce_np(y, logits)).sum() / len(y))


def long_tailed_batch(n=64, seed=0):
    """Labels drawn from the CIFAR-10-LT-100 class distribution (as a uniform sampler gives) and random logits."""
    rng = np.random.default_rng(seed)
    y = rng.choice(10, size=n, p=CIFAR10_LT_100 / CIFAR10_LT_100.sum()).astype("int32")
    logits = (3.0 * rng.normal(size=(n, 10))).astype("float32")
    return y, logits


def tf_loss(y, logits, w, reduction):
    return float(class_weighted_cross_entropy(tf.constant(y), tf.constant(logits), np.asarray(w, "float32"),
                                              reduction))


def loss_and_logit_grad(y, logits, w, reduction):
    z = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = class_weighted_cross_entropy(tf.constant(y), z, np.asarray(w, "float32"), reduction)
    return float(loss), tape.gradient(loss, z).numpy()


# ------------------------------------------------------------------------------------------------ the function
def test_reductions_are_the_configs():
    assert losses.CLASS_WEIGHT_REDUCTIONS == config_lib.CLASS_WEIGHT_REDUCTIONS == ("weighted_mean", "batch_mean")


@pytest.mark.parametrize("reduction", ["weighted_mean", "batch_mean"])
def test_equal_weights_give_plain_cross_entropy(reduction):
    """All-ones weights: both reductions are the plain mean cross-entropy (Keras' and the numpy oracle)."""
    y, logits = long_tailed_batch()
    plain = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))
    ours = tf_loss(y, logits, np.ones(10), reduction)
    assert ours == pytest.approx(float(ce_np(y, logits).mean()), rel=RTOL)
    assert ours == pytest.approx(plain, rel=RTOL)


def test_weighted_mean_is_invariant_to_the_weights_scale():
    """Any equal weights give plain CE; scaling unequal weights changes neither loss nor gradient."""
    y, logits = long_tailed_batch()
    w = effective_number_weights(CIFAR10_LT_100)
    assert tf_loss(y, logits, np.full(10, 2.5), "weighted_mean") == pytest.approx(ce_np(y, logits).mean(), rel=RTOL)
    loss1, grad1 = loss_and_logit_grad(y, logits, w, "weighted_mean")
    loss10, grad10 = loss_and_logit_grad(y, logits, 10.0 * w, "weighted_mean")
    assert loss10 == pytest.approx(loss1, rel=RTOL)
    np.testing.assert_allclose(grad10, grad1, rtol=1e-5, atol=1e-9)  # float32 gradient entries ~1e-3, same ops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_the_reference_oracles(seed):
    """Long-tailed batch, Cui weights (beta 0.9999): weighted_mean is F.cross_entropy(weight=w), batch_mean
    Cui et al.'s sum / B -- and they differ by the batch's mean weight, exactly."""
    y, logits = long_tailed_batch(seed=seed)
    w = effective_number_weights(CIFAR10_LT_100)
    weighted, batch = tf_loss(y, logits, w, "weighted_mean"), tf_loss(y, logits, w, "batch_mean")
    assert weighted == pytest.approx(torch_weighted_ce(y, logits, w), rel=RTOL)
    assert batch == pytest.approx(batch_mean_ce(y, logits, w), rel=RTOL)
    assert batch == pytest.approx(weighted * w[y].mean(), rel=RTOL)


def test_single_class_batch_weighted_mean_is_ce_batch_mean_is_w_times_it():
    """All examples of one class with weight w: weighted_mean is plain CE whatever w (same gradient too),
    batch_mean is w * CE (gradient scaled by w)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(16, 10)).astype("float32")
    y = np.full(16, 7, "int32")
    w = np.ones(10)
    w[7] = 0.04
    ce = ce_np(y, logits).mean()
    _, plain_grad = loss_and_logit_grad(y, logits, np.ones(10), "batch_mean")
    loss_wm, grad_wm = loss_and_logit_grad(y, logits, w, "weighted_mean")
    loss_bm, grad_bm = loss_and_logit_grad(y, logits, w, "batch_mean")
    assert loss_wm == pytest.approx(ce, rel=RTOL)
    assert loss_bm == pytest.approx(0.04 * ce, rel=RTOL)
    np.testing.assert_allclose(grad_wm, plain_grad, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(grad_bm, 0.04 * plain_grad, rtol=1e-5, atol=1e-9)


def test_batch_mean_shrinks_the_step_on_cifar10_lt():
    """At ratio 100 the Cui weights' mean over a long-tailed batch is ~0.17: batch_mean's gradient is that
    fraction of weighted_mean's (the ~5.8x smaller effective learning rate), on the same batch."""
    w = effective_number_weights(CIFAR10_LT_100)
    p = CIFAR10_LT_100 / CIFAR10_LT_100.sum()
    assert float(p @ w) == pytest.approx(0.1710, abs=5e-4)  # hand-checked: sum_c p_c w_c for this profile
    y, logits = long_tailed_batch(n=512, seed=4)
    _, grad_wm = loss_and_logit_grad(y, logits, w, "weighted_mean")
    _, grad_bm = loss_and_logit_grad(y, logits, w, "batch_mean")
    ratio = np.linalg.norm(grad_bm) / np.linalg.norm(grad_wm)
    assert ratio == pytest.approx(w[y].mean(), rel=1e-5)  # exactly the batch's mean weight
    assert 0.12 < ratio < 0.22  # a 512-example draw: its mean weight is within sampling noise of 0.171


def test_zero_weight_batch_is_zero_not_nan():
    """Departure from F.cross_entropy (NaN): a batch whose weights sum to 0 contributes 0."""
    y, logits = np.zeros(4, "int32"), np.ones((4, 3), "float32")
    assert tf_loss(y, logits, [0.0, 1.0, 1.0], "weighted_mean") == 0.0


def test_low_precision_logits_and_column_labels():
    y, logits = long_tailed_batch(n=16)
    w = effective_number_weights(CIFAR10_LT_100)
    loss = class_weighted_cross_entropy(tf.constant(y[:, None]), tf.constant(logits, tf.bfloat16), w)
    assert loss.dtype == tf.float32
    # bfloat16 logits carry 8 bits of mantissa: relative error up to 2^-8 per logit of size ~3.
    assert float(loss) == pytest.approx(torch_weighted_ce(y, logits, w), rel=5e-2)


def test_bad_reduction_names_the_flag():
    with pytest.raises(ValueError, match=r"--class_weight_reduction='mean' is invalid: it must be one of "
                                         r"weighted_mean, batch_mean"):
        class_weighted_cross_entropy([0], [[0.0, 1.0]], [1.0, 1.0], "mean")
    with pytest.raises(ValueError, match="--class_weight_reduction='sum'"):
        DartsSearchModel(SearchNetwork(4, 10, 3), class_weights=[1.0] * 10, class_weight_reduction="sum")


# ------------------------------------------------------------------------------------------------ plumbing
def test_model_config_carries_the_reduction():
    model = DartsSearchModel(SearchNetwork(4, 10, 3), class_weights=[0.5] * 10, class_weight_reduction="batch_mean")
    config = model.get_config()
    assert config["class_weight_reduction"] == "batch_mean"
    # SearchNetwork is not registered with Keras (hlrs_tf.space.supernet), so name it for the round trip.
    with keras.saving.custom_object_scope({"SearchNetwork": SearchNetwork}):
        clone = DartsSearchModel.from_config(config)
    assert clone.class_weight_reduction == "batch_mean" and clone.class_weights == [0.5] * 10
    assert DartsSearchModel(SearchNetwork(4, 10, 3)).class_weight_reduction == "weighted_mean"


@pytest.mark.parametrize("reduction", ["weighted_mean", "batch_mean"])
def test_model_loss_uses_the_reduction(reduction):
    y, logits = long_tailed_batch(n=16)
    w = effective_number_weights(CIFAR10_LT_100)
    model = DartsSearchModel(SearchNetwork(4, 10, 3), class_weights=w.tolist(), class_weight_reduction=reduction)
    loss = float(model._loss_from_logits((None, tf.constant(y)), tf.constant(logits)))
    oracle = torch_weighted_ce if reduction == "weighted_mean" else batch_mean_ce
    assert loss == pytest.approx(oracle(y, logits, w), rel=RTOL)
    if reduction == "batch_mean":  # bit-identical to the loss before the option existed
        old = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            y, logits, sample_weight=keras.ops.take(keras.ops.convert_to_tensor(model.class_weights), y))
        assert loss == float(old)


@pytest.mark.parametrize("reduction", ["weighted_mean", "batch_mean"])
def test_build_model_threads_the_config(reduction):
    from hlrs_tf.search.task import build_model

    config = SearchConfig.create(dataset="digits", channels=2, layers=3, loss="class_balanced",
                          class_weight_reduction=reduction)
    spec = load_dataset("digits").spec
    model = build_model(config, spec, total_steps=1, class_counts=[100, 50, 20, 10, 5, 5, 3, 2, 1, 1])
    assert model.class_weight_reduction == reduction
    np.testing.assert_allclose(model.class_weights,
                               effective_number_weights([100, 50, 20, 10, 5, 5, 3, 2, 1, 1],
                                                        config.objective.reweight_beta))


# ------------------------------------------------------------------------------------------------ 2 replicas
@pytest.fixture(scope="module")
def replicas(replica_worker):
    # ~30 s on 2 shared cores (8 short fits of a toy network).
    return replica_worker()


@pytest.mark.parametrize("reduction", ["weighted_mean", "batch_mean"])
def test_replica_shares_sum_to_the_single_device_loss(replicas, reduction):
    res = replicas["shares"][reduction]
    assert replicas["replicas"] == 2
    # The head class fills one replica's slice: the slices' weight sums differ, so the split matters.
    assert res["slices"] == [[0, 0, 0, 0], [0, 1, 2, 3]]
    # float32 sums of 4 + 4 vs 8 terms of size ~2: a few ulps (measured <= 2.4e-7).
    assert res["replicated"] == pytest.approx(res["single"], abs=1e-6)
    assert res["d_grad"] <= 1e-6 * max(1.0, res["grad_scale"])  # summed per-replica gradients, measured ~6e-8
    if reduction == "weighted_mean":
        # Control: averaging each replica's own weighted mean would be far off (2.07 vs 2.28 here).
        assert abs(res["naive_local_mean"] - res["single"]) > 0.1


@pytest.mark.parametrize("case", ["weighted_mean/first", "weighted_mean/second", "batch_mean/first",
                                  "batch_mean/second", "weighted_mean/first/nosync", "weighted_mean/second/nosync"])
def test_mirrored_search_steps_match_one_device(replicas, case):
    """Two bilevel steps of DartsSearchModel over 2 replicas equal one device (first and second order; nosync:
    synchronised BN off, so the passes would be nested tf.functions but for the all-reduce)."""
    res = replicas["fit"][case]
    assert res["kernel_moved"] > 0.1 and res["alpha_moved"] > 0.1  # large steps: the comparison has power
    # Measured <= 1.2e-7 on the weights and losses; second order's finite-difference Hessian term divides
    # float noise by eps = 0.01 / ||v||, measured 1.8e-6 on the alphas.
    assert res["d_kernel"] < 1e-6 and res["d_loss"] < 1e-6 and res["d_arch_loss"] < 2e-6, res
    assert res["d_alpha"] < (1e-6 if "first" in case else 2e-5), res
