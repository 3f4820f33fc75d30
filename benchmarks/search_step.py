"""Benchmark of one DARTS search step: build + trace time, median step time, images/s, peak RSS.

    python benchmarks/search_step.py --channels=16 --layers=8 --batch_size=64 --order=first --steps=5
    python benchmarks/search_step.py --method=hlrs ...                  # BBN: two batches per side and step
    python benchmarks/search_step.py --partial_channels=4 ...           # PC-DARTS (K=4 of the channels per op)
    OMP_NUM_THREADS=1 python benchmarks/search_step.py --threads=1 ...   # 1-thread figure beside 2-thread
    python benchmarks/search_step.py --precision=mixed_bfloat16 ...     # mixed precision (hlrs_tf.runtime.precision)
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/search_step.py ...         # TensorFlow's own (Eigen) kernels

Runs the real ``DartsSearchModel.fit`` on random images of the given size (timing does not depend on the
pixel values) with a callback timing each batch; the first batch's time is the trace + first step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

from hlrs_tf.runtime.cli import prepare_process

prepare_process()  # as hlrs_tf.search does: oneDNN kernels unless TF_ENABLE_ONEDNN_OPTS=0, malloc arenas


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model, data and runtime arguments (shared with ``profile_step.py``)."""
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--image_channels", type=int, default=3)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--order", choices=("first", "second"), default="first")
    p.add_argument("--cell_impl", choices=("fused", "direct"), default="fused",
                   help="fused search cell (default) or the direct per-edge reference computation")
    p.add_argument("--method", choices=("darts", "darts_resample", "darts_reweight", "darts_bbn", "hlrs", "pcdarts",
                                        "pcdarts_hlrs"),
                   default="darts", help="method preset (the BBN ones run two batches per side and step)")
    p.add_argument("--partial_channels", type=int, default=None,
                   help="PC-DARTS' K (default: the method's; 1 = DARTS, pcdarts presets 4)")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"), default="float32",
                   help="the search's --precision (Keras dtype policy of the supernet)")
    p.add_argument("--threads", type=int, default=0, help="cores to use (0 = all)")
    p.add_argument("--thread_policy", choices=("search", "tf"), default="search",
                   help="'search': 1 intra-op x N inter-op threads, as the search runs; 'tf': N x N (TF's style)")
    p.add_argument("--grappler", choices=("search", "default", "memory"), default="search",
                   help="'search': off, as the search runs; 'default': TF's full grappler; 'memory': only its "
                        "memory optimizer (the search's setting before each pass was traced once)")


# Every grappler pass but the memory optimizer (``--grappler=memory``).
GRAPPLER_PASSES_BUT_MEMORY = (
    "layout_optimizer", "constant_folding", "shape_optimization", "remapping", "arithmetic_optimization",
    "dependency_optimization", "loop_optimization", "function_optimization", "debug_stripper",
    "scoped_allocator_optimization", "pin_to_host_optimization", "implementation_selector", "auto_mixed_precision",
)


def configure_runtime(args) -> None:
    """Devices, thread pools and grappler as ``args`` say (by default what ``hlrs_tf.search`` does: the CPU
    settings only when TensorFlow lists no GPU, ``hlrs_tf.runtime.devices.configure_devices``)."""
    import tensorflow as tf

    from hlrs_tf.runtime.devices import configure_devices, set_thread_pools
    from hlrs_tf.search.task import configure_graph_optimizer, configure_threads

    cpu_only = configure_devices().cpu_only
    if args.thread_policy == "search" and cpu_only:
        configure_threads(args.threads)
    else:
        set_thread_pools(args.threads)
    if args.grappler == "search":
        if cpu_only:
            configure_graph_optimizer()
    elif args.grappler == "memory":
        tf.config.optimizer.set_experimental_options({name: False for name in GRAPPLER_PASSES_BUT_MEMORY})


