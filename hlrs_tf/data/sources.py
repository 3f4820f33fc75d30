"""Dataset sources: :func:`load_dataset` reads one into memory, :func:`dataset_spec` describes it without pixels.

Everything here is plain library code: arguments in, arrays or a :class:`~hlrs_tf.data.spec.DatasetSpec` out,
no flags.

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
splits; a failure is one :class:`~hlrs_tf.data.spec.DatasetError` line naming the file. (Before anything is
loaded, :func:`hlrs_tf.data.long_tail.check_class_counts` refuses a long-tail profile that would leave a class
without images, from the labels alone.)

The readers return ``uint8`` NHWC images, which stay ``uint8`` until the tf.data pipeline
(:mod:`hlrs_tf.data.pipeline`) converts them. TensorFlow is not imported here: tensorflow-datasets, scikit-learn
and PIL are imported by the readers that need them.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
import threading
import urllib.parse
import zipfile
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hlrs_tf.config.blocks import DataConfig

from hlrs_tf.data.long_tail import _class_name, _short_counts, check_class_counts, make_long_tailed, stratified_split
from hlrs_tf.data.spec import (
    _KNOWN_SPECS,
    DEFAULT_FASHION_MNIST_DIR,
    KNOWN_DATASETS,
    ArrayDataset,
    DatasetError,
    DatasetSpec,
    _default_crop_padding,
    _placeholder_spec,
)

__all__ = ["dataset_spec", "load_dataset", "load_long_tailed"]


_FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"
_NETWORK_TIMEOUT_S = 3.0
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


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


def load_long_tailed(data: DataConfig, seed: int,
                     train_portion: float | None = None) -> tuple[ArrayDataset, np.ndarray, np.ndarray]:
    """A run's dataset and its long-tailed training set: one function for the search, the retraining and the
    post-hoc re-balancing, so all three see the same images for the same settings.

    The long-tail profile is refused from the labels alone (:func:`hlrs_tf.data.long_tail.check_class_counts`)
    before the subset is drawn, so before anything is built or written.

    Args:
        data: The run config's data block.
        seed: The run's seed (it draws the long-tailed subset).
        train_portion: The search's weight-split share (every class needs an image on both splits); ``None``
            for a retraining.

    Returns:
        ``(dataset, x_lt, y_lt)``: the whole dataset and the long-tailed training images and labels.

    Raises:
        DatasetError: The data cannot be loaded, or the profile leaves a class without an image.
    """
    ds = load_dataset(data.dataset, data.data_dir, data.manual_dir, fashion_mnist_dir=data.fashion_mnist_dir)
    check_class_counts(ds.y_train, ds.spec.num_classes, data.imbalance_ratio, train_portion, ds.spec.class_names)
    x_lt, y_lt = make_long_tailed(ds.x_train, ds.y_train, data.imbalance_ratio, seed=seed)
    return ds, x_lt, y_lt


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

# tfds fetches these archives for the two CIFARs (the *binary* versions, not the python pickles).
_TFDS_ARCHIVES = {
    "cifar10": "cifar-10-binary.tar.gz",
    "cifar100": "cifar-100-binary.tar.gz",
}



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
