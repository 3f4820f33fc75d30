"""The comparison harness: methods x seeds, each searched, derived, retrained from scratch and tested.

This is the paper's protocol (and every DARTS paper's): the question is which search method finds the better
*architecture*, so the derived genotype of every search is retrained from scratch with one retraining protocol
shared by every method (``--retrain_flagfile``; the architecture is the only thing that differs), and tested
on the balanced test set. The supernet at the end of the search is reported beside it.

Every stage is an ordinary command in its own process and sub-workdir (no graph or memory build-up across
runs; a crash stays contained)::

    <root>/<method>/seed_<s>/search/   python -m hlrs_tf.search ...  (genotype.json, metrics.json, search.log)
    <root>/<method>/seed_<s>/train/    python -m hlrs_tf.train --genotype=<search dir> ...  (train.log)

A stage counts as finished when its ``metrics.json`` exists (both commands write it last, atomically). So
stopping the harness at any moment and starting it again skips the finished stages, and the interrupted one
resumes from its own per-epoch checkpoints. Each command refuses a work directory that holds a run with other
flags, so a rerun never mixes two runs' outputs.

Outputs in ``<root>`` (``report``; ``--report_only`` redraws them from what has finished):

* ``comparison.csv``: one row per (method, seed): supernet and retrained top-1, balanced, many/medium/few-shot
  and per-class accuracy, the genotype's ``skip_connect`` counts, how far the alphas moved, wall times;
* ``comparison.md``: per stage, mean ± std and the 95% t-interval per method, the paired difference to the
  baseline method seed by seed with its interval, the verdict lines computed from those intervals, and the
  mean per-class accuracy;
* ``accuracy.png`` (supernet beside retrained, 95% intervals, every seed shown) and ``schedules.png`` (arch lr,
  ``alpha_T`` and the alpha movement per epoch of each method).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
import subprocess
import sys
import time

import numpy as np

from hlrs_tf.experiments import stats
from hlrs_tf.runtime.workdir import Workdir, atomic_write_json, atomic_write_text, read_json
from hlrs_tf.space.genotypes import Genotype

#: The two stages of a run, in order, and the prefix of their columns in ``comparison.csv``.
STAGES = ("supernet", "retrained")
#: Retraining modes of ``--retrain``: retrain the derived genotype, or compare supernets only.
RETRAIN_MODES = ("derived", "none")
ACCURACIES = ("top1", "balanced_accuracy", "many_shot", "medium_shot", "few_shot")
_LABELS = {"top1": "top-1", "balanced_accuracy": "balanced", "many_shot": "many-shot",
           "medium_shot": "medium-shot", "few_shot": "few-shot"}
#: Alpha movement at the end of the search (hlrs_tf.search.alpha_movement); uniform over 8 ops is 0.125.
ALPHA_COLUMNS = ("alpha_max_softmax", "alpha_max_softmax_normal", "alpha_max_softmax_reduce", "alpha_range")
COLUMNS = ("method", "seed",
           *(f"{stage}_{a}" for stage in STAGES for a in ACCURACIES),
           "normal_skip_connect", "reduce_skip_connect", *ALPHA_COLUMNS,
           "search_wall_s", "retrain_wall_s", "supernet_per_class", "retrained_per_class", "workdir")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What to compare, and how.

    Attributes:
        methods: The arms: method names (``--method`` values of search), each optionally with search flags of
            its own (``hlrs:mixing=linear``, see :func:`parse_arm`).
        seeds: Seeds; every method runs once per seed (the seed of its search and of its retraining).
        search_args: ``--flag=value`` arguments for every search (the shared search setting).
        retrain_args: ``--flag=value`` arguments for every retraining (``--flagfile=<retrain flagfile>`` and
            the data flags of the search, so both stages see the same data); empty with ``retrain=False``.
        retrain: Retrain each derived genotype (``--retrain=derived``) or compare supernets only (``none``).
        baseline: The method the others are compared with, seed by seed (``darts``).
        confidence: Level of the t-intervals.
    """

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    search_args: tuple[str, ...] = ()
    retrain_args: tuple[str, ...] = ()
    retrain: bool = True
    baseline: str = "darts"
    confidence: float = 0.95

    def __post_init__(self):
        if not self.methods:
            raise ValueError("--methods is empty: give at least one method")
        if not self.seeds:
            raise ValueError("--seeds is empty: give at least one seed")
        if len(set(self.methods)) != len(self.methods) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("--methods and --seeds must not repeat values")

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages reported: both, or the supernet alone without retraining."""
        return STAGES if self.retrain else STAGES[:1]


def parse_arm(spec: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Splits an entry of ``--methods``: a method name, optionally with search flags of its own after colons,
    e.g. ``hlrs:mixing=linear`` -> ``("hlrs", (("mixing", "linear"),))`` (one arm of the comparison).

    Raises:
        ValueError: An override that is not ``flag=value``.
    """
    method, *overrides = spec.split(":")
    pairs = []
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--methods has {spec!r}: write a method's own flags as method:flag=value[:flag=value]")
        pairs.append((name.lstrip("-"), value))
    return method, tuple(pairs)


