"""Inference latency of a derived network: Keras, the exported SavedModel and ONNX Runtime, batch 1 and 64.

    python benchmarks/export_latency.py --genotype=DARTS_V2 --channels=16 --layers=8 --image_size=32
    python benchmarks/export_latency.py --channels=8 --layers=5 --image_size=28 --image_channels=1 --json=out.json

For each thread count (default: 1 and 2) a fresh worker process (TensorFlow fixes its thread pools at start-up)
builds the network with random weights (latency does not depend on their values), exports it exactly as
``python -m hlrs_tf.export`` does (uint8 ``images`` input, preprocessing in the graph, opset 17), and times
the median wall time of ``--runs`` calls after ``--warmup`` calls on random uint8 images:

* ``keras``: ``predict_on_batch`` of the serving model (a traced ``tf.function``, as ``predict`` runs it);
* ``keras_eager``: calling the Keras model directly (op by op; what a naive Python service does);
* ``saved_model``: the reloaded SavedModel's ``serving_default`` signature (what TF Serving runs);
* ``onnxruntime``: an ONNX Runtime CPU session with ``intra_op_num_threads`` = the thread count.

Prints a table (median ms per batch and images/s) and, with ``--json``, writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIMES = ("keras", "keras_eager", "saved_model", "onnxruntime")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genotype", default="DARTS_V2", help="preset name, genotype JSON or search work directory")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--image_channels", type=int, default=3)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--batch_sizes", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts, one worker process each")
    p.add_argument("--runs", type=int, default=20, help="timed calls per runtime and batch size")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # internal: thread count
    return p


def _median_ms(fn, x, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def worker(args) -> dict:
    """Runs in a fresh process with ``args.worker`` threads; returns the timings."""
    import numpy as np
    import tensorflow as tf

    threads = args.worker
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras
    import onnxruntime as ort

    from hlrs_tf.export.savedmodel_onnx import build_serving_model
    from hlrs_tf.space.derived_network import DerivedNetwork
    from hlrs_tf.space.genotypes import get_genotype

    keras.utils.set_random_seed(0)
    shape = (args.image_size, args.image_size, args.image_channels)
    network = DerivedNetwork(get_genotype(args.genotype), args.channels, args.num_classes, args.layers,
                             auxiliary=False)
    network.build((None, *shape))
    c = args.image_channels
    serving = build_serving_model(network, shape, [0.5] * c, [0.25] * c)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        serving.export(os.path.join(tmp, "saved_model"), verbose=False)
        sm_export_s = time.perf_counter() - t
        t = time.perf_counter()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            serving.export(os.path.join(tmp, "model.onnx"), format="onnx", opset_version=17, verbose=False)
        onnx_export_s = time.perf_counter() - t
        serve = tf.saved_model.load(os.path.join(tmp, "saved_model")).signatures["serving_default"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(os.path.join(tmp, "model.onnx"), so, providers=["CPUExecutionProvider"])

        rng = np.random.default_rng(0)
        results = {}
        for b in [int(s) for s in args.batch_sizes.split(",")]:
            x = rng.integers(0, 256, (b, *shape), dtype=np.uint8)
            xt = tf.constant(x)
            fns = {
                "keras": lambda v: serving.predict_on_batch(v),
                "keras_eager": lambda v: serving(v, training=False)["logits"].numpy(),
                "saved_model": lambda v: serve(images=xt)["logits"].numpy(),
                "onnxruntime": lambda v: session.run(["logits"], {"images": v}),
            }
            runs = args.runs if b == 1 else max(3, args.runs // 4)
            results[str(b)] = {name: round(_median_ms(fn, x, runs, args.warmup), 3) for name, fn in fns.items()}
    return {
        "threads": threads,
        "params": network.parameter_counts()["params"],
        "export_s": {"saved_model": round(sm_export_s, 2), "onnx": round(onnx_export_s, 2)},
        "median_ms": results,
    }


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    workers = []
    for threads in [int(t) for t in args.threads.split(",")]:
        cmd = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
               f"--worker={threads}"]
        # OMP/MKL pools follow the same count, so "1 thread" really is one core's worth of compute.
        proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"worker with {threads} thread(s) failed")
        workers.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    setup = {k: getattr(args, k) for k in ("genotype", "channels", "layers", "image_size", "image_channels",
                                           "num_classes", "runs", "warmup")}
    print(f"derived network {args.genotype} C={args.channels} L={args.layers} "
          f"{args.image_size}x{args.image_size}x{args.image_channels}, {workers[0]['params']:,} params "
          f"(no auxiliary head); median ms per batch (images/s)")
    header = f"{'threads':>7} {'batch':>5} " + " ".join(f"{r:>20}" for r in RUNTIMES)
    print(header)
    for w in workers:
        for b, row in w["median_ms"].items():
            cells = [f"{row[r]:>9.2f} ({int(b) * 1000.0 / row[r]:>7.0f})" for r in RUNTIMES]
            print(f"{w['threads']:>7} {b:>5} " + " ".join(f"{c:>20}" for c in cells))
    result = {"setup": setup, "workers": workers}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
