#!/usr/bin/env python3
"""Classify images with an exported hlrs_tf model using ONNX Runtime only (no TensorFlow, no hlrs_tf).

Needs ``onnxruntime`` and ``numpy``; ``Pillow`` only for image files. The model takes raw uint8 pixels
(input ``images``, NHWC, dynamic batch) and does its own normalisation; class names and the input shape come
from ``labels.json`` next to the model, or from the model's own metadata.

Usage::

    python export/predict_onnx.py export/<name>/model.onnx photos/            # a folder of images
    python export/predict_onnx.py export/<name>/model.onnx test.npz --out predictions.csv
    python export/predict_onnx.py export/<name>          data.npz --out predictions.json --top_k 3

Inputs: a folder of ``.png``/``.jpg``/``.jpeg``/``.bmp`` files (converted to the model's channels, resized to its
size), a single image file, or an ``.npz`` with ``x_test`` or ``x`` (uint8 ``[N, H, W]`` or ``[N, H, W, C]``;
``y_test``/``y`` labels, if present, give an accuracy line). Output: a table on stdout, and with ``--out`` a
``.csv`` or ``.json`` file (one row per input: id, predicted index, class name, probability, top-k).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


class PredictError(Exception):
    """Bad input; the message says what is wrong."""


def find_model(path: str) -> str:
    """The ``model.onnx`` of an export folder, or ``path`` itself."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.onnx")
    if not os.path.isfile(path):
        raise PredictError(f"{path}: no such ONNX model")
    return path


def load_metadata(model_path: str, session) -> dict:
    """``labels.json`` next to the model, else the ``hlrs_tf`` entry of the model's metadata, else {}."""
    labels = os.path.join(os.path.dirname(os.path.abspath(model_path)), "labels.json")
    if os.path.isfile(labels):
        with open(labels, encoding="utf-8") as f:
            return json.load(f)
    props = session.get_modelmeta().custom_metadata_map
    return json.loads(props["hlrs_tf"]) if "hlrs_tf" in props else {}


def _fit_channels(x: np.ndarray, channels: int) -> np.ndarray:
    if x.shape[-1] == channels:
        return x
    if x.shape[-1] == 1:
        return np.repeat(x, channels, axis=-1)
    if channels == 1:  # RGB -> luminance (ITU-R 601, as PIL's "L")
        grey = x[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None]
    raise PredictError(f"cannot convert {x.shape[-1]}-channel images to {channels} channels")


