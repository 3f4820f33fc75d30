"""oneDNN's CPU kernels compute what TensorFlow's own (Eigen) kernels compute, for everything the networks run.

Every command runs with oneDNN's kernels by default (``hlrs_tf.runtime.cli.prepare_process``: 2-2.4x faster search and
retraining steps on CPU). Whether a kernel is oneDNN's is fixed per process, so ``tests/onednn_kernel_cases.py``
runs once with ``TF_ENABLE_ONEDNN_OPTS=1`` and once with ``=0`` and the two sets of outputs and gradients are
compared here: single ops at the networks' real shapes, ``FactorizedReduce`` with the channel counts where
oneDNN's 1x1 stride-2 ``Conv2D`` filter gradient is wrong, ``PointwiseConv`` against a float64 numpy oracle.
In whole networks every kernel call is measured against float64 from the inputs the network gave it (the
ground truth: two float32 results compared with each other cannot tell a wrong kernel from round-off), and
the logits against the network run in float64. Both processes use the commands' thread layout (one intra-op
thread), the one whose kernels the search runs.
"""

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def kernel_outputs(tmp_path_factory, child_env, run_side_by_side):
    # The two processes run side by side (conftest.run_side_by_side): each uses one intra-op thread (the
    # commands' layout, set inside the script), so on two cores they barely compete, and neither reads anything
    # the other writes. Which kernel runs is fixed by TF_ENABLE_ONEDNN_OPTS and the thread count, not by the
    # load, and every input comes from a fixed seed, so the arrays compared are the same as when the processes
    # ran one after the other.
    root = tmp_path_factory.mktemp("onednn")
    labels = {"onednn": "1", "eigen": "0"}  # label -> TF_ENABLE_ONEDNN_OPTS
    run_side_by_side([([sys.executable, os.path.join(HERE, "onednn_kernel_cases.py"), str(root / f"{label}.npz")],
                       dict(child_env, TF_ENABLE_ONEDNN_OPTS=value)) for label, value in labels.items()],
                     timeout=900, what="onednn_kernel_cases.py")
    return {label: dict(np.load(root / f"{label}.npz")) for label in labels}


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


@pytest.mark.parametrize("prefix", ["depthwise", "einsum_1x1", "conv_1x1_s1", "pointwise", "fused_bn", "max_pool",
                                    "avg_pool", "aux_avg_pool", "stem_conv", "factorized_reduce"])
def test_single_kernels_agree(kernel_outputs, prefix):
    diffs = _relative_diffs(kernel_outputs, prefix)
    worst = max(diffs, key=diffs.get)
    # An entry is a float32 sum of up to 64*32*32 = 65,536 products (a kernel gradient over batch and pixels);
    # two summation orders differ by ~sqrt(n) * 2^-24 ~ 1.5e-5 relative there (1.04e-5 measured for the stem
    # conv's kernel gradient). 1e-4 leaves margin and is still 4,000x below the wrong kernels found (0.4-1.1).
    assert diffs[worst] < 1e-4, f"{worst}: relative difference {diffs[worst]:.3g}"


NETWORK_KERNELS = {  # the kernel kinds each network must have run (tests/onednn_kernel_cases.KernelCalls)
    "supernet_fused": {"depthwise", "pointwise", "fused_bn", "max_pool_3x3", "avg_pool_3x3"},
    "supernet_direct": {"depthwise", "pointwise", "batch_norm", "max_pool_3x3", "avg_pool_3x3"},
    "derived": {"depthwise", "pointwise", "batch_norm", "max_pool_3x3", "aux_avg_pool"},
}


