"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections and edge normalisation, against the reference.

Reference: github.com/yuhuixu1993/PC-DARTS, ``model_search.py`` (``channel_shuffle``, ``MixedOp.forward``'s
``xtemp``/``xtemp2`` split, ``Network.forward``'s ``weights2`` construction, ``Network.genotype``/``_parse``)
and ``operations.py`` (the candidate ops, whose module structure gives the closed-form parameter count). The
DARTS ops are those of github.com/quark0/darts ``cnn/operations.py`` (identical in PC-DARTS).

Every expectation here is a numpy transcription of that PyTorch code or a closed-form count of its modules,
never an output of our implementation:

* ``channel_shuffle`` (NHWC) == the reference's NCHW ``view -> transpose(1, 2) -> view``, and where the
  concatenation ``[op output, bypass]`` lands after it;
* ``split_channels`` == the reference's ``x[:, :C//k]``, ``x[:, C//k:]``;
* ``edge_weights`` == the reference's per-node softmax of the betas (``weights2``);
* the weight count of ``SearchNetwork(partial_channels=K)`` (both cell implementations) == the reference
  ``Network`` with ``MixedOp`` ops on ``C // K`` channels (1,930,618 at K=1, the DARTS count);
* ``derive_genotype(..., betas_normal, betas_reduce)`` == the reference ``genotype()`` (alphas softmaxed,
  rows scaled by ``weights2``, ``_parse``), on random and hand-made alphas/betas;
* configurations the reference cannot build (``C % K != 0``, odd ``C // K`` in a reduction cell) are refused.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.space.genotypes import PRIMITIVES, derive_genotype
from hlrs_tf.space.partial_channels import channel_shuffle, edge_weights, split_channels
from hlrs_tf.space.supernet import SearchNetwork

NONE = PRIMITIVES.index("none")
OPS = {name: k for k, name in enumerate(PRIMITIVES)}


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def edge_index(node, inp):
    """Row of a (14, 8) alpha tensor / index of a (14,) beta vector for the edge ``inp -> node``."""
    return sum(2 + j for j in range(node)) + inp


# ---------------------------------------------------------------------------------- reference transcriptions


def reference_channel_shuffle_nchw(x, groups):
    """model_search.py ``channel_shuffle``, on an NCHW numpy array, transcribed line for line."""
    batchsize, num_channels, height, width = x.shape
    channels_per_group = num_channels // groups
    x = x.reshape(batchsize, groups, channels_per_group, height, width)  # x.view(...)
    x = np.ascontiguousarray(np.swapaxes(x, 1, 2))  # torch.transpose(x, 1, 2).contiguous()
    return x.reshape(batchsize, -1, height, width)  # x.view(batchsize, -1, height, width)


def reference_shuffle_position(c, num_channels, groups):
    """Where input channel ``c`` ends up after the reference shuffle, in closed form.

    ``view(B, g, C/g, ...)`` puts channel ``c`` at ``(i, j) = (c // (C/g), c % (C/g))``; after
    ``transpose(1, 2)`` it sits at ``(j, i)`` of a ``(C/g, g)`` grid, i.e. flat position ``j * g + i``.
    """
    per_group = num_channels // groups
    return (c % per_group) * groups + c // per_group


def reference_softmax(a):
    a = np.asarray(a, dtype=np.float64)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_weights2(betas, steps=4):
    """``Network.forward``'s ``weights2``: softmax(betas[0:2]), then softmax of the next 3, 4, ... betas."""
    betas = np.asarray(betas, dtype=np.float64)
    n = 3
    start = 2
    weights2 = reference_softmax(betas[0:2])
    for _ in range(steps - 1):
        end = start + n
        tw2 = reference_softmax(betas[start:end])
        start = end
        n += 1
        weights2 = np.concatenate([weights2, tw2], axis=0)
    return weights2


def reference_parse(weights, weights2, steps=4):
    """``Network.genotype``'s ``_parse(weights, weights2)``, transcribed loop for loop."""
    gene = []
    n = 2
    start = 0
    for i in range(steps):
        end = start + n
        W = weights[start:end].copy()
        W2 = weights2[start:end].copy()
        for j in range(n):
            W[j, :] = W[j, :] * W2[j]
        edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != NONE))[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != NONE:
                    if k_best is None or W[j][k] > W[j][k_best]:
                        k_best = k
            gene.append((PRIMITIVES[k_best], j))
        start = end
        n += 1
    return gene


def reference_genotype(alphas_normal, alphas_reduce, betas_normal, betas_reduce, steps=4):
    """``Network.genotype()``: (normal, reduce) gene lists from raw alphas and betas."""
    normal = reference_parse(reference_softmax(alphas_normal), reference_weights2(betas_normal, steps), steps)
    reduce = reference_parse(reference_softmax(alphas_reduce), reference_weights2(betas_reduce, steps), steps)
    return normal, reduce


def pairs(cell):
    return [(str(op), int(i)) for op, i in cell]


# ------------------------------------------------------------------------ reference parameter count (closed form)


def reference_mixed_op_params(c_op, stride):
    """Parameters of one reference ``MixedOp`` whose candidates run on ``c_op = C // k`` channels.

    All candidates are built with ``affine=False`` (no BN parameters; the pools' extra ``BatchNorm2d(affine=False)``
    has none either, and ``MixedOp.mp`` is a parameter-free max pool):
      none, max_pool_3x3, avg_pool_3x3: 0;
      skip_connect: Identity (0) at stride 1, ``FactorizedReduce(c, c)`` at stride 2 = two 1x1 convs c -> c/2;
      sep_conv_kxk: two (depthwise k*k*c + pointwise c*c);
      dil_conv_kxk: one depthwise k*k*c + pointwise c*c.
    """
    n = 0
    for k in (3, 5):
        n += 2 * (k * k * c_op + c_op * c_op)  # sep_conv_kxk
        n += k * k * c_op + c_op * c_op  # dil_conv_kxk
    if stride == 2:
        assert c_op % 2 == 0, "FactorizedReduce asserts C_out % 2 == 0"
        n += 2 * c_op * (c_op // 2)  # skip_connect = FactorizedReduce(c_op, c_op, affine=False)
    return n


def reference_network_params(C, num_classes, layers, k, in_channels=3, steps=4, multiplier=4, stem_multiplier=3):
    """Weight parameters of the reference ``model_search.Network(C, num_classes, layers)`` with ``MixedOp``
    candidates on ``C_cell // k`` channels (k=1: DARTS; the reference hard-codes k=4). Arch parameters excluded.
    """
    c_curr = stem_multiplier * C
    total = 3 * 3 * in_channels * c_curr + 2 * c_curr  # stem Conv2d(3, 3C, 3, bias=False) + BatchNorm2d(3C) affine
    c_pp, c_p, c_curr = c_curr, c_curr, C
    reduction_prev = False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c_curr *= 2
        if reduction_prev:  # FactorizedReduce(C_pp, C, affine=False): two 1x1 convs C_pp -> C/2
            assert c_curr % 2 == 0
            total += 2 * c_pp * (c_curr // 2)
        else:  # ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
            total += c_pp * c_curr
        total += c_p * c_curr  # preprocess1: ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        for node in range(steps):
            for j in range(2 + node):
                stride = 2 if reduction and j < 2 else 1
                total += reference_mixed_op_params(c_curr // k, stride)
        reduction_prev = reduction
        c_pp, c_p = c_p, multiplier * c_curr
    total += c_p * num_classes + num_classes  # classifier Linear(C_prev, num_classes), bias
    return total


def test_reference_formula_reproduces_darts_count():
    """At k=1 the closed form is the DARTS supernet: 1,930,618 at C=16, 8 cells, 10 classes, 32x32x3."""
    assert reference_network_params(16, 10, 8, 1) == 1_930_618
    # The PC-DARTS counts (printed for the README; -s shows them).
    print({k: reference_network_params(16, 10, 8, k) for k in (1, 2, 4)})


# ------------------------------------------------------------------------------------------ channel shuffle


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("channels", [8, 16, 32])
def test_channel_shuffle_matches_reference(groups, channels):
    rng = np.random.default_rng(1000 * groups + channels)
    x = rng.standard_normal((2, 5, 3, channels)).astype(np.float32)  # NHWC
    expected = reference_channel_shuffle_nchw(x.transpose(0, 3, 1, 2), groups).transpose(0, 2, 3, 1)
    got = to_numpy(channel_shuffle(tf.constant(x), groups))
    assert got.shape == x.shape
    # A permutation of channels: exact.
    np.testing.assert_array_equal(got, expected)


def test_channel_shuffle_handmade_permutation():
    """C=8, g=4: view(4, 2) -> transpose -> rows (0, 2, 4, 6), (1, 3, 5, 7), worked out by hand."""
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 1, 8)
    got = to_numpy(channel_shuffle(tf.constant(x), 4)).reshape(-1)
    np.testing.assert_array_equal(got, [0, 2, 4, 6, 1, 3, 5, 7])
    # g=2: view(2, 4) -> transpose -> (0, 4), (1, 5), (2, 6), (3, 7)
    got = to_numpy(channel_shuffle(tf.constant(x), 2)).reshape(-1)
    np.testing.assert_array_equal(got, [0, 4, 1, 5, 2, 6, 3, 7])


@pytest.mark.parametrize("k,channels", [(4, 16), (4, 32), (2, 16)])
def test_shuffle_after_concat_places_op_channels_as_reference(k, channels):
    """``MixedOp.forward``: ``channel_shuffle(cat([op(xtemp), xtemp2]), k)``. Channel ``c`` of the
    concatenation goes to ``(c % (C/k)) * k + c // (C/k)``: the ``C/k`` op channels to ``0, k, 2k, ...`` and
    bypass channel ``m`` (concat index ``C/k + m``) to ``(m % (C/k)) * k + 1 + m // (C/k)``."""
    rng = np.random.default_rng(7 * k + channels)
    c_op = channels // k
    op_out = rng.standard_normal((2, 4, 4, c_op)).astype(np.float32)
    bypass = rng.standard_normal((2, 4, 4, channels - c_op)).astype(np.float32)
    cat = np.concatenate([op_out, bypass], axis=-1)
    got = to_numpy(channel_shuffle(tf.concat([tf.constant(op_out), tf.constant(bypass)], axis=-1), k))

    np.testing.assert_array_equal(got[..., ::k], op_out)  # op channels at 0, k, 2k, ...
    for c in range(channels):
        np.testing.assert_array_equal(got[..., reference_shuffle_position(c, channels, k)], cat[..., c])
    for m in range(channels - c_op):
        np.testing.assert_array_equal(got[..., (m % c_op) * k + 1 + m // c_op], bypass[..., m])
    # the closed form is the reference's permutation
    expected = reference_channel_shuffle_nchw(cat.transpose(0, 3, 1, 2), k).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------------------------------- channel split


@pytest.mark.parametrize("k", [4, 2])
@pytest.mark.parametrize("channels", [16, 32])
def test_split_channels_is_reference_xtemp_xtemp2(k, channels):
    rng = np.random.default_rng(k * channels)
    x = rng.standard_normal((2, 3, 5, channels)).astype(np.float32)
    xtemp, xtemp2 = split_channels(tf.constant(x), k)
    xtemp, xtemp2 = to_numpy(xtemp), to_numpy(xtemp2)
    # reference (NCHW): x[:, :dim_2 // k], x[:, dim_2 // k:]; NHWC: the last axis
    np.testing.assert_array_equal(xtemp, x[..., : channels // k])
    np.testing.assert_array_equal(xtemp2, x[..., channels // k:])
    assert xtemp.shape[-1] == channels // k and xtemp2.shape[-1] == channels - channels // k


# -------------------------------------------------------------------------------------- edge normalisation


@pytest.mark.parametrize("steps", [4, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edge_weights_match_reference_weights2(seed, steps):
    num_edges = sum(2 + j for j in range(steps))
    rng = np.random.default_rng(seed)
    betas = rng.standard_normal(num_edges).astype(np.float32)
    expected = reference_weights2(betas, steps)  # float64 oracle on the same float32 betas
    got = to_numpy(edge_weights(tf.constant(betas), steps=steps))
    assert got.shape == (num_edges,)
    # float32 softmax of <= 5 O(1) logits: exp (<= 2 ulp), a sum of <= 5 terms (<= 4 roundings) and a division
    # (1): <= ~8 ulp relative = 8 * 2**-24 ~ 4.8e-7; 2e-6 leaves a 4x margin and still fails any wrong grouping
    # (a wrong node boundary changes weights by O(0.1)).
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)
    # each node's incoming edge weights sum to one
    start = 0
    for node in range(steps):
        end = start + 2 + node
        np.testing.assert_allclose(got[start:end].sum(), 1.0, rtol=2e-6)
        start = end


def test_edge_weights_handmade_groups_and_stability():
    """Groups (0-1), (2-4), (5-8), (9-13), each softmaxed on its own; large logits stay finite."""
    betas = np.zeros(14, dtype=np.float32)
    got = to_numpy(edge_weights(tf.constant(betas)))
    # uniform within each node: 1/2, 1/3, 1/4, 1/5 -- the groups are exactly the reference's
    np.testing.assert_allclose(got, [1 / 2] * 2 + [1 / 3] * 3 + [1 / 4] * 4 + [1 / 5] * 5, rtol=2e-7)
    betas = np.full(14, -1000.0, dtype=np.float32)
    betas[edge_index(2, 3)] = 1000.0
    got = to_numpy(edge_weights(tf.constant(betas)))
    assert np.all(np.isfinite(got))
    expected = reference_weights2(betas)
    # e^-2000 underflows to 0 in both; the 1000-logit edge is exactly 1 in node 2, others are uniform
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-30)
    assert got[edge_index(2, 3)] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- parameter count


def weight_count(net):
    arch = {id(v) for v in net.arch_variables}
    return int(sum(np.prod(v.shape) for v in net.trainable_variables if id(v) not in arch))


_NETWORKS = {}


def built_network(k, cell_impl):
    """SearchNetwork(C=16, 10 classes, 8 cells, partial_channels=k) built once per configuration."""
    key = (k, cell_impl)
    if key not in _NETWORKS:
        net = SearchNetwork(channels=16, num_classes=10, layers=8, partial_channels=k, cell_impl=cell_impl)
        net(tf.zeros((2, 32, 32, 3)), training=False)
        _NETWORKS[key] = net
    return _NETWORKS[key]


@pytest.fixture(scope="module", autouse=True)
def _release_networks():
    yield
    _NETWORKS.clear()


# The direct cells take ~20 s to build at C=16 / 8 cells on 2 cores (the fused ones ~2 s): K=4 is counted with
# both implementations there, K=2 with the fused one; K=2 direct is counted on a smaller network below.
@pytest.mark.parametrize("k,cell_impl", [(4, "fused"), (4, "direct"), (2, "fused")])
def test_parameter_count_matches_pc_darts_formula(k, cell_impl):
    net = built_network(k, cell_impl)
    expected = reference_network_params(16, 10, 8, k)
    got = weight_count(net)
    print(f"PC-DARTS K={k} ({cell_impl}): {got} weights (reference formula {expected})")
    assert got == expected
    # arch parameters: alphas (14, 8) x2, betas (14,) x2, in the reference's order
    assert [tuple(v.shape) for v in net.arch_variables] == [(14, 8), (14, 8), (14,), (14,)]
    assert len({id(v) for v in net.arch_variables}) == 4
    trainable = {id(v) for v in net.trainable_variables}
    assert all(id(v) in trainable for v in net.arch_variables)


@pytest.mark.parametrize("cell_impl", ["fused", "direct"])
def test_parameter_count_small_network_k2(cell_impl):
    """C=8, 5 cells (reductions at cells 1 and 3), K=2: the closed form away from the paper's configuration.
    The count does not depend on the input size (convolutions and a global pool), so an 8x8 input builds it."""
    net = SearchNetwork(channels=8, num_classes=10, layers=5, partial_channels=2, cell_impl=cell_impl)
    net(tf.zeros((1, 8, 8, 3)), training=False)
    assert weight_count(net) == reference_network_params(8, 10, 5, 2) == 146_962


def test_parameter_count_k1_is_darts():
    """``partial_channels=1`` is plain DARTS: 1,930,618 weights, the two alphas only."""
    net = built_network(1, "fused")
    assert weight_count(net) == reference_network_params(16, 10, 8, 1) == 1_930_618
    assert [tuple(v.shape) for v in net.arch_variables] == [(14, 8), (14, 8)]


def test_network_genotype_uses_betas():
    """The reference ``Network.genotype()`` of a PC-DARTS network derives with its betas (edge normalisation)."""
    net = built_network(4, "fused")
    rng = np.random.default_rng(11)
    values = [rng.standard_normal(tuple(v.shape)).astype(np.float32) for v in net.arch_variables]
    old = [np.array(v.numpy()) for v in net.arch_variables]
    try:
        for v, val in zip(net.arch_variables, values):
            v.assign(val)
        g = net.genotype()
        normal, reduce = reference_genotype(*values)
        assert pairs(g.normal) == normal
        assert pairs(g.reduce) == reduce
    finally:
        for v, val in zip(net.arch_variables, old):
            v.assign(val)


# ------------------------------------------------------------------------------- edge-normalised derivation


@pytest.mark.parametrize("seed", range(8))
def test_derive_genotype_with_betas_matches_reference(seed):
    rng = np.random.default_rng(seed)
    an, ar = rng.standard_normal((2, 14, 8))
    bn, br = rng.standard_normal((2, 14))
    g = derive_genotype(an, ar, betas_normal=bn, betas_reduce=br)
    normal, reduce = reference_genotype(an, ar, bn, br)
    assert pairs(g.normal) == normal
    assert pairs(g.reduce) == reduce
    assert list(g.normal_concat) == [2, 3, 4, 5] and list(g.reduce_concat) == [2, 3, 4, 5]


def _handmade_alphas():
    """Alphas with a clear winner everywhere except where the betas are meant to decide.

    Softmax of 8 logits with one at ``a`` and seven at 0 gives the winner ``e^a / (e^a + 7)``:
    a=2 -> 0.5135, a=1.5 -> 0.3903, a=1 -> 0.2797; the other ops 1/(e^a + 7); an all-zero edge 1/8 = 0.125.
    """
    a = np.zeros((14, 8))
    # node 0: sep_conv_3x3 on input 0 (0.5135) above skip_connect on input 1 (0.2797) -> order (0, 1)
    a[edge_index(0, 0), OPS["sep_conv_3x3"]] = 2.0
    a[edge_index(0, 1), OPS["skip_connect"]] = 1.0
    # node 1: input 0 sep_conv_3x3 0.5135, input 1 skip_connect 0.3903, input 2 dil_conv_3x3 0.2797
    a[edge_index(1, 0), OPS["sep_conv_3x3"]] = 2.0
    a[edge_index(1, 1), OPS["skip_connect"]] = 1.5
    a[edge_index(1, 2), OPS["dil_conv_3x3"]] = 1.0
    # node 2: input 2 avg_pool_3x3 0.5135, input 3 sep_conv_5x5 0.3903, inputs 0, 1 all-zero (0.125)
    a[edge_index(2, 2), OPS["avg_pool_3x3"]] = 2.0
    a[edge_index(2, 3), OPS["sep_conv_5x5"]] = 1.5
    # node 3: input 4 dil_conv_5x5 0.5135, input 0 max_pool_3x3 0.2797, inputs 1-3 all-zero (0.125)
    a[edge_index(3, 4), OPS["dil_conv_5x5"]] = 2.0
    a[edge_index(3, 0), OPS["max_pool_3x3"]] = 1.0
    return a


def test_derive_genotype_betas_change_kept_edges_handmade():
    """Node 1's betas (0, 0, 3) pick its edge from node 0 (input 2) over the stronger-alpha edges 0 and 1.

    Without betas node 1 keeps inputs 0 (0.5135) and 1 (0.3903): (sep_conv_3x3, 0), (skip_connect, 1).
    With betas (0, 0, 3) its edges get weights2 = softmax(0, 0, 3) = (1, 1, e^3) / (2 + e^3)
    = (0.0453, 0.0453, 0.9094), so the edge scores become 0.5135 * 0.0453 = 0.0233, 0.3903 * 0.0453 = 0.0177
    and 0.2797 * 0.9094 = 0.2544: inputs 2 then 0 are kept, (dil_conv_3x3, 2), (sep_conv_3x3, 0).
    All other betas are 0 (uniform within their node: every edge of a node scaled alike, ranking unchanged).
    The reduction cell has the same alphas and all-zero betas, so it is the plain derivation.
    """
    a = _handmade_alphas()
    betas_normal = np.zeros(14)
    betas_normal[edge_index(1, 2)] = 3.0
    betas_reduce = np.zeros(14)
    plain = [
        ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("avg_pool_3x3", 2), ("sep_conv_5x5", 3),
        ("dil_conv_5x5", 4), ("max_pool_3x3", 0),
    ]
    with_betas = [
        ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("dil_conv_3x3", 2), ("sep_conv_3x3", 0),
        ("avg_pool_3x3", 2), ("sep_conv_5x5", 3),
        ("dil_conv_5x5", 4), ("max_pool_3x3", 0),
    ]
    # the hand-worked expectations are the reference's
    assert reference_genotype(a, a, betas_normal, betas_reduce) == (with_betas, plain)
    assert pairs(derive_genotype(a, a).normal) == plain

    g = derive_genotype(a, a, betas_normal=betas_normal, betas_reduce=betas_reduce)
    assert pairs(g.normal) == with_betas
    assert pairs(g.reduce) == plain
    # the same betas on the reduction side move the reduction cell instead
    g = derive_genotype(a, a, betas_normal=betas_reduce, betas_reduce=betas_normal)
    assert pairs(g.normal) == plain
    assert pairs(g.reduce) == with_betas


@pytest.mark.parametrize("value", [0.0, 0.7, -3.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uniform_betas_give_plain_darts_derivation(seed, value):
    """Equal betas make weights2 = 1/(2 + node) on every edge of a node: each node's rows are scaled alike,
    so the ranking and the argmax are the plain DARTS ``_parse``."""
    rng = np.random.default_rng(100 + seed)
    an, ar = rng.standard_normal((2, 14, 8))
    betas = np.full(14, value)
    g = derive_genotype(an, ar, betas_normal=betas, betas_reduce=betas)
    plain = derive_genotype(an, ar)
    assert pairs(g.normal) == pairs(plain.normal)
    assert pairs(g.reduce) == pairs(plain.reduce)
    # and the reference agrees
    assert reference_genotype(an, ar, betas, betas) == (pairs(plain.normal), pairs(plain.reduce))


# ------------------------------------------------------------------------------------------ bad configurations


@pytest.mark.parametrize(
    "channels,k",
    [
        (16, 3),  # 16 % 3 != 0: the reference's shuffle view(B, 3, 16 // 3, ...) cannot hold 16 channels
        (10, 4),  # 10 % 4 != 0, and the first reduction cell (20 channels) has 20 // 4 = 5: odd, FactorizedReduce fails
        (6, 4),  # 6 % 4 != 0; reduction cell 12 // 4 = 3: odd
    ],
)
def test_refuses_configurations_the_reference_cannot_build(channels, k):
    # Control: a configuration the reference builds (8 % 4 == 0; reduction cells 16 // 4, 32 // 4 even) is
    # accepted -- otherwise Keras' own "Unrecognized keyword arguments ... {'partial_channels': ...}" ValueError
    # would pass the check below without any validation.
    ok = SearchNetwork(channels=8, num_classes=10, layers=3, partial_channels=4)
    ok(tf.zeros((1, 8, 8, 3)), training=False)
    with pytest.raises(ValueError, match="partial_channels"):
        net = SearchNetwork(channels=channels, num_classes=10, layers=3, partial_channels=k)
        net(tf.zeros((1, 8, 8, 3)), training=False)