def load_npz(path: str, shape) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Images (and labels, if any) of an ``.npz``: ``x_test`` or ``x`` (+ ``y_test`` or ``y``)."""
    with np.load(path, allow_pickle=False) as data:
        key = "x_test" if "x_test" in data.files else "x" if "x" in data.files else None
        if key is None:
            raise PredictError(f"{path}: no 'x_test' or 'x' array (has: {', '.join(data.files) or 'nothing'})")
        x = data[key]
        y_key = {"x_test": "y_test", "x": "y"}[key]
        y = data[y_key].reshape(-1) if y_key in data.files else None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise PredictError(f"{path}: '{key}' must be [N, H, W] or [N, H, W, C], got shape {x.shape}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0:
            x = x * 255.0  # [0, 1] floats
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    if shape:
        x = _fit_channels(x, shape[2])
        if tuple(x.shape[1:3]) != tuple(shape[:2]):
            raise PredictError(f"{path}: images are {x.shape[1]}x{x.shape[2]}, the model takes {shape[0]}x{shape[1]}")
    return [f"{os.path.basename(path)}[{i}]" for i in range(len(x))], x, y


def load_images(paths: list[str], shape) -> np.ndarray:
    """Image files as uint8 ``[N, H, W, C]`` in the model's size and channels (needs Pillow)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise PredictError("reading image files needs Pillow (pip install pillow); .npz input does not") from e
    if not shape:
        raise PredictError("the model's input size is unknown (no labels.json or metadata): use an .npz")
    h, w, c = shape
    out = np.empty((len(paths), h, w, c), np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
                a = np.asarray(im, np.uint8)
        except OSError as e:
            raise PredictError(f"{p}: cannot read image: {e}") from e
        out[i] = a[..., None] if a.ndim == 2 else _fit_channels(a, c)
    return out


def collect_inputs(path: str, shape) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Ids, uint8 images and optional labels of an input path (folder, image file or ``.npz``)."""
    if not os.path.exists(path):
        raise PredictError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        files = sorted(
            os.path.join(root, f) for root, _, names in os.walk(path) for f in names
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise PredictError(f"{path}: no {'/'.join(IMAGE_EXTENSIONS)} images in this folder")
        return [os.path.relpath(f, path) for f in files], load_images(files, shape), None
    if path.lower().endswith(".npz"):
        return load_npz(path, shape)
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return [os.path.basename(path)], load_images([path], shape), None
    raise PredictError(f"{path}: expected an image folder, an image file or an .npz")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict(session, x: np.ndarray, batch_size: int, input_name: str = "images") -> np.ndarray:
    """Class probabilities ``[N, num_classes]`` (the model's ``probabilities`` output, else softmax of logits)."""
    outputs = [o.name for o in session.get_outputs()]
    name = "probabilities" if "probabilities" in outputs else outputs[0]
    parts = [session.run([name], {input_name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    probs = np.concatenate(parts, axis=0)
    return probs if name == "probabilities" else softmax(probs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model.onnx, or the export folder holding it")
    parser.add_argument("input", help="image folder, image file, or .npz (x_test or x)")
    parser.add_argument("--out", help="write predictions to this .csv or .json file")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--top_k", type=int, default=1, help="also list the k most probable classes")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    parser.add_argument("--quiet", action="store_true", help="no per-input table on stdout")
    args = parser.parse_args(argv)
    try:
        import onnxruntime as ort

        if args.out and not args.out.lower().endswith((".csv", ".json")):
            raise PredictError(f"--out {args.out}: must end in .csv or .json")
        if args.batch_size < 1 or args.top_k < 1:
            raise PredictError("--batch_size and --top_k must be >= 1")
        model_path = find_model(args.model)
        options = ort.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        try:
            session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise PredictError(f"{model_path}: not a loadable ONNX model: {str(e).splitlines()[0]}") from e
        meta = load_metadata(model_path, session)
        inp = session.get_inputs()[0]
        shape = meta.get("input", {}).get("shape", [None, *inp.shape[1:]])[1:]
        shape = tuple(int(d) for d in shape) if shape and all(isinstance(d, int) for d in shape) else None
        ids, x, y = collect_inputs(args.input, shape)
        probs = predict(session, x, args.batch_size, inp.name)
    except PredictError as e:
        print(f"predict_onnx: error: {e}", file=sys.stderr)
        return 2

    names = meta.get("class_names") or [str(i) for i in range(probs.shape[1])]
    k = min(args.top_k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    rows = []
    for i, ident in enumerate(ids):
        c = int(top[i, 0])
        row = {"id": ident, "class": c, "name": names[c], "probability": round(float(probs[i, c]), 6)}
        if k > 1:
            row["top_k"] = [{"class": int(j), "name": names[j], "probability": round(float(probs[i, j]), 6)}
                            for j in top[i]]
        if y is not None:
            row["label"] = int(y[i])
        rows.append(row)
    if not args.quiet:
        for r in rows:
            print(f"{r['id']}\t{r['class']}\t{r['name']}\t{r['probability']:.4f}")
    if y is not None:
        print(f"accuracy {np.mean(top[:, 0] == y):.4f} on {len(y)} labelled images")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        if args.out.lower().endswith(".json"):
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump(rows, f, indent=1)
        else:
            with open(args.out, "w", newline="", encoding="utf-8") as f:
                fields = ["id", "class", "name", "probability"] + (["label"] if y is not None else [])
                writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        print(f"wrote {len(rows)} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
