"""BBN mixing and HLRS architecture learning-rate schedules: formulas, validation, and the callback on a real
(tiny) search model -- the rate it sets is the one the architecture step uses, and Adam's state is kept."""

import dataclasses
import math
import types

import keras
import numpy as np
import pytest

from hlrs_tf.config.blocks import ArchOptimizer
from hlrs_tf.data.long_tail import stratified_split
from hlrs_tf.data.pipeline import search_dataset
from hlrs_tf.data.sources import load_dataset
from hlrs_tf.losses.bbn_mixing import MIXING_SCHEDULES, mixing_factor
from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.search.callbacks import HLRSCallback
from hlrs_tf.search.schedules import ARCH_LR_SCHEDULES, arch_learning_rate
from hlrs_tf.space.supernet import SearchNetwork

# The formulas of docs/method.md M4-M5, written out independently of the module.
FORMULAS = {
    "parabolic": lambda T, M: 1.0 - (T / M) ** 2,
    "linear": lambda T, M: 1.0 - T / M,
    "cosine": lambda T, M: 0.5 * (1.0 + math.cos(math.pi * T / M)),
    "constant": lambda T, M: 0.5,
}
TOTALS = (1, 2, 7, 50, 200)


def sample_epochs(total):
    """First, last, middle and a few others."""
    return sorted({0, 1 if total > 1 else 0, total // 3, total // 2, total - 1, total})


# ------------------------------------------------------------------ mixing factor alpha_T
def test_schedule_names():
    assert MIXING_SCHEDULES == ("parabolic", "linear", "cosine", "constant")
    assert ARCH_LR_SCHEDULES == ("constant", "mixing", "parabolic", "cosine", "linear", "freeze")


@pytest.mark.parametrize("kind", MIXING_SCHEDULES)
@pytest.mark.parametrize("total", TOTALS)
def test_mixing_factor_formula(kind, total):
    for T in sample_epochs(total):
        assert mixing_factor(kind, T, total) == pytest.approx(FORMULAS[kind](T, total), abs=1e-12)


def test_mixing_factor_endpoints():
    for kind in ("parabolic", "linear", "cosine"):
        assert mixing_factor(kind, 0, 10) == 1.0
        assert mixing_factor(kind, 10, 10) == pytest.approx(0.0, abs=1e-15)
    assert mixing_factor("constant", 0, 10) == mixing_factor("constant", 10, 10) == 0.5
    # parabolic decays slower than linear at first (BBN's choice: the head branch dominates longer)
    assert mixing_factor("parabolic", 3, 10) == pytest.approx(0.91)
    assert mixing_factor("linear", 3, 10) == pytest.approx(0.7)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("total", TOTALS)
def test_linear_and_cosine_are_symmetric(kind, total):
    for T in range(total + 1):
        assert mixing_factor(kind, T, total) + mixing_factor(kind, total - T, total) == pytest.approx(1.0, abs=1e-12)


def test_parabolic_is_not_symmetric():
    assert mixing_factor("parabolic", 2, 10) + mixing_factor("parabolic", 8, 10) != pytest.approx(1.0)


def test_mixing_factor_rejects_bad_values():
    with pytest.raises(ValueError, match="--mixing") as err:
        mixing_factor("exponential", 0, 10)
    for kind in MIXING_SCHEDULES:
        assert kind in str(err.value)
    for epoch, total in ((-1, 10), (11, 10), (0, 0), (0, -3)):
        with pytest.raises(ValueError):
            mixing_factor("linear", epoch, total)


# ------------------------------------------------------------------ architecture learning rate eta_a(T)
BASE = 3e-4


@pytest.mark.parametrize("total", TOTALS)
def test_arch_lr_constant_and_decays(total):
    for T in sample_epochs(total):
        assert arch_learning_rate("constant", T, total, BASE) == BASE
        for kind in ("parabolic", "cosine", "linear"):
            expected = BASE * FORMULAS[kind](T, total)
            for mixing in MIXING_SCHEDULES:  # independent of the mixing schedule
                got = arch_learning_rate(kind, T, total, BASE, mixing=mixing)
                assert got == pytest.approx(expected, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("mixing", MIXING_SCHEDULES)
@pytest.mark.parametrize("total", TOTALS)
def test_arch_lr_mixing_follows_alpha(mixing, total):
    for T in sample_epochs(total):
        got = arch_learning_rate("mixing", T, total, BASE, mixing=mixing)
        assert got == pytest.approx(BASE * FORMULAS[mixing](T, total), rel=1e-12, abs=1e-18)
        assert got == pytest.approx(BASE * mixing_factor(mixing, T, total), rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("mixing", ["parabolic", "linear", "cosine"])
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_freeze_switches_where_alpha_drops_below_threshold(mixing, threshold):
    total = 50
    alphas = [mixing_factor(mixing, T, total) for T in range(total + 1)]
    switch = next(T for T, a in enumerate(alphas) if a < threshold)
    assert 0 < switch < total
    lrs = [arch_learning_rate("freeze", T, total, BASE, mixing=mixing, freeze_threshold=threshold)
           for T in range(total + 1)]
    assert lrs[:switch] == [BASE] * switch
    assert lrs[switch:] == [0.0] * (total + 1 - switch)


def test_freeze_boundary_and_constant_mixing():
    # linear, T_max = 10: alpha_5 = 0.5 exactly, still >= 0.5, so epoch 5 keeps the rate and epoch 6 is frozen
    assert arch_learning_rate("freeze", 5, 10, BASE, mixing="linear") == BASE
    assert arch_learning_rate("freeze", 6, 10, BASE, mixing="linear") == 0.0
    assert arch_learning_rate("freeze", 10, 10, BASE, mixing="linear", freeze_threshold=0.0) == BASE
    # constant alpha = 0.5: never frozen at 0.5, always frozen above it
    assert {arch_learning_rate("freeze", T, 10, BASE, mixing="constant") for T in range(11)} == {BASE}
    assert {arch_learning_rate("freeze", T, 10, BASE, mixing="constant", freeze_threshold=0.6)
            for T in range(11)} == {0.0}


@pytest.mark.parametrize("kind", ARCH_LR_SCHEDULES)
def test_warmup_zeros_then_unshifted_schedule(kind):
    total, warmup = 10, 3
    for T in range(total + 1):
        got = arch_learning_rate(kind, T, total, BASE, mixing="linear", warmup_epochs=warmup)
        if T < warmup:
            assert got == 0.0
        else:  # evaluated at the true epoch, not at T - warmup
            assert got == arch_learning_rate(kind, T, total, BASE, mixing="linear")
    assert arch_learning_rate("linear", 3, 10, BASE, warmup_epochs=3) == pytest.approx(BASE * 0.7)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(kind="adaptive"), "--arch_lr_schedule"),
        (dict(mixing="exponential"), "--mixing"),
        (dict(freeze_threshold=-0.1), "--freeze_threshold"),
        (dict(freeze_threshold=1.5), "--freeze_threshold"),
        (dict(freeze_threshold=float("nan")), "--freeze_threshold"),
        (dict(warmup_epochs=-1), "--warmup_epochs"),
        (dict(warmup_epochs=1.5), "--warmup_epochs"),
        (dict(base_lr=-1e-4), "--arch_learning_rate"),
        (dict(base_lr=float("nan")), "--arch_learning_rate"),
        (dict(epoch=11), "epoch"),
        (dict(epoch=-1), "epoch"),
        (dict(total_epochs=0, epoch=0), "--epochs"),
    ],
)
def test_arch_lr_rejects_bad_values(kwargs, flag):
    args = dict(kind="mixing", epoch=0, total_epochs=10, base_lr=BASE)
    args.update(kwargs)
    positional = [args.pop(k) for k in ("kind", "epoch", "total_epochs", "base_lr")]
    with pytest.raises(ValueError, match=flag):
        arch_learning_rate(*positional, **args)


def test_unknown_arch_schedule_message_lists_choices():
    with pytest.raises(ValueError) as err:
        arch_learning_rate("adaptive", 0, 10, BASE)
    for kind in ARCH_LR_SCHEDULES:
        assert kind in str(err.value)


# ------------------------------------------------------------------ ArchOptimizer: the owner of the arch lr
def test_arch_optimizer_defaults_schedule_and_validation():
    cfg = ArchOptimizer()
    assert (cfg.arch_lr_schedule, cfg.arch_learning_rate, cfg.freeze_threshold, cfg.warmup_epochs) == (
        "constant", 3e-4, 0.5, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.arch_lr_schedule = "linear"
    cfg = ArchOptimizer(arch_lr_schedule="freeze", arch_learning_rate=1e-3, freeze_threshold=0.3, warmup_epochs=2)
    for T in range(11):
        assert cfg.lr(T, 10, "cosine") == arch_learning_rate("freeze", T, 10, 1e-3, mixing="cosine",
                                                             freeze_threshold=0.3, warmup_epochs=2)
    # invalid settings fail on construction, before any training
    with pytest.raises(ValueError, match="--arch_lr_schedule"):
        ArchOptimizer(arch_lr_schedule="nope")
    with pytest.raises(ValueError, match="--mixing"):
        HLRSCallback(ArchOptimizer(), total_epochs=2, mixing="nope")
    with pytest.raises(ValueError, match="--warmup_epochs"):
        ArchOptimizer(warmup_epochs=-2)


# ------------------------------------------------------------------ HLRSCallback without training
def test_callback_sets_bbn_alpha_variable_and_logs():
    opt = keras.optimizers.Adam(3e-4)
    fake = types.SimpleNamespace(arch_optimizer=opt, bbn_alpha=keras.Variable(0.0, trainable=False))
    cb = HLRSCallback(ArchOptimizer(arch_lr_schedule="mixing", arch_learning_rate=1e-3), total_epochs=4,
                      mixing="linear")
    cb.set_model(fake)
    for epoch in range(4):
        cb.on_epoch_begin(epoch)
        logs = {"loss": 1.0}
        cb.on_epoch_end(epoch, logs)
        alpha = 1.0 - epoch / 4
        assert float(fake.bbn_alpha) == pytest.approx(alpha)
        assert float(opt.learning_rate) == pytest.approx(1e-3 * alpha, rel=1e-6)
        assert logs == {"loss": 1.0, "arch_lr": pytest.approx(1e-3 * alpha), "bbn_alpha": pytest.approx(alpha)}
        assert isinstance(logs["arch_lr"], float) and isinstance(logs["bbn_alpha"], float)


def test_callback_rejects_scheduled_arch_optimizer_and_bad_total():
    schedule = keras.optimizers.schedules.ExponentialDecay(3e-4, 10, 0.9)
    cb = HLRSCallback(ArchOptimizer(), total_epochs=2)
    cb.set_model(types.SimpleNamespace(arch_optimizer=keras.optimizers.Adam(schedule)))
    with pytest.raises(TypeError, match="float learning rate"):
        cb.on_epoch_begin(0)
    with pytest.raises(ValueError, match="--epochs"):
        HLRSCallback(ArchOptimizer(), total_epochs=0)


# ------------------------------------------------------------------ HLRSCallback on a real search model
@pytest.fixture(scope="module")
def search():
    """One tiny compiled search model and its infinite digits search dataset, shared (tracing is slow)."""
    keras.utils.set_random_seed(0)
    ds = load_dataset("digits")
    idx_w, idx_a = stratified_split(ds.y_train, 0.5, seed=0)
    dataset, _ = search_dataset(
        ds.x_train[idx_w], ds.y_train[idx_w], ds.x_train[idx_a], ds.y_train[idx_a], ds.spec,
        batch_size=16, seed=0,
    )
    model = DartsSearchModel(SearchNetwork(4, 10, 3))
    model.compile(
        optimizer=keras.optimizers.SGD(0.025, momentum=0.9),
        arch_optimizer=keras.optimizers.Adam(3e-4, beta_1=0.5, beta_2=0.999),
    )
    model.build_all((8, 8, 1))
    return model, dataset


class Recorder(keras.callbacks.Callback):
    """Reads the arch optimizer after every epoch (listed after HLRSCallback)."""

    def __init__(self):
        super().__init__()
        self.epochs, self.lrs, self.iterations, self.optimizers = [], [], [], []

    def on_epoch_end(self, epoch, logs=None):
        opt = self.model.arch_optimizer
        self.epochs.append(epoch)
        self.lrs.append(float(keras.ops.convert_to_numpy(opt.learning_rate)))
        self.iterations.append(int(keras.ops.convert_to_numpy(opt.iterations)))
        self.optimizers.append(opt)


def alphas_of(model):
    _, alphas = model.split_variables()
    return [keras.ops.convert_to_numpy(a).copy() for a in alphas]


def reset_adam(opt):
    """Zeroes Adam's iteration counter and moments, so the next step is a genuine first step."""
    for v in opt.variables:
        if v is not opt.learning_rate:
            v.assign(keras.ops.zeros(v.shape, v.dtype))


def test_callback_sets_and_logs_rate_every_epoch_and_keeps_adam_state(search):
    model, dataset = search
    opt = model.arch_optimizer
    start = int(keras.ops.convert_to_numpy(opt.iterations))
    cb = HLRSCallback(ArchOptimizer(arch_lr_schedule="linear", arch_learning_rate=3e-4), total_epochs=3)
    rec = Recorder()
    history = model.fit(dataset, epochs=3, steps_per_epoch=2, callbacks=[cb, rec], verbose=0)
    expected_lr = [3e-4 * (1 - T / 3) for T in range(3)]
    expected_alpha = [1 - (T / 3) ** 2 for T in range(3)]  # parabolic mixing (default)
    assert rec.epochs == [0, 1, 2]
    np.testing.assert_allclose(rec.lrs, expected_lr, rtol=1e-6)  # (i) set on the optimizer (float32)
    np.testing.assert_allclose(history.history["arch_lr"], expected_lr, rtol=1e-12)  # (ii) logged
    np.testing.assert_allclose(history.history["bbn_alpha"], expected_alpha, rtol=1e-12)
    # (iv) the same Adam, counting on across epochs: its state was never reset
    assert all(o is opt for o in rec.optimizers)
    assert rec.iterations == [start + 2, start + 4, start + 6]


def test_resume_with_initial_epoch_uses_true_epoch(search):
    model, dataset = search
    cb = HLRSCallback(ArchOptimizer(arch_lr_schedule="cosine", arch_learning_rate=1e-3), total_epochs=4,
                      mixing="linear")
    rec = Recorder()
    history = model.fit(dataset, initial_epoch=2, epochs=4, steps_per_epoch=1, callbacks=[cb, rec], verbose=0)
    assert rec.epochs == [2, 3]
    expected_lr = [1e-3 * 0.5 * (1 + math.cos(math.pi * T / 4)) for T in (2, 3)]
    np.testing.assert_allclose(rec.lrs, expected_lr, rtol=1e-6)
    np.testing.assert_allclose(history.history["arch_lr"], expected_lr, rtol=1e-12)
    np.testing.assert_allclose(history.history["bbn_alpha"], [0.5, 0.25], rtol=1e-12)


def test_assigned_rate_is_the_one_the_architecture_step_uses(search):
    model, dataset = search
    opt = model.arch_optimizer

    # (iii-a) warm-up epoch: rate 0, the alphas do not move at all, while the weights do.
    reset_adam(opt)
    weights_before = [keras.ops.convert_to_numpy(w).copy() for w in model.split_variables()[0]]
    before = alphas_of(model)
    cb = HLRSCallback(ArchOptimizer(arch_learning_rate=1e-3, warmup_epochs=1), total_epochs=1)
    model.fit(dataset, epochs=1, steps_per_epoch=1, callbacks=[cb], verbose=0)
    assert cb.arch_lr == 0.0
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 1  # the step ran, with rate 0
    for a0, a1 in zip(before, alphas_of(model)):
        np.testing.assert_array_equal(a0, a1)
    weights_after = [keras.ops.convert_to_numpy(w) for w in model.split_variables()[0]]
    assert any(not np.array_equal(w0, w1) for w0, w1 in zip(weights_before, weights_after))

    # (iii-b) a positive rate, different from the compiled 3e-4: Adam's first step moves each alpha by ~lr.
    reset_adam(opt)
    lr = 1.7e-3
    before = alphas_of(model)
    cb = HLRSCallback(ArchOptimizer(arch_learning_rate=lr), total_epochs=1)
    model.fit(dataset, epochs=1, steps_per_epoch=1, callbacks=[cb], verbose=0)
    for a0, a1 in zip(before, alphas_of(model)):
        assert np.abs(a1 - a0).max() == pytest.approx(lr, rel=0.05)
