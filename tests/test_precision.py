"""``--precision``: Keras mixed precision for the supernet and the derived network (hlrs_tf/runtime/precision.py).

Real models on scikit-learn's digits at C=4, 3 cells. What is checked: a mixed_bfloat16 search follows the
float32 one from the same seed (first order), the dtypes of variables and computations, loss
scaling with mixed_float16 on both optimizers (clipping after unscaling, the arch lr still set per epoch),
the global dtype policy left as it was, the float32 export of a model trained in bfloat16 through the real
commands, resuming with another precision refused, and second order refused in mixed precision.

bfloat16 keeps 8 significant bits (7 stored + 1 implicit): its unit round-off is ``u = 2**-8 ~ 0.0039``, about
2.4 significant decimal digits. The tolerances below are derived from that and from what was measured here.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.config.search import ConfigError, SearchConfig
from hlrs_tf.config.train import TrainConfig
from hlrs_tf.data.pipeline import search_dataset
from hlrs_tf.data.sources import load_dataset
from hlrs_tf.runtime import precision

U_BF16 = 2.0**-8  # unit round-off of bfloat16


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _search_batches(digits, steps, batch_size=16):
    ds = digits
    train, _ = search_dataset(ds.x_train[:400], ds.y_train[:400], ds.x_train[400:800], ds.y_train[400:800],
                              ds.spec, batch_size, 0, False)
    return list(train.take(steps))


def _search_model(digits, prec, order="first", **overrides):
    from hlrs_tf.search.task import build_model

    keras.utils.set_random_seed(0)  # the same initial weights and alphas for every precision
    config = SearchConfig.create(dataset="digits", channels=4, layers=3, batch_size=16, order=order, precision=prec,
                          **overrides)
    return build_model(config, digits.spec, total_steps=100)


def _run_steps(model, batches):
    """Eager train steps (no trace: seconds at this size); ``(losses [(loss, arch_loss)], softmaxed alphas)``."""
    losses = []
    for batch in batches:
        model.train_step(batch)
        losses.append((float(model.loss_tracker.result()), float(model.arch_loss_tracker.result())))
        for m in model.metrics:
            m.reset_state()
    return np.array(losses), np.concatenate([w.numpy().ravel() for w in model.network.arch_weights()])


# ------------------------------------------------------------------------------------------------ search
@pytest.mark.isolated  # op determinism, one thread: the comparison is the same on every run
def test_mixed_bfloat16_search_follows_float32(digits):
    """Three first-order steps in bfloat16 track float32 from the same seed (second order refuses bfloat16:
    :func:`test_second_order_refuses_mixed_precision`).

    Losses: the first step of each run is taken at identical weights, so only bfloat16 rounding separates
    them. The forward pass is about 8 rounding stages deep here (stem, per cell preprocessing and node sums,
    pooling; the classifier and the loss are float32), so the logits and the cross-entropy are off by at most
    ~8u relative; measured: 0.07%. rtol = 8u = 3.1% leaves a 40x margin. Later steps also carry the earlier
    steps' gradient differences: at identical weights the bfloat16 weight and alpha gradients differ from
    float32 by ~15% in norm (cosine 0.99; on this AVX2 machine TensorFlow's emulated bfloat16 contractions
    lose 2-3% in the long weight-gradient reductions), and with the weight lr 0.025 that moved the loss by
    0.7% after one step and 0.9% after two (3% after five). The third step's loss is compared at
    4 * 8u = 12.5%.

    Alphas: Adam's first steps are nearly ``lr * sign(gradient)`` per alpha, so how far the two runs' alphas
    (softmaxed) moved apart, against how far float32 moved them, counts the alpha gradients whose sign
    bfloat16 got wrong -- those near zero. Measured: 0.34 (0.43 after six steps). Bound 0.7: a broken
    bfloat16 architecture gradient (zero, or unrelated to float32's) gives >= 1.
    """
    batches = _search_batches(digits, 3)
    runs = {}
    for prec in ("float32", "mixed_bfloat16"):
        model = _search_model(digits, prec)
        start = np.concatenate([w.numpy().ravel() for w in model.network.arch_weights()])
        losses, weights = _run_steps(model, batches)
        runs[prec] = (losses, weights - start, model.genotype())
    (l32, d32, g32), (l16, d16, g16) = runs["float32"], runs["mixed_bfloat16"]
    assert np.all(np.isfinite(l16))
    np.testing.assert_allclose(l16[0], l32[0], rtol=8 * U_BF16)
    np.testing.assert_allclose(l16[-1], l32[-1], rtol=4 * 8 * U_BF16)
    moved_apart = np.linalg.norm(d16 - d32) / np.linalg.norm(d32)
    assert moved_apart < 0.7, moved_apart
    # The genotypes are derived from alphas that still differ by ~1e-3 (near ties): not compared edge by edge.
    assert len(g16.normal) == len(g32.normal)



def test_second_order_refuses_mixed_precision(digits):
    """The unrolled step's central difference moves the weights by ~1e-4 of a weight, below bfloat16's and
    float16's resolution: measured, one bfloat16 second-order architecture gradient was 73% off float32's in
    norm (15% in first order). So it is refused, by the config (the flag) and by the model (library use)."""
    from hlrs_tf.search.bilevel import DartsSearchModel
    from hlrs_tf.space.supernet import SearchNetwork

    for prec in ("mixed_bfloat16", "mixed_float16"):
        with pytest.raises(ConfigError, match=r"--precision='mixed_.*' is invalid: it must be float32 with "
                                              r"--order=second \(the unrolled step"):
            SearchConfig.create(order="second", precision=prec)
    SearchConfig.create(order="second", precision="float32")
    model = DartsSearchModel(SearchNetwork(4, 10, 3, dtype="mixed_bfloat16"), order="second")
    with pytest.raises(ValueError, match="order='second' needs a float32 network, not mixed_bfloat16"):
        model.compile(keras.optimizers.SGD(0.1), keras.optimizers.Adam(0.1))


def test_mixed_bfloat16_dtypes(digits):
    """Variables, alphas and optimizer state stay float32; convolutions and cells compute in bfloat16; the
    softmaxed alphas, BN statistics and logits are float32."""
    model = _search_model(digits, "mixed_bfloat16")
    network = model.network
    assert precision.policy_name(network) == "mixed_bfloat16"
    assert {v.dtype for v in network.variables} == {"float32"}
    assert {v.dtype for v in network.arch_variables} == {"float32"}
    for opt in (model.optimizer, model.arch_optimizer):
        assert not isinstance(opt, keras.optimizers.LossScaleOptimizer)  # bfloat16 needs no loss scaling
        assert {v.dtype for v in opt.variables} <= {"float32", "int64"}  # int64: the iteration counter
        assert {v.dtype for v in opt.variables if v.dtype != "int64"} == {"float32"}
    assert network.stem_conv.compute_dtype == "bfloat16" and network.stem_conv.kernel.dtype == "float32"
    assert all(cell.compute_dtype == "bfloat16" for cell in network.cells)
    assert network.classifier.compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in network.arch_weights())

    x = tf.constant(digits.x_train[:4], tf.float32)
    s0, s1 = network.stem(x, training=False)
    assert s1.dtype == tf.bfloat16  # stem conv + BN in bfloat16 (the fused BN takes bfloat16 activations)
    w_normal, _ = network.arch_weights()
    assert network.cells[0](s0, s1, w_normal, training=True).dtype == tf.bfloat16
    assert model(x, training=False).dtype == tf.float32  # logits from the float32 classifier
    assert network.cells[0].moving_mean.dtype == "float32"

    logs = model.train_step(_search_batches(digits, 1)[0])
    assert np.isfinite(float(logs["loss"])) and np.isfinite(float(logs["arch_loss"]))
    assert {v.dtype for v in network.variables} == {"float32"}


def test_global_dtype_policy_is_left_alone(digits):
    """Building mixed networks (search, BBN, derived) sets Keras' global policy only while their layers are
    created: afterwards it is float32 again, and new layers are float32."""
    from hlrs_tf.search.bbn import BBNSearchNetwork
    from hlrs_tf.space.derived_network import DerivedNetwork
    from hlrs_tf.space.genotypes import DARTS_V2

    assert keras.config.dtype_policy().name == "float32"
    model = _search_model(digits, "mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"
    bbn = BBNSearchNetwork(4, 10, 3, dtype="mixed_float16")
    assert bbn.rebalancing_cell.compute_dtype == "float16"
    derived = DerivedNetwork(DARTS_V2, 4, 10, 4, dtype="mixed_bfloat16")
    derived.build((None, 8, 8, 1))
    assert derived.cells[0].preprocess1.conv.compute_dtype == "bfloat16"
    assert derived.classifier.compute_dtype == "float32"
    assert derived.auxiliary_head.classifier.compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
    assert keras.layers.Dense(3).dtype_policy.name == "float32"
    assert model.network.stem_conv.compute_dtype == "bfloat16"  # the built model kept its own policy
    # The scope restores the policy on errors too.
    with pytest.raises(RuntimeError):
        with precision.policy_scope("mixed_bfloat16"):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            raise RuntimeError
    assert keras.config.dtype_policy().name == "float32"


# ------------------------------------------------------------------------------------------------ float16
def test_mixed_float16_loss_scaling_on_both_optimizers(digits):
    """Both optimizers are LossScaleOptimizers; the HLRS callback still sets the architecture lr (through the
    wrapper, on the inner Adam's variable); a train step is finite and follows the loss-scale rules: an
    overflowing step leaves the weights alone and halves the scale, a finite one updates them."""
    from hlrs_tf.config.blocks import ArchOptimizer
    from hlrs_tf.search.callbacks import HLRSCallback

    model = _search_model(digits, "mixed_float16", arch_lr_schedule="mixing")
    for opt in (model.optimizer, model.arch_optimizer):
        assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert model.network.cells[0].compute_dtype == "float16"

    callback = HLRSCallback(ArchOptimizer(arch_lr_schedule="mixing", arch_learning_rate=3e-4), total_epochs=4)
    callback.set_model(model)
    callback.on_epoch_begin(2)
    assert 0 < callback.arch_lr < 3e-4  # eta0 * alpha_T(2) of the parabolic mixing
    inner = model.arch_optimizer.inner_optimizer
    assert float(inner.learning_rate.numpy()) == pytest.approx(callback.arch_lr)
    assert float(model.arch_optimizer.learning_rate.numpy()) == pytest.approx(callback.arch_lr)

    weights_before = [v.numpy() for v in model.network.trainable_variables]
    scales_before = [float(opt.dynamic_scale.numpy()) for opt in (model.optimizer, model.arch_optimizer)]
    logs = model.train_step(_search_batches(digits, 1)[0])
    assert np.isfinite(float(logs["loss"])) and np.isfinite(float(logs["arch_loss"]))
    weights = model.network.trainable_variables
    assert all(np.all(np.isfinite(v.numpy())) for v in weights)
    alphas = {id(a) for a in model.network.arch_variables}
    for opt, scale_before, group in ((model.optimizer, scales_before[0], False),
                                     (model.arch_optimizer, scales_before[1], True)):
        moved = any(not np.array_equal(before, v.numpy()) for before, v in zip(weights_before, weights)
                    if (id(v) in alphas) == group)
        scale = float(opt.dynamic_scale.numpy())
        assert (moved and scale == scale_before) or (not moved and scale == scale_before / 2), (moved, scale)


def test_loss_scaled_gradients_are_clipped_after_unscaling():
    """precision.gradients + apply_gradients: the transform (here the global-norm clip) sees the true gradient,
    the optimizer applies it once, and an overflow skips the step and halves the scale."""
    w = keras.Variable(np.zeros(3, np.float32))
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0))
    opt.build([w])
    clip = lambda gs: tf.clip_by_global_norm(gs, 5.0)[0]  # noqa: E731
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(100.0 * w)  # gradient (100, 100, 100): norm 173 -> clipped to norm 5
    grads = precision.gradients(tape, loss, [w], precision.loss_scale(opt))
    np.testing.assert_allclose(grads[0].numpy(), 100.0)  # unscaled exactly (the scale is a power of two)
    precision.apply_gradients(opt, grads, [w], clip)
    np.testing.assert_allclose(np.linalg.norm(w.numpy()), 5.0, rtol=1e-6)  # clipped true gradient, lr 1

    before, scale = w.numpy(), float(opt.dynamic_scale.numpy())
    precision.apply_gradients(opt, [tf.constant([np.inf, 0.0, 0.0])], [w], clip)
    np.testing.assert_array_equal(w.numpy(), before)
    assert float(opt.dynamic_scale.numpy()) == scale / 2


def test_sync_batch_norm_takes_low_precision_activations():
    """The cross-replica BN (several replicas) normalises bf16 activations in float32 and returns bf16."""
    from hlrs_tf.runtime import sync_bn

    x = tf.random.stateless_normal((4, 3, 3, 2), seed=(1, 2)) * 3.0 + 1.0
    args = (tf.ones(2), tf.zeros(2), tf.zeros(2), tf.ones(2), 0.1, 1e-5, lambda v: v, 1)
    y32, mean32, var32 = sync_bn.batch_norm_train_values(x, *args)
    y16, mean16, var16 = sync_bn.batch_norm_train_values(tf.cast(x, tf.bfloat16), *args)
    assert y16.dtype == tf.bfloat16 and mean16.dtype == tf.float32
    # The input rounded to bf16 (relative u) and the output rounded again: |y| <~ 3, so 3 * 2u absolute.
    np.testing.assert_allclose(tf.cast(y16, tf.float32).numpy(), y32.numpy(), atol=6 * U_BF16 * 3)
    np.testing.assert_allclose(mean16.numpy(), mean32.numpy(), rtol=2 * U_BF16, atol=1e-3)


# ------------------------------------------------------------------------------------------------ settings
def test_precision_setting_and_hardware_warning():
    assert SearchConfig.create().runtime.precision == "float32"
    assert TrainConfig.create(genotype="DARTS_V2").runtime.precision == "float32"
    for cls, extra in ((SearchConfig, {}), (TrainConfig, {"genotype": "DARTS_V2"})):
        with pytest.raises(ConfigError, match=r"--precision='float64' is invalid: it must be one of float32, "
                                              r"mixed_bfloat16, mixed_float16"):
            cls.create(precision="float64", **extra)
    # Keyed on the CPU flags: native bf16 (AVX-512 BF16 or AMX) warns for nothing, AVX2-only warns.
    assert precision.hardware_warning("mixed_bfloat16", True, flags={"avx2", "avx512_bf16"}) is None
    assert precision.hardware_warning("mixed_bfloat16", True, flags={"avx2", "amx_bf16"}) is None
    assert "slower than float32" in precision.hardware_warning("mixed_bfloat16", True, flags={"avx2", "fma"})
    assert precision.hardware_warning("mixed_bfloat16", False, flags={"avx2"}) is None  # a GPU run
    assert precision.hardware_warning("float32", True, flags=set()) is None
    assert precision.native_bf16() == bool({"avx512_bf16", "amx_bf16"} & precision.cpu_flags())


def test_resume_with_another_precision_is_refused(tmp_path):
    """flags.cfg records --precision; a checkpointed run resumes only with the same one. A flags.cfg written
    before the flag existed ran in float32."""
    from hlrs_tf.config.search import ADDED_FLAG_DEFAULTS
    from hlrs_tf.runtime.workdir import Workdir, check_same_run

    wd = Workdir(str(tmp_path / "run"))
    os.makedirs(wd.checkpoint_dir, exist_ok=True)
    with open(os.path.join(wd.checkpoint_dir, "state.json"), "w") as f:
        json.dump({"epoch": 1}, f)
    with open(wd.flags_file, "w") as f:
        f.write("--dataset=digits\n--epochs=2\n")  # older flags.cfg: no --precision
    check_same_run(wd, "--dataset=digits\n--epochs=2\n--precision=float32\n", ADDED_FLAG_DEFAULTS)
    with pytest.raises(ValueError, match=r"--precision=float32 -> mixed_bfloat16"):
        check_same_run(wd, "--dataset=digits\n--epochs=2\n--precision=mixed_bfloat16\n", ADDED_FLAG_DEFAULTS)


def test_search_dry_run_records_precision(tmp_path, run_cli):
    wd = tmp_path / "search"
    proc = run_cli("hlrs_tf.search", "--dataset=digits", "--channels=4", "--layers=3", "--precision=mixed_bfloat16",
                   "--dry_run", f"--workdir={wd}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(wd / "model_summary.json"))["precision"] == "mixed_bfloat16"
    assert "--precision=mixed_bfloat16" in open(wd / "flags.cfg").read().splitlines()
    # The warning follows this machine's CPU flags (no GPU here).
    assert ("hlrs_tf: warning: --precision=mixed_bfloat16" in proc.stderr) == (not precision.native_bf16())


# ------------------------------------------------------------------------------------------------ export
def test_bfloat16_trained_model_exports_float32(tmp_path, run_cli):
    """train (mixed_bfloat16, the real command) -> export: SavedModel and ONNX are float32 throughout and the
    parity check against the float32 Keras network holds; resuming the run in float32 is refused."""
    import onnx

    wd, out = tmp_path / "train", tmp_path / "export"
    train_flags = ["--genotype=DARTS_V2", "--flagfile=configs/retrain_quick.cfg", "--dataset=digits",
                   "--imbalance_ratio=10", "--channels=4", "--layers=4", "--epochs=1", "--steps_per_epoch=2",
                   "--batch_size=16", "--verbose=0", "--eval_batch_size=512"]
    proc = run_cli("hlrs_tf.train", *train_flags, "--precision=mixed_bfloat16", f"--workdir={wd}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(wd / "model_summary.json"))["precision"] == "mixed_bfloat16"
    from hlrs_tf.space import derived_network  # noqa: F401  (registers the classes model.keras names)

    model = keras.saving.load_model(str(wd / "model.keras"), compile=False)
    assert precision.policy_name(model) == "mixed_bfloat16"
    assert model.cells[0].preprocess1.conv.compute_dtype == "bfloat16"  # reloaded with its training policy

    proc = run_cli("hlrs_tf.export", f"--model={wd}", f"--out={out}", "--num_images=200")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(out / "export_report.json"))
    assert report["passed"] and report["precision"] == "float32" and report["trained_precision"] == "mixed_bfloat16"
    assert report["saved_model"]["max_abs_diff_logits"] <= report["tolerance"]

    loaded = tf.saved_model.load(str(out / "saved_model"))
    assert {v.dtype for v in loaded.variables} == {tf.float32}
    outputs = loaded.signatures["serving_default"].structured_outputs
    assert {o.dtype for o in outputs.values()} == {tf.float32}
    graph = loaded.signatures["serving_default"].graph
    assert not [op.name for op in graph.get_operations()
                if any(t.dtype in (tf.bfloat16, tf.float16) for t in op.outputs)]
    onnx_model = onnx.load(str(out / "model.onnx"))
    low = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
    assert not [t.name for t in onnx_model.graph.initializer if t.data_type in low]
    assert not [n.name for n in onnx_model.graph.node for a in n.attribute if a.name == "to" and a.i in low]

    # Resume with another precision: refused before anything runs (one line, exit 2).
    proc = run_cli("hlrs_tf.train", *train_flags, "--precision=float32", f"--workdir={wd}",
                   timeout=300)
    assert proc.returncode == 2 and "--precision=mixed_bfloat16 -> float32" in proc.stderr, proc.stderr[-2000:]
