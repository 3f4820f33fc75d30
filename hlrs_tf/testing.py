"""Test helpers that belong with the library: a small search-model factory and the Keras registry round trip.

They are here, not in ``tests/``, so that the test workers (child processes), the benchmarks and users' own
tests of layers built on hlrs_tf build models and check serialisation the same way the test suite does.
"""

from __future__ import annotations

import json

import keras

from hlrs_tf.config.blocks import ArchOptimizer, WeightOptimizer
from hlrs_tf.runtime.optimizers import arch_optimizer, sgd
from hlrs_tf.search.bbn import BBNSearchModel, BBNSearchNetwork
from hlrs_tf.search.bilevel import DartsSearchModel
from hlrs_tf.space.supernet import SearchNetwork

# DARTS' optimisers (quark0/darts cnn/train_search.py), as the config blocks default them: SGD lr 0.025
# momentum 0.9 for the weights, Adam 3e-4 with betas (0.5, 0.999) for the alphas.
WEIGHT_LEARNING_RATE = WeightOptimizer().learning_rate
ARCH_LEARNING_RATE = ArchOptimizer().arch_learning_rate


def small_search_model(
    channels: int = 4,
    num_classes: int = 10,
    layers: int = 3,
    *,
    order: str = "first",
    image_shape: tuple[int, int, int] = (8, 8, 1),
    seed: int | None = 0,
    bbn: bool = False,
    learning_rate=WEIGHT_LEARNING_RATE,
    network_kwargs: dict | None = None,
    **model_kwargs,
) -> DartsSearchModel:
    """A small supernet in its bilevel model, compiled with DARTS' optimisers and built (nothing traced later).

    The same steps as ``hlrs_tf.search.task.build_model`` without a run config: seed, network, model, compile
    (with the same optimiser functions, :mod:`hlrs_tf.runtime.optimizers`, at a constant weight learning rate),
    build.

    Args:
        channels: The supernet's C.
        num_classes: Classes of the classifier.
        layers: Cells (a reduction cell at 1/3 and 2/3 of them).
        order: ``"first"`` or ``"second"`` order architecture gradient.
        image_shape: ``(H, W, C)`` the model is built for.
        seed: Passed to ``keras.utils.set_random_seed`` before any variable is made; ``None`` leaves the
            generators as they are.
        bbn: The BBN supernet and model (two branches, mixed loss) instead of the plain one.
        learning_rate: The weight optimiser's learning rate (a float or a ``LearningRateSchedule``).
        network_kwargs: More arguments of the network (``steps``, ``multiplier``, ``cell_impl``,
            ``partial_channels``, ``name``, ...).
        **model_kwargs: More arguments of the model (``loss``, ``weight_decay``, ``name``, ...).

    Returns:
        The compiled, built model.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    network_cls, model_cls = (BBNSearchNetwork, BBNSearchModel) if bbn else (SearchNetwork, DartsSearchModel)
    model = model_cls(network_cls(channels, num_classes, layers, **(network_kwargs or {})), order=order,
                      **model_kwargs)
    model.compile(optimizer=sgd(learning_rate, WeightOptimizer().momentum),
                  arch_optimizer=arch_optimizer(ArchOptimizer()))
    model.build_all(image_shape)
    return model


def registry_round_trip(obj):
    """Serialises a Keras object to JSON text and back through the registry, as a saved ``.keras`` file does.

    ``keras.saving.serialize_keras_object`` -> ``json.dumps`` -> ``json.loads`` ->
    ``keras.saving.deserialize_keras_object`` with no ``custom_objects``: the class must be found by its
    registered name (``hlrs_tf>ClassName``), and every value of its config must survive JSON.

    Args:
        obj: A layer, model or other serialisable object of hlrs_tf.

    Returns:
        The deserialised copy (unbuilt: weights are not part of a config).

    Raises:
        AssertionError: The class is not registered under the ``hlrs_tf`` package, or the copy is of another
            class.
    """
    config = keras.saving.serialize_keras_object(obj)
    name = config.get("registered_name")
    registered = keras.saving.get_registered_object(name) if name else None
    if registered is not type(obj) or not name.startswith("hlrs_tf>"):
        raise AssertionError(f"{type(obj).__module__}.{type(obj).__name__} is not registered with "
                             f"@keras.saving.register_keras_serializable(package='hlrs_tf') (registered name "
                             f"{name!r})")
    clone = keras.saving.deserialize_keras_object(json.loads(json.dumps(config)))
    if type(clone) is not type(obj):
        raise AssertionError(f"{name} came back as {type(clone).__name__}")
    return clone
