"""keras-tuner over HLRS: a 2-trial run killed mid-way resumes, keeps the finished trial, writes best flags."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hlrs_tf.config import flags as config_flags
from hlrs_tf.config.search import SearchConfig
from hlrs_tf.experiments.tuning import TuneConfig, hyperparameters, trial_config

ARGS = ["--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3", "--batch_size=16",
        "--epochs=3", "--steps_per_epoch=2", "--method=hlrs", "--max_trials=2", "--verbose=0",
        "--eval_batch_size=500"]


def test_search_space_and_trial_config():
    base = SearchConfig.for_method("hlrs", epochs=5)
    hp = hyperparameters(TuneConfig(base))
    assert set(hp.values) == {"arch_learning_rate", "arch_lr_schedule", "mixing", "warmup_epochs",
                              "freeze_threshold"}
    space = {p.name: p for p in hp.space}
    assert space["warmup_epochs"].max_value == 2  # at most half the search frozen, always < epochs
    config = trial_config(base, {"arch_learning_rate": 1e-3, "arch_lr_schedule": "freeze", "warmup_epochs": 2})
    assert config.bbn and config.arch.arch_learning_rate == 1e-3 and config.arch.arch_lr_schedule == "freeze"
    with pytest.raises(ValueError, match="--tune is"):
        TuneConfig(base, space=("arch_lr",))
    with pytest.raises(ValueError, match="--max_trials=0 is invalid"):
        TuneConfig(base, max_trials=0)


def read_trials(root):
    with open(os.path.join(root, "trials.csv")) as f:
        return list(csv.DictReader(f))


def test_two_trials_resume_after_sigkill(tmp_path, repo_root, run_cli, child_env):
    root = tmp_path / "tune"
    cmd = [sys.executable, "-m", "hlrs_tf.tune", *ARGS, f"--workdir={root}"]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first_metrics = root / "trials" / "0" / "metrics.json"
    second = root / "trials" / "1" / "flags.cfg"
    try:
        deadline = time.time() + 900
        while not (first_metrics.exists() and second.exists()):
            assert proc.poll() is None, "the tuner ended before it could be interrupted"
            assert time.time() < deadline, "no second trial within 15 minutes"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (root / "trials" / "1" / "metrics.json").exists()  # killed inside the second trial
    second_flags = second.read_text()
    first_mtime = os.path.getmtime(first_metrics)

    again = run_cli("hlrs_tf.tune", *ARGS, f"--workdir={root}")
    assert again.returncode == 0, again.stderr[-3000:]
    rows = read_trials(root)
    assert [(r["trial_id"], r["status"]) for r in rows] == [("0", "COMPLETED"), ("1", "COMPLETED")]
    assert os.path.getmtime(first_metrics) == first_mtime  # the finished trial was not run again
    # the interrupted trial was retried with the values it had
    assert (root / "trials" / "1" / "flags.cfg").read_text() == second_flags
    best = (root / "best_flags.cfg").read_text()
    assert best.startswith("# best of 2 trials: val_balanced_accuracy=") and "--method=hlrs" in best
    assert "best flags:" in again.stdout
    # The best flags are a working search flagfile, checked in-process: parse_config parses it with the search
    # command's own flags (define_search_flags) and builds the config as the command does (config_from_flags),
    # so absl and the config validate every value; it touches no TensorFlow state and saves the ~10-18 s of a
    # `hlrs_tf.search --dry_run` child. Not checked here: building a model from it; test_cli's
    # test_flags_cfg_is_a_reusable_flagfile dry-runs a search's flags.cfg, the same to_flagfile text.
    best_trial = json.loads((root / "best.json").read_text())
    tuned = config_flags.parse_config(SearchConfig, [f"--flagfile={root / 'best_flags.cfg'}"])
    base = config_flags.parse_config(SearchConfig, [a for a in ARGS if not a.startswith("--max_trials=")])
    assert tuned == trial_config(base, best_trial["values"])  # the base search with the best trial's values
    assert tuned.method == "hlrs" and tuned.bbn and tuned.epochs == 3 and tuned.data.dataset == "digits"
    # ... and exactly the search the best trial ran (its flags.cfg leaves out --verbose)
    ran = root / "trials" / best_trial["trial_id"] / "flags.cfg"
    assert tuned == config_flags.parse_config(SearchConfig, [f"--flagfile={ran}", "--verbose=0"])


def test_bad_tune_flags(tmp_path, run_cli):
    proc = run_cli("hlrs_tf.tune", "--tune=arch_lr", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "--tune is ['arch_lr']" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("hlrs_tf.tune", "--tuner=grid", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "flag --tuner=grid" in proc.stderr
