"""``--init=reference``: every conv / dense kernel and bias drawn as PyTorch's defaults draw them.

The oracle is the reference's semantics, written out here independently of :mod:`hlrs_tf.space.init`: PyTorch's
``kaiming_uniform_(a=sqrt(5))`` (``torch/nn/modules/conv.py``, ``linear.py``) is ``U(-b, b)`` with
``b = sqrt(2 / (1 + 5)) * sqrt(3 / fan_in) = 1 / sqrt(fan_in)``, the linear bias ``U(-1/sqrt(in), 1/sqrt(in))``;
the fan-in is the one of the PyTorch op a variable stands for (``C_in * kh * kw`` for a full conv, ``k * k`` for
a depthwise conv, dilated or not, ``C_in`` for a 1x1, ``in_features`` for a linear layer). The expected fans
below are written from the architecture (channels of each op's input), not read from our variables' shapes.

Statistical tolerances (the draws are seeded, so each assertion is deterministic; the bounds say why a
correct initialiser passes for *any* seed, not just this one):

* ``max|w| <= b * (1 + 1e-6)``: numpy draws ``[-b, b)`` in float64; the cast to float32 rounds by at most
  ``2**-24`` relative, so a value can land on ``float32(b)``, just above ``b``.
* ``max|w| >= b * (1 - t)`` with ``(1 - t)**n = 1e-9``: the probability that all ``n`` independent draws
  fall inside ``b * (1 - t)`` is ``(1 - t)**n``, so a correct init fails this with probability 1e-9, while a
  wrong fan-in (bounds differ by a factor >= sqrt(2) between the fans tested) fails it surely.
* mean within 6 standard errors of 0 (``b / sqrt(3 n)``) and the mean of ``w**2`` within 6 standard errors
  of ``b**2 / 3`` (``Var(w**2) = b**4 (1/5 - 1/9)``): central-limit tails of ~2e-9 for the sizes used.
"""

import math

import keras
import numpy as np
import pytest

from hlrs_tf.config.search import SearchConfig
from hlrs_tf.data.sources import dataset_spec
from hlrs_tf.runtime.callbacks import EpochCheckpoint
from hlrs_tf.search.bbn import BBNSearchModel, BBNSearchNetwork
from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.space.cells import SearchCell
from hlrs_tf.space.derived_network import DerivedNetwork
from hlrs_tf.space.fused_cell import FusedSearchCell
from hlrs_tf.space.genotypes import DARTS_V2
from hlrs_tf.space.init import apply_init, reference_uniform_bound, reference_variables
from hlrs_tf.space.ops import DepthwiseConv, PointwiseConv
from hlrs_tf.space.supernet import SearchNetwork

C = 8  # initial channels of the test networks
IMAGE = (8, 8, 3)  # three input channels, as CIFAR: the stem conv's fan-in is 3 * 3 * 3


def torch_bound(fan_in):
    """PyTorch's kaiming_uniform_(a=sqrt(5)) bound, from its definition."""
    a = math.sqrt(5)
    gain = math.sqrt(2.0 / (1 + a * a))
    return gain * math.sqrt(3.0 / fan_in)


def check_uniform(values, bound, label=""):
    """``values`` look like independent U(-bound, bound) draws (tolerances: module docstring)."""
    w = arr(values).astype(np.float64).ravel()
    n = w.size
    assert np.abs(w).max() <= bound * (1 + 1e-6), label
    t = 1 - 1e-9 ** (1 / n)
    assert np.abs(w).max() >= bound * (1 - t), (label, np.abs(w).max(), bound, t)
    if n >= 1000:  # large enough for the central-limit tolerances
        assert abs(w.mean()) <= 6 * bound / math.sqrt(3 * n), label
        sq_se = bound**2 * math.sqrt((1 / 5 - 1 / 9) / n)
        assert abs(np.mean(w**2) - bound**2 / 3) <= 6 * sq_se, label


def arr(value):
    return value if isinstance(value, np.ndarray) else value.numpy()


