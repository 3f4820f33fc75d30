"""The NaN/Inf guard: a diverging search stops with a clear message and keeps the last good checkpoint."""

import json
import os

import keras
import numpy as np
import pytest

from hlrs_tf.data.long_tail import stratified_split
from hlrs_tf.data.pipeline import search_dataset
from hlrs_tf.data.sources import load_dataset
from hlrs_tf.runtime.callbacks import EpochCheckpoint
from hlrs_tf.runtime.workdir import Workdir
from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.search.callbacks import GenotypeLogger
from hlrs_tf.search.guards import NonFiniteLossError, NonFiniteLossGuard
from hlrs_tf.space.supernet import SearchNetwork


class PoisonWeights(keras.callbacks.Callback):
    """Makes the classifier's kernel NaN at the start of ``epoch`` (a real divergence, one epoch late)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.network.classifier.kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_guard_stops_at_the_bad_batch_and_keeps_the_good_checkpoint(tmp_path):
    keras.utils.set_random_seed(0)
    ds = load_dataset("digits")
    idx_w, idx_a = stratified_split(ds.y_train, 0.5, seed=0)
    dataset, _ = search_dataset(ds.x_train[idx_w], ds.y_train[idx_w], ds.x_train[idx_a],
                                ds.y_train[idx_a], ds.spec, batch_size=16, seed=0)
    model = DartsSearchModel(SearchNetwork(4, 10, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.025, momentum=0.9), arch_optimizer=keras.optimizers.Adam(3e-4))
    model.build_all((8, 8, 1))
    wd = Workdir(str(tmp_path / "wd"))
    callbacks = [NonFiniteLossGuard(wd.checkpoint_dir), PoisonWeights(epoch=1), GenotypeLogger(wd),
                 EpochCheckpoint(wd.checkpoint_dir)]
    with pytest.raises(NonFiniteLossError) as e:
        model.fit(dataset, epochs=3, steps_per_epoch=2, callbacks=callbacks, verbose=0)
    message = str(e.value)
    assert "non-finite loss (nan) at epoch 2, step 1: training stopped and epoch 2 was not saved" in message
    assert f"the last good checkpoint (epoch 1) in {wd.checkpoint_dir} is kept" in message
    assert "--learning_rate" in message
    state = json.load(open(os.path.join(wd.checkpoint_dir, "state.json")))
    assert state["epoch"] == 1  # the broken epoch was never saved
    assert sorted(os.listdir(os.path.join(wd.path, "genotypes"))) == ["epoch_001.json"]
    # and the kept checkpoint is finite
    fresh = DartsSearchModel(SearchNetwork(4, 10, 3))
    fresh.compile(optimizer=keras.optimizers.SGD(0.025, momentum=0.9), arch_optimizer=keras.optimizers.Adam(3e-4))
    fresh.build_all((8, 8, 1))
    assert EpochCheckpoint(wd.checkpoint_dir).restore(fresh) == 1
    assert all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in fresh.trainable_variables)


def test_diverging_search_is_one_error_line(tmp_path, run_cli):
    proc = run_cli("hlrs_tf.search", "--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3",
                   "--batch_size=16", "--epochs=2", "--steps_per_epoch=3", "--learning_rate=1e12",
                   "--learning_rate_min=1e12", "--grad_clip=1e30", "--verbose=0", f"--workdir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hlrs_tf.search: error: non-finite") and "training stopped" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "genotype.json").exists() and not (tmp_path / "metrics.json").exists()
