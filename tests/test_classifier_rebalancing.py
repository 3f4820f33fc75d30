"""Post-hoc logit adjustment, tau-norm and cRT on a finished retraining (hlrs_tf.train.rebalancing,
``python -m hlrs_tf.post_hoc``), issue 19.

The oracles are written from the references' semantics in numpy, not from our code:
* google-research ``logit_adjustment/main.py`` ``posthoc``: ``logits - log(base_probs ** tau)``;
* classifier-balancing ``pnorm``: ``ws[i] = w[i] / ||w[i]||_2 ** p`` over a PyTorch ``(C, F)`` weight;
* Kang et al.'s cRT: only the classifier changes; the features stay bitwise.

One real retraining on scikit-learn's digits (offline) with ``--holdout_fraction=0.2`` feeds the end-to-end
tests, each method through its command line, and one export with the parity check.
"""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import pytest

from hlrs_tf.config.train import ConfigError, TrainConfig
from hlrs_tf.data.long_tail import holdout_split, make_long_tailed
from hlrs_tf.data.pipeline import eval_dataset, normalize
from hlrs_tf.data.sources import load_dataset
from hlrs_tf.train.rebalancing import (
    PostHocConfig,
    PostHocError,
    _choose_tau,
    _features,
    balanced_accuracy,
    crt_classifier,
    logit_adjusted_bias,
    tau_normalised_kernel,
)

TRAIN = ["--genotype=DARTS_V2", "--flagfile=configs/retrain_quick.cfg", "--dataset=digits", "--imbalance_ratio=10",
         "--channels=4", "--layers=4", "--epochs=2", "--steps_per_epoch=10", "--batch_size=16", "--verbose=0",
         "--eval_batch_size=512", "--holdout_fraction=0.2", "--seed=3"]


# ---------------------------------------------------------------------------- oracles of the maths
def test_logit_adjusted_bias_is_the_references_posthoc_adjustment():
    counts = np.array([100, 10, 1])
    bias = np.array([0.1, -0.2, 0.3])
    logits = np.array([[2.0, 1.0, 0.5], [0.0, 0.3, 0.2]])
    priors = counts / counts.sum()
    for tau in (0.0, 0.5, 1.0, 2.0):
        reference = (logits + bias) - np.log(priors ** tau)  # main.py posthoc, on the biased logits
        ours = logits + logit_adjusted_bias(bias, counts, tau)
        # 1e-12 inside the log (utils.py's epsilon, shared with the loss) moves each offset by < 1e-12 / pi^tau,
        # at most 1e-12 * 111^2 = 1.23e-8 here (tau = 2, the rarest class); 2e-8 allows that and nothing else.
        np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-8)
    np.testing.assert_array_equal(logit_adjusted_bias(bias, counts, 0.0), bias - np.log(1 + 1e-12))


