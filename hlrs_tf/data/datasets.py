"""Datasets, long-tailed subsampling and tf.data pipelines for the search and evaluation.

Everything here is plain library code: arguments in, arrays or ``tf.data.Dataset`` out, no flags.

Sources (see docs/method.md M6):

* ``fashion_mnist``: read straight from the IDX files of Debian's ``dataset-fashion-mnist`` package
  (tensorflow-datasets rejects their gzip bytes on checksum, so tfds is not used for them).
* ``digits``: ``sklearn.datasets.load_digits`` (ships inside scikit-learn), fixed stratified split.
* ``cifar10``, ``cifar100`` and any other tfds image-classification name: tensorflow-datasets, from a
  prepared ``data_dir``, from a local archive via ``manual_dir``, or from the network. Offline, tfds
  retries for minutes before giving up (docs/method.md T1), so we check first and fail fast.
* ``npz:<path>``: an ``.npz`` with ``x_train, y_train, x_test, y_test``.
* ``folder:<path>``: ``<path>/<class_name>/*.png|jpg`` (optionally under ``train/`` and ``test/``).

Every source passes one validation at load (``_validated``): pixels finite and within their dtype's range, test
labels among the training classes, every class with training images, one image shape and class list for both
splits; a failure is one :class:`DatasetError` line naming the file. :func:`check_class_counts` refuses a
long-tail profile that would leave a class without images, from the labels alone, before anything is built.

Pixel arrays stay ``uint8`` (NHWC) until the tf.data ``map`` converts them, so CIFAR-sized data costs
~150 MB rather than ~600 MB of float32.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import socket
import threading
import urllib.parse
import zipfile

import numpy as np
import tensorflow as tf

__all__ = [
    "ArrayDataset",
    "DatasetError",
    "DatasetSpec",
    "KNOWN_DATASETS",
    "augment",
    "check_class_counts",
    "class_counts",
    "dataset_spec",
    "eval_dataset",
    "load_dataset",
    "long_tail_counts",
    "long_tailed_class_counts",
    "make_long_tailed",
    "normalize",
    "search_dataset",
    "split_class_counts",
    "stratified_split",
    "uniform_stream",
]

KNOWN_DATASETS: tuple[str, ...] = ("fashion_mnist", "digits", "cifar10", "cifar100")

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"
_NETWORK_TIMEOUT_S = 3.0
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DatasetError(Exception):
    """A dataset cannot be found, read or prepared; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static description of an image-classification dataset.

    Attributes:
        name: Dataset name as passed to :func:`load_dataset`.
        image_shape: ``(H, W, C)`` of one image.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        mean: Per-channel mean on the ``[0, 1]`` scale, used by :func:`normalize`.
        std: Per-channel standard deviation on the ``[0, 1]`` scale.
        class_names: Optional human-readable class names, index = label.
        hflip: Whether a horizontal flip is a label-preserving augmentation (False for digits).
        crop_padding: Zero padding (pixels per side) of the random-crop augmentation.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    hflip: bool = True
    crop_padding: int = 4


@dataclasses.dataclass
class ArrayDataset:
    """A whole dataset in memory as numpy arrays.

    Attributes:
        spec: The dataset's :class:`DatasetSpec`.
        x_train: ``uint8`` images, NHWC.
        y_train: ``int64`` labels, shape ``(N,)``.
        x_test: ``uint8`` images, NHWC.
        y_test: ``int64`` labels, shape ``(M,)``.
    """

    spec: DatasetSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --------------------------------------------------------------------------------------------------
# Hard-coded specs: dataset_spec() must answer offline without touching pixels (--dry_run).

_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Fine labels in label-index order (the order of the original meta file, alphabetical).
_CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
    sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split()
)
assert len(_CIFAR100_CLASSES) == 100

_KNOWN_SPECS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), _FASHION_MNIST_CLASSES,
        hflip=True, crop_padding=2),
    # Mean/std measured on the fixed training split below (1347 images, values scaled to 0..255).
    "digits": DatasetSpec(
        "digits", (8, 8, 1), 10, (0.3053,), (0.3758,), tuple(str(i) for i in range(10)),
        hflip=False, crop_padding=1),
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        _CIFAR10_CLASSES, hflip=True, crop_padding=4),
    "cifar100": DatasetSpec(
        "cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        _CIFAR100_CLASSES, hflip=True, crop_padding=4),
}

# tfds fetches these archives for the two CIFARs (the *binary* versions, not the python pickles).
_TFDS_ARCHIVES = {
    "cifar10": "cifar-10-binary.tar.gz",
    "cifar100": "cifar-100-binary.tar.gz",
}


