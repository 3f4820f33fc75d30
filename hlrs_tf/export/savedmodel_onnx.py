"""Export of a trained derived network for deployment: SavedModel and ONNX, with a parity check.

From a train work directory (or its ``model.keras``) this writes, into one output folder::

    saved_model/           TF SavedModel; signature "serving_default" (also "serve"):
                             input  "images": uint8 [batch, H, W, C] (NHWC, 0..255, dynamic batch)
                             output "logits", "probabilities": float32 [batch, num_classes]
                           saved_model/assets.extra/labels.json (TF Serving's place for extra files)
    model.onnx             the same graph for ONNX Runtime (opset 17 by default; same input/output names;
                           the metadata JSON also in the model's metadata_props under "hlrs_tf")
    labels.json            class names, input name/dtype/shape, normalisation mean/std, outputs, genotype
    export_report.json     parity of Keras, the reloaded SavedModel and ONNX Runtime on real test images

Preprocessing is inside both graphs: ``float(images) / 255``, then ``(x - mean) / std`` with the dataset's
per-channel statistics -- exactly what training fed the network -- so clients send raw uint8 pixels.

The parity check runs Keras (the loaded ``model.keras`` on images normalised outside the graph, as in
training), the SavedModel reloaded from disk and an ONNX Runtime session on ``num_images`` real test images of
the dataset. It fails (:class:`ParityError`) when the largest absolute logit difference exceeds ``tolerance``
or when a top-1 prediction differs where Keras' top-2 margin is larger than ``2 * tolerance`` (a flip that a
near-tie cannot explain). The export is written to a staging folder first and moved into place only when the
check passes; a failing export is left in ``<out>.rejected/`` with its report.

Precision: the export is always float32. A network trained with mixed precision (``--precision``,
:mod:`hlrs_tf.runtime.precision`) is rebuilt from its config with the float32 policy and given the loaded weights
(:func:`as_float32`; the variables of a mixed policy are float32 already, so they are copied unchanged), and the
parity reference is that float32 Keras network. The report records the precision the model was trained in.

One export per output folder at a time: the export holds a lock on ``out`` for its whole run. The lock file is
``<parent>/.<name>.lock`` beside the folder, not inside it, because the finished export replaces the folder by
renaming (a lock inside would be renamed away with the old folder). A second export to the same ``--out`` is
refused at once (:class:`hlrs_tf.runtime.workdir.WorkdirInUseError`).

The library never reads absl flags; :mod:`hlrs_tf.export` is the command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
import zipfile

import keras
import numpy as np
import tensorflow as tf

from hlrs_tf.config.schema import check_floats
from hlrs_tf.data.sources import dataset_spec, load_dataset
from hlrs_tf.data.spec import DEFAULT_FASHION_MNIST_DIR, DatasetError
from hlrs_tf.runtime.precision import policy_name, policy_scope
from hlrs_tf.runtime.workdir import WorkdirLock, atomic_write_json
from hlrs_tf.space import derived_network  # noqa: F401  (registers the classes a model.keras needs)

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "ExportError",
    "ExportOptions",
    "ParityError",
    "Preprocess",
    "as_float32",
    "build_serving_model",
    "export_model",
    "load_network",
    "resolve_model",
]

#: ONNX opset used by default (tf2onnx 1.17 supports 13-18 for this network; 17 is widely deployed).
DEFAULT_OPSET = 17
#: Default bound on the largest absolute logit difference between Keras, SavedModel and ONNX Runtime.
DEFAULT_TOLERANCE = 1e-4
#: Name of the serving input (SavedModel signature and ONNX graph).
INPUT_NAME = "images"
#: Names of the serving outputs.
OUTPUT_NAMES = ("logits", "probabilities")
_MODEL_FILENAME = "model.keras"
_EXPORT_MARKERS = ("export_report.json", "labels.json")


class ExportError(Exception):
    """A bad export target or output folder, or a model that cannot be exported; the message says which."""


class ParityError(ExportError):
    """The exported models disagree with Keras beyond the tolerance (see the export report)."""


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Settings of an export.

    Attributes:
        dataset: Dataset of the parity images; default: the one recorded in the model (``metadata``).
        data_dir: tensorflow-datasets data directory.
        manual_dir: Folder with the dataset's original archive (tfds offline preparation).
        fashion_mnist_dir: Folder of the Fashion-MNIST IDX files.
        num_images: Test images of the parity check (spread evenly over the test set).
        tolerance: Largest allowed absolute logit difference.
        opset: ONNX opset.
        batch_size: Batch size of the parity runs.
    """

    dataset: str | None = None
    data_dir: str | None = None
    manual_dir: str | None = None
    fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR
    num_images: int = 256
    tolerance: float = DEFAULT_TOLERANCE
    opset: int = DEFAULT_OPSET
    batch_size: int = 64

    def __post_init__(self):
        if self.num_images < 1:
            raise ExportError(f"--num_images={self.num_images} is invalid: it must be an integer >= 1")
        check_floats(self, error=ExportError)  # --tolerance: finite, > 0 (config.FLOAT_RANGES)
        if not 13 <= self.opset <= 18:
            raise ExportError(f"--opset={self.opset} is invalid: it must be in 13..18 (tf2onnx 1.17)")
        if self.batch_size < 1:
            raise ExportError(f"--batch_size={self.batch_size} is invalid: it must be an integer >= 1")


