"""The collapse guards of issue 18: the P-DARTS skip cap at derivation (--max_skip_connect) and the DARTS+ early
stop (--stop_on_skip), their flags, logs and resume behaviour.

Expected genotypes are worked out by hand from the references' rules, not from the implementation:

* P-DARTS (``train_search.py`` of chenxin061/pdarts, "Restricting skipconnect"): while the normal cell has more
  than N skip edges, zero the skip weight of the chosen skip edge with the smallest skip weight and derive
  again (each edge takes its best remaining non-``none`` op, each node its two best edges).
* DARTS+ (Liang et al. 2019): stop the search once the normal cell has >= N skip connections.
"""

import csv
import json
import os
import re

import numpy as np
import pytest

from hlrs_tf.config.search import ConfigError, SearchConfig
from hlrs_tf.space.genotypes import PRIMITIVES, Genotype, GenotypeError, cap_skip_connect, derive_cell, derive_genotype


def row(**weights):
    """One edge's softmax weights: the named ops, the rest of the mass shared equally by the other ops."""
    out = np.zeros(len(PRIMITIVES))
    for op, w in weights.items():
        out[PRIMITIVES.index(op)] = w
    rest = [k for k, op in enumerate(PRIMITIVES) if op not in weights]
    out[rest] = (1.0 - sum(weights.values())) / len(rest)
    return out


# Edges node by node: node 0 <- inputs 0, 1; node 1 <- 0, 1, 2; node 2 <- 0..3; node 3 <- 0..4.
W = np.stack([
    row(skip_connect=0.5, avg_pool_3x3=0.2),  # 0: node 0 <- 0 (filler 0.05)
    row(sep_conv_3x3=0.6),  # 1: node 0 <- 1
    row(skip_connect=0.4, dil_conv_3x3=0.3),  # 2: node 1 <- 0: without skip it scores 0.3 < edge 4's 0.35
    row(sep_conv_5x5=0.5),  # 3: node 1 <- 1
    row(max_pool_3x3=0.35),  # 4: node 1 <- 2 (filler 0.093)
    row(skip_connect=0.7, avg_pool_3x3=0.1),  # 5: node 2 <- 0 (filler 0.033)
    row(skip_connect=0.45, sep_conv_3x3=0.35),  # 6: node 2 <- 1: without skip sep_conv_3x3 0.35 beats edge 7
    row(dil_conv_5x5=0.3),  # 7: node 2 <- 2 (filler 0.1)
    row(sep_conv_3x3=0.25),  # 8: node 2 <- 3 (filler 0.107)
    row(sep_conv_3x3=0.3),  # 9: node 3 <- 0
    row(max_pool_3x3=0.2),  # 10: node 3 <- 1
    row(sep_conv_5x5=0.55),  # 11: node 3 <- 2
    row(dil_conv_3x3=0.45),  # 12: node 3 <- 3
    row(none=0.9),  # 13: node 3 <- 4: 'none' never counts
])