def arm_args(spec: str) -> list[str]:
    """The search arguments of one arm: its ``--method`` and its own flags (after the shared ones: they win)."""
    method, overrides = parse_arm(spec)
    return [f"--method={method}", *(f"--{name}={value}" for name, value in overrides)]


def run_dir(root: str, method: str, seed: int) -> str:
    """The folder of one (method, seed) run (an arm with its own flags gets a file-name-safe folder)."""
    return os.path.join(root, re.sub(r"[^A-Za-z0-9_.-]+", "_", method), f"seed_{seed}")


def search_dir(root: str, method: str, seed: int) -> str:
    """The search's work directory of one run."""
    return os.path.join(run_dir(root, method, seed), "search")


def train_dir(root: str, method: str, seed: int) -> str:
    """The retraining's work directory of one run."""
    return os.path.join(run_dir(root, method, seed), "train")


def _read(path: str):
    """A JSON file of a run, or ``None`` when it is missing or unreadable (a stage still running or killed)."""
    return read_json(path, error=None)


def is_finished(workdir: str) -> bool:
    """True when the search or retraining in ``workdir`` completed (``metrics.json`` is written last)."""
    return _read(Workdir(workdir, create=False).metrics_file) is not None


def _run_stage(stage: str, tag: str, cmd: list[str], workdir: str, log_name: str, log) -> bool:
    """Runs one stage's command unless it finished earlier; returns whether it is finished now.

    The output is appended to ``<workdir>/<log_name>``; ``run.json`` records the wall time and the command.
    """
    if is_finished(workdir):
        log(f"{tag}: {stage} finished earlier, skipped")
        return True
    os.makedirs(workdir, exist_ok=True)
    log(f"{tag}: {stage} (log: {workdir}/{log_name})")
    t0 = time.perf_counter()
    with open(os.path.join(workdir, log_name), "a") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if code != 0 or not is_finished(workdir):
        log(f"{tag}: {stage} FAILED (exit {code}); see {workdir}/{log_name}")
        return False
    atomic_write_json(Workdir(workdir, create=False).run_file, {"wall_s": round(wall, 1), "command": cmd})
    log(f"{tag}: {stage} done in {wall:.0f} s")
    return True


def run_all(config: CompareConfig, root: str, log=print, python: str = sys.executable) -> list[str]:
    """Runs every unfinished stage (search, then retraining), one process each; returns the failed runs.

    Seeds are the outer loop, so an interrupted comparison has every method at the same number of seeds. A
    failed stage is reported and the others go on (a failed search skips its retraining). Each command locks
    its own work directory; the command line (:mod:`hlrs_tf.compare`) also locks ``root`` for the harness's
    lifetime.
    """
    os.makedirs(root, exist_ok=True)
    failed = []
    total = len(config.methods) * len(config.seeds)
    for k, (method, seed) in enumerate(((m, s) for s in config.seeds for m in config.methods), 1):
        tag = f"[{k}/{total}] {method} seed {seed}"
        sd, td = search_dir(root, method, seed), train_dir(root, method, seed)
        cmd = [python, "-m", "hlrs_tf.search", *config.search_args, *arm_args(method), f"--seed={seed}",
               f"--workdir={sd}", "--verbose=2"]
        if not _run_stage("search", tag, cmd, sd, "search.log", log):
            failed.append(f"{method} seed {seed} (search)")
            continue
        if not config.retrain:
            continue
        # The retrain flagfile first, then the search's data flags (later flags win), then this run's.
        cmd = [python, "-m", "hlrs_tf.train", *config.retrain_args, f"--genotype={sd}", f"--seed={seed}",
               f"--workdir={td}", "--verbose=2"]
        if not _run_stage("retraining", tag, cmd, td, "train.log", log):
            failed.append(f"{method} seed {seed} (retraining)")
    return failed


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _accuracies(metrics: dict | None, stage: str) -> dict:
    out = {f"{stage}_{a}": float("nan") for a in ACCURACIES}
    out[f"{stage}_per_class"] = ""
    if metrics is None:
        return out
    per_class = [_num(x) for x in metrics.get("per_class", [])]
    finite = [x for x in per_class if math.isfinite(x)]
    out.update({
        f"{stage}_top1": _num(metrics.get("top1")),
        # The mean of the per-class accuracies: equal to top-1 on a balanced test set, not on another one.
        f"{stage}_balanced_accuracy": float(np.mean(finite)) if finite else float("nan"),
        f"{stage}_many_shot": _num(metrics.get("many_shot")),
        f"{stage}_medium_shot": _num(metrics.get("medium_shot")),
        f"{stage}_few_shot": _num(metrics.get("few_shot")),
        f"{stage}_per_class": ";".join(f"{x:.4f}" for x in per_class),
    })
    return out