def build_model_and_data(args):
    """``(model, dataset)``: the compiled, built search model and an endless dataset of one random batch pair
    (timing does not depend on the pixel values)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from hlrs_tf.config.search import SearchConfig
    from hlrs_tf.data.spec import DatasetSpec
    from hlrs_tf.search.task import build_model

    keras.utils.set_random_seed(0)
    shape = (args.image_size, args.image_size, args.image_channels)
    extra = {} if args.partial_channels is None else {"partial_channels": args.partial_channels}
    config = SearchConfig.for_method(args.method, channels=args.channels, layers=args.layers, order=args.order,
                                     batch_size=args.batch_size, cell_impl=args.cell_impl,
                                     precision=args.precision, **extra)
    spec = DatasetSpec("bench", shape, args.num_classes, (0.5,) * shape[-1], (0.25,) * shape[-1])
    model = build_model(config, spec, total_steps=1000, class_counts=np.arange(args.num_classes) + 1)
    rng = np.random.default_rng(0)
    n = args.batch_size
    x = rng.standard_normal((n, *shape)).astype("float32")
    y = rng.integers(0, args.num_classes, n).astype("int32")
    side = (x, y, x[::-1], y[::-1]) if config.bbn else (x, y)
    return model, tf.data.Dataset.from_tensors((side, side)).repeat()


def breakdown(args) -> dict:
    """Where the start-up goes: Python tracing of ``train_step`` vs its first call vs a plain step."""
    configure_runtime(args)
    import tensorflow as tf

    from hlrs_tf.runtime.cli import onednn_enabled
    from hlrs_tf.runtime.devices import visible_devices

    t0 = time.perf_counter()
    model, ds = build_model_and_data(args)
    build_s = time.perf_counter() - t0
    batch = next(iter(ds))
    step = tf.function(model.train_step)
    t0 = time.perf_counter()
    concrete = step.get_concrete_function(batch)
    trace_s = time.perf_counter() - t0
    ops = len(concrete.graph.get_operations())
    t0 = time.perf_counter()
    concrete(batch)
    first_call_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        concrete(batch)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    result = {
        "channels": args.channels, "layers": args.layers, "batch_size": args.batch_size, "order": args.order,
        "onednn": onednn_enabled(), "devices": visible_devices().names(), "build_s": round(build_s, 2),
        "python_trace_s": round(trace_s, 2),
        "graph_ops": ops, "first_call_s": round(first_call_s, 2),
        "first_call_minus_step_s (optimise + instantiate)": round(first_call_s - step_s, 2),
        "median_step_s": round(step_s, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }
    print(json.dumps(result, indent=1))
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--breakdown", action="store_true",
                   help="instead of fit: time the Python trace of train_step, its first call (graph optimisation, "
                        "executor set-up, kernel creation and one step) and the next calls, one by one")
    args = p.parse_args(argv)
    if args.breakdown:
        return breakdown(args)

    t_import = time.perf_counter()
    configure_runtime(args)  # imports TensorFlow
    import keras
    import numpy as np

    from hlrs_tf.runtime.cli import onednn_enabled
    from hlrs_tf.runtime.devices import visible_devices

    t0 = time.perf_counter()
    import_s = t0 - t_import
    model, ds = build_model_and_data(args)
    build_s = time.perf_counter() - t0
    n = args.batch_size
    shape = (args.image_size, args.image_size, args.image_channels)

    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self._t)

    t1 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=args.steps + 1, verbose=0, callbacks=[Timer()])
    first = times[0]
    step = statistics.median(times[1:]) if len(times) > 1 else float("nan")
    result = {
        "channels": args.channels,
        "layers": args.layers,
        "batch_size": n,
        "image_shape": list(shape),
        "order": args.order,
        "cell_impl": args.cell_impl,
        "method": args.method,
        "partial_channels": model.network.partial_channels,
        "precision": args.precision,
        "threads": args.threads or "all",
        "thread_policy": args.thread_policy,
        "grappler": args.grappler,
        "onednn": onednn_enabled(),
        "devices": visible_devices().names(),
        "weight_params": sum(int(np.prod(v.shape)) for v in model.split_variables()[0]),
        "import_s": round(import_s, 2),
        "build_s": round(build_s, 2),
        "first_step_s (trace + step)": round(first, 2),
        "build_plus_trace_s": round(build_s + first - step, 2),
        "median_step_s": round(step, 3),
        "images_per_s": round(n / step, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "fit_total_s": round(time.perf_counter() - t1, 2),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
