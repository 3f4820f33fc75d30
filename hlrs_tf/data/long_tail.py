"""Long-tailed subsets and stratified splits, computed from the labels (NumPy only, no TensorFlow).

* :func:`long_tail_counts`, :func:`long_tailed_class_counts`, :func:`make_long_tailed`: the exponential
  long-tail profile of the LDAM/BBN CIFAR-LT setup (class 0 = head) and the subset that follows it.
* :func:`stratified_split`, :func:`split_class_counts`: the class-by-class split of the search's weight and
  architecture sides; :func:`holdout_split`: the share of each class the retraining holds out for
  :mod:`hlrs_tf.post_hoc`.
* :func:`check_class_counts`: refuses a long-tail profile that would leave a class without images, from the
  labels alone, before anything is built; :func:`class_counts`: examples per class.

Every choice is one ``np.random.default_rng(seed)``, so a subset or split depends only on the labels and the seed.
No TensorFlow, Keras or absl: ``test_modules_do_not_import_tensorflow`` (tests/test_genotypes.py) checks it.
"""

from __future__ import annotations

import math

import numpy as np

from hlrs_tf.data.spec import DatasetError

__all__ = ["check_class_counts", "class_counts", "holdout_split", "long_tail_counts", "long_tailed_class_counts",
           "make_long_tailed", "split_class_counts", "stratified_split"]


# --------------------------------------------------------------------------------------------------
# Long-tailed subsampling and splits.


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Per-class example counts of an exponential long-tail profile (class 0 = head).

    Class ``i`` keeps ``int(n_max * (1 / imbalance_ratio) ** (i / (num_classes - 1)))``, the expression
    of the LDAM/BBN CIFAR-LT setup, so the counts match the published ones exactly
    (CIFAR-10, ratio 100: 5000, 2997, ..., 50; 12,406 images).

    Args:
        n_max: Count of the head class.
        num_classes: Number of classes.
        imbalance_ratio: ``N_max / N_min`` (>= 1).

    Returns:
        The counts, head first.

    Raises:
        ValueError: If ``imbalance_ratio < 1``, ``n_max < 1`` or ``num_classes < 1``.
    """
    if not imbalance_ratio >= 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (N_max / N_min), got {imbalance_ratio}")
    if n_max < 1 or num_classes < 1:
        raise ValueError(f"n_max and num_classes must be >= 1, got {n_max} and {num_classes}")
    if num_classes == 1:
        return [int(n_max)]
    # Written exactly as the reference expression: reordering the float ops changes some counts by 1.
    return [int(n_max * (1 / imbalance_ratio) ** (i / (num_classes - 1))) for i in range(num_classes)]


def class_counts(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts the examples of each class.

    Args:
        y: Integer labels.
        num_classes: Number of classes (length of the result).

    Returns:
        ``int64`` array of shape ``(num_classes,)``.

    Raises:
        ValueError: If a label lies outside ``0 .. num_classes - 1``.
    """
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return np.bincount(y, minlength=num_classes).astype(np.int64)