def _default_crop_padding(height: int) -> int:
    # The conventional values: 4 px on 32 px images (1/8 of the side for larger ones), 2 on 28 px
    # (MNIST-like), 1 on tiny 8 px digits.
    if height >= 32:
        return max(4, height // 8)
    return 2 if height >= 16 else 1


def _placeholder_spec(name: str, shape: tuple[int, int, int], num_classes: int,
                      class_names: tuple[str, ...] | None = None) -> DatasetSpec:
    c = shape[2]
    return DatasetSpec(name, shape, num_classes, (0.5,) * c, (0.5,) * c, class_names,
                       hflip=True, crop_padding=_default_crop_padding(shape[0]))


# --------------------------------------------------------------------------------------------------
# Public entry points.


def dataset_spec(name: str, data_dir: str | None = None) -> DatasetSpec:
    """Returns the static spec of a dataset without loading pixels (offline, fast).

    Known names use hard-coded specs. ``npz:<path>`` reads array headers and labels only;
    ``folder:<path>`` lists class folders and reads one image header. Those two get placeholder
    mean/std of 0.5 (the real values are computed by :func:`load_dataset`). Any other name is looked up
    as a tensorflow-datasets builder, whose static info is available offline.

    Args:
        name: Dataset name, ``npz:<path>`` or ``folder:<path>``.
        data_dir: tensorflow-datasets data directory (only used for tfds names).

    Returns:
        The :class:`DatasetSpec`.

    Raises:
        DatasetError: If the dataset is unknown or its files are unreadable.
    """
    if name in _KNOWN_SPECS:
        return _KNOWN_SPECS[name]
    if name.startswith("npz:"):
        return _npz_spec(name, name[len("npz:"):])
    if name.startswith("folder:"):
        return _folder_spec(name, name[len("folder:"):])
    builder = _tfds_builder(name, data_dir)
    shape, num_classes, names = _tfds_image_label_info(builder, name)
    return _placeholder_spec(name, shape, num_classes, names)


def load_dataset(name: str, data_dir: str | None = None, manual_dir: str | None = None,
                 fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR) -> ArrayDataset:
    """Loads a whole dataset into memory as ``uint8`` NHWC images and ``int64`` labels.

    Args:
        name: One of :data:`KNOWN_DATASETS`, another tensorflow-datasets image-classification name,
            ``npz:<path>`` or ``folder:<path>``.
        data_dir: tensorflow-datasets data directory (``None``: tfds default, ``~/tensorflow_datasets``).
        manual_dir: Directory holding the dataset's original download archive(s) for offline
            preparation with tensorflow-datasets (``DownloadConfig(manual_dir=...)``).
        fashion_mnist_dir: Directory with the Fashion-MNIST IDX ``.gz`` files.

    Every source is checked by one validation (:func:`_validated`) before anything uses it: pixels finite and
    in their dtype's range, labels whole numbers, test labels among the training classes, every class with
    training images, the same image shape and class list in both splits.

    Returns:
        The :class:`ArrayDataset`.

    Raises:
        DatasetError: If the data is missing, corrupt, inconsistent or cannot be prepared; one line naming the
            file and the problem (and how to fix it).
    """
    if name == "fashion_mnist":
        read = _load_fashion_mnist(fashion_mnist_dir)
    elif name == "digits":
        read = _load_digits()
    elif name.startswith("npz:"):
        read = _load_npz(name[len("npz:"):])
    elif name.startswith("folder:"):
        read = _load_folder(name[len("folder:"):])
    else:
        read = _load_tfds(name, data_dir, manual_dir)
    return _validated(name, read)


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
# Per-image tensor ops and tf.data pipelines.


def normalize(images: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
    """Scales ``uint8`` images (any rank, channels last) to ``(x / 255 - mean) / std`` in float32.

    Args:
        images: Image tensor (``uint8`` 0..255, or float already on the 0..255 scale).
        spec: Supplies ``mean`` and ``std``.

    Returns:
        float32 tensor of the same shape.
    """
    x = tf.cast(images, tf.float32) * (1.0 / 255.0)
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)
    return (x - mean) / std


def augment(image: tf.Tensor, spec: DatasetSpec, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Random crop with zero padding, plus a random horizontal flip if ``spec.hflip``, on one image.

    Usable inside ``tf.data.Dataset.map``; the static output shape equals the input shape.

    Args:
        image: One ``HWC`` image, ``uint8`` or float.
        spec: Supplies ``crop_padding`` and ``hflip``.
        seed: ``None`` for stateful random ops, or a shape-``[2]`` integer tensor for deterministic
            stateless ops (different seeds per image give different crops).

    Returns:
        The augmented image, same dtype and shape.
    """
    image = tf.convert_to_tensor(image)
    shape = image.shape
    h, w, c = shape[-3], shape[-2], shape[-1]
    if h is None or w is None or c is None:
        raise ValueError(f"augment needs a static HWC image shape, got {shape}")
    pad = int(spec.crop_padding)
    if seed is not None:
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if pad > 0:
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        # Offsets drawn directly, then a slice: cheaper than random_crop's general machinery.
        if seed is None:
            offs = tf.random.uniform([2], 0, 2 * pad + 1, dtype=tf.int32)
        else:
            offs = tf.random.stateless_uniform([2], crop_seed, 0, 2 * pad + 1, dtype=tf.int32)
        image = tf.slice(padded, tf.stack([offs[0], offs[1], 0]), [h, w, c])
    if spec.hflip:
        if seed is None:
            image = tf.image.random_flip_left_right(image)
        else:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.ensure_shape(image, [h, w, c])


def _finish_stream(ds: tf.data.Dataset, spec: DatasetSpec, batch_size: int, seed: int,
                   augment_data: bool, skip_batches: int = 0) -> tf.data.Dataset:
    """Augments (optional), normalises and batches an infinite stream of ``(uint8 image, label)``.

    Samplers only decide the order of examples; everything after that is shared here. Each element gets
    the stateless seed ``[seed, position in stream]``, so augmentation is reproducible and still
    differs from one pass to the next.
    """
    ds = ds.enumerate()
    if skip_batches:
        # Resume: drop the batches already consumed *before* the per-image work, keeping each element's
        # position (and so its augmentation seed): the stream continues exactly where it stopped.
        ds = ds.skip(int(skip_batches) * int(batch_size))

    def prepare(i, xy):
        x, y = xy
        if augment_data:
            x = augment(x, spec, seed=tf.stack([tf.constant(seed, tf.int64), i]))
        return normalize(x, spec), tf.cast(y, tf.int32)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # drop_remainder: a static batch dimension avoids retracing the train step (minutes each).
    return ds.batch(batch_size, drop_remainder=True)


def uniform_stream(x: np.ndarray, y: np.ndarray, spec: DatasetSpec, batch_size: int, seed: int,
                   augment_data: bool = True, skip_batches: int = 0) -> tf.data.Dataset:
    """Infinite stream of batches drawn uniformly without replacement, reshuffled on every pass.

    Args:
        x: ``uint8`` NHWC images.
        y: Integer labels.
        spec: Dataset spec (normalisation and augmentation).
        batch_size: Batch size; the last partial batch of the stream is never produced.
        seed: Seed of the shuffle and of the augmentation.
        augment_data: Whether to augment.
        skip_batches: Batches of the stream already consumed (resume).

    Returns:
        ``tf.data.Dataset`` of ``(float32 [B, H, W, C], int32 [B])``, infinite.
    """
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1)
    # uint8 in the pipeline; conversion happens per element in the map.
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    return _finish_stream(ds, spec, batch_size, seed, augment_data, skip_batches)


def search_steps_per_epoch(n_weight: int, n_arch: int, batch_size: int) -> int:
    """Steps of one pass over the smaller search split: ``min(n_weight, n_arch) // batch_size``.

    Raises:
        ValueError: If ``batch_size`` exceeds the smaller split (the message names the flag).
    """
    steps = min(n_weight, n_arch) // int(batch_size) if batch_size > 0 else 0
    if steps < 1:
        raise ValueError(
            f"batch_size={batch_size} is larger than the smaller search split "
            f"(weights {n_weight}, architecture {n_arch} examples): lower batch_size")
    return steps


SAMPLERS = ("uniform", "class_balanced", "reversed")


def class_sampling_probs(counts, sampler: str) -> np.ndarray:
    """Per-class draw probabilities of a sampler, from the class counts of the split it draws from.

    * ``uniform``: over instances, so class ``i`` gets ``N_i / N``.
    * ``class_balanced``: every class present gets ``1 / C`` (re-sampling, Kang et al.).
    * ``reversed``: ``N_max / N_i``, normalised -- BBN's re-balancing branch sampler, which favours the tail.

    Classes absent from the split get probability 0 under every sampler.

    Args:
        counts: Examples per class.
        sampler: One of :data:`SAMPLERS`.

    Returns:
        ``float64 [C]`` probabilities summing to 1.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("cannot sample from an empty split")
    if sampler == "uniform":
        w = counts
    elif sampler == "class_balanced":
        w = present.astype(np.float64)
    else:
        w = np.where(present, counts.max() / np.maximum(counts, 1.0), 0.0)
    return w / w.sum()


def class_sampler_stream(x: np.ndarray, y: np.ndarray, spec: DatasetSpec, batch_size: int, seed: int,
                         sampler: str, augment_data: bool = True, skip_batches: int = 0) -> tf.data.Dataset:
    """Infinite stream of batches drawn class first: a class from the sampler's distribution, then a uniform
    instance of that class (with replacement), as BBN's and Kang et al.'s samplers do.

    Draw ``n`` of the stream uses the stateless seeds ``[seed, n]``, so the stream is reproducible and a resume
    (``skip_batches``) continues it exactly.

    Args:
        x: ``uint8`` NHWC images.
        y: Integer labels in ``[0, spec.num_classes)``.
        spec: Dataset spec.
        batch_size: Batch size.
        seed: Seed of the draws and of the augmentation.
        sampler: ``class_balanced`` or ``reversed`` (see :func:`class_sampling_probs`); ``uniform`` gives
            :func:`uniform_stream` instead (without replacement, reshuffled each pass, as the reference).
        augment_data: Whether to augment.
        skip_batches: Batches of the stream already consumed (resume).

    Returns:
        ``tf.data.Dataset`` of ``(float32 [B, H, W, C], int32 [B])``, infinite.
    """
    if sampler == "uniform":
        return uniform_stream(x, y, spec, batch_size, seed, augment_data, skip_batches)
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    counts = class_counts(y, spec.num_classes)
    logits = np.log(np.maximum(class_sampling_probs(counts, sampler), 1e-300))[None, :]
    order = np.argsort(y, kind="stable")  # instances grouped by class: class c is order[start_c : start_c+N_c]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    images = tf.constant(x[order])
    labels = tf.constant(y[order].astype(np.int32))
    logits_t = tf.constant(logits, tf.float32)
    starts_t, counts_t = tf.constant(starts), tf.constant(counts.astype(np.int64))

    def draw(n):
        s1 = tf.stack([tf.constant(seed, tf.int64), n])
        s2 = tf.stack([tf.constant(seed, tf.int64) + 7919, n])  # a different stream for the instance draw
        c = tf.random.stateless_categorical(logits_t, 1, seed=s1, dtype=tf.int64)[0, 0]
        u = tf.random.stateless_uniform([], seed=s2, dtype=tf.float32)
        j = tf.minimum(tf.cast(u * tf.cast(counts_t[c], tf.float32), tf.int64), counts_t[c] - 1)
        i = starts_t[c] + j
        return images[i], labels[i]

    ds = tf.data.Dataset.counter().map(draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish_stream(ds, spec, batch_size, seed, augment_data, skip_batches)


def search_dataset(x_w: np.ndarray, y_w: np.ndarray, x_a: np.ndarray, y_a: np.ndarray,
                   spec: DatasetSpec, batch_size: int, seed: int,
                   augment_data: bool = True, skip_batches: int = 0, weight_sampler: str = "uniform",
                   arch_sampler: str = "uniform", bbn: bool = False) -> tuple[tf.data.Dataset, int]:
    """Infinite bilevel-search dataset: one batch of the weight split and one of the architecture split per step.

    Elements are ``((x_train, y_train), (x_val, y_val))``; with ``bbn=True`` each side is
    ``(x_c, y_c, x_r, y_r)``: a batch of the side's own sampler for BBN's conventional branch and one of the
    ``reversed`` sampler for its re-balancing branch (docs/method.md M4: each weight step and each
    architecture step draws one batch from each sampler).

    By default both sides are augmented, as in the reference DARTS search (its train and validation queues
    share the augmenting training transform); pass ``augment_data=False`` to switch it off.

    Args:
        x_w: ``uint8`` NHWC images of the weight split.
        y_w: Labels of the weight split.
        x_a: ``uint8`` NHWC images of the architecture split.
        y_a: Labels of the architecture split.
        spec: Dataset spec.
        batch_size: Batch size of each stream (``drop_remainder=True``: static shapes).
        seed: Base seed; weight side ``seed``, architecture side ``seed + 1``, BBN re-balancing streams
            ``seed + 2`` and ``seed + 3``.
        augment_data: Whether to augment.
        skip_batches: Steps already taken (resume): every stream continues where it stopped.
        weight_sampler: Sampler of the weight batches, one of :data:`SAMPLERS`.
        arch_sampler: Sampler of the architecture batches.
        bbn: Add the ``reversed`` re-balancing batch to each side.

    Returns:
        ``(dataset, steps_per_epoch)`` with ``steps_per_epoch = min(len(x_w), len(x_a)) // batch_size``.

    Raises:
        ValueError: If ``batch_size`` exceeds the smaller split (``steps_per_epoch`` would be 0).
    """
    if len(x_w) != len(y_w) or len(x_a) != len(y_a):
        raise ValueError("images and labels differ in length")
    steps = search_steps_per_epoch(len(x_w), len(x_a), batch_size)

    def side(x, y, sampler, s):
        conventional = class_sampler_stream(x, y, spec, batch_size, s, sampler, augment_data, skip_batches)
        if not bbn:
            return conventional
        rebalancing = class_sampler_stream(x, y, spec, batch_size, s + 2, "reversed", augment_data,
                                           skip_batches)
        return tf.data.Dataset.zip((conventional, rebalancing)).map(lambda a, b: (*a, *b))

    train = side(x_w, y_w, weight_sampler, seed)
    val = side(x_a, y_a, arch_sampler, seed + 1)
    ds = tf.data.Dataset.zip((train, val)).prefetch(tf.data.AUTOTUNE)
    return ds, steps


def eval_dataset(x: np.ndarray, y: np.ndarray, spec: DatasetSpec, batch_size: int) -> tf.data.Dataset:
    """Finite evaluation dataset: normalised, not augmented, keeps the last partial batch.

    Args:
        x: ``uint8`` NHWC images.
        y: Integer labels.
        spec: Dataset spec.
        batch_size: Batch size.

    Returns:
        ``tf.data.Dataset`` of ``(float32 [b, H, W, C], int32 [b])``.
    """
    y = np.asarray(y).reshape(-1).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(x), y)).batch(batch_size)
    # Normalising whole batches is one vectorised op per batch instead of one per image.
    ds = ds.map(lambda xb, yb: (normalize(xb, spec), yb), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------------
# Helpers shared by the loaders.


def _channel_mean_std(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std on the [0, 1] scale, in float64 chunks so large uint8 arrays are not copied."""
    c = x.shape[-1]
    s = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    chunk = 4096
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].astype(np.float64).reshape(-1, c)
        s += part.sum(axis=0)
        s2 += np.square(part).sum(axis=0)
    n = max(1, x.size // c)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    std = np.where(std > 0, std, 255.0)  # a constant channel: avoid dividing by zero later
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in std / 255.0)


def _pixel_scale(x: np.ndarray, where: str) -> float:
    """The factor that brings stored pixels to 0..255, after checking they are finite and in their dtype's range.

    ``uint8``, other integers and bools are taken as 0..255 (factor 1; integers outside it are refused).
    Floats must be finite and are read as [0, 1] when none exceeds 1 (factor 255), else as 0..255 (factor 1);
    a float outside [0, 255] is refused.
    """
    if x.dtype == np.uint8:
        return 1.0
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not np.all(np.isfinite(x)):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise DatasetError(f"{where}: {bad} of {x.size} pixel values are not finite (NaN or inf): images must "
                               f"be uint8 0..255 or float in [0, 1] (or 0..255)")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if lo < 0.0 or hi > 255.0:
            raise DatasetError(f"{where}: float images must be in [0, 1] (or 0..255), got values in [{lo:g}, {hi:g}]")
        return 255.0 if hi <= 1.0 else 1.0
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"{where}: integer images must be in 0..255, got [{x.min()}, {x.max()}]")
        return 1.0
    raise DatasetError(f"{where}: unsupported image dtype {x.dtype}; use uint8 or float in [0, 1]")


def _to_uint8_images(x: np.ndarray, where: str, scale: float) -> np.ndarray:
    """Converts ``N,H,W`` or ``N,H,W,C`` images to uint8 NHWC; ``scale`` from :func:`_pixel_scale` (the checks)."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DatasetError(f"{where}: expected images of shape (N, H, W) or (N, H, W, C) with C in "
                           f"1/3/4, got {x.shape}; store grey images as (N, H, W)")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)
    return x.astype(np.uint8)


def _to_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Integer class labels as ``int64 (N,)``: whole, finite numbers >= 0 (``(N, 1)`` is flattened)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{where}: labels must be integer class indices of shape (N,), got shape "
                           f"{y.shape} (one-hot labels: store argmax)")
    if y.size and not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y) & (y == np.round(y))):
            raise DatasetError(f"{where}: labels must be integer class indices, got {y.dtype} values that are "
                               f"not whole finite numbers")
    if y.size and y.min() < 0:
        raise DatasetError(f"{where}: labels must be >= 0, got {y.min()}")
    return y.astype(np.int64)


