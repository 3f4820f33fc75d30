"""The derived (evaluation) network of a genotype: reference parameter count, cell wiring, drop-path, auxiliary
head, BBN head and the ``model.keras`` round trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.space import ops as darts_ops
from hlrs_tf.space.derived_network import (
    AuxiliaryHead,
    DerivedCell,
    DerivedNetwork,
    average_pool_same,
    drop_path,
)
from hlrs_tf.space.genotypes import DARTS_V1, DARTS_V2, Genotype, GenotypeError
from hlrs_tf.space.stacking import reduction_layers


def _images(n, shape, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def test_darts_v2_reference_parameter_count():
    """DARTS_V2, C=36, 20 cells, auxiliary head, 10 classes, 32x32x3: the reference's 3,349,342.

    The reference prints "param size = 3.349342MB" from count_parameters_in_MB, which leaves out every
    parameter named "auxiliary": 3,349,342 is the network without its head; the head adds 476,426
    (1x1 conv 576->128, BN, 2x2 conv 128->768, BN, linear 768->10). Running BN statistics are not parameters.
    """
    net = DerivedNetwork(DARTS_V2, 36, 10, 20, auxiliary=True)
    net.build((None, 32, 32, 3))
    counts = net.parameter_counts()
    assert counts["params_without_aux"] == 3_349_342
    assert counts["aux_params"] == 576 * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10 == 476_426
    assert counts["params"] == 3_825_768
    # BN moving statistics are non-trainable and not counted (with them the count would be larger)
    moving = sum(int(np.prod(v.shape)) for v in net.non_trainable_variables if "moving" in v.path)
    assert moving > 0 and counts["non_trainable"] >= moving


def test_darts_v1_and_no_aux_counts_differ_consistently():
    with_aux = DerivedNetwork(DARTS_V1, 8, 10, 5, auxiliary=True)
    without = DerivedNetwork(DARTS_V1, 8, 10, 5, auxiliary=False)
    for n in (with_aux, without):
        n.build((None, 32, 32, 3))
    assert with_aux.parameter_counts()["params_without_aux"] == without.parameter_counts()["params"]
    assert without.parameter_counts()["aux_params"] == 0 and without.auxiliary_head is None


def test_cell_wiring_follows_the_genotype():
    net = DerivedNetwork(DARTS_V2, 4, 10, 8, auxiliary=False)
    assert reduction_layers(8) == (2, 5)
    assert [c.reduction for c in net.cells] == [i in (2, 5) for i in range(8)]
    assert [c.reduction_prev for c in net.cells] == [i in (3, 6) for i in range(8)]
    assert [c.channels for c in net.cells] == [4, 4, 8, 8, 8, 16, 16, 16]
    reduce_cell = net.cells[2]
    ops_ = reduce_cell.cell_ops
    # reduce genotype: max_pool(0), max_pool(1), skip(2), max_pool(1), ... -> only edges from inputs 0/1 stride 2
    assert [type(o).__name__ for o in ops_[:3]] == ["Pool", "Pool", "Identity"]
    assert [getattr(o, "strides", 1) for o in ops_] == [2 if i < 2 else 1 for _, i in DARTS_V2.reduce]
    # pools carry no BN in the derived network; a stride-2 skip_connect is a FactorizedReduce
    assert all(o.norm is None for o in ops_ if isinstance(o, darts_ops.Pool))
    normal = net.cells[0]
    assert isinstance(normal.cell_ops[5], darts_ops.Identity)  # ("skip_connect", 0) at stride 1
    assert normal.droppable == tuple(name != "skip_connect" for name, _ in DARTS_V2.normal)
    g = Genotype(normal=DARTS_V2.normal, normal_concat=[2, 3, 4, 5],
                 reduce=[("skip_connect", 0)] * 2 + list(DARTS_V2.reduce[2:]), reduce_concat=[2, 3, 4, 5])
    cell = DerivedCell(g, 4, reduction=True, reduction_prev=False)
    assert isinstance(cell.cell_ops[0], darts_ops.FactorizedReduce) and cell.droppable[0]


def test_drop_path_zeroes_whole_examples_and_rescales():
    x = tf.ones((4000, 2, 2, 3))
    assert np.array_equal(drop_path(x, tf.constant(0.0)).numpy(), x.numpy())  # p = 0: exactly x
    y = drop_path(x, tf.constant(0.25)).numpy()
    per_example = y.reshape(4000, -1)
    # each example is either dropped (all 0) or kept and scaled by 1 / (1 - p)
    assert np.all((per_example == 0).all(axis=1) | np.isclose(per_example, 1 / 0.75).all(axis=1))
    assert abs((per_example[:, 0] == 0).mean() - 0.25) < 0.04


def test_drop_path_skips_identity_ops_and_only_trains():
    identity_cell = Genotype(
        normal=[("skip_connect", 0), ("skip_connect", 1)] * 4, normal_concat=[2, 3, 4, 5],
        reduce=DARTS_V2.reduce, reduce_concat=[2, 3, 4, 5],
    )
    s = tf.constant(_images(8, (6, 6, 4)))
    cell = DerivedCell(identity_cell, 4, reduction=False, reduction_prev=False)
    keep = cell(s, s, tf.constant(0.0), training=True).numpy()
    drop = cell(s, s, tf.constant(0.9), training=True).numpy()
    np.testing.assert_allclose(drop, keep, atol=1e-6)  # identities are never dropped

    conv_cell = DerivedCell(DARTS_V2, 4, reduction=False, reduction_prev=False)
    a = conv_cell(s, s, tf.constant(0.0), training=True).numpy()
    b = conv_cell(s, s, tf.constant(0.0), training=True).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)  # p = 0 changes nothing
    c = conv_cell(s, s, tf.constant(0.9), training=True).numpy()
    assert np.abs(c - a).max() > 1e-3
    d = conv_cell(s, s, tf.constant(0.9), training=False).numpy()
    e = conv_cell(s, s, tf.constant(0.0), training=False).numpy()
    np.testing.assert_array_equal(d, e)  # inference ignores drop-path


def test_network_reads_its_drop_path_variable():
    net = DerivedNetwork(DARTS_V2, 4, 10, 3, auxiliary=False)
    x = tf.constant(_images(6, (8, 8, 3)))
    net.build((None, 8, 8, 3))
    a = net.forward(x, training=True)[0].numpy()
    net.drop_path_prob.assign(0.0)
    assert np.allclose(net.forward(x, training=True)[0].numpy(), a, atol=1e-5)
    net.drop_path_prob.assign(0.8)
    assert np.abs(net.forward(x, training=True)[0].numpy() - a).max() > 1e-3
    assert not any(v is net.drop_path_prob for v in net.trainable_variables)


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (8, 8, 1)])
def test_auxiliary_head_only_while_training(shape):
    net = DerivedNetwork(DARTS_V2, 4, 7, 5, auxiliary=True)
    net.build((None, *shape))
    x = tf.constant(_images(3, shape))
    logits, aux = net.forward(x, training=True)
    assert logits.shape == (3, 7) and aux.shape == (3, 7)
    logits, aux = net.forward(x, training=False)
    assert aux is None and logits.shape == (3, 7)
    np.testing.assert_allclose(net(x, training=False).numpy(), logits.numpy(), atol=1e-6)
    head = net.auxiliary_head
    assert isinstance(head, AuxiliaryHead) and head.conv2.kernel.shape == (2, 2, 128, 768)


def _same_average_pool_reference(x, proj, k, s):
    """Value and input gradient (of ``sum(y * proj)``) of a "same" average pool excluding padding, by looping
    over the windows in numpy: the obviously-correct computation."""
    b, n, m, c = x.shape
    out_h, out_w = -(-n // s), -(-m // s)
    top = max((out_h - 1) * s + k - n, 0) // 2
    left = max((out_w - 1) * s + k - m, 0) // 2
    y, g = np.zeros((b, out_h, out_w, c)), np.zeros(x.shape)
    for i in range(out_h):
        for j in range(out_w):
            rows = slice(max(s * i - top, 0), min(s * i - top + k, n))
            cols = slice(max(s * j - left, 0), min(s * j - left + k, m))
            cells = (rows.stop - rows.start) * (cols.stop - cols.start)
            y[:, i, j] = x[:, rows, cols].sum(axis=(1, 2)) / cells
            g[:, rows, cols] += proj[:, i : i + 1, j : j + 1] / cells
    return y, g


@pytest.mark.parametrize("size", [(4, 4), (3, 3), (2, 2), (1, 1), (4, 2), (7, 7)])
def test_average_pool_same_is_exact_in_value_and_gradient(size):
    """The auxiliary head's small-map pool (sum / valid cells over a zero-padded map) against the window loop.
    TF's own "same" average pool has the right value but, on a 4x4 map with a 5x5 window, a wrong gradient
    (0.07 off on TF's kernels, right on oneDNN's), which is why the head does not use it."""
    x = _images(3, (*size, 5))
    proj = _images(3, (-(-size[0] // 3), -(-size[1] // 3), 5), seed=1)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = average_pool_same(xt, 5, 3)
        loss = tf.reduce_sum(y * proj)
    y_ref, g_ref = _same_average_pool_reference(x, proj, 5, 3)
    np.testing.assert_allclose(y.numpy(), y_ref, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss, xt).numpy(), g_ref, atol=1e-5)
    np.testing.assert_allclose(tf.nn.avg_pool2d(xt, 5, 3, "SAME").numpy(), y_ref, atol=1e-5)  # same function


def test_bbn_head_shares_the_trunk_and_concats_at_inference():
    net = DerivedNetwork(DARTS_V2, 4, 10, 5, auxiliary=True, bbn=True)
    plain = DerivedNetwork(DARTS_V2, 4, 10, 5, auxiliary=True)
    for n in (net, plain):
        n.build((None, 8, 8, 3))
    assert len(net.cells) == 4 and len(net.branch_cells) == 2
    last = sum(int(np.prod(v.shape)) for v in plain.cells[-1].trainable_variables)
    feature_dim = net.branch_cells[0].channels * 4
    assert net.parameter_counts()["params"] == plain.parameter_counts()["params"] + last + feature_dim * 10
    x = tf.constant(_images(4, (8, 8, 3)))
    # alpha = 0.5 on the same batch in inference mode is exactly the inference path (plain concat)
    mixed, aux_c, aux_r = net.forward_bbn(x, x, tf.constant(0.5), training=False)
    np.testing.assert_allclose(mixed.numpy(), net(x).numpy(), atol=1e-5)
    assert aux_c.shape == (4, 10) and aux_r.shape == (4, 10)
    # alpha = 1 ignores the re-balancing batch entirely
    x_r = tf.constant(_images(4, (8, 8, 3), seed=1))
    a = net.forward_bbn(x, x_r, tf.constant(1.0), training=False)[0].numpy()
    b = net.forward_bbn(x, x, tf.constant(1.0), training=False)[0].numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="layers >= 4"):
        DerivedNetwork(DARTS_V2, 4, 10, 3, auxiliary=True, bbn=True)
    with pytest.raises(ValueError, match="bbn=True"):
        plain.forward_bbn(x, x, 0.5)


@pytest.mark.parametrize("bbn", [False, True])
def test_model_keras_round_trip(tmp_path, bbn):
    metadata = {"dataset": "digits", "image_shape": [8, 8, 1], "mean": [0.3], "std": [0.4],
                "class_names": [str(i) for i in range(10)]}
    net = DerivedNetwork(DARTS_V1, 4, 10, 4, auxiliary=True, bbn=bbn, metadata=metadata, name="derived")
    net.build((None, 8, 8, 1))
    x = tf.constant(_images(5, (8, 8, 1)))
    for _ in range(3):  # move BN statistics away from their initial values
        net.forward(x, training=True)
    net.drop_path_prob.assign(0.1)
    before = net(x, training=False).numpy()
    path = str(tmp_path / "model.keras")
    net.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert type(loaded) is DerivedNetwork and loaded.genotype == DARTS_V1 and loaded.bbn == bbn
    assert loaded.metadata == metadata and loaded.auxiliary_head is not None
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), before)
    assert float(loaded.drop_path_prob.numpy()) == pytest.approx(0.1)
    assert len(loaded.weights) == len(net.weights)
    # the auxiliary head's weights came back too (it is never called at inference)
    for a, b in zip(net.auxiliary_head.weights, loaded.auxiliary_head.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bad_genotype_in_config_is_rejected():
    bad = DARTS_V2.to_dict()
    bad["normal"][0] = ["conv_7x7", 0]
    with pytest.raises(GenotypeError, match="unknown op 'conv_7x7'"):
        DerivedNetwork.from_config({"genotype": bad, "channels": 4, "num_classes": 10, "layers": 3})