def snapshot(layer):
    return {v.path: arr(v) for v in layer.variables}


@pytest.fixture(scope="module")
def supernet():
    """A built fused supernet (C=8, 3 cells: normal, reduction, reduction after a reduction) before and after
    apply_init(reference)."""
    model = DartsSearchModel(SearchNetwork(C, 10, 3, name="supernet"))
    model.build_all(IMAGE)
    before = snapshot(model.network)
    apply_init(model.network, "reference", seed=0)
    return model.network, before


@pytest.fixture(scope="module")
def derived():
    net = DerivedNetwork(DARTS_V2, C, 10, 4, auxiliary=True, name="derived")
    net.build((None, *IMAGE))
    apply_init(net, "reference", seed=0)
    return net


def test_bound_formula():
    for fan_in in (1, 9, 25, 27, 512, 768, 4096):
        assert reference_uniform_bound(fan_in) == pytest.approx(torch_bound(fan_in), rel=1e-12)
        assert reference_uniform_bound(fan_in) == pytest.approx(1 / math.sqrt(fan_in), rel=1e-12)
    with pytest.raises(ValueError, match="fan_in"):
        reference_uniform_bound(0)


def test_supernet_bounds_per_op(supernet):
    net, _ = supernet
    cell0, cell1, cell2 = net.cells  # normal; reduction (2C); reduction after a reduction (4C)
    # stem: nn.Conv2d(3, 3C, 3) -> fan_in 3 * 3 * 3
    check_uniform(net.stem_conv.kernel, torch_bound(27), "stem")
    # cell 0: preprocessing 1x1 convs on the stem's 3C channels
    check_uniform(cell0.pre0_kernel, torch_bound(3 * C), "cell0 pre0")
    check_uniform(cell0.pre1_kernel, torch_bound(3 * C), "cell0 pre1")
    # cell 2 (channels 4C): FactorizedReduce of s0 = cell 0's output (4C channels), 1x1 of s1 (4 * 2C channels)
    check_uniform(cell2.pre0_fr1, torch_bound(4 * C), "cell2 pre0 FactorizedReduce")
    check_uniform(cell2.pre1_kernel, torch_bound(8 * C), "cell2 pre1")
    c2 = 4 * C
    kernels = cell2.conv_kernels
    # depthwise convs (groups = C): fan_in k * k, dilation 2 or not; pointwise: C
    for key, k in (("sep_conv_3x3/dw1", 3), ("sep_conv_5x5/dw2", 5), ("dil_conv_3x3/dw", 3),
                   ("dil_conv_5x5/dw", 5)):
        check_uniform(kernels[key], torch_bound(k * k), key)
    for key in ("sep_conv_3x3/pw1", "sep_conv_5x5/pw2", "dil_conv_5x5/pw"):
        check_uniform(kernels[key], torch_bound(c2), key)
    # strided skip_connect = FactorizedReduce(C, C) on the 2C-channel state of a reduction cell
    check_uniform(cell1.skip_fr[0], torch_bound(2 * C), "cell1 strided skip")
    # every slice of a stack: one op of one edge, within its own bound, and drawn independently of the others
    dw = arr(cell2.conv_kernels["dil_conv_5x5/dw"])
    for e in range(dw.shape[0]):
        assert np.abs(dw[e]).max() <= torch_bound(25) * (1 + 1e-6)
    assert len({dw[e].tobytes() for e in range(dw.shape[0])}) == dw.shape[0]
    # classifier nn.Linear(4 * 4C, 10): kernel and bias
    check_uniform(net.classifier.kernel, torch_bound(16 * C), "classifier kernel")
    check_uniform(net.classifier.bias, torch_bound(16 * C), "classifier bias")


def test_dense_bias_distribution():
    """The bias rule on a bias large enough for the statistics: U(-1/sqrt(in), 1/sqrt(in))."""
    dense = keras.layers.Dense(4000)
    dense.build((None, 64))
    apply_init(dense, "reference", seed=1)
    check_uniform(dense.bias, torch_bound(64), "bias")
    check_uniform(dense.kernel, torch_bound(64), "kernel")


