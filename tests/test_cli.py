"""The search command end to end on real data, its work directory contract, dry runs and bad input."""

import csv
import glob
import json
import os
import sys

import numpy as np
import pytest

TINY = ["--channels=4", "--layers=3", "--batch_size=16", "--epochs=2", "--steps_per_epoch=3", "--verbose=2",
        "--eval_batch_size=500"]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory, run_cli):
    """One short real search: Fashion-MNIST (Debian files) made long-tailed with ratio 100."""
    workdir = str(tmp_path_factory.mktemp("run") / "wd")
    proc = run_cli("hlrs_tf.search", "--flagfile=configs/quickstart.cfg", *TINY, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_search_writes_every_artifact(search_run):
    workdir, proc = search_run
    for name in ("flags.cfg", "model_summary.json", "genotype.json", "history.csv", "metrics.json",
                 "genotypes/epoch_001.json", "genotypes/epoch_002.json", "checkpoints/state.json", "normal.png",
                 "reduce.png"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert "supernet test top-1" in proc.stdout


def test_model_summary(search_run):
    summary = json.load(open(os.path.join(search_run[0], "model_summary.json")))
    assert summary["arch_params"] == 224
    assert summary["weight_params"] > 0 and summary["dataset"] == "fashion_mnist"
    # long tail with ratio 100 from 6000 per class (the LDAM rule), then split 50/50 stratified
    assert summary["train_class_counts"][0] == 6000 and summary["train_class_counts"][-1] == 60
    assert abs(summary["weight_split"] - summary["arch_split"]) <= 10
    assert summary["devices"] == ["cpu"] and summary["onednn"] is True  # no GPU here (hlrs_tf.runtime.devices)


def test_genotypes_are_valid_json_genotypes(search_run):
    from hlrs_tf.space.genotypes import Genotype

    run_dir = search_run[0]
    for path in [os.path.join(run_dir, "genotype.json"), *glob.glob(os.path.join(run_dir, "genotypes", "*"))]:
        g = Genotype.load(path)
        raw = json.load(open(path))
        assert set(raw) == {"normal", "normal_concat", "reduce", "reduce_concat"}
        assert len(g.normal) == 8 and g.normal_concat == (2, 3, 4, 5)
    # the final genotype is the last epoch's
    assert Genotype.load(os.path.join(search_run[0], "genotype.json")) == Genotype.load(
        os.path.join(search_run[0], "genotypes", "epoch_002.json"))


def test_history_csv(search_run):
    rows = list(csv.DictReader(open(os.path.join(search_run[0], "history.csv"))))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for key in ("loss", "accuracy", "arch_loss", "arch_accuracy", "lr", "arch_lr", "normal_skip_connect"):
        assert key in rows[0], key
        assert all(np.isfinite(float(r[key])) for r in rows)
    assert not any(k.startswith("val_") for k in rows[0])
    # cosine decay of the weight lr: ends at learning_rate_min
    assert float(rows[1]["lr"]) == pytest.approx(0.001, rel=1e-3)
    assert float(rows[0]["lr"]) > float(rows[1]["lr"])


def test_metrics_json(search_run):
    m = json.load(open(os.path.join(search_run[0], "metrics.json")))
    for key in ("top1", "per_class", "many_shot", "medium_shot", "few_shot", "train_class_counts", "dataset",
                "imbalance_ratio"):
        assert key in m, key
    assert len(m["per_class"]) == 10 and 0.0 <= m["top1"] <= 1.0
    assert m["dataset"] == "fashion_mnist" and m["imbalance_ratio"] == 100
    assert m["num_test"] == 10000  # the balanced test set


def test_tensorboard_events_read_back(search_run):
    import tensorflow as tf

    files = glob.glob(os.path.join(search_run[0], "tensorboard", "events.out.tfevents.*"))
    assert files
    tags = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    assert tags["epoch/loss"] == [1, 2]
    assert "epoch/arch_lr" in tags and "epoch/normal_skip_connect" in tags
    assert tags["alphas/normal"] == [1, 2] and tags["alphas/reduce"] == [1, 2]
    assert tags["genotype"] == [1, 2]


def test_flags_cfg_is_a_reusable_flagfile(search_run, tmp_path, run_cli):
    flags_cfg = os.path.join(search_run[0], "flags.cfg")
    text = open(flags_cfg).read()
    assert "--dataset=fashion_mnist" in text and "--channels=4" in text and "--epochs=2" in text
    proc = run_cli("hlrs_tf.search", f"--flagfile={flags_cfg}", "--dry_run", f"--workdir={tmp_path / 'again'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert open(tmp_path / "again" / "flags.cfg").read() == text


DRY_RUNS = {  # name -> the search's arguments besides --dry_run and --workdir
    "lt_cfg": ["--flagfile=configs/lt.cfg"],
    **{dataset: [f"--dataset={dataset}", "--channels=4", "--layers=3"]
       for dataset in ("cifar100", "digits", "fashion_mnist")},
}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory, child_env, run_side_by_side):
    """The offline dry runs, started side by side (conftest.run_side_by_side, which asserts that each exited
    0): ``{name: workdir}``.

    A dry run is nearly all start-up and model building, one core's work each (~12 s), and each has its own
    workdir and reads nothing the others write: run together on two cores they take about half as long as
    one after the other, and they check the same things."""
    root = tmp_path_factory.mktemp("dry_runs")
    run_side_by_side([([sys.executable, "-m", "hlrs_tf.search", *args, "--dry_run", f"--workdir={root / name}"],
                       child_env) for name, args in DRY_RUNS.items()], timeout=900, what="the dry runs")
    return {name: root / name for name in DRY_RUNS}


def test_dry_run_paper_setting_has_reference_parameter_count(dry_runs):
    """configs/lt.cfg (CIFAR-10, C=16, 8 cells) offline: the dry run builds the 1,930,618-weight supernet."""
    summary = json.load(open(dry_runs["lt_cfg"] / "model_summary.json"))
    assert summary["weight_params"] == 1_930_618 and summary["arch_params"] == 224


@pytest.mark.parametrize("dataset,classes", [("cifar100", 100), ("digits", 10), ("fashion_mnist", 10)])
def test_dry_run_offline_for_named_datasets(dataset, classes, dry_runs):
    assert json.load(open(dry_runs[dataset] / "model_summary.json"))["num_classes"] == classes


def test_paper_setting_offline_fails_fast_with_instructions(tmp_path, run_cli):
    proc = run_cli("hlrs_tf.search", "--flagfile=configs/lt.cfg", f"--data_dir={tmp_path / 'tfds'}",
                   f"--workdir={tmp_path / 'wd'}", timeout=120)
    assert proc.returncode == 2
    assert "manual_dir" in proc.stderr and "cifar" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag,needle", [
    ("--order=third", "order"),
    ("--imbalance_ratio=0.5", "imbalance_ratio"),
    ("--channels=7", "channels"),
    ("--layers=2", "layers"),
    ("--epochs=0", "epochs"),
    ("--learning_rate=-1", "learning_rate"),
    ("--train_portion=1.5", "train_portion"),
    ("--batch_size=abc", "batch_size"),
    ("--momentum=1.2", "momentum"),
    ("--no_such_flag=1", "no_such_flag"),
])
def test_bad_flag_values_name_the_flag(tmp_path, flag, needle, run_cli):
    proc = run_cli("hlrs_tf.search", "--dataset=digits", flag, "--dry_run", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_dataset_name_is_a_clear_error(tmp_path, run_cli):
    proc = run_cli("hlrs_tf.search", "--dataset=npz:/nonexistent/file.npz", "--dry_run", f"--workdir={tmp_path}")
    assert proc.returncode == 2
    assert "/nonexistent/file.npz" in proc.stderr and "Traceback" not in proc.stderr


def test_batch_larger_than_split_is_a_clear_error(tmp_path, run_cli):
    proc = run_cli("hlrs_tf.search", "--dataset=digits", "--imbalance_ratio=10", "--batch_size=5000", "--channels=4",
                   "--layers=3", f"--workdir={tmp_path}")
    assert proc.returncode == 2 and "batch_size" in proc.stderr and "Traceback" not in proc.stderr
