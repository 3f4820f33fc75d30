"""Long-tail evaluation metrics: top-1, per-class accuracy and many/medium/few-shot accuracy.

The shot groups follow the convention of the long-tail literature (OLTR, BBN, LDAM-DRW), keyed on the number of
*training* images of a class:

* many-shot: more than ``MANY_SHOT_MIN`` (100) training images;
* medium-shot: ``FEW_SHOT_MAX`` (20) to ``MANY_SHOT_MIN`` (100), both inclusive;
* few-shot: fewer than ``FEW_SHOT_MAX`` (20).

Group accuracies are the mean of the per-class accuracies of the classes in the group (class-averaged). On the
balanced test sets used here that equals the instance-averaged accuracy over the group's test images.

Pure numpy + stdlib so evaluation scripts and tests can run without importing TensorFlow; every value returned
by ``evaluation_report`` is a plain Python type (``None`` instead of NaN) so it can go straight into
``json.dumps``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "MANY_SHOT_MIN",
    "FEW_SHOT_MAX",
    "per_class_accuracy",
    "shot_accuracies",
    "evaluation_report",
    "balanced_accuracy",
]

#: A class is many-shot when it has strictly more than this many training images.
MANY_SHOT_MIN: int = 100
#: A class is few-shot when it has strictly fewer than this many training images.
FEW_SHOT_MAX: int = 20

_REPORT_KEYS = (
    "top1", "per_class", "many_shot", "medium_shot", "few_shot", "train_class_counts", "num_test",
)


def _labels(y: Any, name: str, num_classes: int) -> np.ndarray:
    """Converts labels to a 1-D int64 array and checks they lie in ``0..num_classes-1``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        # Float labels are accepted only when they are whole numbers (e.g. from a float tensor).
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must contain integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside 0..{num_classes - 1} (min {arr.min()}, max {arr.max()})"
        )
    return arr


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def per_class_accuracy(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Accuracy (recall) of each class.

    Args:
        y_true: 1-D true labels.
        y_pred: 1-D predicted labels, same length.
        num_classes: Number of classes.

    Returns:
        Float64 array of shape ``(num_classes,)``; NaN for a class with no test examples (its accuracy is
        undefined, and 0 would wrongly drag group means down).

    Raises:
        ValueError: shapes differ or labels are out of range.
    """
    num_classes = _check_num_classes(num_classes)
    t = _labels(y_true, "y_true", num_classes)
    p = _labels(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    totals = np.bincount(t, minlength=num_classes).astype(np.float64)
    correct = np.bincount(t[t == p], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = correct / totals
    acc[totals == 0] = np.nan
    return acc


def _group_mean(values: np.ndarray) -> float | None:
    # Classes without test examples (NaN) are left out; a group with nothing left has no accuracy.
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def shot_accuracies(per_class_acc: Any, train_counts: Any) -> dict:
    """Many-, medium- and few-shot accuracy from per-class accuracies.

    Args:
        per_class_acc: ``(num_classes,)`` per-class accuracies (NaN for classes without test examples).
        train_counts: ``(num_classes,)`` number of training images per class.

    Returns:
        ``{"many_shot": float | None, "medium_shot": float | None, "few_shot": float | None}``: the mean
        per-class accuracy of the classes in each group (many: count > 100; medium: 20 <= count <= 100; few:
        count < 20), ``None`` when the group is empty (or none of its classes has test examples).

    Raises:
        ValueError: the two arrays differ in length.
    """
    acc = np.asarray(per_class_acc, dtype=np.float64).reshape(-1)
    counts = np.asarray(train_counts).reshape(-1)
    if acc.shape != counts.shape:
        raise ValueError(
            f"per_class_acc and train_counts differ in length: {acc.shape[0]} vs {counts.shape[0]}"
        )
    many = counts > MANY_SHOT_MIN
    few = counts < FEW_SHOT_MAX
    medium = ~many & ~few
    return {
        "many_shot": _group_mean(acc[many]),
        "medium_shot": _group_mean(acc[medium]),
        "few_shot": _group_mean(acc[few]),
    }


def balanced_accuracy(y_true: Any, y_pred: Any, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``y_true``.

    Args:
        y_true: 1-D true labels.
        y_pred: 1-D predicted labels.
        num_classes: Number of classes.

    Returns:
        The balanced accuracy (NaN if ``y_true`` is empty).
    """
    acc = per_class_accuracy(y_true, y_pred, num_classes)
    present = acc[~np.isnan(acc)]
    return float(present.mean()) if present.size else float("nan")


def _jsonable(x: Any) -> Any:
    """Converts numpy scalars/arrays (recursively) to plain Python, NaN/inf floats to None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        # JSON has no NaN; json.dumps would write the non-standard token NaN.
        return None
    return x


def evaluation_report(
    y_true: Any,
    logits_or_pred: Any,
    train_counts: Any,
    num_classes: int,
    **extra: Any,
) -> dict:
    """Full long-tail evaluation report, ready for ``json.dumps``.

    Args:
        y_true: 1-D true labels of the test set.
        logits_or_pred: Either ``(N, num_classes)`` logits/probabilities (argmax is taken) or ``(N,)``
            predicted labels.
        train_counts: ``(num_classes,)`` training images per class (defines the shot groups).
        num_classes: Number of classes.
        **extra: Additional entries copied into the report (e.g. ``method="hlrs"``, ``imbalance_ratio=100``);
            numpy values are converted to Python ones.

    Returns:
        ``{"top1", "per_class", "many_shot", "medium_shot", "few_shot", "train_class_counts", "num_test",
        **extra}`` with Python floats/ints and ``None`` in place of NaN. ``top1`` is instance-averaged over
        the test set; ``per_class`` has one entry per class.

    Raises:
        ValueError: inconsistent shapes, labels out of range, an empty test set, or an ``extra`` key that
            would overwrite a report field.
    """
    num_classes = _check_num_classes(num_classes)
    clash = sorted(set(extra) & set(_REPORT_KEYS))
    if clash:
        raise ValueError(f"extra keys would overwrite report fields: {', '.join(clash)}")
    scores = np.asarray(logits_or_pred)
    if scores.ndim == 2:
        if scores.shape[1] != num_classes:
            raise ValueError(
                f"logits must have shape (N, {num_classes}), got {scores.shape}"
            )
        y_pred = np.argmax(scores, axis=1)
    elif scores.ndim == 1:
        y_pred = scores
    else:
        raise ValueError(
            f"logits_or_pred must be (N, num_classes) logits or (N,) labels, got shape {scores.shape}"
        )
    counts = np.asarray(train_counts).reshape(-1)
    if counts.shape[0] != num_classes:
        raise ValueError(f"train_counts must have {num_classes} entries, got {counts.shape[0]}")
    t = _labels(y_true, "y_true", num_classes)
    if t.size == 0:
        raise ValueError("empty test set: y_true has no examples")
    acc = per_class_accuracy(t, y_pred, num_classes)
    p = _labels(y_pred, "y_pred", num_classes)
    report = {
        "top1": float(np.mean(t == p)),
        "per_class": _jsonable(acc),
        **shot_accuracies(acc, counts),
        "train_class_counts": [int(c) for c in counts],
        "num_test": int(t.size),
    }
    report.update(_jsonable(extra))
    return report