# ------------------------------------------------------------------------------------------------ inputs
def resolve_model(target: str) -> tuple[str, str | None]:
    """Finds the ``.keras`` file of an export target.

    Args:
        target: A train work directory (holding ``model.keras``) or a ``.keras`` file.

    Returns:
        ``(model_path, workdir or None)``.

    Raises:
        ExportError: missing path, a folder without ``model.keras``, or a file that is not a ``.keras`` archive.
    """
    if not target:
        raise ExportError("--model is required: a train work directory or its model.keras")
    if not os.path.exists(target):
        raise ExportError(f"--model={target}: no such file or directory")
    if os.path.isdir(target):
        path = os.path.join(target, _MODEL_FILENAME)
        if not os.path.isfile(path):
            raise ExportError(
                f"--model={target}: folder has no {_MODEL_FILENAME} (a train work directory gets one when "
                "`python -m hlrs_tf.train` finishes)"
            )
        return path, target
    if not target.endswith(".keras") or not zipfile.is_zipfile(target):
        raise ExportError(
            f"--model={target}: not a Keras .keras model file (expected a train work directory or its "
            f"{_MODEL_FILENAME})"
        )
    return target, None


def load_network(path: str) -> keras.Model:
    """Loads a ``.keras`` model for inference (no optimizer) and checks it takes images.

    Raises:
        ExportError: the file cannot be loaded or the model does not take ``(batch, H, W, C)`` images.
    """
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types here; one clear line for all of them
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"--model={path}: cannot load the Keras model: {first[:300]}") from e
    shape = _image_shape(model)
    if shape is None:
        raise ExportError(f"--model={path}: the model does not take (batch, H, W, C) images")
    return model


def as_float32(network: keras.Model) -> keras.Model:
    """``network`` computing in float32: itself if it does, else a float32 rebuild holding the same weights.

    The rebuild is the network's class from its config with ``dtype="float32"`` (the hlrs_tf networks hand
    their policy to every sub-layer they build), built on the image shape and given ``network``'s weights.

    Raises:
        ExportError: The model does not take images, or some layer still computes in another dtype after the
            rebuild (a model whose layers do not follow their network's policy).
    """
    if _compute_dtypes(network) == {"float32"}:
        return network
    shape = _image_shape(network)
    if shape is None:
        raise ExportError("the model does not take (batch, H, W, C) images")
    with policy_scope("float32"):
        clone = type(network).from_config({**network.get_config(), "dtype": "float32"})
    clone.build((None, *shape))
    clone.set_weights(network.get_weights())
    if _compute_dtypes(clone) != {"float32"}:
        raise ExportError(
            f"cannot rebuild the {policy_name(network)} model in float32: layers computing in "
            f"{sorted(_compute_dtypes(clone) - {'float32'})} remain"
        )
    return clone


def _compute_dtypes(model) -> set[str]:
    return {layer.dtype_policy.compute_dtype for layer in model._flatten_layers(include_self=True)}