@dataclasses.dataclass
class _Read:
    """What a loader read, before :func:`_validated` checks and converts it.

    Attributes:
        arrays: ``x_train, y_train, x_test, y_test`` as stored (any dtype; images ``(N, H, W[, C])``).
        sources: Where each of the four came from, for the messages: ``(file or folder, array name or None)``.
        spec: The fixed spec of a known dataset; ``None``: derived from the data (mean/std of ``x_train``).
        num_classes: The declared class count (class folders, a tfds ClassLabel); ``None``: largest training
            label + 1.
        class_names: Class names, index = label.
        split_classes: Folder layouts with ``train/`` and ``test/``: the class folders of each.
    """

    arrays: dict[str, np.ndarray]
    sources: dict[str, tuple[str, str | None]]
    spec: DatasetSpec | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    split_classes: dict[str, list[str]] | None = None


def _where(source: tuple[str, str | None]) -> str:
    file, member = source
    return f"{file}: {member}" if member else file


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


def _validated(name: str, read: _Read) -> ArrayDataset:
    """The one check of every loaded dataset (all sources), and its conversion to uint8 NHWC + int64 labels.

    Raises:
        DatasetError: one line naming the file (or folder) and the problem.
    """
    src = read.sources
    raw = {k: np.asarray(v) for k, v in read.arrays.items()}
    scales = {split: _pixel_scale(raw[f"x_{split}"], _where(src[f"x_{split}"])) for split in ("train", "test")}
    floats = [split for split in ("train", "test")
              if np.issubdtype(raw[f"x_{split}"].dtype, np.floating) and raw[f"x_{split}"].size]
    if len(floats) == 2 and scales["train"] != scales["test"]:
        on = {split: "[0, 1]" if scales[split] == 255.0 else "0..255" for split in floats}
        raise DatasetError(f"{_where(src['x_test'])}: float test images are on the {on['test']} scale but the "
                           f"training images ({_where(src['x_train'])}) on {on['train']}: store both on one scale")
    arrays = {}
    for split in ("train", "test"):
        kx, ky = f"x_{split}", f"y_{split}"
        x = _to_uint8_images(raw[kx], _where(src[kx]), scales[split])
        y = _to_labels(raw[ky], _where(src[ky]))
        if len(x) != len(y):
            (fx, mx), (fy, my) = src[kx], src[ky]
            if fx == fy and mx and my:
                raise DatasetError(f"{fx}: {mx} has {len(x)} images but {my} {len(y)} labels")
            raise DatasetError(f"{_where(src[kx])} has {len(x)} images but {_where(src[ky])} {len(y)} labels")
        arrays[kx], arrays[ky] = x, y
    x_tr, y_tr, y_te = arrays["x_train"], arrays["y_train"], arrays["y_test"]
    if len(y_tr) == 0:
        raise DatasetError(f"{_where(src['x_train'])}: the training split is empty")
    shape = tuple(int(d) for d in x_tr.shape[1:])
    if tuple(arrays["x_test"].shape[1:]) != shape:
        raise DatasetError(f"{_where(src['x_test'])}: test images {tuple(arrays['x_test'].shape[1:])} and training "
                           f"images {shape} differ in shape")
    if read.spec is not None and tuple(read.spec.image_shape) != shape:
        raise DatasetError(f"{_where(src['x_train'])}: images of shape {shape}, {name} has "
                           f"{tuple(read.spec.image_shape)}")

    if read.split_classes and read.split_classes["train"] != read.split_classes["test"]:
        train, test = read.split_classes["train"], read.split_classes["test"]
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise DatasetError(f"{src['x_test'][0]}: its class folders differ from {src['x_train'][0]}'s (only in "
                           f"train/: {only_train}; only in test/: {only_test}): use the same class sub-folders "
                           f"in train/ and test/")

    declared = read.spec.num_classes if read.spec is not None else read.num_classes
    num_classes = int(declared) if declared else int(y_tr.max()) + 1
    names = read.class_names if read.spec is None else read.spec.class_names
    if names is not None and len(names) != num_classes:
        raise DatasetError(f"{_where(src['y_train'])}: {len(names)} class names for {num_classes} classes")
    if y_tr.max() >= num_classes:
        raise DatasetError(f"{_where(src['y_train'])}: labels must lie in 0..{num_classes - 1} ({num_classes} "
                           f"classes), got {int(y_tr.max())}")
    train_counts = np.bincount(y_tr, minlength=num_classes)
    empty = np.flatnonzero(train_counts == 0)
    if empty.size:
        which = ", ".join(f"{c}{_class_name(c, names)}" for c in empty[:10])
        raise DatasetError(f"{_where(src['y_train'])}: class{'es' if empty.size > 1 else ''} {which} "
                           f"{'have' if empty.size > 1 else 'has'} no training images (per class: "
                           f"{_short_counts(train_counts)}): labels must be 0..C-1 with every class trained")
    # Every training class has images now, so a test label is a training class exactly when it is < C.
    unknown = np.unique(y_te[y_te >= num_classes])
    if unknown.size:
        raise DatasetError(f"{_where(src['y_test'])}: test labels {unknown[:10].tolist()} are not among the "
                           f"training classes (0..{num_classes - 1}): use the same classes in both splits")

    spec = read.spec
    if spec is None:
        mean, std = _channel_mean_std(x_tr)
        spec = DatasetSpec(name, shape, num_classes, mean, std, names,
                           crop_padding=_default_crop_padding(shape[0]))
    return ArrayDataset(spec, **arrays)


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian IDX files).

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def _read_idx(path: str, images: bool) -> np.ndarray:
    """Reads one gzipped IDX file (magic 2051 for images, 2049 for labels), validating its header."""
    fix = (f"reinstall the Debian package ({_FASHION_MNIST_APT}, or "
           f"apt-get install --reinstall dataset-fashion-mnist) or pass another fashion_mnist_dir")
    if not os.path.isfile(path):
        raise DatasetError(f"Fashion-MNIST file {path} not found: install it with "
                           f"`{_FASHION_MNIST_APT}` or pass fashion_mnist_dir=<dir with the IDX .gz files>")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"Fashion-MNIST file {path} is corrupt ({e}): {fix}") from e
    magic, ndim = (2051, 3) if images else (2049, 1)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"Fashion-MNIST file {path} is truncated ({len(raw)} bytes): {fix}")
    got_magic = int.from_bytes(raw[:4], "big")
    if got_magic != magic:
        raise DatasetError(f"Fashion-MNIST file {path} has IDX magic number {got_magic}, expected "
                           f"{magic} ({'images' if images else 'labels'}): {fix}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetError(f"Fashion-MNIST file {path} holds {len(raw)} bytes, its header {dims} needs "
                           f"{expected}: {fix}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _load_fashion_mnist(directory: str) -> _Read:
    if not os.path.isdir(directory):
        raise DatasetError(f"Fashion-MNIST directory {directory} not found: install it with "
                           f"`{_FASHION_MNIST_APT}` or pass fashion_mnist_dir=<dir with the IDX .gz files>")
    paths = {key: os.path.join(directory, fname) for key, fname in _IDX_FILES.items()}
    arrays = {key: _read_idx(path, images=key.startswith("x")) for key, path in paths.items()}
    return _Read(arrays, {key: (path, None) for key, path in paths.items()}, _KNOWN_SPECS["fashion_mnist"])


# --------------------------------------------------------------------------------------------------
# sklearn digits.


def _load_digits() -> _Read:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # Values are 0..16; scale to the usual 0..255 so normalize() treats every dataset the same.
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    arrays = dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return _Read(arrays, {key: ("scikit-learn digits", key) for key in arrays}, _KNOWN_SPECS["digits"])


# --------------------------------------------------------------------------------------------------
# npz.

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _check_npz_path(path: str) -> None:
    if not os.path.isfile(path):
        raise DatasetError(f"npz file {path} not found: pass npz:<path to an .npz with keys "
                           f"{', '.join(_NPZ_KEYS)}>")


def _npz_spec(name: str, path: str) -> DatasetSpec:
    """Shape from the npy header inside the zip (no pixel reads); labels are small, so load them."""
    _check_npz_path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {m[:-4] for m in zf.namelist() if m.endswith(".npy")}
            missing = [k for k in _NPZ_KEYS if k not in members]
            if missing:
                raise DatasetError(f"npz file {path} lacks keys {missing}: it needs "
                                   f"{', '.join(_NPZ_KEYS)} (np.savez(path, x_train=..., ...))")
            with zf.open("x_train.npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(f)
        with np.load(path, allow_pickle=False) as z:
            y = _to_labels(z["y_train"], f"{path}: y_train")  # the training labels define the classes
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise DatasetError(f"npz file {path} is unreadable ({e}): write it with np.savez") from e
    if len(shape) == 3:
        shape = (*shape, 1)
    if len(shape) != 4:
        raise DatasetError(f"{path}: x_train must be (N, H, W) or (N, H, W, C), got {shape}")
    num_classes = int(y.max()) + 1 if y.size else 0
    return _placeholder_spec(name, tuple(int(s) for s in shape[1:]), num_classes)


def _load_npz(path: str) -> _Read:
    _check_npz_path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise DatasetError(f"npz file {path} lacks keys {missing}: it needs "
                                   f"{', '.join(_NPZ_KEYS)} (np.savez(path, x_train=..., ...))")
            raw = {k: z[k] for k in _NPZ_KEYS}
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise DatasetError(f"npz file {path} is unreadable ({e}): write it with np.savez") from e
    return _Read(raw, {k: (path, k) for k in _NPZ_KEYS})


# --------------------------------------------------------------------------------------------------
# Image folders.


def _list_classes(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _list_images(directory: str) -> list[str]:
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.lower().endswith(_IMAGE_EXTENSIONS) and not f.startswith("."))


def _folder_layout(path: str) -> tuple[list[str], dict[str, str] | None]:
    """Returns ``(class names, {"train": dir, "test": dir} or None for a single pool)``."""
    if not os.path.isdir(path):
        raise DatasetError(f"image folder {path} not found: pass folder:<dir> with one sub-folder of "
                           f"images (.png/.jpg) per class, optionally under train/ and test/")
    train, test = os.path.join(path, "train"), os.path.join(path, "test")
    if os.path.isdir(train) and os.path.isdir(test):
        classes = _list_classes(train)  # test/ must have the same ones (checked at load: _validated)
        split_dirs = {"train": train, "test": test}
    else:
        classes, split_dirs = _list_classes(path), None
    if not classes:
        raise DatasetError(f"image folder {path} has no class sub-folders: put the images of each "
                           f"class in <dir>/<class_name>/*.png")
    return classes, split_dirs


def _first_image(path: str, classes: list[str], split_dirs: dict[str, str] | None) -> str:
    root = split_dirs["train"] if split_dirs else path
    for c in classes:
        files = _list_images(os.path.join(root, c))
        if files:
            return files[0]
    raise DatasetError(f"image folder {root} has no .png/.jpg images in its class sub-folders")


def _image_mode_shape(file: str) -> tuple[str, tuple[int, int, int]]:
    from PIL import Image

    try:
        with Image.open(file) as im:  # reads the header only
            w, h = im.size
            grey = im.mode in ("1", "L", "I", "I;16", "F")
    except OSError as e:
        raise DatasetError(f"cannot read image {file} ({e}): remove or re-save it") from e
    return ("L", (h, w, 1)) if grey else ("RGB", (h, w, 3))


def _folder_spec(name: str, path: str) -> DatasetSpec:
    classes, split_dirs = _folder_layout(path)
    _, shape = _image_mode_shape(_first_image(path, classes, split_dirs))
    return _placeholder_spec(name, shape, len(classes), tuple(classes))


def _read_images(files: list[str], mode: str, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(files), hw[0], hw[1], 1 if mode == "L" else 3), np.uint8)
    for i, file in enumerate(files):  # one PIL decode per file; pixels are handled by PIL/numpy
        try:
            with Image.open(file) as im:
                im = im.convert(mode)
                if im.size != (hw[1], hw[0]):
                    im = im.resize((hw[1], hw[0]), Image.BILINEAR)
                arr = np.asarray(im, np.uint8)
        except OSError as e:
            raise DatasetError(f"cannot read image {file} ({e}): remove or re-save it") from e
        out[i] = arr.reshape(out.shape[1:])
    return out


def _collect(root: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    files, labels = [], []
    for label, c in enumerate(classes):
        d = os.path.join(root, c)
        found = _list_images(d) if os.path.isdir(d) else []
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, np.int64)


def _load_folder(path: str) -> _Read:
    classes, split_dirs = _folder_layout(path)
    mode, shape = _image_mode_shape(_first_image(path, classes, split_dirs))
    hw = shape[:2]
    split_classes = None
    if split_dirs:
        f_tr, y_tr = _collect(split_dirs["train"], classes)
        f_te, y_te = _collect(split_dirs["test"], classes)
        x_tr, x_te = _read_images(f_tr, mode, hw), _read_images(f_te, mode, hw)
        split_classes = {"train": classes, "test": _list_classes(split_dirs["test"])}
        where = {"train": split_dirs["train"], "test": split_dirs["test"]}
    else:
        files, y = _collect(path, classes)
        x = _read_images(files, mode, hw)
        tr, te = stratified_split(y, fraction=0.8, seed=0)
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        where = {"train": path, "test": path}
    arrays = dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    sources = {key: (where[key.split("_")[1]], None) for key in arrays}
    return _Read(arrays, sources, num_classes=len(classes), class_names=tuple(classes), split_classes=split_classes)


# --------------------------------------------------------------------------------------------------
# tensorflow-datasets.


def _import_tfds():
    try:
        import importlib_resources  # noqa: F401  (tfds 4.9.10 needs it on py3.11 but does not declare it)
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetError(f"tensorflow-datasets is not importable ({e}): "
                           f"pip install tensorflow-datasets==4.9.10 importlib_resources==7.1.0") from e
    return tfds


def _tfds_builder(name: str, data_dir: str | None):
    tfds = _import_tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends; tfds's own message lists all names
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(
            f"unknown dataset {name!r} ({first}). Use one of {', '.join(KNOWN_DATASETS)}, a "
            f"tensorflow-datasets image-classification name, npz:<path> or folder:<dir>") from e


def _tfds_keys(builder, name: str) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    feats = builder.info.features
    if "image" in feats and "label" in feats:
        return "image", "label"
    raise DatasetError(f"tensorflow-datasets {name!r} is not an image-classification dataset "
                       f"(no image/label features): convert it to npz:<path> or folder:<dir>")


def _tfds_image_label_info(builder, name: str) -> tuple[tuple[int, int, int], int, tuple[str, ...] | None]:
    img_key, lbl_key = _tfds_keys(builder, name)
    feats = builder.info.features
    shape = tuple(feats[img_key].shape)
    if len(shape) != 3 or any(s is None for s in shape):
        raise DatasetError(f"tensorflow-datasets {name!r} has images of shape {shape} (variable size): "
                           f"resize them into an npz:<path> or folder:<dir> dataset")
    label = feats[lbl_key]
    num_classes = getattr(label, "num_classes", None)
    if not num_classes:
        raise DatasetError(f"tensorflow-datasets {name!r}: label {lbl_key!r} is not a ClassLabel")
    names = tuple(label.names) if getattr(label, "names", None) else None
    # Before preparation tfds only knows "0", "1", ...: not worth keeping.
    if names and all(n == str(i) for i, n in enumerate(names)):
        names = None
    return tuple(int(s) for s in shape), int(num_classes), names


def _network_reachable(host: str, port: int = 443, timeout: float = _NETWORK_TIMEOUT_S) -> bool:
    """True if a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included).

    DNS resolution has no timeout of its own, so the attempt runs in a daemon thread and is abandoned
    after ``timeout``: offline, tfds would otherwise retry for ~205 s (docs/method.md T1).
    """
    ok = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _download_hosts(builder) -> list[str]:
    try:
        urls = list((builder.url_infos or {}).keys())
    except Exception:  # some builders have no registered checksums
        urls = []
    hosts = sorted({urllib.parse.urlparse(u).hostname for u in urls} - {None})
    return hosts or ["storage.googleapis.com"]


def _archive_names(builder, name: str) -> list[str]:
    if name in _TFDS_ARCHIVES:
        return [_TFDS_ARCHIVES[name]]
    try:
        return sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})
    except Exception:
        return []


