"""The long-tail losses of ``--loss`` (``hlrs_tf.losses.long_tail``, issue 19): every loss against a float64
numpy oracle written from its reference's semantics (value and gradient w.r.t. the logits), LDAM's margins on
CIFAR-10-LT, the identities between losses, DRW's switch (per epoch and across a killed and resumed run), the
config and flags, 2 replicas against one device, and a short real search and retraining with each loss.

Oracles (float64, from the references, not from the implementation):

* logit adjustment: google-research ``logit_adjustment/utils.py`` ``build_loss_fn``:
  ``mean CE(z + log(pi^tau + 1e-12), y)``;
* balanced softmax: BalancedMetaSoftmax ``loss/BalancedSoftmaxLoss.py``: ``mean CE(z + log n, y)``;
* LDAM: LDAM-DRW ``losses.py`` ``LDAMLoss``: ``F.cross_entropy(s * (z - m_y e_y), y, weight=w)``, i.e.
  ``sum_i w_yi CE_i / sum_i w_yi`` (PyTorch's documented weighted mean), ``m = 0.5 n^-1/4 / max``, ``s = 30``;
  DRW (``cifar_train.py``): ``w`` = 1 before the switch, the effective-number weights at beta 0.9999 after;
* focal: LDAM-DRW ``losses.py`` ``focal_loss``: ``mean (1 - p)^gamma CE`` with ``p = exp(-CE)``;
* class-balanced focal: ``sum w_y (1 - p_t)^gamma CE / sum w_y`` (our default weighted mean).

The gradient oracles are the analytic derivatives: ``dCE/dz = softmax(z') - e_y`` (times ``s`` for LDAM), and
for the focal loss ``d[(1 - p)^g L]/dL = g (1 - p)^(g-1) p L + (1 - p)^g`` with ``L = CE``, ``p = e^-L``.
"""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.config import flags as config_flags
from hlrs_tf.config.search import METHOD_PRESETS, METHODS, PAPER_METHODS, ConfigError, SearchConfig
from hlrs_tf.config.train import TrainConfig
from hlrs_tf.losses import long_tail as ltl
from hlrs_tf.losses.long_tail import LOSSES, DRWSchedule, LossSpec, drw_active, long_tail_loss
from hlrs_tf.losses.reweighting import effective_number_weights

# CIFAR-10-LT at ratio 100: int(5000 * 0.01 ** (i / 9)), written out.
CIFAR10_LT_100 = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], np.float64)
# Hand-written batch: 3 classes with counts 100 / 10 / 1, 4 examples (one confident, one uncertain, one wrong,
# one all-equal).
HAND_COUNTS = np.array([100.0, 10.0, 1.0])
HAND_Y = np.array([0, 1, 2, 2], np.int32)
HAND_Z = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-1.5, 1.0, 3.0], [0.0, 0.0, 0.0]], np.float32)


# ------------------------------------------------------------------------------------------------ oracles
def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ce_and_dce(y, z):
    """Per-example CE and dCE/dz in float64."""
    p = softmax(z)
    onehot = np.eye(z.shape[1])[y]
    return -np.log(p[np.arange(len(y)), y]), p - onehot


def oracle(name, y, z, counts, tau=1.0, gamma=2.0, weights=None):
    """(loss, dloss/dz) of the reference semantics, float64. ``weights``: LDAM's (DRW) class weights."""
    z = np.asarray(z, np.float64)
    n = len(y)
    if name == "logit_adjusted":
        prior = counts / counts.sum()
        ce, d = ce_and_dce(y, z + np.log(prior ** tau + 1e-12))
        return ce.mean(), d / n
    if name == "balanced_softmax":
        ce, d = ce_and_dce(y, z + np.log(counts))
        return ce.mean(), d / n
    if name == "ldam":
        m = counts ** -0.25
        m = 0.5 * m / m.max()
        zm = 30.0 * (z - np.eye(z.shape[1])[y] * m[y][:, None])
        ce, d = ce_and_dce(y, zm)
        w = np.ones(len(counts)) if weights is None else np.asarray(weights, np.float64)
        wy = w[y]
        return (wy * ce).sum() / wy.sum(), 30.0 * d * wy[:, None] / wy.sum()
    if name in ("focal", "class_balanced_focal"):
        ce, d = ce_and_dce(y, z)
        p = np.exp(-ce)
        fl = (1 - p) ** gamma * ce
        dfl_dce = gamma * (1 - p) ** (gamma - 1) * p * ce + (1 - p) ** gamma
        if name == "focal":
            return fl.mean(), dfl_dce[:, None] * d / n
        wy = effective_number_weights(counts, 0.9999)[y]
        return (wy * fl).sum() / wy.sum(), wy[:, None] * dfl_dce[:, None] * d / wy.sum()
    raise ValueError(name)


