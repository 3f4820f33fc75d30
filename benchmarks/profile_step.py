"""Where one DARTS search step spends its time: TF profiler trace of real steps, aggregated per op type.

    python benchmarks/profile_step.py --channels=16 --layers=8 --batch_size=64 --order=first
    python benchmarks/profile_step.py --by=name --top=40      # per op instance instead of per op type

Builds the same model with the same runtime settings as ``benchmarks/search_step.py``, runs two warm-up
steps, profiles ``--steps`` steps with ``tf.profiler`` and prints the number of op executions per step, the
total op time per step and its share: per candidate op (named only by the direct cell's per-op layers,
``--cell_impl=direct``; the fused cell's ops all count as "other"), and per op type (``Einsum``,
``DepthwiseConv2dNativeBackpropInput``, ...) or per op. Op times add up across threads, so on 2 cores the total
can exceed the wall time of the step; the profiler also slows the step down (read shares, not seconds).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

from search_step import add_model_args, build_model_and_data, configure_runtime  # sets the TF environment


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--steps", type=int, default=2, help="profiled steps")
    p.add_argument("--by", choices=("type", "name"), default="type", help="second table: per op type or per op")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)

    configure_runtime(args)  # the search's runtime settings, as search_step.py measures them
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from hlrs_tf.space.genotypes import PRIMITIVES

    model, ds = build_model_and_data(args)
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # trace and warm up outside the profile

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
            calls = counts[key][name] // args.steps
            print(f"{name[-70:]:70s} {calls:7d} {t / args.steps:8.3f} {100 * t / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