# The plain DARTS derivation, by hand: per node the two edges with the largest non-none weight, best first.
PLAIN = (
    ("sep_conv_3x3", 1), ("skip_connect", 0),  # 0.6, 0.5
    ("sep_conv_5x5", 1), ("skip_connect", 0),  # 0.5, 0.4
    ("skip_connect", 0), ("skip_connect", 1),  # 0.7, 0.45
    ("sep_conv_5x5", 2), ("dil_conv_3x3", 3),  # 0.55, 0.45
)
# The P-DARTS removals in order of increasing skip weight: 0.4 (edge 2), 0.45 (edge 6), 0.5 (edge 0), 0.7 (edge 5).
# 1st, node 1: edge 2 now scores 0.3 (dil_conv_3x3) < edge 4 (max_pool_3x3 0.35): the node takes edge 4.
AFTER_1 = PLAIN[:2] + (("sep_conv_5x5", 1), ("max_pool_3x3", 2)) + PLAIN[4:]
# 2nd, node 2: edge 6 keeps its rank with its next-best op sep_conv_3x3 0.35 (> edge 7's 0.3).
AFTER_2 = AFTER_1[:4] + (("skip_connect", 0), ("sep_conv_3x3", 1)) + AFTER_1[6:]
# 3rd, node 0 (two edges only): edge 0 takes avg_pool_3x3 0.2 and falls behind edge 1's 0.6.
AFTER_3 = (("sep_conv_3x3", 1), ("avg_pool_3x3", 0)) + AFTER_2[2:]
# 4th, node 2: edge 5 drops to avg_pool_3x3 0.1; edges 6 (0.35) and 7 (dil_conv_5x5 0.3) lead.
AFTER_4 = AFTER_3[:4] + (("sep_conv_3x3", 1), ("dil_conv_5x5", 2)) + AFTER_3[6:]
RECORD = [
    {"node": 1, "removed": ["skip_connect", 0], "replacement": ["max_pool_3x3", 2], "skip_weight": 0.4},
    {"node": 2, "removed": ["skip_connect", 1], "replacement": ["sep_conv_3x3", 1], "skip_weight": 0.45},
    {"node": 0, "removed": ["skip_connect", 0], "replacement": ["avg_pool_3x3", 0], "skip_weight": 0.5},
    {"node": 2, "removed": ["skip_connect", 0], "replacement": ["dil_conv_5x5", 2], "skip_weight": 0.7},
]


def assert_record(got, expected):
    assert [{k: v for k, v in r.items() if k != "skip_weight"} for r in got] == [
        {k: v for k, v in r.items() if k != "skip_weight"} for r in expected]
    assert [r["skip_weight"] for r in got] == pytest.approx([r["skip_weight"] for r in expected])


def test_plain_derivation_of_the_hand_made_weights_has_four_skips():
    assert derive_cell(W) == PLAIN
    assert cap_skip_connect(W, max_skip_connect=4) == (PLAIN, [])


@pytest.mark.parametrize("cap,expected,removals", [
    (3, AFTER_1, 1), (2, AFTER_2, 2), (1, AFTER_3, 3), (0, AFTER_4, 4),
])
def test_cap_replaces_the_weakest_skips_first(cap, expected, removals):
    replaced = []
    assert derive_cell(W, max_skip_connect=cap, replaced=replaced) == expected
    assert_record(replaced, RECORD[:removals])
    assert sum(op == "skip_connect" for op, _ in expected) == min(cap, 4)


@pytest.mark.parametrize("cap", [4, 5, 8])
def test_cap_at_or_above_the_count_changes_nothing(cap):
    replaced = []
    assert derive_cell(W, max_skip_connect=cap, replaced=replaced) == PLAIN
    assert replaced == []


def test_cap_does_not_modify_the_weights():
    before = W.copy()
    cap_skip_connect(W, max_skip_connect=0)
    np.testing.assert_array_equal(W, before)


def test_genotype_caps_the_normal_cell_only():
    """From logits (softmax(log w) = w): the reduction cell, the same 4-skip matrix, keeps its 4 skips."""
    logits = np.log(W)
    replaced = []
    g = derive_genotype(logits, logits, max_skip_connect=2, replaced=replaced)
    assert g.normal == AFTER_2 and g.reduce == PLAIN
    assert g.count("skip_connect", "normal") == 2 and g.count("skip_connect", "reduce") == 4
    assert_record(replaced, RECORD[:2])
    assert derive_genotype(logits, logits) == derive_genotype(logits, logits, max_skip_connect=None)
    assert derive_genotype(logits, logits, max_skip_connect=0).normal == AFTER_4