def test_reference_init_leaves_alphas_bn_and_statistics_and_shapes(supernet):
    net, before = supernet
    after = snapshot(net)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}  # same counts
    alphas = {v.path for v in net.arch_variables}
    kept = [v for v in net.variables
            if v.path in alphas or not v.trainable or v.path.endswith(("/gamma", "/beta"))]
    assert len(kept) > len(alphas)
    for v in kept:
        np.testing.assert_array_equal(after[v.path], before[v.path], err_msg=v.path)
    # everything else was re-drawn
    redrawn = [k for k in after if k not in {v.path for v in kept}]
    assert redrawn and all(not np.array_equal(after[k], before[k]) for k in redrawn)


def test_derived_network_bounds(derived):
    net = derived
    check_uniform(net.stem_conv.kernel, torch_bound(27), "stem")
    head = net.auxiliary_head  # on cell 2's output: 4 nodes x 4C channels
    check_uniform(head.conv1.kernel, torch_bound(16 * C), "aux 1x1 conv")
    check_uniform(head.conv2.kernel, torch_bound(128 * 2 * 2), "aux 2x2 conv")  # nn.Conv2d(128, 768, 2)
    check_uniform(head.classifier.kernel, torch_bound(768), "aux classifier")
    assert np.abs(arr(head.classifier.bias)).max() <= torch_bound(768)
    check_uniform(net.classifier.kernel, torch_bound(16 * C), "classifier")
    # the derived cells' separable / dilated convs, pooled per PyTorch fan-in (large enough for the statistics):
    # depthwise (groups = C) k * k whatever the channels and dilation; 1x1 convs C_in of their input
    pooled = {}
    for layer in net._flatten_layers(include_self=False):
        if isinstance(layer, DepthwiseConv):
            pooled.setdefault(layer.kernel_size**2, []).append(arr(layer.kernel).ravel())
        elif isinstance(layer, PointwiseConv) and layer.name != "conv1":  # conv1: the aux head's, checked above
            pooled.setdefault(int(layer.kernel.shape[2]), []).append(arr(layer.kernel).ravel())
    assert 9 in pooled  # DARTS_V2's sep_conv_3x3 and (dilated) dil_conv_3x3
    for fan_in, values in pooled.items():
        check_uniform(np.concatenate(values), torch_bound(fan_in), f"derived convs of fan_in {fan_in}")
    for variable, bound in reference_variables(net):  # and no variable outside its bound
        assert np.abs(arr(variable)).max() <= bound * (1 + 1e-6), variable.path


def test_bbn_classifier_sees_both_branches():
    net = BBNSearchNetwork(4, 10, 3, name="bbn")
    BBNSearchModel(net).build_all(IMAGE)
    apply_init(net, "reference", seed=0)
    check_uniform(net.classifier.kernel, torch_bound(2 * 16 * 4), "BBN classifier on concat(f_c, f_r)")
    conventional, rebalancing = net.cells[-1].pre1_kernel, net.rebalancing_cell.pre1_kernel
    assert np.abs(arr(rebalancing)).max() <= torch_bound(8 * 4) * (1 + 1e-6)
    assert not np.array_equal(arr(conventional), arr(rebalancing))


