"""Where a search step's oneDNN time goes: per kernel implementation, and per problem shape, from oneDNN's log.

    python benchmarks/onednn_kernels.py --channels=16 --layers=8 --batch_size=64 --order=first
    python benchmarks/onednn_kernels.py --partial_channels=4 ... --shapes=20   # PC-DARTS, 20 slowest shapes

Runs ``benchmarks/search_step.py`` (the real ``fit`` loop, the search's runtime settings; every argument not
listed below is passed on to it) in a child process with ``ONEDNN_VERBOSE=1``, which makes oneDNN print one line
per primitive it executes: its kind (convolution, matmul, batch_normalization, pooling, ...), the implementation
it dispatched to (``jit_dw:avx2``, ``brdgmm_dw:avx512_core``, ``jit:avx2``, ``x64:gemm:jit``, ...), the
propagation kind (forward_training, backward_data, backward_weights, ...), the problem (``g16mb64_ic16oc16_ih32
...kh5...``) and its time in ms. This script sums those per step.

What it shows that ``profile_step.py`` (TF's op-level profile) cannot: *which* oneDNN kernel ran. One TF op
type maps to several kernels by shape and CPU, and a shape that falls off oneDNN's specialised kernels onto a
generic one is invisible at the op level. For example, on an AVX2 EPYC the depthwise filter gradient of 3x3
kernels runs in ``jit_dw`` (0.05-0.8 ms per call) but that of 5x5 kernels in the generic ``jit`` convolution
(0.6-7 ms) and, on 4x4 maps (the phase space of the dilated 5x5 on 8x8 maps), in ``x64:gemm:jit`` (4.7-14.5 ms
for tensors of 65k-260k values) -- see ``benchmarks/NOTES.md``.

Times are summed over all executed steps, the first (trace, kernel creation) included, and divided by their
number: read shares and per-call times, not absolute seconds (the logging itself also costs time). Only oneDNN's
primitives appear; TF's own ops (element-wise Mul, AddN, concat, slices, reshapes) do not.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Execution:
    """One executed oneDNN primitive, from a verbose ``exec`` line."""

    kind: str
    implementation: str
    propagation: str
    problem: str
    ms: float


def parse_line(line: str) -> Execution | None:
    """The :class:`Execution` of a ``onednn_verbose`` exec line, or ``None`` for any other line.

    oneDNN 3.x writes ``onednn_verbose,v1,primitive,exec,cpu,<kind>,<impl>,<prop>,<memory descriptors>,<attrs>,
    <alg>,<problem>,<ms>``; older versions leave out ``v1,primitive``. Fields are located from the ``exec``
    marker and from the end, so both parse.
    """
    if not line.startswith("onednn_verbose,"):
        return None
    fields = line.rstrip("\n").split(",")
    try:
        i = fields.index("exec")
        return Execution(fields[i + 2], fields[i + 3], fields[i + 4], fields[-2], float(fields[-1]))
    except (ValueError, IndexError):  # an info / create line, or a format this parser does not know
        return None


def summarise(executions, steps: int, shapes: int = 10) -> str:
    """The two tables: per (kind, implementation, propagation), and the ``shapes`` costliest problem shapes."""
    total = collections.Counter()
    calls = collections.Counter()
    shape_total = collections.Counter()
    shape_calls = collections.Counter()
    for ex in executions:
        key = (ex.kind, ex.implementation, ex.propagation)
        total[key] += ex.ms
        calls[key] += 1
        shape_key = key + (ex.problem,)
        shape_total[shape_key] += ex.ms
        shape_calls[shape_key] += 1
    whole = sum(total.values()) or 1.0
    lines = [f"oneDNN time per step: {whole / steps / 1e3:.3f} s over {sum(calls.values()) // steps} primitive "
             f"executions ({steps} steps, the first included)", "",
             f"{'kind':20s} {'implementation':18s} {'propagation':18s} {'calls/step':>10s} {'s/step':>8s} "
             f"{'share':>6s}"]
    for key, ms in total.most_common():
        lines.append(f"{key[0]:20s} {key[1]:18s} {key[2]:18s} {calls[key] // steps:10d} {ms / steps / 1e3:8.3f} "
                     f"{100 * ms / whole:5.1f}%")
    if shapes:
        lines += ["", f"the {shapes} costliest problem shapes:",
                  f"{'s/step':>8s} {'calls/step':>10s} {'ms/call':>8s}  kind implementation propagation problem"]
        for key, ms in shape_total.most_common(shapes):
            n = shape_calls[key]
            lines.append(f"{ms / steps / 1e3:8.3f} {n // steps:10d} {ms / n:8.2f}  {' '.join(key)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps after the first (all are summed)")
    p.add_argument("--shapes", type=int, default=10, help="how many of the costliest problem shapes to list")
    args, passed = p.parse_known_args(argv)
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    if env.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        p.error("TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off: there would be nothing to break down")
    cmd = [sys.executable, os.path.join(HERE, "search_step.py"), f"--steps={args.steps}", *passed]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        print(f"onednn_kernels.py: search_step.py failed (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode
    executions = [ex for ex in map(parse_line, proc.stdout.splitlines()) if ex is not None]
    if not executions:
        print("onednn_kernels.py: oneDNN logged no primitive: is TensorFlow's oneDNN on "
              "(hlrs_tf.runtime.cli.prepare_process turns it on unless TF_ENABLE_ONEDNN_OPTS=0)?", file=sys.stderr)
        return 1
    print(summarise(executions, args.steps + 1, args.shapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
