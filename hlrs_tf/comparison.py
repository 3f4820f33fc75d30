"""The comparison harness: several methods x several seeds, one search each, then a table and plots.

Each run is an ordinary ``python -m hlrs_tf.search`` in its own process and sub-workdir
``<root>/<method>/seed_<seed>/`` (a fresh process per run: no graph or memory build-up across runs, and a
crash stays contained). A run counts as finished when its ``metrics.json`` exists, which search writes last,
so stopping the harness at any moment and starting it again skips the finished runs and lets the search's own
checkpoints resume the interrupted one.

Outputs in ``<root>``: ``comparison.csv`` (one row per run), ``comparison.md`` (mean ± std per method of
top-1, balanced, many/medium/few-shot accuracy and of the final normal cell's ``skip_connect`` count),
``accuracy.png`` (accuracy per method, every seed shown) and ``schedules.png`` (arch lr and ``alpha_T`` per
epoch of each method).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from hlrs_tf.genotypes import Genotype
from hlrs_tf.workdir import atomic_write_json, atomic_write_text

COLUMNS = ("method", "seed", "top1", "balanced_accuracy", "many_shot", "medium_shot", "few_shot",
           "normal_skip_connect", "reduce_skip_connect", "wall_s", "workdir")
SUMMARY_COLUMNS = ("top1", "many_shot", "medium_shot", "few_shot", "normal_skip_connect")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What to compare.

    Attributes:
        methods: Method names (``--method`` values of search).
        seeds: Seeds; every method runs once per seed.
        search_args: Extra ``--flag=value`` arguments for every search (the shared setting).
    """

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    search_args: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.methods:
            raise ValueError("--methods is empty: give at least one method")
        if not self.seeds:
            raise ValueError("--seeds is empty: give at least one seed")
        if len(set(self.methods)) != len(self.methods) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("--methods and --seeds must not repeat values")


def run_dir(root: str, method: str, seed: int) -> str:
    """The sub-workdir of one run."""
    return os.path.join(root, method, f"seed_{seed}")


