"""What a dataset is: the spec and array types, the data error, and the hard-coded specs of the known datasets.

* :class:`DatasetSpec`: the static description of an image-classification dataset (image shape, classes,
  mean/std, augmentation settings); :class:`ArrayDataset`: a whole dataset in memory (``uint8`` NHWC images,
  ``int64`` labels); :class:`DatasetError`: every data problem, one line saying what is wrong and how to fix it.
* The specs of :data:`KNOWN_DATASETS` are hard-coded here, so :func:`hlrs_tf.data.sources.dataset_spec` answers
  offline without touching pixels (``--dry_run``); the other sources get a placeholder spec (mean/std 0.5) until
  :func:`hlrs_tf.data.sources.load_dataset` measures them.

No TensorFlow, Keras or absl (dataclasses and NumPy only), so that :mod:`hlrs_tf.data.long_tail`, which builds on
it, stays free of them too; ``test_modules_do_not_import_tensorflow`` (tests/test_genotypes.py) checks both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["ArrayDataset", "DEFAULT_FASHION_MNIST_DIR", "DatasetError", "DatasetSpec", "KNOWN_DATASETS"]


KNOWN_DATASETS: tuple[str, ...] = ("fashion_mnist", "digits", "cifar10", "cifar100")

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


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
