"""Export a trained derived network to SavedModel + ONNX for deployment: the entry point.

    python -m hlrs_tf.export --model=runs/<train run> --out=export/<name>
    python -m hlrs_tf.export --model=runs/<train run>/model.keras --out=export/<name> --opset=17

Writes ``saved_model/``, ``model.onnx``, ``labels.json`` and ``export_report.json`` (see
:mod:`hlrs_tf.export.savedmodel_onnx`). Exit status: 0 exported and parity checked; 1 parity check failed (nothing
replaced at ``--out``; the export is left in ``<out>.rejected``); 2 bad input. Errors are one line on stderr.
"""

from __future__ import annotations

import os

from absl import flags, logging

from hlrs_tf.config import flags as config_flags
from hlrs_tf.config.blocks import DataConfig
from hlrs_tf.runtime import cli

flags.DEFINE_string("model", None, "Train work directory (holding model.keras) or a .keras file. Required.")
flags.DEFINE_string("out", None, "Output folder, e.g. export/<name>; default: export/<name of the work directory>.")
# Where the parity images come from: the data block's flags, as the search and the retraining define them.
config_flags.define_flags(
    DataConfig, module_name=__name__, names=("dataset", "data_dir", "manual_dir", "fashion_mnist_dir"),
    defaults={"dataset": None},
    help_suffix={"dataset": " Here: the dataset of the parity images; default: the one the model was trained on."},
)
flags.DEFINE_integer("num_images", 256, "Real test images of the parity check.", lower_bound=1)
flags.DEFINE_float("tolerance", 1e-4, "Largest allowed |logit difference| between Keras, SavedModel and ONNX.")
flags.DEFINE_integer("opset", 17, "ONNX opset (13..18).")
flags.DEFINE_integer("batch_size", 64, "Batch size of the parity runs.", lower_bound=1)

FLAGS = flags.FLAGS
PROG = "hlrs_tf.export"


def default_out(model: str) -> str:
    """``export/<work directory name>`` (or ``<file stem>``) for ``--model``."""
    path = os.path.abspath(model.rstrip(os.sep))
    if path.endswith(".keras"):
        parent = os.path.basename(os.path.dirname(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        name = parent if stem == "model" and parent else stem
    else:
        name = os.path.basename(path)
    return os.path.join("export", name)


def _errors() -> tuple[type[Exception], ...]:
    from hlrs_tf.export.savedmodel_onnx import ExportError

    return (ExportError,)


def _export() -> None:
    if not FLAGS["verbosity"].present:
        # tf2onnx and the SavedModel writer log every step at INFO through absl; keep the output to results.
        logging.set_verbosity(logging.WARNING)
    from hlrs_tf.export import savedmodel_onnx as export_lib

    options = export_lib.ExportOptions(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir,
        fashion_mnist_dir=FLAGS.fashion_mnist_dir, num_images=FLAGS.num_images, tolerance=FLAGS.tolerance,
        opset=FLAGS.opset, batch_size=FLAGS.batch_size,
    )
    export_lib.resolve_model(FLAGS.model)  # fail fast, before choosing a default --out
    out = FLAGS.out or default_out(FLAGS.model)
    try:
        report = export_lib.export_model(FLAGS.model, out, options)
    except export_lib.ParityError as e:  # exit status 1: a parity failure, not bad input
        COMMAND.fail(str(e), status=1)
    sm, ox = report["saved_model"], report["onnx"]
    print(f"exported to {report['out']}: saved_model/ model.onnx (opset {report['opset']}) labels.json")
    print(
        f"parity on {report['num_images']} {report['dataset']} test images: max |logit diff| SavedModel "
        f"{sm['max_abs_diff_logits']:.2e}, ONNX {ox['max_abs_diff_logits']:.2e}; top-1 agreement "
        f"{sm['top1_agreement']:.4f} / {ox['top1_agreement']:.4f} (Keras top-1 {report['keras_top1_accuracy']:.4f})"
    )


# Bad input: ExportError (the message names the flag or the file) and OSError; not ValueError, which here would
# be a bug.
COMMAND = cli.Command(PROG, _export, errors=(OSError,), lazy_errors=_errors)
main, run = COMMAND.main, COMMAND.run


if __name__ == "__main__":
    run()
