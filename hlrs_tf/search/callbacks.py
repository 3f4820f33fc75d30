"""Keras callbacks of a search run: epoch logs, genotypes, TensorBoard and checkpoints.

Callbacks run in list order and share the epoch ``logs`` dict, so the ones that *add* entries
(:class:`LearningRateLogger`, :class:`GenotypeLogger`, :class:`AlphaMovementLogger`) go before the ones that
*write* them (TensorBoard, ``CSVLogger``).
"""

from __future__ import annotations

import csv
import io
import json
import os

import keras
import numpy as np
import tensorflow as tf

from hlrs_tf.runtime.workdir import Workdir, atomic_write_json, atomic_write_text
from hlrs_tf.search.alpha_movement import alpha_movement, edge_max_weight
from hlrs_tf.search.collapse import save_skip_cap
from hlrs_tf.space.genotypes import PRIMITIVES, node_edge_slices


def _current_lr(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the weight learning rate (``lr``) and the architecture learning rate (``arch_lr``) to epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["lr"] = _current_lr(self.model.optimizer)
        if getattr(self.model, "arch_optimizer", None) is not None:
            logs["arch_lr"] = _current_lr(self.model.arch_optimizer)


class GenotypeLogger(keras.callbacks.Callback):
    """Derives the genotype after every epoch, saves ``genotypes/epoch_NNN.json`` and logs skip counts.

    ``normal_skip_connect`` (and ``reduce_skip_connect``) go into the epoch logs: DARTS' known failure is a
    normal cell collapsing to parameter-free skip connections, so it is watched every epoch. They count the
    saved genotype, which with ``max_skip_connect`` is the capped one (P-DARTS,
    :func:`hlrs_tf.space.genotypes.cap_skip_connect`); ``normal_skip_connect_uncapped`` counts the plain DARTS
    derivation (what ``--stop_on_skip`` watches) and ``skip_replaced`` how many skips the cap replaced (0 without
    a cap). With a cap, the replacements themselves go to ``skip_cap.json``
    (:func:`hlrs_tf.search.collapse.save_skip_cap`).

    Args:
        workdir: The run's :class:`~hlrs_tf.runtime.workdir.Workdir`.
        max_skip_connect: The P-DARTS cap of the normal cell; ``None``: no cap.

    Attributes:
        last_genotype: The genotype saved at the last epoch end.
        last_normal_skip_uncapped: Skip edges of the last epoch's uncapped normal cell.
    """

    def __init__(self, workdir: Workdir, max_skip_connect: int | None = None):
        super().__init__()
        self.workdir = workdir
        self.max_skip_connect = max_skip_connect
        self.last_genotype = None
        self.last_normal_skip_uncapped = 0

    def on_epoch_end(self, epoch, logs=None):
        uncapped = self.model.genotype()
        replaced: list[dict] = []
        genotype = uncapped
        if self.max_skip_connect is not None:
            genotype = self.model.genotype(max_skip_connect=self.max_skip_connect, replaced=replaced)
            save_skip_cap(self.workdir, epoch + 1, self.max_skip_connect, replaced)
        genotype.save(self.workdir.epoch_genotype_file(epoch + 1))
        self.last_genotype = genotype
        self.last_normal_skip_uncapped = uncapped.count("skip_connect", "normal")
        if logs is not None:
            logs["normal_skip_connect"] = genotype.count("skip_connect", "normal")
            logs["reduce_skip_connect"] = genotype.count("skip_connect", "reduce")
            logs["normal_skip_connect_uncapped"] = self.last_normal_skip_uncapped
            logs["skip_replaced"] = len(replaced)


def model_alpha_movement(model) -> dict[str, float]:
    """:func:`hlrs_tf.search.alpha_movement.alpha_movement` of a search model's current alphas.

    Works for the plain and the BBN supernet alike: BBN's two branch cells share the alphas of their cell
    type (:class:`hlrs_tf.search.bbn.BBNSearchNetwork`), so both have one normal and one reduction array.
    """
    network = model.network
    metrics = alpha_movement(*(keras.ops.convert_to_numpy(v) for v in (network.alphas_normal, network.alphas_reduce)))
    e_normal, e_reduce = network.edge_weights()
    if e_normal is not None:  # PC-DARTS: how far the edge weights moved (mean over nodes of the largest)
        for cell, e in (("normal", e_normal), ("reduce", e_reduce)):
            metrics[f"edge_max_weight_{cell}"] = edge_max_weight(keras.ops.convert_to_numpy(e), network.steps)
    return metrics


class AlphaMovementLogger(keras.callbacks.Callback):
    """Adds how far the alphas moved from uniform to the epoch logs (``history.csv`` and TensorBoard).

    The keys are :data:`hlrs_tf.search.alpha_movement.ALPHA_MOVEMENT_KEYS`: the mean over edges of the largest
    softmax weight (per cell type and combined), its uniform value ``1 / num_ops`` and the range of the raw
    alphas. A search whose ``alpha_max_softmax`` stays near ``alpha_uniform`` derives its genotype from
    initialisation noise.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(model_alpha_movement(self.model))


#: Smallest half-range of the heatmap colour scale, in log2(weight / uniform): exactly uniform alphas (range 0)
#: still get a valid, symmetric scale (+-0.07 % around uniform) instead of a zero-width one.
_MIN_LOG_RATIO = 1e-3


def _edge_labels(num_edges: int) -> list[str]:
    """``node j <- input i`` for the edges in the alpha row order (input 0/1 = cell inputs k-2/k-1)."""
    labels, j, i = [], 0, 0
    while len(labels) < num_edges:
        labels.append(f"node {j} <- {i}")
        i += 1
        if i == j + 2:
            j, i = j + 1, 0
    return labels


def _weight_heatmap(weights: np.ndarray, uniform: np.ndarray, rows: list[str], columns: list[str],
                    title: str, summary: str) -> np.ndarray:
    """Annotated heatmap of softmax weights, coloured by their log-ratio to ``uniform`` (per row), as
    ``uint8 (H, W, 4)``. NaN entries (no such weight) stay blank. See :func:`alpha_heatmap` for the scale."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    present = np.isfinite(weights)
    # The floor keeps log2 finite for a weight that underflowed to 0 (an op the search has all but removed).
    log_ratio = np.log2(np.maximum(np.where(present, weights, 1.0), np.finfo(np.float64).tiny) / uniform[:, None])
    log_ratio[~present] = np.nan
    # Capped at the largest ratio a weight can have (1 / uniform), so one near-zero weight cannot stretch the
    # scale until every other cell is white.
    cap = float(np.log2(1.0 / uniform.min()))
    limit = min(max(float(np.nanmax(np.abs(log_ratio))), _MIN_LOG_RATIO), cap)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.6), dpi=90)
    im = ax.imshow(np.ma.masked_invalid(log_ratio), cmap="RdBu_r", aspect="auto", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for (r, c), v in np.ndenumerate(weights):
        if not present[r, c]:
            continue
        # White text only on the saturated ends of the map, black on the pale middle.
        dark = abs(log_ratio[r, c]) > 0.6 * limit
        ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=6, color="w" if dark else "k")
    ax.set_title(f"{title} ({summary})", fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.04)
    # Ticks as ratios to uniform, so the bar reads like the annotations where uniform is one number; the scale
    # itself is log2(w / uniform). One more significant digit per decade the scale is narrower than 1, so
    # near-uniform ticks stay distinct.
    digits = 3 + max(0, int(np.ceil(-np.log10(limit))))
    u = float(uniform[0])
    if np.all(uniform == u):
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{u * 2.0 ** t:.{digits}g}"))
        bar.set_label(f"softmax weight, log scale; white = uniform {u:.3g}", fontsize=8)
    else:
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{2.0 ** t:.{digits}g}x"))
        bar.set_label("weight / uniform of its row, log scale; white = uniform", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return tf.io.decode_png(buf.getvalue(), channels=4).numpy()


def alpha_heatmap(weights: np.ndarray, title: str) -> np.ndarray:
    """Renders softmaxed alphas ``(edges, ops)`` as an annotated heatmap, returned as ``uint8 (H, W, 4)``.

    Rows are labelled ``node j <- input i`` (input 0/1 = cell inputs k-2/k-1, 2.. = earlier nodes); columns
    are the primitives in the reference order. Each cell shows its softmax weight (3 significant digits).

    The colour is the log-ratio to uniform, ``log2(weight * num_ops)``, on a diverging map centred on 0
    (white = ``1 / num_ops``, red above, blue below) and scaled symmetrically to the largest deviation, at most
    ``log2(num_ops)`` (a weight of 1; a weight below ``1 / num_ops**2`` gets the blue end colour). A
    colour scale from 0 to the maximum made the near-uniform alphas of a short search one flat square; this
    one shows which op leads on every edge however small the lead, and the colour bar, labelled in softmax
    weights, says how small it is. The title gets the mean over edges of the largest weight next to its
    uniform value (:mod:`hlrs_tf.search.alpha_movement`).
    """
    weights = np.asarray(weights, dtype=np.float64)
    num_ops = weights.shape[1]
    uniform = 1.0 / num_ops
    summary = f"mean max weight {float(weights.max(axis=1).mean()):.3g}, uniform {uniform:.3g}"
    return _weight_heatmap(weights, np.full(weights.shape[0], uniform), _edge_labels(weights.shape[0]),
                           list(PRIMITIVES[:num_ops]), title, summary)


def edge_weight_heatmap(edge_weights: np.ndarray, steps: int, title: str) -> np.ndarray:
    """Renders PC-DARTS' normalised edge weights ``(num_edges,)`` as a ``node x input`` heatmap (``uint8 (H, W,
    4)``), coloured like :func:`alpha_heatmap` by the log-ratio to uniform -- per node, ``1 / (2 + j)`` for node
    ``j``'s ``2 + j`` inputs. Inputs a node does not have stay blank."""
    edge_weights = np.asarray(edge_weights, dtype=np.float64)
    grid = np.full((steps, steps + 1), np.nan)
    for j, node in enumerate(node_edge_slices(steps)):
        grid[j, : 2 + j] = edge_weights[node]
    uniform = 1.0 / (2.0 + np.arange(steps))
    summary = f"mean max weight {float(np.nanmax(grid, axis=1).mean()):.3g}, uniform {float(uniform.mean()):.3g}"
    return _weight_heatmap(grid, uniform, [f"node {j}" for j in range(steps)],
                           ["k-2", "k-1"] + [f"node {j}" for j in range(steps - 1)], title, summary)


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes every numeric epoch log as a scalar, the softmaxed alphas as heatmap images and the genotype
    as text, all into one event file under ``log_dir``.

    Args:
        log_dir: The run's ``tensorboard/`` folder.
        genotype_logger: Source of the epoch's genotype (avoids deriving it twice).
    """

    def __init__(self, log_dir: str, genotype_logger: GenotypeLogger | None = None):
        super().__init__()
        self.log_dir = log_dir
        self.genotype_logger = genotype_logger
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        network = self.model.network
        w_normal, w_reduce = (keras.ops.convert_to_numpy(w) for w in network.arch_weights())
        with self._writer.as_default(step=step):
            for key, value in (logs or {}).items():
                if np.ndim(value) == 0 and np.isfinite(float(value)):
                    tf.summary.scalar(f"epoch/{key}", float(value))
            tf.summary.image("alphas/normal", alpha_heatmap(w_normal, f"normal cell, epoch {step}")[None])
            tf.summary.image("alphas/reduce", alpha_heatmap(w_reduce, f"reduction cell, epoch {step}")[None])
            e_normal, e_reduce = network.edge_weights()
            if e_normal is not None:  # PC-DARTS: the edge weights (softmaxed betas), drawn like the alphas
                for cell, e in (("normal", e_normal), ("reduce", e_reduce)):
                    e = keras.ops.convert_to_numpy(e)
                    image = edge_weight_heatmap(e, network.steps, f"{cell} cell edge weights, epoch {step}")
                    tf.summary.image(f"betas/{cell}", image[None])
            genotype = self.genotype_logger.last_genotype if self.genotype_logger else self.model.genotype()
            tf.summary.text("genotype", "```\n" + genotype.to_json() + "\n```")
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class CSVHistory(keras.callbacks.CSVLogger):
    """Keras' ``CSVLogger`` without the empty ``val_*`` columns it adds when a run has no validation data, and
    safe to resume into a file written with other columns.

    ``CSVLogger`` appending to an existing file keeps its header and writes the new rows under it, so a run
    resumed after a version that logs more columns (e.g. the skip guards' ``skip_replaced``) would put its
    values under other columns' names. Here the first epoch of an appending run compares the header with its
    columns and, if they differ, rewrites the file once under the union of both (sorted, as CSVLogger sorts):
    the old rows get ``NA`` for the new columns and the new rows ``NA`` for the dropped ones, CSVLogger's mark
    for a missing value.

    Args:
        filename: The ``history.csv`` path.
        validation_metrics: What a run that evaluates every few epochs (``validation_freq``) evaluates: their
            ``val_*`` columns are made at the first epoch even when it has no evaluation (the columns are fixed
            then), so the later epochs' values are kept; the epochs without one get ``NA``.
        **kwargs: Forwarded to ``CSVLogger`` (``append=True`` continues a resumed run's file).
    """

    def __init__(self, filename, validation_metrics=(), **kwargs):
        super().__init__(filename, **kwargs)
        self.validation_metrics = tuple(validation_metrics)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and logs:
            # fixed at the first epoch, as in CSVLogger
            self.keys = sorted(set(logs) | {f"val_{m}" for m in self.validation_metrics})
            if self.append and not self.append_header:  # appending to a file that has a header
                self._merge_columns()
        super().on_epoch_end(epoch, logs)

    def _merge_columns(self) -> None:
        with open(self.filename, newline="") as f:
            reader = csv.DictReader(f, delimiter=self.sep)
            old = list(reader.fieldnames or [])
            rows = list(reader)
        if old == ["epoch", *self.keys]:
            return
        self.keys = sorted(set(self.keys) | (set(old) - {"epoch"}))
        self.csv_file.close()
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=["epoch", *self.keys], restval="NA", delimiter=self.sep)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.filename, text.getvalue())  # the work directory's one atomic write
        self.csv_file = open(self.filename, "a")  # CSVLogger closes it in on_train_end


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves what a resume needs after every epoch: all model variables (weights, alphas, BN statistics) and
    both optimizers' variables, then ``state.json`` naming the last complete epoch.

    ``state.json`` is written last and atomically, so a checkpoint it names is complete; the previous
    epoch's files are removed only after that.

    Args:
        directory: The run's ``checkpoints/`` folder.
        extra_state: Called at every epoch end; the entries of the dict it returns are added to that epoch's
            ``state.json``, in the same atomic write (e.g. an early stop,
            :meth:`hlrs_tf.search.collapse.SkipConnectStop.checkpoint_state`). Read them back with :meth:`saved_state`.
    """

    def __init__(self, directory: str, extra_state=None):
        super().__init__()
        self.directory = directory
        self.extra_state = extra_state

    def _paths(self, epoch: int) -> tuple[str, str]:
        stem = os.path.join(self.directory, f"epoch_{epoch:03d}")
        return stem + ".weights.h5", stem + ".optimizers.npz"

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        weights_path, opt_path = self._paths(done)
        self.model.save_weights(weights_path)
        arrays = {}
        for name, opt in _named_optimizers(self.model):
            for i, v in enumerate(opt.variables):
                arrays[f"{name}/{i:04d}"] = keras.ops.convert_to_numpy(v)
        tmp = opt_path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, opt_path)
        previous = self._read_state()
        atomic_write_json(
            os.path.join(self.directory, "state.json"),
            {"epoch": done, "weights": os.path.basename(weights_path), "optimizers": os.path.basename(opt_path),
             **(self.extra_state() if self.extra_state else {})},
        )
        if previous and previous.get("epoch") != done:
            for p in self._paths(previous["epoch"]):
                if os.path.exists(p):
                    os.remove(p)

    def saved_state(self) -> dict:
        """The last complete epoch's ``state.json`` (``{}`` without a checkpoint), with any extra state.

        Raises:
            CheckpointError: If ``state.json`` is corrupt.
        """
        return self._read_state() or {}

    def _read_state(self):
        path = os.path.join(self.directory, "state.json")
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"corrupt checkpoint state {path}: {e}; delete the folder to start over") from e

    def restore(self, model) -> int:
        """Loads the last complete epoch's variables into ``model`` and its (built) optimizers.

        Returns:
            The number of completed epochs restored (0 when there is no checkpoint).

        Raises:
            CheckpointError: If the files named by ``state.json`` are missing or do not fit the model.
        """
        state = self._read_state()
        if not state:
            return 0
        weights_path = os.path.join(self.directory, state["weights"])
        opt_path = os.path.join(self.directory, state["optimizers"])
        try:
            model.load_weights(weights_path)
            with np.load(opt_path) as arrays:
                for name, opt in _named_optimizers(model):
                    keys = sorted(k for k in arrays.files if k.startswith(name + "/"))
                    if len(keys) != len(opt.variables):
                        raise ValueError(f"{name} has {len(opt.variables)} variables, checkpoint {len(keys)}")
                    for key, var in zip(keys, opt.variables):
                        var.assign(arrays[key])
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"cannot restore checkpoint epoch {state['epoch']} from {self.directory}: {e}; "
                "delete the folder (or use a new --workdir) to start over"
            ) from e
        return int(state["epoch"])


def _named_optimizers(model) -> list:
    """The model's optimizers to checkpoint: the weight optimizer, and the architecture one if it has one."""
    named = [("optimizer", model.optimizer)]
    if getattr(model, "arch_optimizer", None) is not None:
        named.append(("arch_optimizer", model.arch_optimizer))
    return named


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back; the message says which and what to do."""