def _offline_help(name: str, builder, data_dir: str | None, archives: list[str]) -> str:
    files = ", ".join(archives) if archives else "the dataset's original download archive(s)"
    where = data_dir or "~/tensorflow_datasets (tfds default)"
    return (f"Fix: (1) put {files} into a directory and pass it as --manual_dir "
            f"(load_dataset(manual_dir=...), tfds DownloadConfig(manual_dir=...)); or (2) point "
            f"--data_dir at a directory where {name!r} is already prepared (searched: {where}, "
            f"expected {builder.data_path}); or (3) run with network access once so tfds can download "
            f"and prepare it into --data_dir. Offline alternatives: fashion_mnist, digits, npz:<path>, "
            f"folder:<dir>.")


def _tfds_to_arrays(builder, name: str) -> _Read:
    tfds = _import_tfds()
    img_key, lbl_key = _tfds_keys(builder, name)
    splits = builder.info.splits
    # (Empty split info only happens with tfds.testing.mock_data; as_dataset reports real problems.)
    if splits and ("train" not in splits or "test" not in splits):
        raise DatasetError(f"tensorflow-datasets {name!r} has splits {sorted(splits)}, need 'train' "
                           f"and 'test': convert it to npz:<path> with your own split")
    arrays, sources = {}, {}
    for split in ("train", "test"):
        # batch_size=-1: the whole split as one batch of tensors, then as numpy.
        try:
            data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        except Exception as e:
            raise DatasetError(f"reading split {split!r} of prepared tfds {name!r} from "
                               f"{builder.data_path} failed ({type(e).__name__}: {str(e)[:300]}): "
                               f"delete that directory and prepare it again") from e
        arrays[f"x_{split}"], arrays[f"y_{split}"] = data[img_key], data[lbl_key]
        sources[f"x_{split}"] = (f"{name}:{split} ({builder.data_path})", img_key)
        sources[f"y_{split}"] = (f"{name}:{split} ({builder.data_path})", lbl_key)
    if name in _KNOWN_SPECS:
        return _Read(arrays, sources, _KNOWN_SPECS[name])
    _, num_classes, names = _tfds_image_label_info(builder, name)
    return _Read(arrays, sources, num_classes=num_classes, class_names=names)