def _image_shape(model) -> tuple[int, int, int] | None:
    metadata = getattr(model, "metadata", None) or {}
    if metadata.get("image_shape"):
        return tuple(int(d) for d in metadata["image_shape"])
    build = getattr(model, "_build_shapes_dict", None) or {}
    for shape in build.values():
        if shape is not None and len(shape) == 4 and all(d is not None for d in shape[1:]):
            return tuple(int(d) for d in shape[1:])
    try:
        shape = model.inputs[0].shape
        if len(shape) == 4:
            return tuple(int(d) for d in shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    return None


def _metadata(model, options: ExportOptions) -> dict:
    """Dataset facts for the serving graph: from the model's metadata, or from ``--dataset``'s spec."""
    metadata = dict(getattr(model, "metadata", None) or {})
    if options.dataset and options.dataset != metadata.get("dataset"):
        if not metadata.get("mean"):
            try:
                spec = dataset_spec(options.dataset, options.data_dir)
            except DatasetError as e:
                raise ExportError(str(e)) from e
            metadata.update(mean=list(spec.mean), std=list(spec.std),
                            class_names=list(spec.class_names) if spec.class_names else None)
        metadata["parity_dataset"] = options.dataset
    if not metadata.get("mean"):
        raise ExportError(
            "the model records no dataset normalisation (not trained by hlrs_tf.train): pass --dataset"
        )
    metadata["image_shape"] = list(_image_shape(model))
    metadata.setdefault("num_classes", int(model.compute_output_shape((None, *metadata["image_shape"]))[-1]))
    return metadata


# ------------------------------------------------------------------------------------------------ graph
@keras.saving.register_keras_serializable(package="hlrs_tf")
class Preprocess(keras.layers.Layer):
    """uint8 images -> ``(x / 255 - mean) / std`` in float32: the training normalisation, inside the graph.

    Args:
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel standard deviation on the [0, 1] scale.
        **kwargs: Forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, images):
        # Same op order as hlrs_tf.data.pipeline.normalize, so the exported graph sees the inputs training produced.
        x = keras.ops.cast(images, "float32") * (1.0 / 255.0)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def build_serving_model(network: keras.Model, image_shape, mean, std) -> keras.Model:
    """The deployable graph: uint8 ``images`` -> preprocessing -> network -> ``{"logits", "probabilities"}``.

    Args:
        network: The trained network (takes normalised float images).
        image_shape: ``(H, W, C)``.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.

    Returns:
        A functional Keras model with one uint8 input named ``images`` (dynamic batch) and a dict output.
    """
    images = keras.Input(tuple(image_shape), dtype="uint8", name=INPUT_NAME)
    logits = network(Preprocess(mean, std, name="preprocess")(images))
    probabilities = keras.layers.Softmax(name="softmax")(logits)
    return keras.Model(images, {"logits": logits, "probabilities": probabilities}, name="serving")


# ------------------------------------------------------------------------------------------------ parity
def _parity_images(metadata: dict, options: ExportOptions) -> tuple[np.ndarray, np.ndarray, str]:
    name = metadata.get("parity_dataset") or metadata.get("dataset")
    if not name:
        raise ExportError("the model records no dataset for the parity images: pass --dataset")
    try:
        ds = load_dataset(name, options.data_dir, options.manual_dir,
                          fashion_mnist_dir=options.fashion_mnist_dir)
    except DatasetError as e:
        raise ExportError(f"parity images: {e}") from e
    if tuple(ds.x_test.shape[1:]) != tuple(metadata["image_shape"]):
        raise ExportError(
            f"--dataset={name} has images of shape {tuple(ds.x_test.shape[1:])}, the model takes "
            f"{tuple(metadata['image_shape'])}"
        )
    n = min(options.num_images, len(ds.x_test))
    # Evenly spread over the test set, so class-sorted test sets still give every class.
    idx = np.unique(np.linspace(0, len(ds.x_test) - 1, n).round().astype(np.int64))
    return ds.x_test[idx], ds.y_test[idx], name


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch_size])) for i in range(0, len(x), batch_size)], axis=0)


def _compare(reference: np.ndarray, other: np.ndarray, other_probs: np.ndarray, tolerance: float) -> dict:
    ref_top1 = reference.argmax(axis=1)
    top1 = other.argmax(axis=1)
    sorted_ref = np.sort(reference, axis=1)
    margin = sorted_ref[:, -1] - sorted_ref[:, -2] if reference.shape[1] > 1 else np.full(len(reference), np.inf)
    flips = ref_top1 != top1
    ref_probs = _softmax(reference)
    return {
        "max_abs_diff_logits": float(np.max(np.abs(reference - other))),
        "max_abs_diff_probabilities": float(np.max(np.abs(ref_probs - other_probs))),
        "top1_agreement": float(np.mean(~flips)),
        "top1_mismatches": int(flips.sum()),
        "unexplained_top1_mismatches": int(np.sum(flips & (margin > 2 * tolerance))),
    }


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _onnx_session(path: str):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _finish_onnx(path: str, metadata_json: str) -> None:
    """Names the dynamic batch dimension ``batch`` and stores the metadata in the model's properties."""
    import onnx

    model = onnx.load(path)
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    onnx.helper.set_model_props(model, {"hlrs_tf": metadata_json})
    model.doc_string = "hlrs_tf derived network; input 'images' uint8 NHWC, outputs 'logits', 'probabilities'"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _failures(report: dict, tolerance: float) -> list[str]:
    """What makes a parity report fail, one phrase per runtime (empty: passed)."""
    failures = []
    for name in ("saved_model", "onnx"):
        r = report[name]
        if r["max_abs_diff_logits"] > tolerance:
            failures.append(f"{name}: max |logit diff| {r['max_abs_diff_logits']:.3g} > tolerance {tolerance:g}")
        if r["unexplained_top1_mismatches"]:
            failures.append(f"{name}: {r['unexplained_top1_mismatches']} top-1 mismatches beyond near-ties")
    return failures


# ------------------------------------------------------------------------------------------------ export
def _check_out_dir(out: str) -> str:
    if not out:
        raise ExportError("--out is required: the folder to write the export to")
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out={out} is a file, not a folder")
    earlier_export = any(os.path.exists(os.path.join(out, m)) for m in _EXPORT_MARKERS)
    if os.path.isdir(out) and os.listdir(out) and not earlier_export:
        raise ExportError(f"--out={out} is a non-empty folder that holds no earlier export: choose a new --out")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ExportError(f"--out={out}: cannot create its parent folder {parent} ({e.strerror or e})") from e
    # The export is staged in a sibling folder and renamed into place, so the parent must take a new folder.
    # Making one is the real test: os.access says yes to root on /proc or a read-only mount.
    try:
        os.rmdir(tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".probe-", dir=parent))
    except OSError as e:
        raise ExportError(
            f"--out={out}: cannot create the export there ({parent} is not writable: {e.strerror or e})"
        ) from e
    return out