def _wall(workdir: str) -> float:
    run = _read(Workdir(workdir, create=False).run_file)
    return _num(run.get("wall_s")) if run else float("nan")


def collect(config: CompareConfig, root: str) -> list[dict]:
    """One row per finished search (see :data:`COLUMNS`); retrained columns are NaN until retrained."""
    rows = []
    for method in config.methods:
        for seed in config.seeds:
            sd, td = search_dir(root, method, seed), train_dir(root, method, seed)
            search_wd, train_wd = Workdir(sd, create=False), Workdir(td, create=False)
            search_metrics = _read(search_wd.metrics_file)
            if search_metrics is None:
                continue
            retrained = _read(train_wd.metrics_file) if config.retrain else None
            genotype = Genotype.load(search_wd.genotype_file)
            rows.append({
                "method": method, "seed": seed,
                **_accuracies(search_metrics, "supernet"), **_accuracies(retrained, "retrained"),
                "normal_skip_connect": genotype.count("skip_connect", "normal"),
                "reduce_skip_connect": genotype.count("skip_connect", "reduce"),
                **{c: _num(search_metrics.get(c)) for c in ALPHA_COLUMNS},
                "search_wall_s": _wall(sd), "retrain_wall_s": _wall(td) if config.retrain else float("nan"),
                "workdir": run_dir(root, method, seed),
            })
    return [{c: r[c] for c in COLUMNS} for r in rows]


def write_csv(rows: list[dict], path: str) -> None:
    """Writes ``comparison.csv`` atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str) -> list[dict]:
    """Reads a ``comparison.csv`` back (numbers as floats, seeds as ints): the input of ``--report_only`` on
    a copy of the results, e.g. the one committed under ``docs/``."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row = {}
        for k, v in r.items():
            if k in ("method", "workdir", "supernet_per_class", "retrained_per_class"):
                row[k] = v
            elif k == "seed":
                row[k] = int(v)
            else:
                row[k] = float(v) if v not in ("", None) else float("nan")
        out.append(row)
    return out


def by_seed(rows: list[dict], method: str, column: str) -> dict[int, float]:
    """``seed -> value`` of one method's column (finite values only)."""
    return {r["seed"]: r[column] for r in rows if r["method"] == method and math.isfinite(r[column])}


