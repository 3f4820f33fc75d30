"""The comparison harness: real runs in sub-workdirs, restart skips finished runs, table and plots."""

import csv
import math
import os

import pytest
from PIL import Image

from conftest import run_cli
from hlrs_tf.comparison import markdown_table, mean_std

TINY = ["--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3", "--batch_size=16",
        "--epochs=2", "--steps_per_epoch=2", "--eval_batch_size=500", "--methods=darts_reweight,hlrs",
        "--seeds=0"]


def test_mean_std_and_table_by_hand():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02), 2))
    assert mean_std([0.4]) == (0.4, 0.0, 1)
    assert math.isnan(mean_std([float("nan")])[0])
    rows = [
        dict(method="darts", top1=0.5, balanced_accuracy=0.4, many_shot=0.9, medium_shot=0.3,
             few_shot=float("nan"), normal_skip_connect=2),
        dict(method="darts", top1=0.7, balanced_accuracy=0.6, many_shot=0.8, medium_shot=0.5,
             few_shot=float("nan"), normal_skip_connect=4),
    ]
    table = markdown_table(rows, ["darts", "hlrs"])
    assert "| darts | 2 | 60.0 ± 14.1 | 50.0 ± 14.1 | 85.0 ± 7.1 | 40.0 ± 14.1 | n/a | 3.0 ± 1.4 |" in table
    assert "hlrs" not in table  # no runs, no row


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp") / "out"
    proc = run_cli("hlrs_tf.compare", *TINY, f"--workdir={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_every_run_has_its_own_workdir(compared):
    root, _ = compared
    for method in ("darts_reweight", "hlrs"):
        wd = root / method / "seed_0"
        for name in ("metrics.json", "genotype.json", "history.csv", "flags.cfg", "search.log", "run.json"):
            assert (wd / name).is_file(), (method, name)
        flags_cfg = (wd / "flags.cfg").read_text()
        assert f"--method={method}" in flags_cfg and "--seed=0" in flags_cfg and "--channels=4" in flags_cfg
    # the preset applied in each run, because the harness passes only explicit flags
    assert "--bbn=true" in (root / "hlrs" / "seed_0" / "flags.cfg").read_text()
    assert "--loss=class_balanced" in (root / "darts_reweight" / "seed_0" / "flags.cfg").read_text()


def test_outputs_csv_markdown_and_plots(compared):
    root, proc = compared
    with open(root / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seed"]) for r in rows] == [("darts_reweight", "0"), ("hlrs", "0")]
    for r in rows:
        assert 0.0 <= float(r["top1"]) <= 1.0 and int(r["normal_skip_connect"]) in range(9)
    md = (root / "comparison.md").read_text()
    assert md.startswith("| method | seeds | top-1 %") and "| hlrs | 1 |" in md
    assert "| hlrs | 1 |" in proc.stdout
    for png in ("accuracy.png", "schedules.png"):
        with Image.open(root / png) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_rerun_skips_finished_runs(compared):
    root, _ = compared
    before = (root / "comparison.csv").read_text()
    mtime = os.path.getmtime(root / "hlrs" / "seed_0" / "metrics.json")
    proc = run_cli("hlrs_tf.compare", *TINY, f"--workdir={root}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("finished earlier, skipped") == 2
    assert os.path.getmtime(root / "hlrs" / "seed_0" / "metrics.json") == mtime
    assert (root / "comparison.csv").read_text() == before


def test_bad_compare_flags(tmp_path):
    proc = run_cli("hlrs_tf.compare", "--methods=darts,bbn", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "--methods has ['bbn']" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("hlrs_tf.compare", "--seeds=0,x", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "--seeds=0,x is invalid" in proc.stderr
    proc = run_cli("hlrs_tf.compare", "--methods=hlrs", "--weight_sampler=reversed", f"--workdir={tmp_path}",
                   timeout=120)
    assert proc.returncode == 2 and "--weight_sampler='reversed' is invalid" in proc.stderr
