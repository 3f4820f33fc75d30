"""tf.data pipeline of the retraining of a derived network: the DARTS evaluation protocol's augmentation.

The reference DARTS ``train.py`` trains on random crop (padding 4) + horizontal flip + normalisation + **Cutout**
(DeVries & Taylor 2017: one ``length x length`` square per image, centred uniformly over the image, clipped at
the borders, set to zero *after* normalisation, i.e. to the dataset mean). Crop, flip and normalisation come from
:mod:`hlrs_tf.data.datasets`; cutout is applied here to whole normalised batches (one vectorised op per batch).

Cutout length: 16 for 32x32 images (the DARTS setting), scaled with the image side for other sizes
(``round(16 * min(H, W) / 32)``: 14 for 28x28 Fashion-MNIST, 4 for 8x8 digits).

The training set is the long-tailed set itself (by default no split: the whole set trains the weights; with
``--holdout_fraction`` a stratified share of each class is held out first, :func:`holdout_split`, as the
validation split of :mod:`hlrs_tf.post_hoc`), drawn uniformly
without replacement and reshuffled on every pass. With BBN, each element also carries a batch of the
``reversed`` sampler (class ``i`` with probability proportional to ``N_max / N_i``) for the re-balancing
branch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from hlrs_tf.data import datasets as data_lib

__all__ = ["REFERENCE_CUTOUT", "cutout_length_for", "cutout_batch", "holdout_split", "retrain_dataset",
           "retrain_steps_per_epoch"]

#: Cutout length of the DARTS CIFAR setting (32x32 images).
REFERENCE_CUTOUT = 16


def holdout_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Holds a stratified share of each class of the long-tailed training set out of training.

    One function for the retraining and for :mod:`hlrs_tf.post_hoc`, so that both see the same split of the same
    seed (:func:`hlrs_tf.data.datasets.stratified_split`: per class a shuffled ``ceil(fraction * n_c)`` held out).

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
    held, kept = data_lib.stratified_split(y, fraction, seed=seed)
    empty = sorted(set(np.unique(y).tolist()) - set(np.unique(y[kept]).tolist()))
    if empty:
        raise ValueError(f"--holdout_fraction={fraction:g} is invalid here: it leaves class(es) {empty} without a "
                         "training image (each has one image in the long-tailed set); lower it, or set 0")
    return (x[kept], y[kept]), (x[held], y[held])


def cutout_length_for(image_shape, length: int = 0) -> int:
    """The cutout side for an image shape.

    Args:
        image_shape: ``(H, W, C)``.
        length: Explicit length (> 0), or 0 for the DARTS 16 scaled to the image: ``round(16 * min(H, W) / 32)``.

    Returns:
        The length in pixels (at least 1).
    """
    if length > 0:
        return int(length)
    side = min(int(image_shape[0]), int(image_shape[1]))
    return max(1, int(round(REFERENCE_CUTOUT * side / 32)))


def cutout_batch(images: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
    """Zeroes one ``length x length`` square per image of a normalised batch (reference Cutout).

    As in the reference: the centre ``(cy, cx)`` is uniform over the image, the square covers rows
    ``[cy - length//2, cy + length//2)`` and the same columns, clipped to the image.

    Args:
        images: ``float32 (B, H, W, C)`` normalised images.
        length: Square side in pixels.
        seed: Shape-``[2]`` integer stateless seed (different per batch).

    Returns:
        The batch with the squares set to 0.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    cy = tf.random.stateless_uniform([b], seed, 0, h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([b], seed + [0, 1], 0, w, dtype=tf.int32)
    half = length // 2
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    in_rows = (rows >= (cy - half)[:, None]) & (rows < (cy + half)[:, None])  # (B, H)
    in_cols = (cols >= (cx - half)[:, None]) & (cols < (cx + half)[:, None])  # (B, W)
    hole = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    return images * tf.cast(~hole, images.dtype)[..., None]


def retrain_steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Steps of one pass over the training set (``num_train // batch_size``).

    Raises:
        ValueError: If ``batch_size`` exceeds the training set (the message names the flag).
    """
    steps = int(num_train) // int(batch_size)
    if steps < 1:
        raise ValueError(
            f"--batch_size={batch_size} is larger than the long-tailed training set ({num_train} images): "
            "lower batch_size"
        )
    return steps


def _with_cutout(stream: tf.data.Dataset, length: int, seed: int, skip_batches: int) -> tf.data.Dataset:
    if length <= 0:
        return stream
    # The batch position (continued after a resume) seeds the cutout of that batch.
    stream = stream.enumerate(start=int(skip_batches))
    return stream.map(
        lambda i, xy: (cutout_batch(xy[0], length, tf.stack([tf.constant(seed, tf.int64), i])), xy[1]),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )


def retrain_dataset(
    x: np.ndarray,
    y: np.ndarray,
    spec: data_lib.DatasetSpec,
    batch_size: int,
    seed: int,
    augment: bool = True,
    cutout_length: int = 0,
    skip_batches: int = 0,
    bbn: bool = False,
) -> tf.data.Dataset:
    """Infinite training stream of the retraining.

    Args:
        x: ``uint8`` NHWC images of the (long-tailed) training set.
        y: Labels.
        spec: Dataset spec (normalisation, crop padding, flip).
        batch_size: Batch size (``drop_remainder``: static shapes, one trace).
        seed: Seed of the order, the augmentation and the cutout; the BBN re-balancing stream uses ``seed + 2``.
        augment: Random crop + flip.
        cutout_length: Cutout side in pixels; 0 disables cutout (use :func:`cutout_length_for`).
        skip_batches: Batches already consumed (resume): the stream continues where it stopped.
        bbn: Elements are ``((x_c, y_c), (x_r, y_r))`` with a ``reversed``-sampler batch, else ``(x, y)``.

    Returns:
        The ``tf.data.Dataset`` (prefetched).
    """
    conventional = data_lib.uniform_stream(x, y, spec, batch_size, seed, augment, skip_batches)
    conventional = _with_cutout(conventional, cutout_length, seed + 1, skip_batches)
    if not bbn:
        return conventional.prefetch(tf.data.AUTOTUNE)
    rebalancing = data_lib.class_sampler_stream(
        x, y, spec, batch_size, seed + 2, "reversed", augment_data=augment, skip_batches=skip_batches
    )
    rebalancing = _with_cutout(rebalancing, cutout_length, seed + 3, skip_batches)
    return tf.data.Dataset.zip((conventional, rebalancing)).prefetch(tf.data.AUTOTUNE)
