"""Tests of hlrs_tf.data on real data, offline: Debian Fashion-MNIST, sklearn digits, tiny files."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.data import sources
from hlrs_tf.data.long_tail import class_counts, long_tail_counts, make_long_tailed, stratified_split
from hlrs_tf.data.pipeline import augment, eval_dataset, search_dataset
from hlrs_tf.data.sources import dataset_spec, load_dataset
from hlrs_tf.data.spec import DEFAULT_FASHION_MNIST_DIR, KNOWN_DATASETS, DatasetError

FMNIST_DIR = DEFAULT_FASHION_MNIST_DIR
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST_DIR, "train-labels-idx1-ubyte.gz")),
    reason="apt-get install -y dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion_mnist")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ------------------------------------------------------------------------------------------------
# Long-tail profile.


def test_long_tail_counts_cifar10():
    counts = long_tail_counts(5000, 10, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406
    assert sum(long_tail_counts(5000, 10, 50)) == 13996
    assert sum(long_tail_counts(5000, 10, 10)) == 20431
    assert long_tail_counts(5000, 10, 1) == [5000] * 10


def test_long_tail_counts_rejects_ratio_below_one():
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tail_counts(100, 10, 0.5)


@needs_fmnist
def test_make_long_tailed_on_real_fashion_mnist(fmnist):
    y = fmnist.y_train
    np.testing.assert_array_equal(class_counts(y, 10), [6000] * 10)
    # Expected counts computed independently of long_tail_counts.
    expected = [int(6000 * (1 / 100) ** (i / 9)) for i in range(10)]
    assert expected[0] == 6000 and expected[-1] == 60

    x_lt, y_lt = make_long_tailed(fmnist.x_train, y, 100, seed=0)
    np.testing.assert_array_equal(class_counts(y_lt, 10), expected)
    assert x_lt.shape == (sum(expected), 28, 28, 1) and x_lt.dtype == np.uint8
    assert np.all(np.diff(y_lt) >= 0), "result must be sorted by class"

    x_again, y_again = make_long_tailed(fmnist.x_train, y, 100, seed=0)
    np.testing.assert_array_equal(x_again, x_lt)
    np.testing.assert_array_equal(y_again, y_lt)

    x_other, y_other = make_long_tailed(fmnist.x_train, y, 100, seed=1)
    np.testing.assert_array_equal(y_other, y_lt)  # same counts, same class order ...
    assert not np.array_equal(x_other, x_lt)  # ... other images


def test_make_long_tailed_keeps_order_and_ratio_one():
    y = np.repeat(np.arange(4), 10)[::-1].copy()  # classes 3,3,...,0: not sorted
    x = np.arange(len(y))
    x_lt, y_lt = make_long_tailed(x, y, 10, seed=3)
    np.testing.assert_array_equal(class_counts(y_lt, 4), long_tail_counts(10, 4, 10))
    for c in range(4):
        assert np.all(np.diff(x_lt[y_lt == c]) > 0), "original order kept within a class"
    x_all, y_all = make_long_tailed(x, y, 1)
    assert len(x_all) == len(x) and np.all(np.diff(y_all) >= 0)


# ------------------------------------------------------------------------------------------------
# Stratified split.


def test_stratified_split_on_long_tailed_labels():
    counts = long_tail_counts(5000, 10, 100)
    y = np.repeat(np.arange(10), counts)  # class-sorted, as make_long_tailed returns it
    a, b = stratified_split(y, 0.5, seed=0)
    assert a.dtype == np.int64 and b.dtype == np.int64
    assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0), "sorted, no duplicates"
    assert np.intersect1d(a, b).size == 0
    np.testing.assert_array_equal(np.union1d(a, b), np.arange(len(y)))
    ca, cb = class_counts(y[a], 10), class_counts(y[b], 10)
    assert np.all(ca > 0) and np.all(cb > 0)
    np.testing.assert_array_equal(ca, [math.ceil(n / 2) for n in counts])
    np.testing.assert_array_equal(cb, [n // 2 for n in counts])
    # Seeded: same seed, same split; other seed, other split.
    a2, _ = stratified_split(y, 0.5, seed=0)
    a3, _ = stratified_split(y, 0.5, seed=1)
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(a, a3)


def test_stratified_split_tiny_classes():
    y = np.array([0, 0, 1, 1, 1, 2])  # class 2 has one example: it can only be on one side
    a, b = stratified_split(y, 0.9, seed=0)
    assert set(y[a]) >= {0, 1} and set(y[b]) >= {0, 1}
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(6))


# ------------------------------------------------------------------------------------------------
# Loaders.


@needs_fmnist
def test_fashion_mnist_loader(fmnist):
    assert fmnist.x_train.shape == (60000, 28, 28, 1) and fmnist.x_train.dtype == np.uint8
    assert fmnist.x_test.shape == (10000, 28, 28, 1) and fmnist.x_test.dtype == np.uint8
    assert fmnist.y_train.shape == (60000,) and fmnist.y_train.dtype == np.int64
    assert fmnist.y_test.shape == (10000,) and fmnist.y_test.dtype == np.int64
    assert fmnist.y_train.min() == 0 and fmnist.y_train.max() == 9
    assert set(np.unique(fmnist.y_test)) == set(range(10))
    assert fmnist.spec == dataset_spec("fashion_mnist")
    assert len(fmnist.spec.class_names) == 10
    # The hard-coded normalisation matches the data.
    assert abs(fmnist.x_train.mean() / 255 - fmnist.spec.mean[0]) < 1e-3


def test_fashion_mnist_missing_dir(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion_mnist", fashion_mnist_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion_mnist", fashion_mnist_dir=str(tmp_path / "nope"))


def test_fashion_mnist_corrupt_file(tmp_path):
    import gzip

    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name in names:
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(b"\x00\x00\x08\x01" + b"\x00" * 16)  # label magic everywhere: wrong for images
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*magic"):
        load_dataset("fashion_mnist", fashion_mnist_dir=str(tmp_path))
    (tmp_path / names[0]).write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="corrupt"):
        load_dataset("fashion_mnist", fashion_mnist_dir=str(tmp_path))


def test_digits_loader(digits):
    assert digits.x_train.shape == (1347, 8, 8, 1) and digits.x_test.shape == (450, 8, 8, 1)
    assert digits.x_train.dtype == np.uint8 and digits.y_train.dtype == np.int64
    assert digits.x_train.max() == 255 and digits.x_train.min() == 0
    assert set(np.unique(digits.y_test)) == set(range(10))
    assert digits.spec.hflip is False and digits.spec.crop_padding == 1
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.y_test, digits.y_test)  # fixed split


def test_npz_round_trip(tmp_path, digits):
    path = tmp_path / "digits.npz"
    # Grey images without channel axis, floats in [0, 1]: both must be converted.
    np.savez(path, x_train=digits.x_train[..., 0] / 255.0, y_train=digits.y_train,
             x_test=digits.x_test[..., 0], y_test=digits.y_test)
    spec = dataset_spec(f"npz:{path}")
    assert spec.image_shape == (8, 8, 1) and spec.num_classes == 10
    ds = load_dataset(f"npz:{path}")
    np.testing.assert_array_equal(ds.x_train, digits.x_train)
    np.testing.assert_array_equal(ds.x_test, digits.x_test)
    np.testing.assert_array_equal(ds.y_train, digits.y_train)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.spec.image_shape == (8, 8, 1) and ds.spec.num_classes == 10
    assert ds.spec.mean[0] == pytest.approx(digits.x_train.mean() / 255)
    assert ds.spec.std[0] == pytest.approx(digits.x_train.std() / 255)

    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=digits.x_train, y_train=digits.y_train)
    with pytest.raises(DatasetError, match="x_test"):
        load_dataset(f"npz:{bad}")
    with pytest.raises(DatasetError, match="x_test"):
        dataset_spec(f"npz:{bad}")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_folder_loader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ["zebra", "apple", "mango"]
    per_class = {"zebra": 5, "apple": 10, "mango": 3}
    for c in names:
        (tmp_path / c).mkdir()
        for i in range(per_class[c]):
            size = (12, 10) if i == 1 else (10, 12)  # one odd-sized image: must be resized
            Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), np.uint8)).save(
                tmp_path / c / f"{i}.png")
    spec = dataset_spec(f"folder:{tmp_path}")
    assert spec.class_names == ("apple", "mango", "zebra")
    assert spec.image_shape == (10, 12, 3) and spec.num_classes == 3

    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.spec.class_names == ("apple", "mango", "zebra")
    assert ds.x_train.shape[1:] == (10, 12, 3) and ds.x_train.dtype == np.uint8
    assert len(ds.x_train) + len(ds.x_test) == 18
    # Stratified 80/20: every class on both sides.
    # apple 10 -> 8/2, mango 3 -> ceil(2.4)=3 capped at 2/1, zebra 5 -> 4/1.
    np.testing.assert_array_equal(class_counts(ds.y_train, 3), [8, 2, 4])
    np.testing.assert_array_equal(class_counts(ds.y_test, 3), [2, 1, 1])
    assert 0 < ds.spec.mean[0] < 1 and len(ds.spec.std) == 3


def test_folder_loader_train_test_layout(tmp_path):
    from PIL import Image

    for split, n in (("train", 4), ("test", 2)):
        for c in ("b", "a"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(d / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.spec.class_names == ("a", "b") and ds.spec.image_shape == (6, 6, 1)
    assert ds.x_train.shape == (8, 6, 6, 1) and ds.x_test.shape == (4, 6, 6, 1)
    with pytest.raises(DatasetError, match="folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


# ------------------------------------------------------------------------------------------------
# Specs and tfds, offline.


def test_dataset_spec_known_offline():
    for name in KNOWN_DATASETS:
        spec = dataset_spec(name)
        assert spec.name == name
        assert len(spec.mean) == len(spec.std) == spec.image_shape[2]
        assert spec.class_names is None or len(spec.class_names) == spec.num_classes
    assert dataset_spec("cifar10").image_shape == (32, 32, 3)
    assert dataset_spec("cifar100").num_classes == 100
    assert dataset_spec("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_spec("fashion_mnist").crop_padding == 2
    assert dataset_spec("digits").hflip is False


def test_dataset_spec_tfds_offline(tmp_path):
    spec = dataset_spec("mnist", data_dir=str(tmp_path))  # static info, no download
    assert spec.image_shape == (28, 28, 1) and spec.num_classes == 10
    with pytest.raises(DatasetError, match="unknown dataset"):
        dataset_spec("no_such_dataset_xyz", data_dir=str(tmp_path))


def test_cifar10_offline_fails_fast(tmp_path, monkeypatch):
    if sources._network_reachable("www.cs.toronto.edu"):
        # A machine with network would start a 160 MB download: simulate being offline.
        monkeypatch.setattr(sources, "_network_reachable", lambda *a, **k: False)
    with pytest.raises(DatasetError, match="manual_dir") as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert "data_dir" in str(err.value) and "cifar-10-binary.tar.gz" in str(err.value)
    with pytest.raises(DatasetError, match="lacks"):
        load_dataset("cifar10", data_dir=str(tmp_path), manual_dir=str(tmp_path / "nothing"))


def test_tfds_prepared_data_dir(tmp_path):
    """A dataset already prepared in data_dir is read with download=False semantics (no network)."""
    import tensorflow_datasets as tfds

    class HlrsTinyTestImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"])}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((8, 8, 1), 10 * i, np.uint8), "label": i % 3}

    name = "hlrs_tiny_test_images"
    tfds.builder(name, data_dir=str(tmp_path)).download_and_prepare()
    ds = load_dataset(name, data_dir=str(tmp_path))
    assert ds.x_train.shape == (12, 8, 8, 1) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (6, 8, 8, 1) and ds.y_train.dtype == np.int64
    assert sorted(ds.y_train.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.spec.num_classes == 3 and ds.spec.class_names == ("a", "b", "c")


# ------------------------------------------------------------------------------------------------
# tf.data pipelines.


def test_search_dataset_structure(digits):
    spec = digits.spec
    a, b = stratified_split(digits.y_train, 0.5, seed=0)
    ds, steps = search_dataset(digits.x_train[a], digits.y_train[a], digits.x_train[b],
                               digits.y_train[b], spec, batch_size=32, seed=0)
    assert steps == min(len(a), len(b)) // 32
    spec_tree = ds.element_spec
    (xs, ys), (xv, yv) = spec_tree
    assert xs.shape.as_list() == [32, 8, 8, 1] and xv.shape.as_list() == [32, 8, 8, 1]
    assert ys.shape.as_list() == [32] and yv.shape.as_list() == [32]
    assert xs.dtype == tf.float32 and ys.dtype == tf.int32 and yv.dtype == tf.int32

    batches = list(ds.take(steps + 2))  # past one epoch: the stream is infinite
    assert len(batches) == steps + 2
    (x_t, y_t), (x_v, y_v) = batches[0]
    lo = (0 - spec.mean[0]) / spec.std[0]
    hi = (1 - spec.mean[0]) / spec.std[0]
    assert float(tf.reduce_min(x_t)) >= lo - 1e-5 and float(tf.reduce_max(x_t)) <= hi + 1e-5
    assert float(tf.reduce_min(x_t)) == pytest.approx(lo, abs=1e-5)  # zero padding / background
    assert set(y_t.numpy().tolist()) <= set(range(10)) and set(y_v.numpy().tolist()) <= set(range(10))

    # Seeded: the same seed yields the same first batch.
    ds2, _ = search_dataset(digits.x_train[a], digits.y_train[a], digits.x_train[b],
                            digits.y_train[b], spec, batch_size=32, seed=0)
    (x_t2, y_t2), _ = next(iter(ds2))
    np.testing.assert_array_equal(y_t2.numpy(), y_t.numpy())
    np.testing.assert_allclose(x_t2.numpy(), x_t.numpy())

    with pytest.raises(ValueError, match="batch_size"):
        search_dataset(digits.x_train[:10], digits.y_train[:10], digits.x_train[:10],
                       digits.y_train[:10], spec, batch_size=32, seed=0)


def test_search_dataset_without_augmentation_is_plain_normalisation(digits):
    spec = digits.spec
    x, y = digits.x_train[:64], digits.y_train[:64]
    ds, steps = search_dataset(x, y, x, y, spec, batch_size=64, seed=0, augment_data=False)
    (x_t, y_t), _ = next(iter(ds))
    # Same multiset of images, only shuffled: compare sorted per-image sums.
    expected = ((x / 255.0 - spec.mean[0]) / spec.std[0]).reshape(64, -1).sum(1)
    np.testing.assert_allclose(np.sort(x_t.numpy().reshape(64, -1).sum(1)), np.sort(expected),
                               rtol=1e-4, atol=1e-3)
    assert steps == 1


def test_augment_shapes_and_determinism():
    spec = dataset_spec("cifar10")
    img = tf.constant(np.arange(32 * 32 * 3, dtype=np.int64).reshape(32, 32, 3) % 256, tf.uint8)
    out1 = augment(img, spec, seed=tf.constant([1, 2]))
    out2 = augment(img, spec, seed=tf.constant([1, 2]))
    assert out1.shape == (32, 32, 3) and out1.dtype == tf.uint8
    np.testing.assert_array_equal(out1.numpy(), out2.numpy())
    outs = {augment(img, spec, seed=tf.constant([1, i])).numpy().tobytes() for i in range(20)}
    assert len(outs) > 1
    assert augment(tf.cast(img, tf.float32), spec).shape == (32, 32, 3)  # stateful path


def test_eval_dataset_keeps_remainder(digits):
    ds = eval_dataset(digits.x_test, digits.y_test, digits.spec, batch_size=128)
    sizes = [int(x.shape[0]) for x, _ in ds]
    assert sum(sizes) == 450 and sizes[-1] == 450 % 128
    x, y = next(iter(ds))
    assert x.dtype == tf.float32 and y.dtype == tf.int32
    np.testing.assert_allclose(
        x.numpy(), (digits.x_test[:128] / 255.0 - digits.spec.mean[0]) / digits.spec.std[0], atol=1e-5)