def test_replacement_can_itself_be_a_skip_that_is_then_removed():
    """A 2-node cell, cap 1. Node 1 chose edges 0 (skip 0.5) and 1 (skip 0.3); its third edge, input 2, is a skip
    of 0.28. Removing the weakest chosen skip (input 1, now 0.15) brings in input 2's skip, still 2 skips; the
    weakest chosen one is then input 2's (0.28), replaced by its next-best op dil_conv_5x5 0.2 (> 0.15)."""
    w = np.stack([
        row(sep_conv_3x3=0.6), row(max_pool_3x3=0.6),  # node 0 <- 0, 1
        row(skip_connect=0.5),  # node 1 <- 0
        row(skip_connect=0.3, sep_conv_5x5=0.15),  # node 1 <- 1
        row(skip_connect=0.28, dil_conv_5x5=0.2),  # node 1 <- 2
    ])
    assert derive_cell(w, steps=2) == (("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 0),
                                       ("skip_connect", 1))
    cell, replaced = cap_skip_connect(w, steps=2, max_skip_connect=1)
    assert cell == (("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 0), ("dil_conv_5x5", 2))
    assert [(r["node"], r["removed"], r["replacement"]) for r in replaced] == [
        (1, ["skip_connect", 1], ["skip_connect", 2]), (1, ["skip_connect", 2], ["dil_conv_5x5", 2])]


@pytest.mark.parametrize("cap", [-1, 1.5, True])
def test_cap_refuses_a_bad_value(cap):
    with pytest.raises(GenotypeError, match="max_skip_connect"):
        cap_skip_connect(W, max_skip_connect=cap)


def test_cap_refuses_negative_weights():
    with pytest.raises(GenotypeError, match="non-negative"):
        cap_skip_connect(np.log(W), max_skip_connect=1)


# --- Config and flags ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,allowed", [
    ("max_skip_connect", -2, "-1 (off) or an integer in [0, 8]"),
    ("max_skip_connect", 9, "-1 (off) or an integer in [0, 8]"),
    ("stop_on_skip", -1, "0 (off) or an integer in [1, 8]"),
    ("stop_on_skip", 9, "0 (off) or an integer in [1, 8]"),
])
def test_config_refuses_bad_guard_values(field, value, allowed):
    with pytest.raises(ConfigError, match=rf"--{field}={value} is invalid: it must be {re.escape(allowed)}"):
        SearchConfig.create(**{field: value})


def test_config_guards_are_off_by_default_and_take_their_range():
    assert SearchConfig.create().max_skip_connect == -1 and SearchConfig.create().skip_cap is None
    assert SearchConfig.create().stop_on_skip == 0
    for n in (0, 8):
        assert SearchConfig.create(max_skip_connect=n).skip_cap == n
    for n in (1, 8):
        assert SearchConfig.create(stop_on_skip=n).stop_on_skip == n


@pytest.mark.parametrize("flag", ["--max_skip_connect=-5", "--stop_on_skip=12"])
def test_cli_refuses_a_bad_guard_flag_naming_it(tmp_path, flag, run_cli):
    proc = run_cli("hlrs_tf.search", "--dataset=digits", flag, "--dry_run", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == 2
    assert flag.split("=")[0] in proc.stderr and "it must be" in proc.stderr and "Traceback" not in proc.stderr


def test_guard_flags_round_trip_through_flags_cfg(tmp_path, run_cli):
    first = tmp_path / "first"
    proc = run_cli("hlrs_tf.search", "--dataset=digits", "--channels=4", "--layers=3", "--max_skip_connect=0",
                   "--stop_on_skip=3", "--dry_run", f"--workdir={first}", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (first / "flags.cfg").read_text()
    assert "--max_skip_connect=0\n" in text and "--stop_on_skip=3\n" in text
    proc = run_cli("hlrs_tf.search", f"--flagfile={first / 'flags.cfg'}", "--dry_run",
                   f"--workdir={tmp_path / 'again'}", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "again" / "flags.cfg").read_text() == text


def test_run_written_before_the_guards_resumes_with_them_off(tmp_path):
    """An old flags.cfg has neither flag; it ran with both guards off, so resuming with the defaults is the same
    run, and turning a guard on is refused."""
    from hlrs_tf.config.search import ADDED_FLAG_DEFAULTS
    from hlrs_tf.runtime.workdir import Workdir, check_same_run

    wd = Workdir(str(tmp_path))
    open(os.path.join(wd.checkpoint_dir, "state.json"), "w").write('{"epoch": 1}')
    new = SearchConfig.create(dataset="digits").to_flagfile(exclude=("workdir", "dry_run"))
    old = "".join(ln + "\n" for ln in new.splitlines() if "skip" not in ln)
    open(wd.flags_file, "w").write(old)
    check_same_run(wd, new, ADDED_FLAG_DEFAULTS)
    with pytest.raises(ValueError, match="stop_on_skip"):
        check_same_run(wd, SearchConfig.create(dataset="digits", stop_on_skip=2).to_flagfile(exclude=("workdir",)),
                       ADDED_FLAG_DEFAULTS)


# --- The DARTS+ stop (and the cap) on a real short search ---------------------------------------------------------

# A tiny real search whose uncapped normal cell reaches 2 skips fast: digits, a large arch lr. Seed 3 has 2 skips
# already at epoch 1, a warm-up epoch the rule must pass over, and (on the machines measured) again at epoch 2.
WARMUP, THRESHOLD, CAP, EPOCHS = 1, 2, 1, 3
STOP_ARGS = ["--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3", "--batch_size=16",
             f"--epochs={EPOCHS}", "--steps_per_epoch=4", "--deterministic", "--verbose=0", "--seed=3",
             "--arch_learning_rate=1.0", f"--warmup_epochs={WARMUP}", f"--stop_on_skip={THRESHOLD}",
             f"--max_skip_connect={CAP}", "--eval_batch_size=500"]


def read_rows(workdir):
    return list(csv.DictReader(open(os.path.join(workdir, "history.csv"))))


def uncapped_skips(genotype, replaced):
    """Skip edges of the normal cell before the cap, rebuilt by undoing the recorded replacements (last first):
    each replacement pair must be in its node, and the removed skip goes back in its place."""
    nodes = [list(genotype.normal[2 * j:2 * j + 2]) for j in range(genotype.steps)]
    for r in reversed(replaced):
        pairs = nodes[r["node"]]
        pairs[pairs.index(tuple(r["replacement"]))] = tuple(r["removed"])
    return sum(op == "skip_connect" for pairs in nodes for op, _ in pairs)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, run_cli):
    workdir = str(tmp_path_factory.mktemp("stop") / "wd")
    proc = run_cli("hlrs_tf.search", *STOP_ARGS, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_stop_fires_at_the_first_epoch_past_warmup_with_enough_skips(stopped_run):
    wd = stopped_run
    rows = read_rows(wd)
    caps = json.load(open(os.path.join(wd, "skip_cap.json")))
    assert caps["max_skip_connect"] == CAP
    counts = {}
    for e in range(1, len(rows) + 1):
        g = Genotype.load(os.path.join(wd, "genotypes", f"epoch_{e:03d}.json"))
        replaced = caps["replaced"][str(e)]
        assert g.count("skip_connect", "normal") <= CAP  # the P-DARTS cap on every epoch's genotype
        counts[e] = uncapped_skips(g, replaced)
        row = rows[e - 1]
        assert int(row["normal_skip_connect"]) == g.count("skip_connect", "normal")
        assert int(row["normal_skip_connect_uncapped"]) == counts[e]
        assert int(row["skip_replaced"]) == len(replaced)
    # DARTS+: the first epoch past the warm-up whose (uncapped) normal cell has >= THRESHOLD skips.
    fired = [e for e in counts if e > WARMUP and counts[e] >= THRESHOLD]
    assert fired, f"seed 3 no longer reaches {THRESHOLD} skips here (counts {counts}): pick another seed"
    k = fired[0]
    assert len(rows) == k < EPOCHS  # stopped there: no later epoch ran
    assert [int(r["stop_on_skip"]) for r in rows] == [0] * (k - 1) + [1]
    assert not os.path.exists(os.path.join(wd, "genotypes", f"epoch_{k + 1:03d}.json"))
    assert json.load(open(os.path.join(wd, "checkpoints", "state.json")))["epoch"] == k
    # The collapsed epoch's genotype is not the result: the previous epoch's is.
    kept = k - 1
    assert Genotype.load(os.path.join(wd, "genotype.json")) == Genotype.load(
        os.path.join(wd, "genotypes", f"epoch_{kept:03d}.json"))
    m = json.load(open(os.path.join(wd, "metrics.json")))
    assert m["early_stop"] == {"epoch": k, "rule": "stop_on_skip", "normal_skip_connect": counts[k],
                               "threshold": THRESHOLD, "warmup_epochs": WARMUP, "kept_genotype_epoch": kept}
    assert m["skip_cap"] == {"max_skip_connect": CAP, "genotype_epoch": kept, "replaced": caps["replaced"][str(kept)]}


def test_rerun_of_a_stopped_search_does_not_train_further(stopped_run, run_cli):
    wd = stopped_run
    names = ("history.csv", "genotype.json", "checkpoints/state.json", "skip_cap.json")
    before = {n: open(os.path.join(wd, n)).read() for n in names}
    listing = lambda: [sorted(os.listdir(os.path.join(wd, d))) for d in ("checkpoints", "genotypes")]  # noqa: E731
    files_before = listing()
    metrics_before = json.load(open(os.path.join(wd, "metrics.json")))
    proc = run_cli("hlrs_tf.search", *STOP_ARGS, f"--workdir={wd}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped early" in proc.stdout and "not training further" in proc.stdout
    assert {n: open(os.path.join(wd, n)).read() for n in names} == before
    assert listing() == files_before
    metrics = json.load(open(os.path.join(wd, "metrics.json")))
    assert metrics["early_stop"] == metrics_before["early_stop"]
    assert metrics["skip_cap"] == metrics_before["skip_cap"]


# --- The DARTS+ rule on given counts ------------------------------------------------------------------------------

class Counts:
    """The one thing SkipConnectStop reads from a GenotypeLogger: the last epoch's uncapped skip count."""

    last_normal_skip_uncapped = 0


def run_rule(threshold, warmup, counts):
    """Epoch ends with these uncapped counts, as fit would run them (stopping at stop_training); returns the
    stop callback and the per-epoch ``stop_on_skip`` log values."""
    import keras

    from hlrs_tf.search.collapse import SkipConnectStop

    source = Counts()
    stop = SkipConnectStop(threshold, warmup, source)
    model = keras.Sequential([keras.layers.Dense(1)])
    model.stop_training = False
    stop.set_model(model)
    logged = []
    for epoch, n in enumerate(counts):
        source.last_normal_skip_uncapped = n
        logs = {}
        stop.on_epoch_end(epoch, logs)
        logged.append(logs["stop_on_skip"])
        if model.stop_training:
            break
    return stop, logged


@pytest.mark.parametrize("threshold,warmup,counts,stop_epoch", [
    (2, 0, [0, 1, 2, 3], 3),  # DARTS+: the first epoch with >= 2
    (2, 0, [0, 1, 1, 1], None),
    (2, 2, [3, 2, 1, 2], 4),  # not during the warm-up, whose alphas are frozen
    (1, 0, [1, 0], 1),  # already after epoch 1
    (0, 0, [8, 8], None),  # off
])
def test_stop_rule(threshold, warmup, counts, stop_epoch):
    stop, logged = run_rule(threshold, warmup, counts)
    if stop_epoch is None:
        assert stop.record is None and logged == [0] * len(counts) and stop.checkpoint_state() == {}
        return
    assert logged == [0] * (stop_epoch - 1) + [1]
    # The previous epoch's genotype is kept; after epoch 1 there is none before it, so epoch 1's own.
    kept = max(stop_epoch - 1, 1)
    assert stop.record == {"epoch": stop_epoch, "rule": "stop_on_skip", "normal_skip_connect": counts[stop_epoch - 1],
                           "threshold": threshold, "warmup_epochs": warmup, "kept_genotype_epoch": kept}
    assert stop.checkpoint_state() == {"early_stop": stop.record}