def _replace_dir(staging: str, target: str) -> None:
    """Moves ``staging`` to ``target``, replacing an earlier export there (renames, then removes the old)."""
    old = None
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".old-", dir=os.path.dirname(target))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(staging, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def export_model(target: str, out: str, options: ExportOptions = ExportOptions()) -> dict:
    """Exports a trained network to SavedModel + ONNX with metadata, after a parity check.

    Args:
        target: A train work directory or a ``.keras`` file.
        out: Output folder (created; an earlier export there is replaced). Locked while the export runs, by
            ``<parent>/.<name>.lock`` (see the module docstring).
        options: Export settings.

    Returns:
        The export report (also ``<out>/export_report.json``).

    Raises:
        ExportError: bad target or output folder, a model that cannot be loaded, missing parity data.
        ParityError: the exported models disagree with Keras (the export is left in ``<out>.rejected``).
        hlrs_tf.runtime.workdir.WorkdirInUseError: another process is exporting to ``out``.
    """
    model_path, workdir = resolve_model(target)
    out = _check_out_dir(out)
    with WorkdirLock.beside(out):  # before the model loads: a refused export does no work
        return _export(model_path, workdir, out, options)


def _export(model_path: str, workdir: str | None, out: str, options: ExportOptions) -> dict:
    trained = load_network(model_path)
    network = as_float32(trained)  # SavedModel, ONNX and the parity reference: float32
    metadata = _metadata(network, options)
    shape = tuple(metadata["image_shape"])
    x, y, dataset = _parity_images(metadata, options)

    staging = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".staging-", dir=os.path.dirname(out))
    try:
        serving = build_serving_model(network, shape, metadata["mean"], metadata["std"])
        saved_model_dir = os.path.join(staging, "saved_model")
        onnx_path = os.path.join(staging, "model.onnx")
        serving.export(saved_model_dir, format="tf_saved_model", verbose=False)
        with warnings.catch_warnings():
            # Keras' tf2onnx numpy-2 shim probes np.object, which numpy 2 answers with a FutureWarning.
            warnings.simplefilter("ignore", FutureWarning)
            serving.export(onnx_path, format="onnx", opset_version=options.opset, verbose=False)

        labels = {
            "class_names": metadata.get("class_names"),
            "num_classes": int(metadata["num_classes"]),
            "dataset": metadata.get("dataset"),
            "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, *shape], "layout": "NHWC",
                      "range": [0, 255]},
            "preprocessing": {"formula": "(images / 255 - mean) / std, per channel, inside the graph",
                              "mean": list(metadata["mean"]), "std": list(metadata["std"])},
            "outputs": {"logits": "float32 [batch, num_classes]",
                        "probabilities": "float32 [batch, num_classes], softmax of logits"},
            "saved_model": {"path": "saved_model", "signature": "serving_default", "tags": ["serve"]},
            "onnx": {"path": "model.onnx", "opset": options.opset},
            "genotype": network.genotype.to_dict() if hasattr(network, "genotype") else None,
        }
        labels_json = json.dumps(labels, indent=2)
        _finish_onnx(onnx_path, labels_json)
        atomic_write_json(os.path.join(staging, "labels.json"), labels)
        atomic_write_json(os.path.join(saved_model_dir, "assets.extra", "labels.json"), labels)

        # Reference: Keras on images normalised outside the graph, as training fed them.
        mean = np.asarray(metadata["mean"], np.float32)
        std = np.asarray(metadata["std"], np.float32)
        x_norm = (x.astype(np.float32) * np.float32(1.0 / 255.0) - mean) / std
        keras_logits = _batched(lambda b: network(b, training=False), x_norm, options.batch_size)

        serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
        sm_out = [serve(**{INPUT_NAME: tf.constant(x[i:i + options.batch_size])})
                  for i in range(0, len(x), options.batch_size)]
        sm_logits = np.concatenate([o["logits"].numpy() for o in sm_out])
        sm_probs = np.concatenate([o["probabilities"].numpy() for o in sm_out])

        session = _onnx_session(onnx_path)
        ort_out = [dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[i:i + options.batch_size]})))
                   for i in range(0, len(x), options.batch_size)]
        ort_logits = np.concatenate([o["logits"] for o in ort_out])
        ort_probs = np.concatenate([o["probabilities"] for o in ort_out])

        report = {
            "model": os.path.abspath(model_path),
            "workdir": os.path.abspath(workdir) if workdir else None,
            "out": out,
            "dataset": dataset,
            "num_images": int(len(x)),
            "tolerance": options.tolerance,
            "opset": options.opset,
            "precision": "float32",
            "trained_precision": policy_name(trained),  # the dtype policy of model.keras (--precision)
            "input": labels["input"],
            "keras_top1_accuracy": float(np.mean(keras_logits.argmax(axis=1) == y)),
            "saved_model": _compare(keras_logits, sm_logits, sm_probs, options.tolerance),
            "onnx": _compare(keras_logits, ort_logits, ort_probs, options.tolerance),
            "onnx_vs_saved_model_max_abs_diff_logits": float(np.max(np.abs(sm_logits - ort_logits))),
        }
        failures = _failures(report, options.tolerance)
        report["passed"] = not failures
        report["failures"] = failures
        atomic_write_json(os.path.join(staging, "export_report.json"), report)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if failures:
        rejected = out + ".rejected"
        _replace_dir(staging, rejected)
        raise ParityError(
            f"parity check failed on {len(x)} {dataset} test images: {'; '.join(failures)} "
            f"(export left in {rejected}, see its export_report.json)"
        )
    _replace_dir(staging, out)
    return report