def test_tau_norm_matches_the_reference_pnorm_and_tau_zero_is_the_identity():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(6, 4))  # Keras Dense: (features, classes)
    weights = kernel.T.copy()  # PyTorch nn.Linear: (classes, features)
    for p in (0.0, 0.7, 1.0, 1.5):
        ws = weights.copy()
        for i in range(weights.shape[0]):  # classifier-balancing pnorm, transcribed
            ws[i] = ws[i] / np.power(np.linalg.norm(weights[i], 2), p)
        np.testing.assert_allclose(tau_normalised_kernel(kernel, p), ws.T, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(tau_normalised_kernel(kernel, 0.0), kernel)
    np.testing.assert_allclose(np.linalg.norm(tau_normalised_kernel(kernel, 1.0), axis=0), 1.0, rtol=1e-12)


def test_balanced_accuracy_is_the_mean_per_class_recall():
    y = np.array([0, 0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2])
    logits = np.eye(3)[pred]
    # recalls: class 0 3/4, class 1 1/1, class 2 1/2 (plain accuracy would be 5/7)
    assert balanced_accuracy(y, logits, 3) == pytest.approx((0.75 + 1.0 + 0.5) / 3, abs=1e-15)
    assert balanced_accuracy(y, logits, 4) == pytest.approx((0.75 + 1.0 + 0.5) / 3, abs=1e-15)  # empty class 3


def test_tau_is_chosen_on_the_validation_split_smallest_among_ties():
    labels = np.array([0, 1, 1])
    features = np.zeros((3, 1))
    # Scores by tau: 0 -> 1/2 (all class 0), 0.5 and 1.0 -> 1.0 (perfect), 1.5 and 2.0 -> 1/2 (all class 1)
    table = {0.0: [[1, 0]] * 3, 0.5: [[1, 0], [0, 1], [0, 1]], 1.0: [[1, 0], [0, 1], [0, 1]],
             1.5: [[0, 1]] * 3, 2.0: [[0, 1]] * 3}
    config = PostHocConfig(method="logit_adjust", tau_max=2.0, tau_steps=4)
    tau, how = _choose_tau(config, lambda f, t: np.array(table[float(t)], float), (features, labels), 2)
    assert tau == 0.5 and how["tau_chosen_by"] == "validation balanced accuracy"
    assert [p["balanced_accuracy"] for p in how["validation_curve"]] == [0.5, 1.0, 1.0, 0.5, 0.5]
    explicit, how = _choose_tau(PostHocConfig(method="tau_norm", tau=0.8), None, None, 2)
    assert explicit == 0.8 and how == {"tau_chosen_by": "--tau"}


def test_crt_learns_separable_features_with_balanced_batches_and_is_seeded():
    rng = np.random.default_rng(1)
    counts = [400, 40, 4]  # long-tailed: an unbalanced sampler would leave the 4-example class unlearnt
    centres = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    x = (centres[y] + rng.normal(scale=0.5, size=(len(y), 2))).astype(np.float32)
    config = PostHocConfig(method="crt", crt_epochs=3, crt_batch_size=32, seed=5)
    kernel, bias = crt_classifier(x, y, 3, config)
    assert kernel.shape == (2, 3) and bias.shape == (3,) and kernel.dtype == np.float32
    test_y = np.repeat(np.arange(3), 50)
    test_x = centres[test_y] + rng.normal(scale=0.5, size=(150, 2))
    assert balanced_accuracy(test_y, test_x @ kernel + bias, 3) == 1.0
    again = crt_classifier(x, y, 3, config)
    np.testing.assert_array_equal(again[0], kernel)  # same seed, same init, same batches, same ops
    np.testing.assert_array_equal(again[1], bias)


def test_post_hoc_config_refuses_bad_values_naming_the_flag():
    for kwargs, flag in [(dict(method="platt"), "--post_hoc=platt"), (dict(method="crt", tau=-1.0), "--tau=-1"),
                         (dict(method="crt", crt_epochs=0), "--crt_epochs=0"),
                         (dict(method="crt", crt_momentum=1.0), "--crt_momentum=1")]:
        with pytest.raises(PostHocError, match=flag):
            PostHocConfig(**kwargs)


def test_holdout_split_is_stratified_disjoint_and_refuses_emptying_a_class():
    y = np.repeat(np.arange(3), [50, 10, 2])
    x = np.arange(len(y))
    (x_tr, y_tr), (x_ho, y_ho) = holdout_split(x, y, 0.2, seed=0)
    assert np.bincount(y_ho).tolist() == [10, 2, 1] and np.bincount(y_tr).tolist() == [40, 8, 1]
    assert sorted(np.concatenate([x_tr, x_ho]).tolist()) == x.tolist()
    assert holdout_split(x, y, 0.0, seed=0)[1] is None
    with pytest.raises(ValueError, match=r"--holdout_fraction=0\.2 .*class\(es\) \[2\]"):
        holdout_split(x, np.repeat(np.arange(3), [50, 10, 1]), 0.2, seed=0)
    with pytest.raises(ConfigError, match="holdout_fraction"):
        TrainConfig.create(genotype="DARTS_V2", holdout_fraction=1.0)


def test_train_config_reads_a_flags_file_back():
    text = "--genotype=DARTS_V1\n--dataset=digits\n--noaugment\n--cutout\n--holdout_fraction=0.25\n--seed=4\n" \
           "--a_flag_of_the_future=1\n"
    config = TrainConfig.from_flags_text(text)
    assert (config.genotype, config.data.dataset, config.data.augment, config.data.cutout, config.data.holdout_fraction,
            config.runtime.seed) == ("DARTS_V1", "digits", False, True, 0.25, 4)
    assert config.channels == TrainConfig.create(genotype="x").channels  # absent: the default
    with pytest.raises(ConfigError, match="--seed=four"):
        TrainConfig.from_flags_text("--genotype=DARTS_V1\n--seed=four\n")


# ---------------------------------------------------------------------------- a real retraining
@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_cli):
    root = tmp_path_factory.mktemp("post_hoc")
    workdir = str(root / "train")
    proc = run_cli("hlrs_tf.train", *TRAIN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    digits = load_dataset("digits")
    x_lt, y_lt = make_long_tailed(digits.x_train, digits.y_train, 10, seed=3)
    (x_tr, y_tr), (x_ho, y_ho) = holdout_split(x_lt, y_lt, 0.2, seed=3)
    return {"root": root, "workdir": workdir, "digits": digits, "lt": y_lt, "train": (x_tr, y_tr),
            "holdout": (x_ho, y_ho)}


def _post_hoc(run_cli, trained, method, *args):
    proc = run_cli("hlrs_tf.post_hoc", f"--workdir={trained['workdir']}", f"--post_hoc={method}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = os.path.join(trained["workdir"], "post_hoc", method)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    return metrics, keras.saving.load_model(os.path.join(out, "model.keras"), compile=False), proc


def _original(trained):
    return keras.saving.load_model(os.path.join(trained["workdir"], "model.keras"), compile=False)


def _changed(network, original) -> list[str]:
    """Names of the variables that differ (same architecture: the weights pair up in order; the paths carry
    per-process layer counters, so they are not keys)."""
    pairs = list(zip(network.weights, original.weights, strict=True))
    return [a.name if a.name in ("kernel", "bias") and any(a is w for w in network.classifier.weights)
            else a.path for a, b in pairs if not np.array_equal(a.numpy(), b.numpy())]


def test_retraining_holds_out_a_stratified_split_and_trains_on_the_rest(trained):
    with open(os.path.join(trained["workdir"], "model_summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(trained["workdir"], "class_counts.json")) as f:
        counts = json.load(f)
    lt_counts = np.bincount(trained["lt"], minlength=10)
    train_counts, held = np.array(summary["train_class_counts"]), np.array(summary["holdout_class_counts"])
    assert (train_counts + held).tolist() == lt_counts.tolist()
    assert held.tolist() == np.ceil(0.2 * lt_counts - 1e-9).astype(int).tolist()  # ceil(fraction * n_c) per class
    assert counts["counts"] == train_counts.tolist() and summary["num_train"] == int(train_counts.sum())
    assert "--holdout_fraction=0.2" in open(os.path.join(trained["workdir"], "flags.cfg")).read()


def test_logit_adjust_chooses_tau_on_the_holdout_and_shifts_only_the_bias(trained, run_cli):
    metrics, network, proc = _post_hoc(run_cli, trained, "logit_adjust")
    original = _original(trained)
    digits = trained["digits"]
    record = metrics["post_hoc"]
    assert record["tau_chosen_by"] == "validation balanced accuracy" and "tau=" in proc.stdout
    # Oracle: the reference's post-hoc adjustment of the original network's validation logits, in float64 numpy.
    # The features as the command computes them (same graph function, same batch of 512: bitwise the same), so
    # that the oracle checks the adjustment and the choice, not two kernels' rounding.
    x_ho, y_ho = trained["holdout"]
    features = _features(original, x_ho, y_ho, digits.spec, 512).astype(np.float64)
    kernel, bias = (np.asarray(v.numpy(), np.float64) for v in original.classifier.weights)
    priors = np.bincount(trained["train"][1], minlength=10) / len(trained["train"][1])
    curve = [balanced_accuracy(y_ho, features @ kernel + bias - np.log(priors ** t), 10)
             for t in np.linspace(0, 2, 21)]
    # The validation curve and its first maximum; 1e-6: the file rounds to 6 decimals.
    np.testing.assert_allclose([p["balanced_accuracy"] for p in record["validation_curve"]], curve, atol=1e-6)
    assert record["tau"] == pytest.approx(np.linspace(0, 2, 21)[int(np.argmax(curve))], abs=1e-9)
    # Only the bias moved, by -log(prior^tau); float32 storage of the new bias: 1e-6 relative is its rounding.
    np.testing.assert_allclose(network.classifier.bias.numpy(), bias - np.log(priors ** record["tau"] + 1e-12),
                               rtol=1e-6, atol=1e-6)
    assert _changed(network, original) == (["bias"] if record["tau"] > 0 else [])
    # The test evaluation is the saved model's own.
    test = eval_dataset(digits.x_test, digits.y_test, digits.spec, 512)  # as the command: one batch
    logits = np.concatenate([network(images, training=False).numpy() for images, _ in test])
    assert metrics["top1"] == pytest.approx(float(np.mean(logits.argmax(1) == digits.y_test)), abs=1e-12)
    with open(os.path.join(trained["workdir"], "metrics.json")) as f:
        assert record["original_top1"] == json.load(f)["top1"]


def test_tau_norm_at_tau_zero_changes_nothing(trained, run_cli):
    metrics, network, _ = _post_hoc(run_cli, trained, "tau_norm", "--tau=0")
    original = _original(trained)
    assert _changed(network, original) == []
    with open(os.path.join(trained["workdir"], "metrics.json")) as f:
        before = json.load(f)
    assert metrics["top1"] == before["top1"] and metrics["per_class"] == before["per_class"]
    assert metrics["post_hoc"] == {"method": "tau_norm", "tau": 0.0, "tau_chosen_by": "--tau",
                                   "original_top1": before["top1"]}


def test_crt_keeps_the_features_bitwise_and_exports_with_parity(trained, run_cli):
    metrics, network, _ = _post_hoc(run_cli, trained, "crt", "--crt_epochs=2")
    original = _original(trained)
    digits = trained["digits"]
    x = normalize(digits.x_test[:200], digits.spec)
    np.testing.assert_array_equal(network.features(x, training=False).numpy(),
                                  original.features(x, training=False).numpy())
    assert _changed(network, original) == ["kernel", "bias"]  # the classifier's, nothing else
    assert metrics["post_hoc"]["crt_epochs"] == 2 and metrics["post_hoc"]["seed"] == 3  # the run's --seed
    out = str(trained["root"] / "export_crt")
    proc = run_cli("hlrs_tf.export", f"--model={trained['workdir']}/post_hoc/crt", f"--out={out}",
                   "--num_images=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "export_report.json")) as f:
        report = json.load(f)
    assert report["passed"] and report["num_images"] == 100


def test_choosing_tau_without_a_validation_split_is_refused(trained, run_cli):
    no_holdout = str(trained["root"] / "no_holdout")
    shutil.copytree(trained["workdir"], no_holdout, ignore=shutil.ignore_patterns("post_hoc", ".lock"))
    flags_file = os.path.join(no_holdout, "flags.cfg")
    text = open(flags_file).read().replace("--holdout_fraction=0.2", "--holdout_fraction=0.0")
    with open(flags_file, "w") as f:
        f.write(text)
    proc = run_cli("hlrs_tf.post_hoc", f"--workdir={no_holdout}", "--post_hoc=tau_norm")
    assert proc.returncode == 2
    assert "--post_hoc=tau_norm needs a validation split" in proc.stderr and "--holdout_fraction" in proc.stderr
    assert not os.path.exists(os.path.join(no_holdout, "post_hoc"))  # refused before any work
    os.remove(os.path.join(no_holdout, "model.keras"))
    proc = run_cli("hlrs_tf.post_hoc", f"--workdir={no_holdout}", "--post_hoc=crt")
    assert proc.returncode == 2 and "is not a finished retraining: it has no model.keras" in proc.stderr
    proc = run_cli("hlrs_tf.post_hoc", f"--workdir={no_holdout}", "--post_hoc=platt")
    assert proc.returncode == 2 and "logit_adjust" in proc.stderr and "crt" in proc.stderr