def summary_table(rows: list[dict], methods, stage: str, confidence: float = 0.95) -> str:
    """Per method: mean ± std [95% t-interval] of the stage's accuracies over seeds, in percent."""
    head = ("| method | seeds | top-1 % | balanced % | many-shot % | medium-shot % | few-shot % | "
            "normal-cell skip_connect | alpha max-softmax (uniform 0.125) |")
    lines = [head, "|" + "---|" * 9]
    for method in methods:
        n = len(by_seed(rows, method, f"{stage}_top1"))
        if not n:
            continue
        cells = [stats.t_interval(list(by_seed(rows, method, f"{stage}_{a}").values()), confidence).format()
                 for a in ACCURACIES]
        skip = stats.t_interval(list(by_seed(rows, method, "normal_skip_connect").values()), confidence)
        alpha = stats.t_interval(list(by_seed(rows, method, "alpha_max_softmax").values()), confidence)
        cells += [skip.format(scale=1.0), alpha.format(scale=1.0, digits=3)]
        lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(rows: list[dict], methods, stage: str, baseline: str, confidence: float = 0.95) -> str:
    """Per method: the paired difference to ``baseline`` (same seeds) in points, with its t-interval."""
    head = f"| method − {baseline} | pairs | " + " | ".join(f"{_LABELS[a]} (points)" for a in ACCURACIES) + " |"
    lines = [head, "|" + "---|" * (2 + len(ACCURACIES))]
    for method in methods:
        if method == baseline:
            continue
        diffs = [stats.paired_interval(by_seed(rows, method, f"{stage}_{a}"),
                                       by_seed(rows, baseline, f"{stage}_{a}"), confidence) for a in ACCURACIES]
        if diffs[0].n == 0:
            continue
        lines.append(f"| {method} | {diffs[0].n} | " + " | ".join(d.format() for d in diffs) + " |")
    return "\n".join(lines) + "\n"


