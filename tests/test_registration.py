"""Every Keras layer and model of hlrs_tf is registered and round-trips through the registry and JSON.

The classes are found by walking the package, so a new layer without ``@register_keras_serializable`` or
without an example here fails this file instead of failing a user's ``keras.saving.load_model`` later.
"""

import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest

import hlrs_tf
from hlrs_tf.export.savedmodel_onnx import Preprocess
from hlrs_tf.losses.long_tail import LossSpec
from hlrs_tf.search.bbn import BBNSearchModel, BBNSearchNetwork
from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.space import ops as darts_ops
from hlrs_tf.space.cells import MixedOp, SearchCell
from hlrs_tf.space.derived_network import AuxiliaryHead, DerivedCell, DerivedNetwork
from hlrs_tf.space.fused_cell import FusedSearchCell
from hlrs_tf.space.genotypes import DARTS_V2
from hlrs_tf.space.supernet import SearchNetwork
from hlrs_tf.testing import registry_round_trip
from hlrs_tf.train.model import RetrainModel

# Modules that define no layers and must not be imported twice in one process: the commands' ``__main__``
# (``python -m hlrs_tf.<name>``, which set process options on import) and the absl flag definitions.
NOT_LAYER_MODULES = {"__main__", "flags"}
# Bases that are never instantiated on their own, so never saved.
ABSTRACT = {darts_ops.CompositeLayer}

# One example of each class, with non-default arguments where the class has them, so that the round trip
# checks that they are kept.
EXAMPLES = {
    darts_ops.BatchNorm: lambda: darts_ops.BatchNorm(False, momentum=0.2, name="bn"),
    darts_ops.DepthwiseConv: lambda: darts_ops.DepthwiseConv(3, strides=2, dilation_rate=2),
    darts_ops.PointwiseConv: lambda: darts_ops.PointwiseConv(8, strides=2),
    darts_ops.ReLUConvBN: lambda: darts_ops.ReLUConvBN(8, 3, 2, affine=False),
    darts_ops.FactorizedReduce: lambda: darts_ops.FactorizedReduce(8, affine=False, apply_relu=False),
    darts_ops.SepConv: lambda: darts_ops.SepConv(4, 3, 2, affine=False),
    darts_ops.DilConv: lambda: darts_ops.DilConv(4, 5, 1, affine=True),
    darts_ops.Pool: lambda: darts_ops.Pool("avg", 2, bn=True),
    darts_ops.Identity: lambda: darts_ops.Identity(name="skip"),
    darts_ops.Zero: lambda: darts_ops.Zero(2),
    MixedOp: lambda: MixedOp(4, 2),
    SearchCell: lambda: SearchCell(8, True, False, partial_channels=4),
    FusedSearchCell: lambda: FusedSearchCell(8, False, True, steps=3, multiplier=3, partial_channels=2),
    SearchNetwork: lambda: SearchNetwork(4, 10, 3, cell_impl="direct", partial_channels=2),
    DartsSearchModel: lambda: DartsSearchModel(SearchNetwork(4, 10, 3), order="second", loss=LossSpec("focal")),
    BBNSearchNetwork: lambda: BBNSearchNetwork(4, 10, 3),
    BBNSearchModel: lambda: BBNSearchModel(BBNSearchNetwork(4, 10, 3), order="second"),
    DerivedCell: lambda: DerivedCell(DARTS_V2, 8, reduction=True, reduction_prev=False),
    AuxiliaryHead: lambda: AuxiliaryHead(10),
    DerivedNetwork: lambda: DerivedNetwork(DARTS_V2, 8, 10, 5, auxiliary=True),
    RetrainModel: lambda: RetrainModel(DerivedNetwork(DARTS_V2, 8, 10, 5), auxiliary_weight=0.3,
                                       loss=LossSpec("focal")),
    Preprocess: lambda: Preprocess([0.5], [0.25]),
}


def _layer_classes():
    found = set()
    for info in pkgutil.walk_packages(hlrs_tf.__path__, prefix="hlrs_tf."):
        if info.name.rsplit(".", 1)[-1] in NOT_LAYER_MODULES:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, keras.layers.Layer) and cls.__module__.startswith("hlrs_tf") and cls not in ABSTRACT:
                found.add(cls)
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


def test_every_layer_is_registered_and_has_an_example():
    classes = _layer_classes()
    assert classes, "the package walk found no layers"
    unregistered = [c.__name__ for c in classes if keras.saving.get_registered_name(c) != f"hlrs_tf>{c.__name__}"]
    assert not unregistered, f"not registered under package 'hlrs_tf': {unregistered}"
    missing = [c.__name__ for c in classes if c not in EXAMPLES]
    assert not missing, f"add an example to EXAMPLES for {missing}"


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_round_trip_through_the_registry(cls):
    obj = EXAMPLES[cls]()
    clone = registry_round_trip(obj)
    assert clone.get_config() == obj.get_config()


def test_round_trip_refuses_an_unregistered_layer():
    class Unregistered(keras.layers.Layer):
        pass

    with pytest.raises(AssertionError, match="not registered"):
        registry_round_trip(Unregistered())


def test_round_tripped_network_computes_the_same_function():
    """The registry copy of a supernet, given the original's weights, gives the same logits: the config holds
    everything that shapes the function (a lost argument would change the variables or the output)."""
    net = SearchNetwork(4, 10, 3, partial_channels=2)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 1)).astype("float32")
    want = keras.ops.convert_to_numpy(net(x, training=False))
    clone = registry_round_trip(net)
    clone(x, training=False)  # build
    clone.set_weights(net.get_weights())
    # Same graph, same weights, same inputs, one process: the outputs are bitwise equal.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x, training=False)), want)
