"""The paper's five methods and the PC-DARTS presets: presets give the table of docs/method.md M7 (and PC-DARTS'
K=4), explicit flags win, and each one really runs."""

import csv
import json
import os

import numpy as np
import pytest

from hlrs_tf.config import flags as config_flags
from hlrs_tf.config.search import ConfigError, SearchConfig
from hlrs_tf.search.task import run_search

# docs/method.md M7, written out here independently of the preset table in hlrs_tf/config/search.py.
EXPECTED = {
    "darts": dict(weight_sampler="uniform", arch_sampler="uniform", loss="ce", bbn=False,
                  arch_lr_schedule="constant"),
    "darts_resample": dict(weight_sampler="class_balanced", loss="ce", bbn=False, arch_lr_schedule="constant"),
    "darts_reweight": dict(weight_sampler="uniform", loss="class_balanced", reweight_beta=0.9999, bbn=False,
                           arch_lr_schedule="constant"),
    "darts_bbn": dict(bbn=True, loss="ce", mixing="parabolic", arch_lr_schedule="constant"),
    "hlrs": dict(bbn=True, loss="ce", mixing="parabolic", arch_lr_schedule="mixing"),
    # PC-DARTS (Xu et al. 2020: K=4 in its model_search.py) on DARTS and on HLRS.
    "pcdarts": dict(weight_sampler="uniform", arch_sampler="uniform", loss="ce", bbn=False,
                    arch_lr_schedule="constant", partial_channels=4),
    "pcdarts_hlrs": dict(bbn=True, loss="ce", mixing="parabolic", arch_lr_schedule="mixing", partial_channels=4),
}
PAPER = ("darts", "darts_resample", "darts_reweight", "darts_bbn", "hlrs")


def parse(*argv):
    """The search config of a command line (fresh flags: the global ones stay unparsed)."""
    return config_flags.parse_config(SearchConfig, argv)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_presets_give_the_spec_table(method):
    config = parse(f"--method={method}")
    for key, value in EXPECTED[method].items():
        assert config.flat()[key] == value, key
    assert config == SearchConfig.for_method(method)


def test_default_method_is_plain_darts():
    assert parse() == SearchConfig.create()
    assert parse().method == "darts"


def test_explicit_flags_override_the_preset():
    config = parse("--method=hlrs", "--arch_lr_schedule=freeze", "--mixing=linear")
    assert config.bbn and config.arch.arch_lr_schedule == "freeze" and config.mixing == "linear"
    # an explicit value equal to the default still wins over the preset
    assert parse("--method=hlrs", "--arch_lr_schedule=constant").arch.arch_lr_schedule == "constant"
    assert not parse("--method=darts_bbn", "--nobbn").bbn


def test_flagfile_override_order(tmp_path):
    cfg = tmp_path / "m.cfg"
    cfg.write_text("--method=hlrs\n--warmup_epochs=2\n")
    config = parse(f"--flagfile={cfg}", "--warmup_epochs=3")
    assert config.method == "hlrs" and config.bbn and config.arch.warmup_epochs == 3


def test_effective_flags_reproduce_the_config(tmp_path):
    config = parse("--method=hlrs", "--arch_lr_schedule=freeze", "--seed=4")
    cfg = tmp_path / "flags.cfg"
    cfg.write_text(config_flags.effective_flags(config))
    assert parse(f"--flagfile={cfg}") == config
    # rerunning a saved darts run with another method on top would be wrong; the saved file pins every field
    assert "--bbn=true" in cfg.read_text() and "--arch_lr_schedule=freeze" in cfg.read_text()