def ours(spec, y, z, drw=None):
    """(loss, dloss/dz) of the implementation, float32 in, float64 out."""
    zt = tf.constant(z, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        loss = long_tail_loss(tf.constant(y), zt, spec, None if drw is None else tf.constant(drw))
    return float(loss), tape.gradient(loss, zt).numpy().astype(np.float64)


def long_tailed_batch(counts, n=64, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    y = rng.choice(len(counts), size=n, p=counts / counts.sum()).astype(np.int32)
    return y, (scale * rng.normal(size=(n, len(counts)))).astype(np.float32)


# Tolerances. The losses run in float32 on logits of size <= ~3 (LDAM: s * z <= ~100): a log-sum-exp carries a
# relative error of a few float32 ulps (1.2e-7) of its largest term, so values get rtol 2e-6 and, for LDAM (30x
# larger terms, the loss itself can be small), atol 30 * 3 * 1.2e-7 * 10 ~ 1e-4. Gradient entries are at most
# (s/B): atol 1e-6 (3e-5 for LDAM, s = 30 times the softmax's float32 error) bounds a few ulps of those.
TOL = {"value": dict(rel=2e-6, abs=1e-6), "grad": dict(rtol=1e-5, atol=1e-6)}
TOL_LDAM = {"value": dict(rel=2e-6, abs=1e-4), "grad": dict(rtol=1e-5, atol=3e-5)}


def check(spec, name, y, z, counts, drw=None, **oracle_kwargs):
    tol = TOL_LDAM if name == "ldam" else TOL
    got, got_grad = ours(spec, y, z, drw)
    want, want_grad = oracle(name, y, z, counts, **oracle_kwargs)
    assert got == pytest.approx(want, **tol["value"])
    np.testing.assert_allclose(got_grad, want_grad, **tol["grad"])


# ------------------------------------------------------------------------------------------------ the formulas
@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjusted_against_the_reference(tau):
    for y, z, counts in [(HAND_Y, HAND_Z, HAND_COUNTS), (*long_tailed_batch(CIFAR10_LT_100), CIFAR10_LT_100)]:
        spec = LossSpec.from_counts("logit_adjusted", counts, la_tau=tau)
        check(spec, "logit_adjusted", y, z, counts, tau=tau)


def test_balanced_softmax_against_the_reference():
    for y, z, counts in [(HAND_Y, HAND_Z, HAND_COUNTS), (*long_tailed_batch(CIFAR10_LT_100, seed=1), CIFAR10_LT_100)]:
        check(LossSpec.from_counts("balanced_softmax", counts), "balanced_softmax", y, z, counts)


def test_hand_computed_logit_adjusted_value():
    """One example worked by hand: z = (0, 0, 0), y = 2, priors (100, 10, 1) / 111, tau 1: the adjusted logits
    are log(prior), so the loss is -log(prior_2) = log(111) = 4.70953 (the 1e-12 is below float32's reach)."""
    spec = LossSpec.from_counts("logit_adjusted", HAND_COUNTS)
    assert float(long_tail_loss(HAND_Y[3:], HAND_Z[3:], spec)) == pytest.approx(np.log(111.0), rel=2e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_ldam_against_the_reference(seed):
    for y, z, counts in [(HAND_Y, HAND_Z, HAND_COUNTS),
                         (*long_tailed_batch(CIFAR10_LT_100, seed=seed, scale=1.0), CIFAR10_LT_100)]:
        check(LossSpec.from_counts("ldam", counts), "ldam", y, z, counts)


def test_ldam_margins_on_cifar10_lt():
    """m_j = 0.5 n_j^(-1/4) / max_k n_k^(-1/4): 0.5 for the tail class (50), 0.5 * (50/5000)^(1/4) = 0.158114 for
    the head; the counts are int(5000 * 0.01^(i/9))."""
    counts = [int(5000 * 0.01 ** (i / 9)) for i in range(10)]
    assert counts == CIFAR10_LT_100.tolist()
    margins = ltl.ldam_margins(counts)
    expected = 0.5 * np.array(counts, np.float64) ** -0.25 / (50.0 ** -0.25)
    np.testing.assert_allclose(margins, expected, rtol=1e-12)
    assert margins[9] == pytest.approx(0.5, rel=1e-12) and margins[0] == pytest.approx(0.1581139, rel=1e-6)
    assert np.all(np.diff(margins) > 0)  # rarer classes get larger margins
    np.testing.assert_allclose(LossSpec.from_counts("ldam", counts).margins, expected, rtol=1e-7)


@pytest.mark.parametrize("active", [0.0, 1.0])
def test_ldam_drw_weights_against_the_reference(active):
    """Before the switch: equal weights (the reference's beta 0); after: effective-number weights, beta 0.9999,
    in F.cross_entropy(weight=w)'s weighted mean."""
    spec = LossSpec.from_counts("ldam", CIFAR10_LT_100, drw=True)
    weights = None if not active else effective_number_weights(CIFAR10_LT_100, 0.9999)
    y, z = long_tailed_batch(CIFAR10_LT_100, seed=2, scale=1.0)
    check(spec, "ldam", y, z, CIFAR10_LT_100, drw=active, weights=weights)
    with pytest.raises(ValueError, match="drw_active"):
        long_tail_loss(y, z, spec)


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5])
def test_focal_against_the_reference(gamma):
    for y, z, counts in [(HAND_Y, HAND_Z, HAND_COUNTS), (*long_tailed_batch(CIFAR10_LT_100, seed=3), CIFAR10_LT_100)]:
        check(LossSpec.from_counts("focal", counts, focal_gamma=gamma), "focal", y, z, counts, gamma=gamma)
        check(LossSpec.from_counts("class_balanced_focal", counts, focal_gamma=gamma), "class_balanced_focal",
              y, z, counts, gamma=gamma)


def test_focal_gradient_is_finite_when_the_true_class_is_certain():
    """p_t rounds to 1 in float32 (CE = 0): (1 - p)^0.5 would have an infinite derivative; the floor keeps it 0."""
    z = np.array([[100.0, 0.0, 0.0]], np.float32)
    loss, grad = ours(LossSpec.from_counts("focal", HAND_COUNTS, focal_gamma=0.5), np.array([0], np.int32), z)
    assert loss == 0.0 and np.all(np.isfinite(grad))


# ------------------------------------------------------------------------------------------------ identities
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_logit_adjusted_is_cross_entropy_with_a_uniform_prior(tau):
    y, z = long_tailed_batch(CIFAR10_LT_100, seed=4)
    plain = ours(LossSpec(), y, z)
    adjusted = ours(LossSpec.from_counts("logit_adjusted", np.full(10, 37.0), la_tau=tau), y, z)
    # The offsets are one constant, which a softmax ignores; float32 rounding of z + c only (|c| <= 2.3).
    assert adjusted[0] == pytest.approx(plain[0], rel=2e-6)
    np.testing.assert_allclose(adjusted[1], plain[1], rtol=1e-5, atol=1e-7)


def test_balanced_softmax_is_cross_entropy_with_equal_counts_and_la_at_tau_1():
    y, z = long_tailed_batch(CIFAR10_LT_100, seed=5)
    plain = ours(LossSpec(), y, z)
    bsm = ours(LossSpec.from_counts("balanced_softmax", np.full(10, 500.0)), y, z)
    assert bsm[0] == pytest.approx(plain[0], rel=2e-6)  # offsets log 500 = 6.2: a few ulps of z + c
    np.testing.assert_allclose(bsm[1], plain[1], rtol=1e-5, atol=1e-6)
    # log n_j = log pi_j + log N: balanced softmax is logit adjustment at tau 1 (the 1e-12 is < 1e-8 relative).
    la = ours(LossSpec.from_counts("logit_adjusted", CIFAR10_LT_100), y, z)
    lt = ours(LossSpec.from_counts("balanced_softmax", CIFAR10_LT_100), y, z)
    assert lt[0] == pytest.approx(la[0], rel=2e-6)


def test_zero_exponent_and_equal_weights_reduce_to_the_simpler_losses():
    y, z = long_tailed_batch(CIFAR10_LT_100, seed=6)
    ce = float(long_tail_loss(y, z, LossSpec()))
    cb = float(long_tail_loss(y, z, LossSpec.from_counts("class_balanced", CIFAR10_LT_100)))
    assert float(long_tail_loss(y, z, LossSpec.from_counts("focal", CIFAR10_LT_100, focal_gamma=0.0))) == \
        pytest.approx(ce, rel=1e-6)
    assert float(long_tail_loss(y, z, LossSpec.from_counts("class_balanced_focal", CIFAR10_LT_100,
                                                           focal_gamma=0.0))) == pytest.approx(cb, rel=1e-6)
    # DRW off is the plain loss: CE with DRW before the switch is CE (the weighted mean of equal weights).
    drw_ce = LossSpec.from_counts("ce", CIFAR10_LT_100, drw=True)
    assert float(long_tail_loss(y, z, drw_ce, tf.constant(0.0))) == pytest.approx(ce, rel=1e-6)
    assert float(long_tail_loss(y, z, drw_ce, tf.constant(1.0))) == pytest.approx(cb, rel=1e-6)


def test_ce_is_bit_identical_to_keras():
    import keras

    y, z = long_tailed_batch(CIFAR10_LT_100, seed=7)
    assert float(long_tail_loss(y, z, LossSpec())) == float(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, z))


