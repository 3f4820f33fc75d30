"""Where one DARTS search step spends its time: TF profiler trace of real steps, aggregated per op type.

    python benchmarks/profile_step.py --channels=16 --layers=8 --batch_size=64 --order=first
    python benchmarks/profile_step.py --by=name --top=40      # per op instance instead of per op type

Builds the same model as ``benchmarks/search_step.py``, runs two warm-up steps, profiles ``--steps`` steps
with ``tf.profiler`` and prints, per op type (``Conv2D``, ``DepthwiseConv2dNativeBackpropFilter``, ...), the
number of op executions per step, the total op time per step and its share. Op times add up across threads, so
on 2 cores the total can exceed the wall time of the step. Also prints the number of ops in the traced step
function's graph (what trace and start-up time scale with).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--image_channels", type=int, default=3)
    p.add_argument("--order", choices=("first", "second"), default="first")
    p.add_argument("--cell_impl", choices=("fused", "direct"), default="fused")
    p.add_argument("--method", default="darts")
    p.add_argument("--steps", type=int, default=2, help="profiled steps")
    p.add_argument("--by", choices=("type", "name"), default="type", help="second table: per op type or per op")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from hlrs_tf.config import SearchConfig
    from hlrs_tf.data import DatasetSpec
    from hlrs_tf.genotypes import PRIMITIVES
    from hlrs_tf.trainer import build_model

    keras.utils.set_random_seed(0)
    shape = (args.image_size, args.image_size, args.image_channels)
    config = SearchConfig.for_method(args.method, channels=args.channels, layers=args.layers, order=args.order,
                                     batch_size=args.batch_size, cell_impl=args.cell_impl)
    spec = DatasetSpec("bench", shape, 10, (0.5,) * shape[-1], (0.25,) * shape[-1])
    model = build_model(config, spec, total_steps=1000, class_counts=np.arange(10) + 1)
    rng = np.random.default_rng(0)
    n = args.batch_size
    x = rng.standard_normal((n, *shape)).astype("float32")
    y = rng.integers(0, 10, n).astype("int32")
    side = (x, y, x[::-1], y[::-1]) if config.bbn else (x, y)
    ds = tf.data.Dataset.from_tensors((side, side)).repeat()
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)

    logdir = tempfile.mkdtemp(prefix="hlrs_profile_")
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
    wall = (time.perf_counter() - t0) / args.steps
    tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    by_key = {"type": collections.Counter(), "name": collections.Counter(), "primitive": collections.Counter()}
    counts = {k: collections.Counter() for k in by_key}
    for path in paths:
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            meta = plane.event_metadata
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):  # the executor threads; one event per op run
                    continue
                for event in line.events:
                    name = meta[event.metadata_id].name
                    if ":" not in name or "::" in name:  # executor bookkeeping (ExecutorState::Process...), not an op
                        continue
                    op_name, op_kind = name.rsplit(":", 1)
                    seconds = event.duration_ps / 1e12
                    prim = next((p for p in PRIMITIVES if f"/{p}" in op_name), "other")
                    if "gradient_tape" in op_name:
                        prim += " (grad)"
                    for key, value in (("type", op_kind), ("name", op_name), ("primitive", prim)):
                        by_key[key][value] += seconds
                        counts[key][value] += 1
    total = sum(by_key["type"].values())
    print(f"wall time per step {wall:.3f} s; summed op time per step {total / args.steps:.3f} s; "
          f"{sum(counts['type'].values()) // args.steps} op executions per step")
    for key in ("primitive", args.by):
        print(f"\n{'by ' + key:70s} {'count':>7s} {'s/step':>8s} {'share':>6s}")
        for name, t in by_key[key].most_common(args.top):
            print(f"{name[-70:]:70s} {counts[key][name] // args.steps:7d} {t / args.steps:8.3f} {100 * t / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