@pytest.mark.parametrize("reduction,reduction_prev", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_and_direct_cells_use_the_same_fans(reduction, reduction_prev):
    """Each slice of a fused stack has the bound of the direct op it holds: fill every direct variable with its
    own bound, copy into the fused layout, and every fused variable must be filled with *its* bound."""
    direct = SearchCell(4, reduction, reduction_prev, name="direct")
    fused = FusedSearchCell(4, reduction, reduction_prev, name="fused")
    s0 = np.zeros((1, 8 if reduction_prev else 4, 8 if reduction_prev else 4, 6), "float32")
    s1 = np.zeros((1, 4, 4, 10), "float32")
    w = np.full((14, 8), 1 / 8, "float32")
    direct(s0, s1, w)
    fused(s0, s1, w)
    direct_bounds = reference_variables(direct)
    assert len(direct_bounds) == len(direct.trainable_variables)  # the search cells' BNs are affine-free
    for variable, bound in direct_bounds:
        variable.assign(np.full(variable.shape, bound, "float32"))
    fused.copy_from_direct(direct)
    fused_bounds = reference_variables(fused)
    assert len(fused_bounds) == len(fused.trainable_variables)
    for variable, bound in fused_bounds:
        np.testing.assert_allclose(arr(variable), bound, rtol=1e-6, err_msg=variable.path)
    # and the draws: same per-op distribution in both layouts (the counts per bound agree, parameter for parameter)
    count = lambda pairs: sorted((round(b, 9), int(np.prod(v.shape))) for v, b in pairs)  # noqa: E731
    per_bound = lambda pairs: {b: sum(n for bb, n in count(pairs) if bb == b) for b, _ in count(pairs)}  # noqa
    assert per_bound(direct_bounds) == per_bound(fused_bounds)


def test_same_seed_same_weights_other_seed_other_weights():
    def build(seed):
        net = SearchNetwork(4, 10, 3)
        DartsSearchModel(net).build_all(IMAGE)
        apply_init(net, "reference", seed)
        return [arr(v) for v, _ in reference_variables(net)]

    a, b, c = build(7), build(7), build(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))


def test_keras_mode_leaves_the_model_as_built():
    net = DerivedNetwork(DARTS_V2, 4, 10, 4, auxiliary=True)
    net.build((None, *IMAGE))
    before = snapshot(net)
    apply_init(net, "keras", seed=0)
    after = snapshot(net)
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert not arr(net.classifier.bias).any()  # Keras' zero bias (the reference draws it)


def test_bad_init_and_unknown_layers():
    dense = keras.layers.Dense(3)
    dense.build((None, 2))
    with pytest.raises(ValueError, match=r"--init='glorot' is invalid: it must be one of reference, keras"):
        apply_init(dense, "glorot", 0)
    with pytest.raises(ValueError, match="build"):
        apply_init(keras.layers.Dense(3), "reference", 0)

    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(int(shape[-1]),), name="w")

        def call(self, x):
            return x * self.w

    layer = Scale(name="scale")
    layer.build((None, 4))
    with pytest.raises(TypeError, match="does not know the reference initialisation of scale/w"):
        apply_init(layer, "reference", 0)


def test_search_resume_restores_the_checkpoint_not_a_new_init(tmp_path):
    """build_model initialises (config.init); a checkpoint restored afterwards wins, as in run_search."""
    from hlrs_tf.search.task import build_model

    spec = dataset_spec("digits")
    config = SearchConfig.create(dataset="digits", channels=4, layers=3, batch_size=8, seed=3)
    model = build_model(config, spec, total_steps=4)
    initial_reference = [arr(v) for v, _ in reference_variables(model.network)]
    for v in model.network.trainable_variables:  # stands for a trained epoch
        v.assign(arr(v) * 0.5 + 0.01)
    saved = [arr(v) for v in model.network.weights]
    checkpoint = EpochCheckpoint(str(tmp_path))
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0)

    fresh = build_model(config, spec, total_steps=4)
    # the fresh model got the same reference init (the alphas come from Keras' generator, seeded per run)
    for a, (v, _) in zip(initial_reference, reference_variables(fresh.network)):
        np.testing.assert_array_equal(arr(v), a, err_msg=v.path)
    assert EpochCheckpoint(str(tmp_path)).restore(fresh) == 1
    for a, v in zip(saved, fresh.network.weights):
        np.testing.assert_array_equal(arr(v), a, err_msg=v.path)

    keras_init = build_model(config.replace(init="keras"), spec, total_steps=4)
    assert [v.shape for v in keras_init.network.weights] == [v.shape for v in fresh.network.weights]
    assert not arr(keras_init.network.classifier.bias).any()
