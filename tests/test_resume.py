"""An interrupted search (SIGKILL mid-run) resumes where it stopped and ends identical to an uninterrupted one."""

import csv
import json
import os

import pytest

ARGS = ["--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3", "--batch_size=16",
        "--epochs=4", "--steps_per_epoch=4", "--deterministic", "--verbose=0", "--seed=3"]


def read_history(workdir):
    return list(csv.DictReader(open(os.path.join(workdir, "history.csv"))))


# DARTS, and PC-DARTS (K=4 on C=4: 1 channel per op in the normal cells, 2 in the reduction cells), whose betas
# are architecture variables too: its edge weights are in the history and rank the edges of the genotype.
@pytest.mark.parametrize("extra", [[], ["--method=pcdarts"]], ids=["darts", "pcdarts"])
def test_killed_search_resumes_and_matches_uninterrupted(tmp_path, extra, run_cli, kill_beside_reference):
    """Also, for DARTS: rerunning the finished reference run trains nothing and leaves its history as it is
    (this was test_finished_run_rerun_does_not_train_again, a run of its own)."""
    ARGS = globals()["ARGS"] + extra  # the module's arguments, plus the case's
    # The reference runs beside the run that is killed after epoch 2 (conftest.kill_beside_reference).
    reference, interrupted = str(tmp_path / "reference"), str(tmp_path / "interrupted")
    done = kill_beside_reference(["hlrs_tf.search", *ARGS], reference, interrupted, epoch=2)
    assert 2 <= done < 4

    proc = run_cli("hlrs_tf.search", *ARGS, f"--workdir={interrupted}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from the checkpoint of epoch {done}" in proc.stdout

    ref_rows, got_rows = read_history(reference), read_history(interrupted)
    assert [r["epoch"] for r in got_rows] == ["0", "1", "2", "3"]
    keys = ("loss", "arch_loss", "accuracy", "lr", "arch_lr", "normal_skip_connect")
    if extra:
        keys += ("edge_max_weight_normal", "edge_max_weight_reduce")
    for ref, got in zip(ref_rows, got_rows):
        for key in keys:
            if int(ref["epoch"]) < done:
                # Before the kill, the two runs are the same flags in two processes side by side: with
                # --deterministic they must agree bit for bit, whatever order each process' executor threads ran
                # the ops in. (A sum whose order followed that schedule once made them differ by ~1e-7, and by
                # 3e-5 an epoch later: hlrs_tf.space.fused_cell._stacked_weighted_sum.)
                assert got[key] == ref[key], (ref["epoch"], key)
            else:
                assert float(got[key]) == pytest.approx(float(ref[key]), rel=1e-5, abs=1e-7), (ref["epoch"], key)
    for name in ("genotype.json", "genotypes/epoch_004.json"):
        assert open(os.path.join(interrupted, name)).read() == open(os.path.join(reference, name)).read()
    ref_m = json.load(open(os.path.join(reference, "metrics.json")))
    got_m = json.load(open(os.path.join(interrupted, "metrics.json")))
    assert got_m["top1"] == pytest.approx(ref_m["top1"], abs=1e-6)

    if not extra:  # a finished run, rerun: it restores epoch 4 of 4 and trains no step
        rows = read_history(reference)
        proc = run_cli("hlrs_tf.search", *ARGS, f"--workdir={reference}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert read_history(reference) == rows


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, run_cli):
    workdir = tmp_path / "wd"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "checkpoints" / "state.json").write_text("{not json")
    proc = run_cli("hlrs_tf.search", *ARGS, f"--workdir={workdir}")
    assert proc.returncode == 2
    assert "corrupt checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_resumed_history_keeps_every_value_under_its_column(tmp_path):
    """A run resumed by a version that logs other columns (here: one more, one fewer) must not write its values
    under the old header's names (Keras' CSVLogger would): the file is rewritten once under the union."""
    from hlrs_tf.runtime.callbacks import CSVHistory

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,old_only\r\n0,1.5,7\r\n1,1.25,8\r\n")
    logger = CSVHistory(str(path), append=True)
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 1.0, "skip_replaced": 3})
    logger.on_epoch_end(3, {"loss": 0.5, "skip_replaced": 4})
    logger.on_train_end()
    rows = list(csv.DictReader(open(path, newline="")))
    assert list(rows[0]) == ["epoch", "loss", "old_only", "skip_replaced"]
    assert [(r["epoch"], r["loss"], r["old_only"], r["skip_replaced"]) for r in rows] == [
        ("0", "1.5", "7", "NA"), ("1", "1.25", "8", "NA"), ("2", "1.0", "NA", "3"), ("3", "0.5", "NA", "4")]
    # Same columns: the file is appended to as before, not rewritten.
    before = path.read_bytes()
    logger = CSVHistory(str(path), append=True)
    logger.on_train_begin()
    logger.on_epoch_end(4, {"loss": 0.25, "old_only": 9, "skip_replaced": 5})
    logger.on_train_end()
    assert path.read_bytes() == before + b"4,0.25,9,5\r\n"


def test_history_keeps_validation_columns_of_later_epochs(tmp_path):
    """With --validation_freq=2 the first epoch has no val_* logs; its columns must still hold the later ones."""
    from hlrs_tf.runtime.callbacks import CSVHistory

    path = tmp_path / "history.csv"
    logger = CSVHistory(str(path), validation_metrics=("accuracy", "loss"))
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})
    logger.on_epoch_end(1, {"loss": 0.5, "accuracy": 0.75, "val_loss": 0.6, "val_accuracy": 0.7})
    logger.on_train_end()
    rows = list(csv.DictReader(open(path, newline="")))
    assert [(r["val_loss"], r["val_accuracy"]) for r in rows] == [("NA", "NA"), ("0.6", "0.7")]
    without = tmp_path / "plain.csv"  # no evaluation: no empty val_* columns (CSVLogger would add them)
    logger = CSVHistory(str(without))
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 1.0})
    logger.on_train_end()
    assert without.read_text().splitlines()[0] == "epoch,loss"