def verdict_lines(rows: list[dict], methods, stages, baseline: str, confidence: float = 0.95) -> list[str]:
    """One line per (method, stage, metric in top-1, medium- and few-shot; a group without classes is left
    out): the paired difference to the baseline, its interval and what the interval supports, e.g.
    ``darts_resample vs darts, retrained top-1: -3.1 points [-5.0, -1.2] over 3 seeds: hurts``."""
    lines = []
    for stage in stages:
        for metric in ("top1", "medium_shot", "few_shot"):
            for method in methods:
                if method == baseline:
                    continue
                d = stats.paired_interval(by_seed(rows, method, f"{stage}_{metric}"),
                                          by_seed(rows, baseline, f"{stage}_{metric}"), confidence)
                if d.n == 0:
                    continue
                interval = (f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" if math.isfinite(d.low) else "")
                lines.append(f"{method} vs {baseline}, {stage} {_LABELS[metric]}: {100 * d.mean:+.1f} points"
                             f"{interval} over {d.n} seed{'s' if d.n != 1 else ''}: {stats.verdict(d)}")
    return lines


def per_class_table(rows: list[dict], methods, stage: str) -> str:
    """Mean per-class accuracy (percent) per method over seeds; classes ordered as the dataset's labels
    (the long-tailed profile puts the most frequent first)."""
    means = {}
    for method in methods:
        vecs = [[float(x) for x in r[f"{stage}_per_class"].split(";")] for r in rows
                if r["method"] == method and r[f"{stage}_per_class"]]
        if vecs:
            means[method] = np.nanmean(np.asarray(vecs, np.float64), axis=0)
    if not means:
        return ""
    num_classes = len(next(iter(means.values())))
    lines = ["| method | " + " | ".join(f"c{i}" for i in range(num_classes)) + " |",
             "|" + "---|" * (num_classes + 1)]
    for method, m in means.items():
        lines.append(f"| {method} | " + " | ".join(f"{100 * x:.0f}" for x in m) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(rows: list[dict], config: CompareConfig) -> str:
    """The whole ``comparison.md``: per stage the summary, the paired differences and the per-class
    accuracy, then the verdict lines."""
    level = f"{100 * config.confidence:.0f}%"
    parts = [f"# Comparison: {', '.join(config.methods)} x seeds {', '.join(map(str, config.seeds))}\n",
             f"Cells: mean ± std [{level} t-interval] over seeds, in percent."
             + (f" Paired differences are method − {config.baseline} on the same seed, in points, with their "
                f"{level} t-interval." if config.baseline in config.methods else "") + "\n"]
    titles = {"supernet": "Supernet at the end of the search",
              "retrained": "Derived architecture retrained from scratch (one protocol for every method)"}
    for stage in config.stages:
        parts += [f"## {titles[stage]}\n", summary_table(rows, config.methods, stage, config.confidence)]
        if config.baseline in config.methods:
            parts += [f"Paired difference to {config.baseline}:\n",
                      paired_table(rows, config.methods, stage, config.baseline, config.confidence)]
        per_class = per_class_table(rows, config.methods, stage)
        if per_class:
            parts += ["Mean per-class accuracy (%):\n", per_class]
    if config.baseline in config.methods:
        lines = verdict_lines(rows, config.methods, config.stages, config.baseline, config.confidence)
        parts += ["## Verdicts (from the paired intervals: helps = interval above 0, hurts = below 0)\n",
                  "\n".join(f"- {line}" for line in lines) + "\n" if lines else "(no pairs yet)\n"]
    return "\n".join(parts)


def _history(workdir: str) -> dict[str, list[float]]:
    try:
        with open(Workdir(workdir, create=False).history_file) as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    keys = ("epoch", "arch_lr", "bbn_alpha", "alpha_max_softmax")
    return {k: [float(r[k]) for r in rows] for k in keys if rows and k in rows[0]}


def plot(rows: list[dict], config: CompareConfig, root: str) -> list[str]:
    """Writes ``accuracy.png`` and ``schedules.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in config.methods if any(r["method"] == m for r in rows)]
    metrics = ("top1", "many_shot", "medium_shot", "few_shot")
    stages = config.stages
    fig, axes = plt.subplots(1, len(stages), figsize=(len(stages) * (1.8 + 1.5 * len(methods)), 4.4),
                             sharey=True, squeeze=False)
    for ax, stage in zip(axes[0], stages):
        width = 0.8 / len(metrics)
        for j, metric in enumerate(metrics):
            xs, means, errs = [], [], []
            for i, method in enumerate(methods):
                vals = list(by_seed(rows, method, f"{stage}_{metric}").values())
                s = stats.t_interval(vals, config.confidence)
                x = i + (j - (len(metrics) - 1) / 2) * width
                if s.n:
                    xs.append(x), means.append(100 * s.mean)
                    errs.append(100 * s.half_width if math.isfinite(s.half_width) else 0.0)
                    ax.scatter([x] * s.n, [100 * v for v in vals], s=9, color="k", zorder=3)
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=_LABELS[metric], alpha=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
        ax.set_title({"supernet": "supernet (end of search)", "retrained": "retrained from scratch"}[stage])
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("balanced test accuracy (%)")
    fig.suptitle(f"Test accuracy: mean, {100 * config.confidence:.0f}% t-interval, dots = seeds", fontsize=10)
    axes[0][-1].legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    acc_path = os.path.join(root, "accuracy.png")
    fig.savefig(acc_path, dpi=110)
    plt.close(fig)

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 3.8))
    for method in methods:
        first = min(r["seed"] for r in rows if r["method"] == method)
        h = _history(search_dir(root, method, first))
        for ax, key in ((ax1, "arch_lr"), (ax2, "bbn_alpha"), (ax3, "alpha_max_softmax")):
            if key in h:
                ax.plot(h["epoch"], h[key], marker="o", label=method)
    ax1.set(title="architecture learning rate per epoch", xlabel="epoch", ylabel="arch lr")
    ax2.set(title="mixing factor alpha_T (BBN methods)", xlabel="epoch", ylabel="alpha_T")
    ax3.axhline(0.125, color="grey", ls="--", lw=1, label="uniform (1/8)")
    ax3.set(title="alpha movement: mean max-softmax per edge", xlabel="epoch", ylabel="max softmax")
    for ax in (ax1, ax2, ax3):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.suptitle(f"search schedules (seed {min(config.seeds)})", fontsize=10)
    fig.tight_layout()
    sched_path = os.path.join(root, "schedules.png")
    fig.savefig(sched_path, dpi=110)
    plt.close(fig)
    return [acc_path, sched_path]


def report(config: CompareConfig, root: str, rows: list[dict] | None = None) -> str:
    """Writes ``comparison.csv``, ``comparison.md`` and the plots from the finished runs (or from ``rows``,
    e.g. read back with :func:`read_csv`).

    Returns:
        The markdown report.
    """
    if rows is None:
        rows = collect(config, root)
        write_csv(rows, os.path.join(root, "comparison.csv"))
    text = markdown_report(rows, config)
    expected = len(config.methods) * len(config.seeds)
    searched = len(rows)
    retrained = sum(math.isfinite(r["retrained_top1"]) for r in rows)
    if searched < expected or (config.retrain and retrained < expected):
        text += (f"\nNot finished yet: {expected - searched} search(es)"
                 + (f", {expected - retrained} retraining(s)" if config.retrain else "") + ".\n")
    atomic_write_text(os.path.join(root, "comparison.md"), text)
    if rows:
        plot(rows, config, root)
    return text