def _load_tfds(name: str, data_dir: str | None, manual_dir: str | None) -> _Read:
    tfds = _import_tfds()
    builder = _tfds_builder(name, data_dir)
    _tfds_image_label_info(builder, name)  # fail early on non-image datasets
    if not builder.is_prepared():
        archives = _archive_names(builder, name)
        if manual_dir is not None:
            missing = [a for a in archives if not os.path.isfile(os.path.join(manual_dir, a))]
            if not os.path.isdir(manual_dir) or missing:
                raise DatasetError(
                    f"{name!r}: manual_dir {manual_dir} lacks {missing or archives or 'the archive'} "
                    f"(tfds expects the original files under their download names). "
                    + _offline_help(name, builder, data_dir, archives))
            # try_download_gcs=False: the archive is local, don't probe GCS for a prepared copy.
            config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        else:
            hosts = _download_hosts(builder)
            if not all(_network_reachable(h) for h in hosts):
                raise DatasetError(
                    f"{name!r} is not prepared in the tfds data_dir and the network is unreachable "
                    f"({', '.join(hosts)} did not answer within {_NETWORK_TIMEOUT_S:.0f} s). "
                    + _offline_help(name, builder, data_dir, archives))
            config = None
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as e:
            raise DatasetError(f"preparing {name!r} with tensorflow-datasets failed "
                               f"({type(e).__name__}: {str(e)[:500]}). "
                               + _offline_help(name, builder, data_dir, archives)) from e
    return _tfds_to_arrays(builder, name)