def is_finished(workdir: str) -> bool:
    """True when the search in ``workdir`` completed (its ``metrics.json`` is written last, atomically)."""
    try:
        with open(os.path.join(workdir, "metrics.json")) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def run_all(config: CompareConfig, root: str, log=print, python: str = sys.executable) -> list[str]:
    """Runs every (method, seed) search not finished yet, one process each; returns the failed runs.

    Each search's output goes to ``<run dir>/search.log``. A failed run is reported and the others go on.
    Each search locks its own run dir (a hand-started search there meanwhile is refused, and vice versa); the
    command line (:mod:`hlrs_tf.compare`) also locks ``root`` for the harness's lifetime.
    """
    os.makedirs(root, exist_ok=True)
    failed = []
    total = len(config.methods) * len(config.seeds)
    for k, (method, seed) in enumerate(((m, s) for s in config.seeds for m in config.methods), 1):
        wd = run_dir(root, method, seed)
        if is_finished(wd):
            log(f"[{k}/{total}] {method} seed {seed}: finished earlier, skipped")
            continue
        os.makedirs(wd, exist_ok=True)
        cmd = [python, "-m", "hlrs_tf.search", *config.search_args, f"--method={method}", f"--seed={seed}",
               f"--workdir={wd}", "--verbose=2"]
        log(f"[{k}/{total}] {method} seed {seed}: running (log: {wd}/search.log)")
        t0 = time.perf_counter()
        with open(os.path.join(wd, "search.log"), "a") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not is_finished(wd):
            failed.append(f"{method} seed {seed}")
            log(f"[{k}/{total}] {method} seed {seed}: FAILED (exit {proc.returncode}); see {wd}/search.log")
            continue
        atomic_write_json(os.path.join(wd, "run.json"), {"wall_s": round(wall, 1), "command": cmd})
        log(f"[{k}/{total}] {method} seed {seed}: done in {wall:.0f} s")
    return failed


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def collect(config: CompareConfig, root: str) -> list[dict]:
    """One row per finished run (see :data:`COLUMNS`)."""
    rows = []
    for method in config.methods:
        for seed in config.seeds:
            wd = run_dir(root, method, seed)
            if not is_finished(wd):
                continue
            with open(os.path.join(wd, "metrics.json")) as f:
                m = json.load(f)
            genotype = Genotype.load(os.path.join(wd, "genotype.json"))
            wall = float("nan")
            if os.path.exists(os.path.join(wd, "run.json")):
                with open(os.path.join(wd, "run.json")) as f:
                    wall = json.load(f).get("wall_s", wall)
            per_class = [x for x in m.get("per_class", []) if x is not None]
            rows.append({
                "method": method, "seed": seed, "top1": _num(m.get("top1")),
                "balanced_accuracy": float(np.mean(per_class)) if per_class else float("nan"),
                "many_shot": _num(m.get("many_shot")), "medium_shot": _num(m.get("medium_shot")),
                "few_shot": _num(m.get("few_shot")),
                "normal_skip_connect": genotype.count("skip_connect", "normal"),
                "reduce_skip_connect": genotype.count("skip_connect", "reduce"),
                "wall_s": wall, "workdir": wd,
            })
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    """Writes ``comparison.csv`` atomically."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def mean_std(values) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the finite values, and their count."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _cell(values, percent: bool) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    scale = 100.0 if percent else 1.0
    return f"{mean * scale:.1f} ± {std * scale:.1f}" if percent else f"{mean:.1f} ± {std:.1f}"


def markdown_table(rows: list[dict], methods) -> str:
    """Mean ± std per method over seeds; accuracies in percent. Empty groups (no class in it) show n/a."""
    head = ("| method | seeds | top-1 % | balanced % | many-shot % | medium-shot % | few-shot % | "
            "normal-cell skip_connect |")
    lines = [head, "|" + "---|" * 8]
    for method in methods:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        cells = [_cell([r[c] for r in rs], c != "normal_skip_connect")
                 for c in ("top1", "balanced_accuracy", "many_shot", "medium_shot", "few_shot",
                           "normal_skip_connect")]
        lines.append(f"| {method} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _history(workdir: str) -> dict[str, list[float]]:
    with open(os.path.join(workdir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in ("epoch", "arch_lr", "bbn_alpha") if rows and k in rows[0]}


def plot(rows: list[dict], config: CompareConfig, root: str) -> list[str]:
    """Writes ``accuracy.png`` and ``schedules.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in config.methods if any(r["method"] == m for r in rows)]
    metrics = ("top1", "many_shot", "medium_shot", "few_shot")
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(methods), 4.2))
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        xs, means, stds = [], [], []
        for i, method in enumerate(methods):
            vals = [r[metric] for r in rows if r["method"] == method]
            mean, std, n = mean_std(vals)
            x = i + (j - (len(metrics) - 1) / 2) * width
            if n:
                xs.append(x), means.append(100 * mean), stds.append(100 * std)
                ax.scatter([x] * n, [100 * v for v in vals if math.isfinite(v)], s=10, color="k", zorder=3)
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=metric.replace("_", "-"), alpha=0.8)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Supernet test accuracy (mean ± std; dots: seeds)")
    ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    acc_path = os.path.join(root, "accuracy.png")
    fig.savefig(acc_path, dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in methods:
        first = min(r["seed"] for r in rows if r["method"] == method)
        h = _history(run_dir(root, method, first))
        if "arch_lr" in h:
            ax1.plot(h["epoch"], h["arch_lr"], marker="o", label=method)
        if "bbn_alpha" in h:
            ax2.plot(h["epoch"], h["bbn_alpha"], marker="o", label=method)
    ax1.set(title="architecture learning rate per epoch", xlabel="epoch", ylabel="arch lr")
    ax2.set(title="mixing factor alpha_T (drives the loss of BBN methods)", xlabel="epoch", ylabel="alpha_T")
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    sched_path = os.path.join(root, "schedules.png")
    fig.savefig(sched_path, dpi=110)
    plt.close(fig)
    return [acc_path, sched_path]


def report(config: CompareConfig, root: str) -> str:
    """Collects the finished runs and writes ``comparison.csv``, ``comparison.md`` and the plots.

    Returns:
        The markdown table.
    """
    rows = collect(config, root)
    write_csv(rows, os.path.join(root, "comparison.csv"))
    table = markdown_table(rows, config.methods)
    missing = len(config.methods) * len(config.seeds) - len(rows)
    note = f"\n{missing} run(s) not finished.\n" if missing else ""
    atomic_write_text(os.path.join(root, "comparison.md"), table + note)
    if rows:
        plot(rows, config, root)
    return table + note
