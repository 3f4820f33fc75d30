"""Post-hoc re-balancing of a comparison's retrained genotypes, measured over seeds (README, issue 19).

    python scripts/post_hoc_experiment.py --compare=runs/compare --method=darts --seeds=0,1,2 \
        --out=runs/post_hoc_experiment

For each seed: the method's searched genotype (``<compare>/<method>/seed_<s>/search``) is retrained with the
comparison's shared protocol (``configs/retrain_compare.cfg``, the same seed) and ``--holdout_fraction``
(default 0.1), then ``python -m hlrs_tf.post_hoc`` applies ``logit_adjust``, ``tau_norm`` (tau chosen on the
held-out split) and ``crt`` to it. Each stage is its own command; a finished stage (its ``metrics.json``) is
skipped, so the script resumes. It prints a markdown table: top-1 and medium-shot accuracy on the balanced test
set, mean ± std [95% t-interval], and each method's paired difference to the un-adjusted network, seed by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from hlrs_tf.experiments import stats

METHODS = ("logit_adjust", "tau_norm", "crt")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd: list[str], log: str) -> None:
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")


def _metrics(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", required=True, help="A finished hlrs_tf.compare work directory.")
    parser.add_argument("--method", default="darts", help="Which method's genotypes (default darts).")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True, help="Folder of the retrainings (one per seed).")
    parser.add_argument("--holdout_fraction", type=float, default=0.1)
    parser.add_argument("--retrain_flagfile", default=os.path.join(REPO, "configs", "retrain_compare.cfg"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    rows = {}
    for seed in seeds:
        search = os.path.abspath(os.path.join(args.compare, args.method, f"seed_{seed}", "search"))
        # The comparison's retraining got the search's data flags; read them from its flags.cfg.
        with open(os.path.join(search, "flags.cfg")) as f:
            data = [line.strip() for line in f if line.startswith(("--dataset=", "--imbalance_ratio=",
                                                                  "--fashion_mnist_dir=", "--data_dir="))]
        wd = os.path.abspath(os.path.join(args.out, f"{args.method}_seed_{seed}"))
        if not os.path.isfile(os.path.join(wd, "metrics.json")):
            _run([sys.executable, "-m", "hlrs_tf.train", f"--flagfile={args.retrain_flagfile}", *data,
                  f"--genotype={search}", f"--seed={seed}", f"--holdout_fraction={args.holdout_fraction}",
                  "--verbose=0", f"--workdir={wd}"], wd + ".log")
        rows[seed] = {"none": _metrics(os.path.join(wd, "metrics.json"))}
        for method in METHODS:
            path = os.path.join(wd, "post_hoc", method, "metrics.json")
            if not os.path.isfile(path):
                _run([sys.executable, "-m", "hlrs_tf.post_hoc", f"--workdir={wd}", f"--post_hoc={method}"],
                     wd + ".log")
            rows[seed][method] = _metrics(path)
    print(f"{args.method} genotypes of {args.compare}, retrained ({os.path.basename(args.retrain_flagfile)}, "
          f"holdout {args.holdout_fraction:g}), seeds {args.seeds}:\n")
    print("| post-hoc | top-1 % | − none (points) | medium-shot % | − none (points) | tau per seed |")
    print("|---|---|---|---|---|---|")
    for method in ("none", *METHODS):
        cells = []
        for key in ("top1", "medium_shot"):
            values = {s: rows[s][method][key] for s in seeds}
            cells.append(stats.t_interval(list(values.values())).format())
            if method == "none":
                cells.append("")
            else:
                d = stats.paired_interval(values, {s: rows[s]["none"][key] for s in seeds})
                cells.append(f"{d.mean * 100:+.1f} [{d.low * 100:+.1f}, {d.high * 100:+.1f}] ({stats.verdict(d)})")
        taus = ", ".join(f"{rows[s][method]['post_hoc']['tau']:g}" for s in seeds) \
            if method in ("logit_adjust", "tau_norm") else ""
        print(f"| {method} | {' | '.join(cells)} | {taus} |")


if __name__ == "__main__":
    main()
