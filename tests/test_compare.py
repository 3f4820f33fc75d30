"""The comparison harness: real searches and retrainings in sub-workdirs, tables with intervals and verdicts,
resume after the harness is killed in the middle of a retraining, plots, bad flags."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from hlrs_tf.experiments.comparison import CompareConfig, markdown_report, paired_table, summary_table, verdict_lines

METHODS = ("darts", "hlrs")
SEARCH = ["--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3", "--batch_size=16",
          "--epochs=2", "--steps_per_epoch=2", "--eval_batch_size=500", f"--methods={','.join(METHODS)}",
          "--seeds=0,1"]
# Enough one-step epochs that the harness can be killed after the first checkpoint and before the end. The
# kill (`compared`) fires within one 20 ms poll of epoch 1's state.json; after that the retraining still runs
# epochs 2 and 3 (a step, TensorBoard, history and a checkpoint each) and then the test-set evaluation (a
# predict trace) before it writes metrics.json. Measured from epoch 1's state.json to metrics.json on 2 cores:
# 1.9 s idle (0.6 s per epoch, 0.7 s for the evaluation), 3.2 s and 5.3 s under load 5-6 (the child slows
# down with the poller) -- about 100 polls or more, and a sleeping poller is rescheduled within milliseconds.
# 12 epochs only widened that to ~12 s, at 0.6-1.8 s per epoch of each of the 4 retrainings.
RETRAIN = ["--flagfile=configs/retrain_quick.cfg", "--channels=4", "--layers=4", "--epochs=3",
           "--steps_per_epoch=1", "--batch_size=16", "--eval_batch_size=512"]


def _row(method, seed, top1, few, retrained_top1=float("nan"), skip=2):
    row = {"method": method, "seed": seed, "normal_skip_connect": skip, "alpha_max_softmax": 0.3}
    for stage, t, f in (("supernet", top1, few), ("retrained", retrained_top1, few)):
        row.update({f"{stage}_top1": t, f"{stage}_balanced_accuracy": t, f"{stage}_many_shot": 0.9,
                    f"{stage}_medium_shot": 0.5, f"{stage}_few_shot": f, f"{stage}_per_class": ""})
    return row


def test_tables_and_verdicts_by_hand():
    rows = [_row("darts", 0, 0.50, 0.10, 0.60), _row("darts", 1, 0.70, 0.20, 0.70),
            _row("darts", 2, 0.60, 0.30, 0.80),
            _row("hlrs", 0, 0.55, 0.10, 0.50), _row("hlrs", 1, 0.75, 0.20, 0.61),
            _row("hlrs", 2, 0.65, 0.30, 0.72)]
    # darts supernet top-1: 50, 70, 60 -> mean 60, std 10, t(0.975, 2) = 4.302653 -> half width 24.84.
    table = summary_table(rows, ["darts", "hlrs"], "supernet")
    assert "| darts | 3 | 60.0 ± 10.0 [35.2, 84.8] |" in table
    # hlrs - darts, supernet top-1: +5 on every seed -> std 0, the interval is the point.
    paired = paired_table(rows, ["darts", "hlrs"], "supernet", "darts")
    assert "| hlrs | 3 | 5.0 ± 0.0 [5.0, 5.0] |" in paired
    lines = verdict_lines(rows, ["darts", "hlrs"], ("supernet", "retrained"), "darts")
    assert "hlrs vs darts, supernet top-1: +5.0 points [+5.0, +5.0] over 3 seeds: helps" in lines
    # retrained: -10, -9, -8 -> mean -9, std 1, half width 4.302653 / sqrt(3) = 2.484 -> [-11.5, -6.5].
    assert "hlrs vs darts, retrained top-1: -9.0 points [-11.5, -6.5] over 3 seeds: hurts" in lines
    # few-shot identical on every seed: the difference is exactly 0, an interval [0, 0] that contains 0.
    assert "hlrs vs darts, supernet few-shot: +0.0 points [+0.0, +0.0] over 3 seeds: no clear difference" in lines
    md = markdown_report(rows, CompareConfig(("darts", "hlrs"), (0, 1, 2), retrain=False))
    assert "Supernet at the end" in md and "retrained from scratch" not in md and "retrained top-1" not in md


def _compare(run_cli, *args, **kwargs):
    return run_cli("hlrs_tf.compare", *SEARCH, *args, **kwargs)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, repo_root, run_cli, child_env):
    """A real comparison, killed (harness and child together) in the middle of its first retraining, then
    run again to the end with the same command."""
    root = tmp_path_factory.mktemp("cmp") / "out"
    flagfile = root.parent / "retrain_tiny.cfg"
    flagfile.write_text("\n".join(RETRAIN) + "\n")
    args = [*SEARCH, f"--retrain_flagfile={flagfile}", f"--workdir={root}"]
    first_train = root / "darts" / "seed_0" / "train"
    proc = subprocess.Popen([sys.executable, "-m", "hlrs_tf.compare", *args], cwd=repo_root, env=child_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (first_train / "checkpoints" / "state.json").exists():
            assert proc.poll() is None, "the comparison ended before its first retraining checkpoint"
            assert time.monotonic() < deadline, "no retraining checkpoint after 10 minutes"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed = {"retrain_finished": (first_train / "metrics.json").exists(),
              "search_mtime": os.path.getmtime(root / "darts" / "seed_0" / "search" / "metrics.json"),
              "later_search_started": (root / "hlrs" / "seed_0").exists()}
    done = run_cli("hlrs_tf.compare", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done, killed, args


def test_killed_mid_retraining_resumes_without_redoing_work(compared):
    root, done, killed, _ = compared
    assert not killed["retrain_finished"] and not killed["later_search_started"]  # killed mid-retraining
    sd, td = root / "darts" / "seed_0" / "search", root / "darts" / "seed_0" / "train"
    assert os.path.getmtime(sd / "metrics.json") == killed["search_mtime"]  # the search was not redone
    assert "darts seed 0: search finished earlier, skipped" in done.stdout
    assert "resuming from the checkpoint of epoch" in (td / "train.log").read_text()
    with open(td / "history.csv") as f:
        epochs = [int(float(r["epoch"])) for r in csv.DictReader(f)]
    assert epochs == list(range(3)) or epochs == list(range(1, 4))  # every epoch once, none mixed in twice


def test_every_run_has_its_search_and_train_dirs(compared):
    root, *_ = compared
    for method in METHODS:
        for seed in (0, 1):
            sd, td = root / method / f"seed_{seed}" / "search", root / method / f"seed_{seed}" / "train"
            for name in ("metrics.json", "genotype.json", "history.csv", "flags.cfg", "search.log", "run.json"):
                assert (sd / name).is_file(), (method, seed, name)
            for name in ("metrics.json", "model.keras", "history.csv", "flags.cfg", "train.log", "run.json"):
                assert (td / name).is_file(), (method, seed, name)
            search_flags, train_flags = (sd / "flags.cfg").read_text(), (td / "flags.cfg").read_text()
            assert f"--method={method}" in search_flags and f"--seed={seed}" in search_flags
            # the shared protocol, the search's data, this run's seed and this run's genotype
            assert "--epochs=3" in train_flags and "--channels=4" in train_flags and "--layers=4" in train_flags
            assert "--dataset=digits" in train_flags and "--imbalance_ratio=10" in train_flags
            assert f"--seed={seed}" in train_flags and f"--genotype={sd}" in train_flags
            assert "--nobbn" in train_flags  # one protocol for every method, BBN searches included
    assert "--bbn=true" in (root / "hlrs" / "seed_0" / "search" / "flags.cfg").read_text()


def test_tables_intervals_verdicts_and_plots(compared):
    root, done, *_ = compared
    with open(root / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for m in METHODS for s in ("0", "1")]
    for r in rows:
        for stage in ("supernet", "retrained"):
            assert 0.0 <= float(r[f"{stage}_top1"]) <= 1.0
            assert len(r[f"{stage}_per_class"].split(";")) == 10
        assert 0.1 <= float(r["alpha_max_softmax"]) <= 1.0 and int(r["normal_skip_connect"]) in range(9)
    md = (root / "comparison.md").read_text()
    assert "## Supernet at the end of the search" in md and "## Derived architecture retrained" in md
    assert re.search(r"\| darts \| 2 \| \d+\.\d ± \d+\.\d \[-?\d+\.\d, \d+\.\d\] \|", md)
    verdicts = re.findall(r"^- hlrs vs darts, (supernet|retrained) (top-1|medium-shot|few-shot): [+-]\d+\.\d "
                          r"points \[[+-]\d+\.\d, [+-]\d+\.\d\] over 2 seeds: (helps|hurts|no clear difference)$",
                          md, re.M)
    # digits at ratio 10 has all three groups (train counts 18-180 per class): 3 metrics x 2 stages
    assert sorted(v[:2] for v in verdicts) == sorted((s, m) for s in ("supernet", "retrained")
                                                     for m in ("top-1", "medium-shot", "few-shot")), md
    assert "Not finished" not in md and md in done.stdout
    for png in ("accuracy.png", "schedules.png"):
        with Image.open(root / png) as im:
            assert im.format == "PNG" and im.size[0] > 600


def test_rerun_skips_everything_and_report_only_redraws(compared, run_cli):
    root, _, _, args = compared
    before = (root / "comparison.md").read_text()
    proc = run_cli("hlrs_tf.compare", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("finished earlier, skipped") == 8  # 4 searches + 4 retrainings
    assert (root / "comparison.md").read_text() == before
    os.remove(root / "comparison.md")
    proc = run_cli("hlrs_tf.compare", *args, "--report_only", timeout=300)
    assert proc.returncode == 0 and (root / "comparison.md").read_text() == before
    # --retrain=none reports the supernets alone from the same runs
    proc = run_cli("hlrs_tf.compare", *args, "--report_only", "--retrain=none", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (root / "comparison.md").read_text()
    assert "## Supernet" in md and "retrained" not in md


def test_bad_compare_flags(tmp_path, run_cli):
    proc = run_cli("hlrs_tf.compare", "--methods=darts,bbn", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "--methods has ['bbn']" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("hlrs_tf.compare", "--seeds=0,x", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "--seeds=0,x is invalid" in proc.stderr
    proc = run_cli("hlrs_tf.compare", "--methods=hlrs", "--weight_sampler=reversed", f"--workdir={tmp_path}",
                   timeout=120)
    assert proc.returncode == 2 and "--weight_sampler='reversed' is invalid" in proc.stderr
    proc = run_cli("hlrs_tf.compare", "--methods=hlrs", "--baseline=darts", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "--baseline=darts is invalid: it must be one of --methods" in proc.stderr
    proc = run_cli("hlrs_tf.compare", f"--retrain_flagfile={tmp_path}/none.cfg", f"--workdir={tmp_path}",
                   timeout=120)
    assert proc.returncode == 2 and "is not a file" in proc.stderr and "--retrain=none" in proc.stderr
    proc = run_cli("hlrs_tf.compare", "--methods=hlrs:mixing=wavy", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "--methods has 'hlrs:mixing=wavy'" in proc.stderr, proc.stderr[-500:]
    proc = run_cli("hlrs_tf.compare", "--methods=hlrs:seed=3", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "'seed' is not a search flag a method can set" in proc.stderr
    # An impossible retraining protocol is refused before the first search starts.
    bad = tmp_path / "bad.cfg"
    bad.write_text("--flagfile=configs/retrain_quick.cfg\n--channels=3\n")
    proc = run_cli("hlrs_tf.compare", *SEARCH, f"--retrain_flagfile={bad}", f"--workdir={tmp_path}/w",
                   timeout=300)
    assert proc.returncode == 2 and "retraining protocol is invalid" in proc.stderr, proc.stderr[-2000:]
    assert "--channels=3 is invalid" in proc.stderr and not (tmp_path / "w" / "darts").exists()
