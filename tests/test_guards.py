"""NonFiniteLossGuard on real fits of a tiny bilevel search model: a NaN image, a diverging learning rate, and
non-finite weights at the end of an epoch -- training stops with a clear error and no checkpoint of the broken
epoch is written."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.data.long_tail import stratified_split
from hlrs_tf.data.pipeline import search_dataset
from hlrs_tf.data.sources import load_dataset
from hlrs_tf.runtime.callbacks import EpochCheckpoint
from hlrs_tf.search.guards import NonFiniteLossError, NonFiniteLossGuard
from hlrs_tf.testing import small_search_model

BATCH = 8


@pytest.fixture(scope="module")
def digits_split():
    ds = load_dataset("digits")
    idx_w, idx_a = stratified_split(ds.y_train, 0.5, seed=0)
    return ds.x_train[idx_w], ds.y_train[idx_w], ds.x_train[idx_a], ds.y_train[idx_a], ds.spec


def make_model(learning_rate=0.025):
    """A small supernet (1 node per cell: short tracing) compiled like ``trainer.build_model``."""
    return small_search_model(learning_rate=learning_rate, network_kwargs=dict(steps=1, multiplier=1))


def search_data(split, poison_step=None):
    """The real search pipeline; with ``poison_step`` the weight-side images of that global step are NaN."""
    ds, _ = search_dataset(*split, BATCH, seed=0)

    def poison(i, batch):
        (xt, yt), val = batch
        xt = tf.where(tf.equal(i, poison_step), xt * np.nan, xt)
        return (xt, yt), val

    if poison_step is not None:
        ds = ds.enumerate().map(poison)
    return ds


def test_nan_image_stops_at_that_step_and_keeps_last_checkpoint(digits_split, tmp_path):
    model = make_model()
    ckpt_dir = str(tmp_path / "checkpoints")
    os.makedirs(ckpt_dir)
    guard = NonFiniteLossGuard(checkpoint_dir=ckpt_dir)
    seen = []
    recorder = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))
    # 2 steps per epoch; global step 2 is epoch 2, step 1. Guard before the checkpoint, as documented.
    with pytest.raises(NonFiniteLossError) as info:
        model.fit(search_data(digits_split, poison_step=2), epochs=3, steps_per_epoch=2, verbose=0, shuffle=False,
                  callbacks=[recorder, guard, EpochCheckpoint(ckpt_dir)])
    err = info.value
    assert (err.epoch, err.step, err.key) == (2, 1, "loss")  # the arch step used a clean validation batch
    assert np.isnan(err.value)
    message = str(err)
    for needle in ("non-finite loss (nan)", "epoch 2, step 1", "epoch 2 was not saved",
                   "last good checkpoint (epoch 1)", "--learning_rate (now 0.025)",
                   "--arch_learning_rate (now 0.0003)"):
        assert needle in message, message
    assert model.stop_training and guard.error is err
    assert seen == [0, 1, 0]  # stopped right after the poisoned step
    with open(os.path.join(ckpt_dir, "state.json")) as f:
        assert json.load(f)["epoch"] == 1
    assert not any(name.startswith("epoch_002") for name in os.listdir(ckpt_dir))


def test_diverging_learning_rate_is_caught(digits_split):
    model = make_model(learning_rate=1e12)
    guard = NonFiniteLossGuard()
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* at .*--learning_rate \(now 1e\+12\)"):
        model.fit(search_data(digits_split), epochs=1, steps_per_epoch=20, verbose=0, shuffle=False,
                  callbacks=[guard])
    assert guard.error is not None and guard.error.epoch == 1
    # The run really diverged: some weight is no longer finite (or the loss was non-finite on its own).
    assert guard.error.key in ("loss", "arch_loss", "variables")


def test_non_finite_weights_at_epoch_end_block_the_checkpoint(digits_split, tmp_path):
    """The last step of an epoch can break the weights while its loss (computed before the update) was finite;
    the epoch-end variable check must catch it before EpochCheckpoint saves."""
    model = make_model()
    ckpt_dir = str(tmp_path / "checkpoints")
    os.makedirs(ckpt_dir)

    def break_weights(epoch, logs):
        if epoch == 1:  # as if epoch 2's last update produced a NaN
            w = model.network.classifier.kernel
            w.assign(np.full(w.shape, np.nan, np.float32))

    breaker = keras.callbacks.LambdaCallback(on_epoch_end=break_weights)
    with pytest.raises(NonFiniteLossError, match=r"non-finite model variable .*classifier.* at the end of epoch 2"):
        model.fit(search_data(digits_split), epochs=3, steps_per_epoch=1, verbose=0, shuffle=False,
                  callbacks=[breaker, NonFiniteLossGuard(checkpoint_dir=ckpt_dir), EpochCheckpoint(ckpt_dir)])
    with open(os.path.join(ckpt_dir, "state.json")) as f:
        assert json.load(f)["epoch"] == 1


def test_finite_run_passes_untouched(digits_split):
    model = make_model()
    guard = NonFiniteLossGuard()
    history = model.fit(search_data(digits_split), epochs=2, steps_per_epoch=1, verbose=0, shuffle=False,
                        callbacks=[guard])
    assert guard.error is None and len(history.history["loss"]) == 2
