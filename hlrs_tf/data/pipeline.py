"""tf.data pipelines: the per-image ops and the streams of the search, the evaluation and the retraining.

Everything here is plain library code: arrays and a :class:`~hlrs_tf.data.spec.DatasetSpec` in,
``tf.data.Dataset`` out, no flags.

* :func:`normalize` and :func:`augment` (random crop with zero padding, horizontal flip): the per-image ops.
* :func:`uniform_stream` and :func:`class_sampler_stream`: infinite streams of batches, drawn uniformly without
  replacement or class first by the probabilities of :mod:`hlrs_tf.data.samplers`; every element is seeded by
  its position, so a resume (``skip_batches``) continues a stream exactly.
* :func:`search_dataset`: the bilevel search's weight and architecture batches (with BBN, a ``reversed`` batch
  on each side); :func:`eval_dataset`: finite, normalised, not augmented.
* :func:`retrain_dataset`: the retraining of a derived network, with the DARTS evaluation protocol's cutout.

Pixel arrays stay ``uint8`` (NHWC) until the tf.data ``map`` converts them, so CIFAR-sized data costs
~150 MB rather than ~600 MB of float32.

Retraining. The reference DARTS ``train.py`` trains on random crop (padding 4) + horizontal flip + normalisation
+ **Cutout** (DeVries & Taylor 2017: one ``length x length`` square per image, centred uniformly over the image,
clipped at the borders, set to zero *after* normalisation, i.e. to the dataset mean). Crop, flip and
normalisation are :func:`augment` and :func:`normalize`; cutout is applied to whole normalised batches
(:func:`cutout_batch`, one vectorised op per batch).

Cutout length: 16 for 32x32 images (the DARTS setting), scaled with the image side for other sizes
(``round(16 * min(H, W) / 32)``: 14 for 28x28 Fashion-MNIST, 4 for 8x8 digits).

The training set is the long-tailed set itself (by default no split: the whole set trains the weights; with
``--holdout_fraction`` a stratified share of each class is held out first,
:func:`hlrs_tf.data.long_tail.holdout_split`, as the validation split of :mod:`hlrs_tf.post_hoc`), drawn uniformly
without replacement and reshuffled on every pass. With BBN, each element also carries a batch of the
``reversed`` sampler (class ``i`` with probability proportional to ``N_max / N_i``) for the re-balancing
branch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from hlrs_tf.data.long_tail import class_counts
from hlrs_tf.data.samplers import class_sampling_probs
from hlrs_tf.data.spec import DatasetSpec

__all__ = ["REFERENCE_CUTOUT", "augment", "class_sampler_stream", "cutout_batch", "cutout_length_for", "eval_dataset",
           "normalize", "retrain_dataset", "retrain_steps_per_epoch", "search_dataset", "search_steps_per_epoch",
           "uniform_stream"]


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
# The retraining stream: crop, flip, normalisation and cutout.


#: Cutout length of the DARTS CIFAR setting (32x32 images).
REFERENCE_CUTOUT = 16


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
    spec: DatasetSpec,
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
    conventional = uniform_stream(x, y, spec, batch_size, seed, augment, skip_batches)
    conventional = _with_cutout(conventional, cutout_length, seed + 1, skip_batches)
    if not bbn:
        return conventional.prefetch(tf.data.AUTOTUNE)
    rebalancing = class_sampler_stream(
        x, y, spec, batch_size, seed + 2, "reversed", augment_data=augment, skip_batches=skip_batches
    )
    rebalancing = _with_cutout(rebalancing, cutout_length, seed + 3, skip_batches)
    return tf.data.Dataset.zip((conventional, rebalancing)).prefetch(tf.data.AUTOTUNE)