@pytest.mark.parametrize("label", ["onednn", "eigen"])
@pytest.mark.parametrize("network", sorted(NETWORK_KERNELS))
def test_every_kernel_call_of_the_networks_matches_float64(kernel_outputs, network, label):
    """Each kernel call of a whole training-mode pass, from the inputs the network gave it, against float64.

    Output and gradients with respect to every input (activations, kernels, BN scales: the fused cell's BN
    scales are the mixing weights, so this is the alphas' path). Not the whole network's gradient against a
    float64 network: that comparison is decided by which side of a ReLU kink a near-zero pre-activation falls
    in each precision, which depends on the CPU (module docstring of ``onednn_kernel_cases.py``).

    Bound: the widest reduction is a BN gradient over 8 x 16 x 16 = 2,048 values, whose float32 round-off is
    ~sqrt(n) * 6e-8 ~ 3e-6 relative (measured worst on an AVX-512 CPU: 7.7e-6, a BN; every other kind under
    1.5e-6). 1e-4 leaves 13x margin and is still 400x below the 4.2% of the wrong 1x1 kernel gradient once seen
    on AVX-512 and 4,000x below the wrong stride-2 1x1 filter gradient on AVX2 (0.4-1.1).
    """
    prefix = f"layerwise/{network}/"
    calls = {k[len(prefix):]: v for k, v in kernel_outputs[label].items() if k.startswith(prefix)}
    kinds = {name.split("_", 1)[1] for name in calls}
    assert NETWORK_KERNELS[network] <= kinds, f"kernels not reached: {NETWORK_KERNELS[network] - kinds}"
    assert len(calls) > 100
    worst = max(calls, key=lambda k: calls[k].max())
    assert calls[worst].max() < 1e-4, (
        f"{label} kernels, {network}: call {worst} is {calls[worst].max():.3g} off float64 "
        f"(output, then the gradient of each input: {np.array2string(calls[worst], precision=3)})")


@pytest.mark.parametrize("label", ["onednn", "eigen"])
@pytest.mark.parametrize("network", ["supernet_direct", "derived"])
def test_whole_network_logits_match_float64(kernel_outputs, network, label):
    """The whole forward pass of each kernel set against the same network run in float64.

    The forward pass is continuous (a kink changes nothing by more than the rounding that decided it), so it
    can be compared whole. Measured: 2e-6 (Eigen) and 5e-6 (oneDNN) of the largest logit on an AVX-512 CPU;
    round-off of ~40 layers of float32 ops, each ~1e-7 relative. 1e-4 leaves 20x margin.
    """
    truth = kernel_outputs["eigen"][f"float64/{network}/logits"]
    got = kernel_outputs[label][f"{network}/logits"]
    err = float(np.abs(got - truth).max() / np.abs(truth).max())
    assert err < 1e-4, f"{label} kernels: {network} logits {err:.3g} off float64"


def _pointwise_oracle(x, w, strides, proj):
    """Output and gradients (input, kernel) of a bias-free 1x1 conv of NHWC ``x``, in float64 numpy."""
    x = x.astype(np.float64)
    w = w.reshape(w.shape[2], w.shape[3]).astype(np.float64)
    xs = x[:, ::strides, ::strides, :]
    y = xs @ w
    dx = np.zeros_like(x)
    dx[:, ::strides, ::strides, :] = proj @ w.T
    dw = np.einsum("bhwc,bhwd->cd", xs, proj).reshape(1, 1, *w.shape)
    return y, dx, dw


@pytest.mark.parametrize("label", ["onednn", "eigen"])
def test_pointwise_conv_matches_float64_oracle(kernel_outputs, label):
    # hlrs_tf.space.ops.PointwiseConv at the shapes the networks run, and with 1-16 input channels (fewer than one of
    # oneDNN's channel blocks: where its 1x1 Conv2D filter gradients went wrong) at the direct supernet's
    # 16x16, batch 8. float32 sums of at most 2,048 products: relative round-off well under 1e-5.
    got = kernel_outputs[label]
    names = sorted({k.rsplit("/", 1)[0] for k in got if k.startswith("pointwise") and k.endswith("/x")})
    assert len(names) >= 40
    for name in names:
        x, w = got[name + "/x"], got[name + "/w"]
        strides = 2 if name.endswith("_s2") else 1
        y_shape = got[name + "/y"].shape
        proj = np.random.default_rng(1).standard_normal(y_shape).astype("float32").astype(np.float64)
        for key, want in zip(("y", "g0", "g1"), _pointwise_oracle(x, w, strides, proj)):
            err = np.abs(got[f"{name}/{key}"] - want).max() / np.abs(want).max()
            assert err < 1e-5, f"{label}: {name}/{key} is {err:.3g} off the float64 oracle"