def test_spec_round_trips_and_refuses_missing_constants():
    spec = LossSpec.from_counts("ldam", CIFAR10_LT_100, drw=True, reduction="batch_mean")
    assert LossSpec(**json.loads(json.dumps(spec.to_config()))) == spec
    with pytest.raises(ValueError, match="--loss='hinge' is invalid"):
        LossSpec("hinge")
    with pytest.raises(ValueError, match="--drw_epoch needs --loss in ce, ldam, focal"):
        LossSpec.from_counts("logit_adjusted", CIFAR10_LT_100, drw=True)
    with pytest.raises(ValueError, match="balanced_softmax needs every class"):
        LossSpec.from_counts("balanced_softmax", [10, 0, 1])


# ------------------------------------------------------------------------------------------------ DRW
def test_drw_switch_per_epoch():
    assert [drw_active(e, 3) for e in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert [drw_active(e, 0) for e in range(3)] == [0.0, 0.0, 0.0]  # 0 = no DRW
    with pytest.raises(ValueError, match="--drw_epoch must be >= 1"):
        DRWSchedule(0)


def test_drw_schedule_sets_the_models_variable_whatever_it_held():
    """A resume restores drw_active from the checkpoint of the epoch before; the callback sets it from the epoch."""
    from hlrs_tf.search.bilevel import DartsSearchModel
    from hlrs_tf.space.supernet import SearchNetwork

    model = DartsSearchModel(SearchNetwork(4, 10, 3), loss=LossSpec.from_counts("ldam", CIFAR10_LT_100, drw=True))
    assert float(model.drw_active) == 0.0 and not model.drw_active.trainable
    assert DartsSearchModel(SearchNetwork(4, 10, 3)).drw_active is None  # no DRW: no extra variable
    schedule = DRWSchedule(2)
    schedule.set_model(model)
    for epoch, held, expected in [(2, 0.0, 1.0), (1, 1.0, 0.0), (3, 1.0, 1.0)]:
        model.drw_active.assign(held)
        schedule.on_epoch_begin(epoch)
        logs = {}
        schedule.on_epoch_end(epoch, logs)
        assert float(model.drw_active) == expected and logs == {"drw_active": expected}


def read_history(workdir):
    with open(os.path.join(workdir, "history.csv")) as f:
        return list(csv.DictReader(f))


# Without augmentation, cutout and drop-path: their random streams are not restored by a retraining's resume
# (measured: a plain-CE retraining killed after epoch 2 resumes with other losses), which would hide DRW's effect.
RETRAIN_ARGS = ["--genotype=DARTS_V2", "--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3",
                "--batch_size=16", "--epochs=4", "--steps_per_epoch=4", "--loss=ldam", "--drw_epoch=2",
                "--noaugment", "--nocutout", "--drop_path_prob=0", "--deterministic", "--verbose=0", "--seed=2"]


def test_drw_after_a_killed_and_resumed_retraining(tmp_path, run_cli, kill_beside_reference):
    """LDAM-DRW, switch at epoch 2 of 4: a retraining killed after epoch 2 or 3 resumes with DRW on (the
    checkpoint of epoch 2 still holds drw_active = 0), and its losses are the uninterrupted run's."""
    # The reference runs beside the run that is killed after epoch 2 (conftest.kill_beside_reference).
    reference, interrupted = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    done = kill_beside_reference(["hlrs_tf.train", *RETRAIN_ARGS], reference, interrupted, epoch=2, timeout=300)
    ref_rows = read_history(reference)
    assert [float(r["drw_active"]) for r in ref_rows] == [0.0, 0.0, 1.0, 1.0]
    assert 2 <= done < 4

    proc = run_cli("hlrs_tf.train", *RETRAIN_ARGS, f"--workdir={interrupted}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from the checkpoint of epoch {done}" in proc.stdout
    rows = read_history(interrupted)
    assert [float(r["drw_active"]) for r in rows] == [0.0, 0.0, 1.0, 1.0]
    for ref, got in zip(ref_rows, rows):  # same data, weights and DRW weights: the same losses
        assert float(got["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-5, abs=1e-7), ref["epoch"]
    counts = json.load(open(os.path.join(interrupted, "class_counts.json")))
    assert counts["loss"] == "ldam" and counts["drw"] and counts["drw_epoch"] == 2


# ------------------------------------------------------------------------------------------------ config
def parse(*argv):
    """The search config of a command line (fresh flags: the global ones stay unparsed)."""
    return config_flags.parse_config(SearchConfig, argv)


def test_presets_follow_the_existing_methods():
    assert PAPER_METHODS == ("darts", "darts_resample", "darts_reweight", "darts_bbn", "hlrs")
    assert METHODS[:7] == PAPER_METHODS + ("pcdarts", "pcdarts_hlrs")
    expected = {"darts_la": "logit_adjusted", "darts_bsm": "balanced_softmax", "darts_ldam_drw": "ldam",
                "darts_focal": "focal", "darts_cb_focal": "class_balanced_focal"}
    assert METHODS[7:] == tuple(expected)
    for method, loss in expected.items():
        config = parse(f"--method={method}")
        assert config.objective.loss == loss and not config.bbn and config.weight_sampler == "uniform"
        assert config == SearchConfig.for_method(method)
    assert parse("--method=darts_ldam_drw").objective.drw_epoch == 40 == METHOD_PRESETS["darts_ldam_drw"]["drw_epoch"]


def test_loss_flags_round_trip(tmp_path):
    config = parse("--loss=ldam", "--drw_epoch=7", "--la_tau=0.5", "--focal_gamma=1.5", "--reweight_beta=0.999")
    cfg = tmp_path / "flags.cfg"
    cfg.write_text(config_flags.effective_flags(config))
    assert parse(f"--flagfile={cfg}") == config
    text = cfg.read_text()
    for line in ("--loss=ldam", "--drw_epoch=7", "--la_tau=0.5", "--focal_gamma=1.5"):
        assert line in text.splitlines()


@pytest.mark.parametrize("config_class", [SearchConfig, TrainConfig])
@pytest.mark.parametrize("kwargs,message", [
    (dict(loss="hinge"), "--loss='hinge' is invalid: it must be one of ce, class_balanced, logit_adjusted, "
                         "balanced_softmax, ldam, focal, class_balanced_focal"),
    (dict(loss="logit_adjusted", drw_epoch=2), "--drw_epoch=2 is invalid: it must be 0 with --loss=logit_adjusted"),
    (dict(loss="ldam", drw_epoch=5, epochs=5), "--drw_epoch=5 is invalid: it must be an integer in [0, epochs=5)"),
    (dict(la_tau=-1.0), "--la_tau=-1.0 is invalid: it must be >= 0 and finite"),
    (dict(focal_gamma=float("nan")), "--focal_gamma=nan is invalid"),
    (dict(bbn=True, loss="focal"), "--loss='focal' is invalid: it must be ce with --bbn"),
    (dict(bbn=True, drw_epoch=1, epochs=2), "--drw_epoch=1 is invalid: it must be 0 with --bbn"),
])
def test_bad_loss_settings_name_the_flag(config_class, kwargs, message):
    extra = {"genotype": "DARTS_V2"} if config_class is TrainConfig else {}
    with pytest.raises(ConfigError) as e:
        config_class.create(**extra, **kwargs)
    assert message in str(e.value)


def test_old_runs_resume_without_the_new_flags(tmp_path):
    """A flags.cfg written before the loss flags existed resumes with their defaults (search and retraining)."""
    from hlrs_tf.config.search import ADDED_FLAG_DEFAULTS as SEARCH_ADDED
    from hlrs_tf.config.train import ADDED_FLAG_DEFAULTS as TRAIN_ADDED
    from hlrs_tf.runtime.workdir import Workdir, check_same_run

    wd = Workdir(str(tmp_path))
    open(os.path.join(wd.checkpoint_dir, "state.json"), "w").write('{"epoch": 1}')
    open(wd.flags_file, "w").write("--dataset=digits\n--loss=ce\n")
    check_same_run(wd, "--dataset=digits\n--loss=ce\n--la_tau=1.0\n--focal_gamma=2.0\n--drw_epoch=0\n", SEARCH_ADDED)
    open(wd.flags_file, "w").write("--genotype=DARTS_V2\n")  # a retraining before --loss
    new = ("--genotype=DARTS_V2\n--loss=ce\n--reweight_beta=0.9999\n--class_weight_reduction=weighted_mean\n"
           "--la_tau=1.0\n--focal_gamma=2.0\n--drw_epoch=0\n")
    check_same_run(wd, new, TRAIN_ADDED)
    with pytest.raises(ValueError, match="--loss=ce -> ldam"):
        check_same_run(wd, "--genotype=DARTS_V2\n--loss=ldam\n", TRAIN_ADDED)


# ------------------------------------------------------------------------------------------------ 2 replicas
@pytest.fixture(scope="module")
def replicas(replica_worker):
    return replica_worker("long_tail")


@pytest.mark.parametrize("key", list(LOSSES) + ["ldam_drw0", "ldam_drw1", "focal_drw0", "focal_drw1"])
def test_replica_shares_sum_to_the_single_device_loss(replicas, key):
    """The worker's global batch puts the head class on one replica and the tail on the other, so a loss
    reduced per replica (a local weighted mean) would be off; the shares must add up to one device."""
    assert replicas["replicas"] == 2
    res = replicas["shares"][key]
    # float32 sums of 4 + 4 vs 8 terms; LDAM's terms are 30x larger (s = 30): measured <= 4e-6 there.
    assert res["replicated"] == pytest.approx(res["single"], rel=1e-6, abs=1e-5 if "ldam" in key else 1e-6)
    assert res["d_grad"] <= 1e-5 * max(1.0, res["grad_scale"])


@pytest.mark.parametrize("case", ["logit_adjusted/first", "balanced_softmax/first", "ldam_drw1/first",
                                  "class_balanced_focal/second", "focal/first"])
def test_mirrored_search_steps_match_one_device(replicas, case):
    res = replicas["fit"][case]
    assert res["kernel_moved"] > 0.1 and res["alpha_moved"] > 0.01, res  # the steps moved the variables
    # As tests/test_losses.py: float noise only (second order divides it by eps = 0.01 / ||v||).
    assert res["d_kernel"] < 1e-5 and res["d_loss"] < 1e-5 and res["d_arch_loss"] < 1e-5, res
    assert res["d_alpha"] < (1e-5 if "first" in case else 1e-4), res


# ------------------------------------------------------------------------------------------------ real runs
RUN_CASES = {name: {"loss": name} for name in LOSSES}
RUN_CASES["ldam_drw"] = {"loss": "ldam", "drw_epoch": 1}
TINY = dict(dataset="digits", imbalance_ratio=10, channels=4, layers=3, batch_size=16, epochs=2, steps_per_epoch=2,
            verbose=0, eval_batch_size=500)


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """A short search with each loss, in one process (tracing dominates)."""
    from hlrs_tf.search.task import run_search

    root = tmp_path_factory.mktemp("lt_search")
    out = {}
    for case, settings in RUN_CASES.items():
        config = SearchConfig.create(**TINY, **settings)
        out[case] = run_search(config, str(root / case), flags_text=config_flags.effective_flags(config)).workdir
    return out


@pytest.fixture(scope="module")
def retrainings(tmp_path_factory):
    """A short retraining of DARTS_V2 with each loss (auxiliary head on: the loss applies to both heads)."""
    from hlrs_tf.train.task import run_retrain

    root = tmp_path_factory.mktemp("lt_train")
    out = {}
    for case, settings in RUN_CASES.items():
        config = TrainConfig.create(genotype="DARTS_V2", **TINY, **settings)
        out[case] = run_retrain(config, str(root / case)).workdir
    return out


def check_run(workdir, case, arch_loss):
    rows = read_history(workdir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    keys = ("loss", "arch_loss") if arch_loss else ("loss", "aux_loss")
    assert all(np.isfinite(float(r[k])) for r in rows for k in keys)
    if case == "ldam_drw":
        assert [float(r["drw_active"]) for r in rows] == [0.0, 1.0]
    else:
        assert "drw_active" not in rows[0]
    saved = json.load(open(os.path.join(workdir, "class_counts.json")))
    summary = json.load(open(os.path.join(workdir, "model_summary.json")))
    counts = np.array(summary["train_class_counts"], np.float64)
    assert saved["counts"] == summary["train_class_counts"] and saved["loss"] == RUN_CASES[case]["loss"]
    np.testing.assert_allclose(saved["priors"], counts / counts.sum(), rtol=1e-12)
    if saved["loss"] == "ldam":
        np.testing.assert_allclose(saved["ldam_margins"], 0.5 * counts ** -0.25 / counts.min() ** -0.25, rtol=1e-12)
    if saved["loss"] == "logit_adjusted":
        np.testing.assert_allclose(saved["logit_offsets"], np.log(counts / counts.sum() + 1e-12), rtol=1e-12)
    if saved["loss"] == "balanced_softmax":
        np.testing.assert_allclose(saved["logit_offsets"], np.log(counts), rtol=1e-12)
    if saved["loss"] in ("class_balanced", "class_balanced_focal") or case == "ldam_drw":
        np.testing.assert_allclose(saved["class_weights"], effective_number_weights(counts, 0.9999), rtol=1e-12)


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_short_search_with_each_loss(searches, case):
    check_run(searches[case], case, arch_loss=True)


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_short_retraining_with_each_loss(retrainings, case):
    check_run(retrainings[case], case, arch_loss=False)


def test_the_losses_train_differently(searches, retrainings):
    """Same seed and data: each loss gives its own loss curve (the flag really changes the training) -- except
    balanced softmax, which is logit adjustment at tau 1 (up to the 1e-12) and trains the same."""
    for runs in (searches, retrainings):
        curves = {case: tuple(round(float(r["loss"]), 5) for r in read_history(wd)) for case, wd in runs.items()}
        # The same function up to float32 rounding of z + offset (offsets differ by log N): a few ulps per step.
        np.testing.assert_allclose(curves["balanced_softmax"], curves["logit_adjusted"], rtol=1e-4)
        del curves["balanced_softmax"]
        assert len(set(curves.values())) == len(curves)
