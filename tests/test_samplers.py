"""Samplers: class frequencies against their formulas (statistical, fixed seed), determinism and resume."""

import numpy as np
import pytest

from hlrs_tf.data.pipeline import class_sampler_stream, search_dataset
from hlrs_tf.data.samplers import class_sampling_probs
from hlrs_tf.data.spec import DatasetSpec

COUNTS = [400, 160, 64, 25, 10]  # a long tail, N_max / N_min = 40
SPEC = DatasetSpec("toy", (4, 4, 1), len(COUNTS), (0.5,), (0.5,))


def toy_split():
    y = np.repeat(np.arange(len(COUNTS)), COUNTS)
    x = np.zeros((len(y), 4, 4, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(len(y)) % 256  # tell instances apart
    x[:, 0, 1, 0] = np.arange(len(y)) // 256
    return x, y


def draw_labels(sampler, n_batches=50, batch=80, seed=0, skip=0):
    x, y = toy_split()
    ds = class_sampler_stream(x, y, SPEC, batch, seed, sampler, augment_data=False, skip_batches=skip)
    return np.concatenate([b[1].numpy() for b in ds.take(n_batches)])


def chi_square(observed_counts, probs):
    expected = probs * observed_counts.sum()
    return float(((observed_counts - expected) ** 2 / expected).sum())


# 99.9% quantile of chi-square with 4 degrees of freedom: a correct sampler fails this 1 time in 1000
# (and never with the fixed seed); a sampler off by a few percent of a class fails it.
CHI2_4_999 = 18.47


def test_sampling_probabilities_follow_the_formulas():
    np.testing.assert_allclose(class_sampling_probs(COUNTS, "uniform"), np.array(COUNTS) / sum(COUNTS))
    np.testing.assert_allclose(class_sampling_probs(COUNTS, "class_balanced"), 0.2)
    inv = 400 / np.array(COUNTS, float)
    np.testing.assert_allclose(class_sampling_probs(COUNTS, "reversed"), inv / inv.sum())
    # absent classes are never drawn
    assert class_sampling_probs([5, 0, 1], "reversed")[1] == 0
    with pytest.raises(ValueError, match="sampler must be one of uniform, class_balanced, reversed"):
        class_sampling_probs(COUNTS, "inverse")


@pytest.mark.parametrize("sampler", ["reversed", "class_balanced"])
def test_class_frequencies_match_the_sampler(sampler):
    labels = draw_labels(sampler)  # 4,000 draws
    observed = np.bincount(labels, minlength=len(COUNTS))
    probs = class_sampling_probs(COUNTS, sampler)
    assert chi_square(observed, probs) < CHI2_4_999
    # and not the other samplers' frequencies
    for other in {"uniform", "reversed", "class_balanced"} - {sampler}:
        assert chi_square(observed, class_sampling_probs(COUNTS, other)) > 10 * CHI2_4_999


def test_reversed_ratio_head_to_tail():
    observed = np.bincount(draw_labels("reversed"), minlength=len(COUNTS))
    # N_max / N_i: the tail class (10 examples) is drawn ~40x as often as the head class (400)
    assert 25 < observed[-1] / observed[0] < 65


def test_instances_are_uniform_within_a_class():
    x, y = toy_split()
    ds = class_sampler_stream(x, y, SPEC, 100, 0, "class_balanced", augment_data=False)
    # undo the normalisation to recover the instance ids
    ids = []
    for xb, _yb in ds.take(40):
        raw = np.rint((xb.numpy() * 0.5 + 0.5) * 255)
        ids.append(raw[:, 0, 0, 0] + 256 * raw[:, 0, 1, 0])
    ids = np.concatenate(ids).astype(int)
    tail = ids[y[ids] == 4] - sum(COUNTS[:4])  # the 10 instances of the tail class
    observed = np.bincount(tail, minlength=10)
    assert observed.min() > 0 and chi_square(observed, np.full(10, 0.1)) < 27.88  # chi2(9) 99.9%


def test_stream_is_reproducible_and_resumes_exactly():
    a = draw_labels("reversed", n_batches=6, seed=3)
    b = draw_labels("reversed", n_batches=6, seed=3)
    np.testing.assert_array_equal(a, b)
    resumed = draw_labels("reversed", n_batches=2, seed=3, skip=4)
    np.testing.assert_array_equal(resumed, a[4 * 80:])
    assert not np.array_equal(a, draw_labels("reversed", n_batches=6, seed=4))


def test_bbn_search_dataset_draws_one_batch_per_sampler():
    x, y = toy_split()
    ds, steps = search_dataset(x, y, x, y, SPEC, 64, seed=0, augment_data=False, bbn=True)
    assert steps == len(y) // 64
    conv_labels, rebal_labels = [], []
    for train, val in ds.take(30):
        assert len(train) == 4 and len(val) == 4
        conv_labels.append(train[1].numpy())
        rebal_labels.append(train[3].numpy())
    conv = np.bincount(np.concatenate(conv_labels), minlength=5)
    rebal = np.bincount(np.concatenate(rebal_labels), minlength=5)
    assert conv[0] > conv[-1] * 10  # conventional: uniform over instances, head-heavy
    assert rebal[-1] > rebal[0] * 10  # re-balancing: reversed, tail-heavy


def test_resample_search_dataset_uses_the_weight_sampler_only():
    x, y = toy_split()
    ds, _ = search_dataset(x, y, x, y, SPEC, 64, seed=0, augment_data=False,
                           weight_sampler="class_balanced", arch_sampler="uniform")
    w, a = [], []
    for (_xw, yw), (_xa, ya) in ds.take(30):
        w.append(yw.numpy())
        a.append(ya.numpy())
    w, a = np.bincount(np.concatenate(w), minlength=5), np.bincount(np.concatenate(a), minlength=5)
    assert chi_square(w, np.full(5, 0.2)) < CHI2_4_999
    assert a[0] > 10 * a[-1]
