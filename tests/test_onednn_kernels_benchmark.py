"""``benchmarks/onednn_kernels.py``: its reader of oneDNN's verbose log, and one real run at a tiny size."""

import os
import subprocess
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import onednn_kernels  # noqa: E402  (benchmarks/ is a directory of scripts, not a package)

# Lines as oneDNN 3.x (TensorFlow 2.21) printed them in a search step on an AVX2 EPYC, and one in the older
# format without "v1,primitive".
EXEC_5X5 = ("onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32::blocked:acdb::f0 "
            "wei:f32:ap:blocked:aBCde8c8b::f0 bia:undef::undef::: dst:f32::blocked:acdb::f0,,alg:convolution_direct,"
            "g16mb64_ic16oc16_ih32oh32kh5sh1dh0ph2_iw32ow32kw5sw1dw0pw2,6.85")
EXEC_OLD = ("onednn_verbose,exec,cpu,pooling,jit:avx2,backward_data,src_f32::blocked:acdb:f0,,alg:pooling_max,"
            "mb64ic4_ih32oh32kh3,3.36")
INFO = ("onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,"
        "memory_descriptors,attributes,auxiliary,problem_desc,exec_time")


def test_parse_line_reads_both_formats_and_skips_other_lines():
    ex = onednn_kernels.parse_line(EXEC_5X5)
    assert (ex.kind, ex.implementation, ex.propagation) == ("convolution", "jit:avx2", "backward_weights")
    assert ex.problem.startswith("g16mb64_ic16oc16") and ex.ms == 6.85
    old = onednn_kernels.parse_line(EXEC_OLD + "\n")
    assert (old.kind, old.implementation, old.propagation, old.ms) == ("pooling", "jit:avx2", "backward_data", 3.36)
    for line in (INFO, "", '{"median_step_s": 1.9}', "onednn_verbose,v1,primitive,exec,cpu"):
        assert onednn_kernels.parse_line(line) is None


def test_summarise_divides_by_steps_and_ranks_by_time():
    lines = [EXEC_5X5] * 4 + [EXEC_OLD] * 2
    text = onednn_kernels.summarise([onednn_kernels.parse_line(x) for x in lines], steps=2, shapes=2)
    rows = [r for r in text.splitlines() if r.startswith(("convolution", "pooling"))]
    # 4 x 6.85 ms over 2 steps = 13.7 ms per step, 2 calls per step; then the pool: 3.36 ms, 1 call.
    assert rows[0].split()[:5] == ["convolution", "jit:avx2", "backward_weights", "2", "0.014"]
    assert rows[1].split()[:5] == ["pooling", "jit:avx2", "backward_data", "1", "0.003"]
    assert "6.85  convolution jit:avx2 backward_weights g16mb64" in text  # ms per call of the costliest shape


def test_real_run_breaks_down_a_search_step(repo_root, child_env):
    env = dict(child_env)  # the shared environment of child processes (marks the test slow)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # oneDNN on, as the commands run (the breakdown needs it)
    out = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "onednn_kernels.py"), "--channels=4", "--layers=3",
         "--batch_size=8", "--image_size=8", "--steps=1", "--shapes=3"],
        env=env, capture_output=True, text=True, timeout=600, cwd=repo_root,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout
    # The kernels every search step runs, whatever the CPU's ISA (implementation names differ by CPU).
    for kind, propagation in (("convolution", "forward_training"), ("convolution", "backward_weights"),
                              ("convolution", "backward_data"), ("batch_normalization", "backward"),
                              ("pooling", "forward_training")):
        assert any(r.split()[0] == kind and propagation in r.split() for r in table.splitlines() if r.strip()), (
            kind, propagation, table)
    assert "the 3 costliest problem shapes" in table