def make_long_tailed(x: np.ndarray, y: np.ndarray, imbalance_ratio: float, seed: int = 0,
                     n_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Subsamples a dataset to an exponential long-tail profile (class 0 = head).

    One ``np.random.default_rng(seed)`` draws the kept indices class by class in label order, so the
    result depends only on the data and the seed. Within a class the original order is kept; the result
    is sorted by class.

    Args:
        x: Examples, first axis = example.
        y: Integer labels ``0 .. C-1`` with ``C = max(y) + 1``.
        imbalance_ratio: ``N_max / N_min`` (>= 1). With 1 and no ``n_max`` all data is returned.
        seed: Seed of the per-class choice.
        n_max: Head-class count; defaults to the smallest class size present (for balanced data, the
            per-class count).

    Returns:
        ``(x_lt, y_lt)``, sorted by class.

    Raises:
        ValueError: If ``imbalance_ratio < 1`` or a class has fewer examples than its target count.
    """
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    num_classes = int(y.max()) + 1
    counts = class_counts(y, num_classes)
    if imbalance_ratio == 1 and n_max is None:
        # "All data", still grouped by class (stable, so the original order within a class is kept).
        order = np.argsort(y, kind="stable")
        return x[order], y[order]
    targets = long_tailed_class_counts(counts, imbalance_ratio, n_max)
    n_max = int(targets[0])
    rng = np.random.default_rng(seed)
    keep = []
    for c, k in enumerate(targets):
        idx = np.flatnonzero(y == c)
        if k > idx.size:
            raise ValueError(
                f"class {c} has {idx.size} examples but the long-tail profile needs {k} "
                f"(n_max={n_max}, imbalance_ratio={imbalance_ratio}); lower n_max")
        keep.append(np.sort(rng.choice(idx, size=k, replace=False)))
    idx = np.concatenate(keep)
    return x[idx], y[idx]


def long_tailed_class_counts(counts, imbalance_ratio: float, n_max: int | None = None) -> np.ndarray:
    """The per-class counts :func:`make_long_tailed` keeps from a training set with ``counts`` per class.

    Args:
        counts: Examples per class of the full training set.
        imbalance_ratio: ``N_max / N_min`` (>= 1); 1 without ``n_max`` keeps everything.
        n_max: Head-class count; default the smallest class size present.

    Returns:
        ``int64 [C]`` (before :func:`make_long_tailed`'s check that every class has enough examples).
    """
    counts = np.asarray(counts, np.int64).reshape(-1)
    if imbalance_ratio == 1 and n_max is None:
        return counts.copy()
    if n_max is None:
        n_max = int(counts[counts > 0].min())
    return np.asarray(long_tail_counts(n_max, len(counts), imbalance_ratio), np.int64)


def _split_size(n: int, fraction: float) -> int:
    """How many of a class's ``n`` examples :func:`stratified_split` puts on side ``a``."""
    # The epsilon keeps e.g. 0.7 * 10 = 7.000000000000001 from rounding up to 8.
    k = math.ceil(fraction * n - 1e-9)
    return min(max(k, 1), n - 1) if n >= 2 else k


def split_class_counts(counts, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-class sizes of the two sides of :func:`stratified_split` for a set with ``counts`` per class.

    Returns:
        ``(a_counts, b_counts)``, ``int64 [C]`` each.
    """
    counts = np.asarray(counts, np.int64).reshape(-1)
    a = np.asarray([_split_size(int(n), fraction) for n in counts], np.int64)
    return a, counts - a


def check_class_counts(y_train: np.ndarray, num_classes: int, imbalance_ratio: float,
                       train_portion: float | None = None, class_names=None) -> None:
    """Refuses a long-tail profile that leaves a class without a training image, from the labels alone.

    Mirrors :func:`make_long_tailed` and, for a search (``train_portion`` given), :func:`stratified_split`:
    every class must keep at least one image on each search split (so at least two in all), or one image for
    retraining. Call before building anything: the counts are known as soon as the labels are.

    Args:
        y_train: Labels of the full training set.
        num_classes: Number of classes.
        imbalance_ratio: ``N_max / N_min`` of the long-tailed set.
        train_portion: Share of each class on the search's weight split; ``None`` for retraining (no split).
        class_names: Optional names, index = label, for the message.

    Raises:
        DatasetError: One line naming the class, its count, the counts per class (and per split) and the fix.
    """
    raw = class_counts(y_train, num_classes)
    kept = long_tailed_class_counts(raw, imbalance_ratio)
    splits = split_class_counts(kept, train_portion) if train_portion is not None else (kept,)
    least = np.min(np.stack(splits), axis=0)
    if least.min() >= 1:
        return
    short = int(np.argmin(least))  # the first class left short (counts fall along the tail: the head-most)
    name = _class_name(short, class_names)
    n = int(kept[short])
    message = (f"--imbalance_ratio={imbalance_ratio:g} leaves class {short}{name} with {n} training "
               f"image{'' if n == 1 else 's'}")
    if train_portion is not None and n >= 1:
        message += f", so none on the {'weight' if splits[0][short] < 1 else 'architecture'} search split"
    message += f" (counts per class: {_short_counts(kept)})"
    if train_portion is not None:
        message += (f"; per search split (--train_portion={train_portion:g}): weights {_short_counts(splits[0])}, "
                    f"architecture {_short_counts(splits[1])}")
    need = 1 if train_portion is None else 2
    message += (": every class needs at least 1 image on each search split (2 in all)" if need == 2
                else ": every class needs at least 1 training image")
    limit = _largest_ratio(raw, need)
    if limit is None:
        message += (f", and class {int(np.argmin(raw))} has only {int(raw.min())} even without subsampling: add "
                    "images to it")
    else:
        message += f": lower --imbalance_ratio to at most {limit:g}"
    raise DatasetError(message)


def _largest_ratio(counts, need: int) -> float | None:
    """The largest whole ``imbalance_ratio`` that keeps ``need`` images of every class (``None``: not even 1)."""
    counts = np.asarray(counts, np.int64)
    if counts.min() < need:
        return None
    guess = max(1, int(counts[counts > 0].min()) // need)
    for ratio in range(guess, max(guess - 3, 1) - 1, -1):  # float rounding can cost the tail one image
        if long_tailed_class_counts(counts, ratio).min() >= need:
            return float(ratio)
    return 1.0


def stratified_split(y: np.ndarray, fraction: float = 0.5,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Splits example indices in two, class by class.

    The reference DARTS splits the training set by index order, which on a class-sorted long-tailed
    array puts the head in one half and the tail in the other; this keeps the class profile on both
    sides instead. Per class, a shuffled ``ceil(fraction * n_c)`` go to ``a``, the rest to ``b``; a class
    with at least two examples always appears on both sides.

    Args:
        y: Integer labels.
        fraction: Share of each class that goes to ``a``, in ``(0, 1)``.
        seed: Seed of the shuffle.

    Returns:
        ``(a, b)``: sorted ``int64`` index arrays, disjoint, together covering ``range(len(y))``.

    Raises:
        ValueError: If ``fraction`` is not in ``(0, 1)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    y = np.asarray(y).reshape(-1)
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = _split_size(idx.size, fraction)
        a.append(idx[:k])
        b.append(idx[k:])
    empty = np.zeros(0, np.int64)
    a_idx = np.sort(np.concatenate(a + [empty])).astype(np.int64)
    b_idx = np.sort(np.concatenate(b + [empty])).astype(np.int64)
    return a_idx, b_idx


# --------------------------------------------------------------------------------------------------
# Class names and counts in the error messages (shared with the loaders' validation, hlrs_tf.data.sources).


def _class_name(label: int, names) -> str:
    """`` (name)`` of a class for a message, or nothing when there are no names or the name is the label."""
    if names is None or label >= len(names) or str(names[label]) == str(label):
        return ""
    return f" ({names[label]})"


def _short_counts(counts) -> str:
    """``6000, 1666, ..., 0``: every count for up to 12 classes, else the first and last five."""
    counts = [int(c) for c in counts]
    shown = counts if len(counts) <= 12 else counts[:5] + ["..."] + counts[-5:]
    return ", ".join(str(c) for c in shown)


# --------------------------------------------------------------------------------------------------
# The retraining's holdout.


def holdout_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Holds a stratified share of each class of the long-tailed training set out of training.

    One function for the retraining and for :mod:`hlrs_tf.post_hoc`, so that both see the same split of the same
    seed (:func:`stratified_split`: per class a shuffled ``ceil(fraction * n_c)`` held out).

    Args:
        x: Images of the long-tailed training set.
        y: Their labels.
        fraction: ``--holdout_fraction``; 0 holds nothing out.
        seed: ``--seed``.

    Returns:
        ``((x_train, y_train), (x_holdout, y_holdout) or None)``.

    Raises:
        ValueError: A class left without a training image (the message names ``--holdout_fraction``).
    """
    if fraction == 0:
        return (x, y), None
    held, kept = stratified_split(y, fraction, seed=seed)
    empty = sorted(set(np.unique(y).tolist()) - set(np.unique(y[kept]).tolist()))
    if empty:
        raise ValueError(f"--holdout_fraction={fraction:g} is invalid here: it leaves class(es) {empty} without a "
                         "training image (each has one image in the long-tailed set); lower it, or set 0")
    return (x[kept], y[kept]), (x[held], y[held])
