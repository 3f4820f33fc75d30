"""oneDNN's CPU kernels compute what TensorFlow's own (Eigen) kernels compute, for everything the networks run.

Every command runs with oneDNN's kernels by default (``hlrs_tf.cli.prepare_process``: 2-2.4x faster search and
retraining steps on CPU). Whether a kernel is oneDNN's is fixed per process, so ``tests/onednn_kernel_cases.py``
runs once with ``TF_ENABLE_ONEDNN_OPTS=1`` and once with ``=0`` and the two sets of outputs and gradients are
compared here: single ops at the networks' real shapes, ``FactorizedReduce`` with the channel counts where
oneDNN's 1x1 stride-2 ``Conv2D`` filter gradient is wrong, and the gradients of whole supernets (fused and
direct cells, alphas included) and of a derived network.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def kernel_outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("onednn")
    results = {}
    for label, value in (("onednn", "1"), ("eigen", "0")):
        path = str(root / f"{label}.npz")
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": value}
        proc = subprocess.run([sys.executable, os.path.join(HERE, "onednn_kernel_cases.py"), path], env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[label] = dict(np.load(path))
    return results


def test_each_process_ran_the_kernels_it_was_asked_for(kernel_outputs):
    assert bool(kernel_outputs["onednn"].pop("onednn")) is True
    assert bool(kernel_outputs["eigen"].pop("onednn")) is False


def _relative_diffs(kernel_outputs, prefix):
    on, off = kernel_outputs["onednn"], kernel_outputs["eigen"]
    keys = sorted(k for k in off if k.startswith(prefix))
    assert keys and set(keys) == {k for k in on if k.startswith(prefix)}
    diffs = {}
    for k in keys:
        assert on[k].shape == off[k].shape, k
        scale = float(np.abs(off[k]).max())
        assert scale > 0, f"{k} is all zeros: nothing compared"
        diffs[k] = float(np.abs(on[k] - off[k]).max()) / scale
    return diffs


@pytest.mark.parametrize("prefix", ["depthwise", "einsum_1x1", "conv_1x1_s1", "fused_bn", "max_pool", "avg_pool",
                                    "aux_avg_pool", "stem_conv", "factorized_reduce"])
def test_single_kernels_agree(kernel_outputs, prefix):
    diffs = _relative_diffs(kernel_outputs, prefix)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-5, f"{worst}: relative difference {diffs[worst]:.3g}"


@pytest.mark.parametrize("network", ["supernet_fused", "supernet_direct", "derived"])
def test_whole_network_gradients_agree(kernel_outputs, network):
    diffs = _relative_diffs(kernel_outputs, network + "/")
    assert any("alpha" in k for k in diffs) or network == "derived"  # the architecture gradient is compared
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-3, f"{worst}: relative difference {diffs[worst]:.3g}"