@pytest.mark.parametrize("argv,message", [
    (["--method=darts_bbn", "--weight_sampler=reversed"], "--weight_sampler='reversed' is invalid"),
    (["--method=hlrs", "--loss=class_balanced"], "--loss='class_balanced' is invalid: it must be ce with --bbn"),
    (["--warmup_epochs=50"], "--warmup_epochs=50 is invalid: it must be an integer in [0, epochs=50)"),
    (["--freeze_threshold=1.5"], "--freeze_threshold=1.5 is invalid: it must be in [0, 1]"),
    (["--reweight_beta=1"], "--reweight_beta=1.0 is invalid: it must be in [0, 1)"),
    (["--partial_channels=3"], "--partial_channels=3 is invalid: it must be a divisor of channels=16"),
    (["--method=pcdarts", "--channels=6"], "--partial_channels=4 is invalid: it must be a divisor of channels=6"),
])
def test_bad_combinations_name_the_flag(argv, message):
    with pytest.raises(ConfigError) as e:
        parse(*argv)
    assert message in str(e.value)


def test_compare_runs_the_paper_methods_by_default():
    from hlrs_tf.config.search import PAPER_METHODS

    assert PAPER_METHODS == PAPER


def test_unknown_method_lists_the_methods():
    with pytest.raises(ConfigError, match="darts, darts_resample, darts_reweight, darts_bbn, hlrs"):
        SearchConfig.for_method("bbn_darts")


# ------------------------------------------------------------------ a short real run of every method
EPOCHS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every method, 3 epochs x 2 steps on long-tailed digits (in one process: tracing dominates)."""
    root = tmp_path_factory.mktemp("methods")
    out = {}
    for method in EXPECTED:
        config = SearchConfig.for_method(
            method, dataset="digits", imbalance_ratio=10, channels=4, layers=3, batch_size=16, epochs=EPOCHS,
            steps_per_epoch=2, verbose=0, eval_batch_size=500,
        )
        out[method] = run_search(config, str(root / method), flags_text=config_flags.effective_flags(config))
    return out


def read_history(workdir):
    with open(os.path.join(workdir, "history.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_every_method_logs_arch_lr_and_bbn_alpha(runs, method):
    result = runs[method]
    rows = read_history(result.workdir)
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    alpha = [1 - (t / EPOCHS) ** 2 for t in range(EPOCHS)]  # parabolic
    np.testing.assert_allclose([float(r["bbn_alpha"]) for r in rows], alpha, rtol=1e-6)
    lr = [3e-4 * a for a in alpha] if method.endswith("hlrs") else [3e-4] * EPOCHS
    np.testing.assert_allclose([float(r["arch_lr"]) for r in rows], lr, rtol=1e-6)
    assert all(np.isfinite(float(r["loss"])) and np.isfinite(float(r["arch_loss"])) for r in rows)
    metrics = json.load(open(os.path.join(result.workdir, "metrics.json")))
    assert 0.0 <= metrics["top1"] <= 1.0 and len(metrics["per_class"]) == 10
    summary = json.load(open(os.path.join(result.workdir, "model_summary.json")))
    assert summary["method"] == method and summary["bbn"] == EXPECTED[method]["bbn"]
    k = EXPECTED[method].get("partial_channels", 1)
    assert summary["partial_channels"] == k
    # PC-DARTS: 14 betas per cell type besides the 14 x 8 alphas, logged every epoch.
    assert summary["arch_params"] == 2 * 14 * 8 + (2 * 14 if k > 1 else 0)
    assert all(("edge_max_weight_normal" in r) == (k > 1) for r in rows)


def test_bbn_runs_have_the_extra_branch(runs):
    summary = lambda m: json.load(open(os.path.join(runs[m].workdir, "model_summary.json")))  # noqa: E731
    assert summary("hlrs")["weight_params"] == summary("darts_bbn")["weight_params"]
    assert summary("hlrs")["weight_params"] > summary("darts")["weight_params"]
    assert summary("darts_reweight")["weight_params"] == summary("darts")["weight_params"]
    assert summary("pcdarts_hlrs")["weight_params"] > summary("pcdarts")["weight_params"]
    assert summary("pcdarts")["weight_params"] < summary("darts")["weight_params"]


def test_methods_differ_in_what_they_learn(runs):
    """Same seed and data: the methods' loss curves differ (the presets really change the training)."""
    losses = {m: tuple(round(float(r["loss"]), 5) for r in read_history(runs[m].workdir)) for m in EXPECTED}
    assert len(set(losses.values())) == len(EXPECTED)
