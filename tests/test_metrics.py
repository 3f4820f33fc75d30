"""Tests for hlrs_tf.data.long_tail_metrics: per-class accuracy, shot groups (exact boundaries), the JSON report."""

import json
import math

import numpy as np
import pytest

from hlrs_tf.data.long_tail_metrics import (
    FEW_SHOT_MAX,
    MANY_SHOT_MIN,
    balanced_accuracy,
    evaluation_report,
    per_class_accuracy,
    shot_accuracies,
)


def test_constants():
    assert MANY_SHOT_MIN == 100 and FEW_SHOT_MAX == 20


def test_per_class_accuracy_known_values():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 0, 2, 2, 2]
    acc = per_class_accuracy(y_true, y_pred, num_classes=4)
    assert acc.shape == (4,)
    np.testing.assert_allclose(acc[:3], [0.5, 0.5, 1.0])
    assert math.isnan(acc[3])  # class 3 has no test examples


def test_per_class_accuracy_validation():
    with pytest.raises(ValueError, match="differ in length"):
        per_class_accuracy([0, 1], [0], 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        per_class_accuracy([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="outside"):
        per_class_accuracy([0, 1], [0, -1], 2)
    with pytest.raises(ValueError, match="1-D"):
        per_class_accuracy([[0, 1]], [[0, 1]], 2)
    with pytest.raises(ValueError, match="integer class labels"):
        per_class_accuracy([0.5, 1.0], [0, 1], 2)
    with pytest.raises(ValueError, match="num_classes"):
        per_class_accuracy([0], [0], 0)


def test_shot_boundaries_exact():
    # train counts chosen on the group boundaries: 101 many, 100 medium, 20 medium, 19 few.
    counts = [101, 100, 20, 19]
    acc = [0.9, 0.6, 0.4, 0.1]
    s = shot_accuracies(acc, counts)
    assert s["many_shot"] == pytest.approx(0.9)
    assert s["medium_shot"] == pytest.approx(0.5)  # mean of 0.6 (100 images) and 0.4 (20 images)
    assert s["few_shot"] == pytest.approx(0.1)
    assert set(s) == {"many_shot", "medium_shot", "few_shot"}


def test_shot_groups_empty_are_none():
    s = shot_accuracies([0.8, 0.7], [5000, 2997])
    assert s == {"many_shot": pytest.approx(0.75), "medium_shot": None, "few_shot": None}
    s = shot_accuracies([0.3], [5])
    assert s["many_shot"] is None and s["medium_shot"] is None and s["few_shot"] == pytest.approx(0.3)
    # A group whose only class has no test examples (NaN) also has no accuracy.
    s = shot_accuracies([0.8, float("nan")], [500, 10])
    assert s["few_shot"] is None


def test_shot_accuracies_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        shot_accuracies([0.5, 0.5], [100])


def test_cifar10_lt_counts_grouping():
    # SPEC section 6, rho=100: 5000 .. 139 many (8 classes), 83 and 50 medium, no few-shot class.
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    acc = np.linspace(1.0, 0.1, 10)
    s = shot_accuracies(acc, counts)
    assert s["many_shot"] == pytest.approx(acc[:8].mean())
    assert s["medium_shot"] == pytest.approx(acc[8:].mean())
    assert s["few_shot"] is None


def _balanced_test_set(num_classes=4, per_class=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), per_class)
    logits = rng.standard_normal((y.size, num_classes))
    # Make the head classes easier so the groups differ.
    logits[np.arange(y.size), y] += np.array([3.0, 1.5, 0.5, 0.0])[y]
    return y, logits


def test_evaluation_report_values_and_json():
    y, logits = _balanced_test_set()
    counts = [500, 100, 20, 3]
    rep = evaluation_report(y, logits, counts, 4, method="hlrs", imbalance_ratio=np.int64(100),
                            seed=np.float32(0.5))
    pred = logits.argmax(axis=1)
    per_class = [float(np.mean(pred[y == c] == c)) for c in range(4)]
    assert rep["top1"] == pytest.approx(float(np.mean(pred == y)))
    assert rep["per_class"] == pytest.approx(per_class)
    assert rep["many_shot"] == pytest.approx(per_class[0])
    assert rep["medium_shot"] == pytest.approx((per_class[1] + per_class[2]) / 2)
    assert rep["few_shot"] == pytest.approx(per_class[3])
    assert rep["train_class_counts"] == counts
    assert rep["num_test"] == 40
    assert rep["method"] == "hlrs" and rep["imbalance_ratio"] == 100
    # Class-averaged groups equal instance-averaged accuracy on a balanced test set.
    assert np.mean(per_class) == pytest.approx(rep["top1"])
    # Strictly JSON (no NaN tokens) with plain Python types.
    text = json.dumps(rep, allow_nan=False)
    assert json.loads(text)["num_test"] == 40
    assert type(rep["top1"]) is float and type(rep["num_test"]) is int
    assert all(type(c) is int for c in rep["train_class_counts"])
    assert type(rep["imbalance_ratio"]) is int and type(rep["seed"]) is float


def test_evaluation_report_logits_and_labels_agree():
    y, logits = _balanced_test_set(seed=3)
    counts = np.array([300, 60, 25, 10])
    a = evaluation_report(y, logits, counts, 4)
    b = evaluation_report(y, logits.argmax(axis=1), counts, 4)
    assert a == b


def test_evaluation_report_nan_becomes_none():
    # Class 2 has no test examples: its per-class entry is None, the report stays valid JSON.
    rep = evaluation_report([0, 1, 1], [0, 1, 0], [200, 50, 5], 3)
    assert rep["per_class"] == [1.0, 0.5, None]
    assert rep["few_shot"] is None
    json.dumps(rep, allow_nan=False)


def test_evaluation_report_validation():
    y, logits = _balanced_test_set()
    with pytest.raises(ValueError, match=r"shape \(N, 5\)"):
        evaluation_report(y, logits, [1] * 5, 5)
    with pytest.raises(ValueError, match="train_counts must have 4"):
        evaluation_report(y, logits, [1, 2, 3], 4)
    with pytest.raises(ValueError, match="overwrite"):
        evaluation_report(y, logits, [1] * 4, 4, top1=0.3)
    with pytest.raises(ValueError, match="differ in length"):
        evaluation_report(y[:-1], logits, [1] * 4, 4)
    with pytest.raises(ValueError, match="empty"):
        evaluation_report([], np.zeros((0, 4)), [1] * 4, 4)
    with pytest.raises(ValueError, match="logits_or_pred"):
        evaluation_report(y, logits[None], [1] * 4, 4)


def test_balanced_accuracy():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 0, 2, 2, 2]
    # classes present: 0 (0.5), 1 (0.5), 2 (1.0); class 3 absent is ignored.
    assert balanced_accuracy(y_true, y_pred, 4) == pytest.approx(2.0 / 3.0)
    # Differs from top-1 on an imbalanced test set.
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0], 2) == pytest.approx(0.5)
    assert math.isnan(balanced_accuracy([], [], 2))
