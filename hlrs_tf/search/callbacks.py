"""The search's own Keras callbacks: HLRS, genotypes and skip counts, alpha movement, alpha heatmaps.

They plug into the callbacks every run uses (:mod:`hlrs_tf.runtime.callbacks`): :class:`HLRSCallback` is an
:class:`~hlrs_tf.runtime.callbacks.EpochSchedule` and :class:`AlphaHeatmaps` an add-on of the
:class:`~hlrs_tf.runtime.callbacks.TensorBoardWriter`. Callbacks run in list order and share the epoch ``logs``
dict, so the ones that *add* entries (:class:`HLRSCallback`, :class:`GenotypeLogger`, :class:`AlphaMovementLogger`)
go before the ones that *write* them.
"""

from __future__ import annotations

import io

import keras
import numpy as np
import tensorflow as tf

from hlrs_tf.config.blocks import ArchOptimizer
from hlrs_tf.losses.bbn_mixing import check_mixing, mixing_factor
from hlrs_tf.runtime.callbacks import EpochSchedule, model_variable
from hlrs_tf.runtime.workdir import Workdir
from hlrs_tf.search.alpha_movement import alpha_movement, edge_max_weight
from hlrs_tf.search.collapse import save_skip_cap
from hlrs_tf.space.genotypes import PRIMITIVES, node_edge_slices


def _arch_lr_variable(model):
    """The architecture optimizer's learning-rate variable, assigned in place: Adam's moments and iteration
    counter carry across epochs (through a ``LossScaleOptimizer``, which delegates it to the inner Adam)."""
    optimizer = getattr(model, "arch_optimizer", None)
    if optimizer is None:
        raise ValueError("HLRSCallback needs a model compiled with an arch_optimizer")
    learning_rate = optimizer.learning_rate
    if not isinstance(learning_rate, keras.Variable):
        # A LearningRateSchedule is evaluated from the iteration count and cannot be assigned.
        raise TypeError("the arch_optimizer must be built with a float learning rate for HLRSCallback, "
                        f"got {type(learning_rate).__name__}")
    return learning_rate


class HLRSCallback(EpochSchedule):
    """Sets the architecture learning rate (HLRS) and BBN's ``alpha_T`` at the start of every epoch, and logs both
    as ``arch_lr`` and ``bbn_alpha`` (an :class:`~hlrs_tf.runtime.callbacks.EpochSchedule`).

    ``eta_a(T)`` goes to ``model.arch_optimizer.learning_rate``; ``alpha_T`` to the model's ``bbn_alpha`` variable
    if it has one (the BBN model), and is logged for every method, so runs compare column for column.

    Args:
        arch: The config's architecture optimiser block, which owns the rate and its schedule
            (:meth:`~hlrs_tf.config.blocks.ArchOptimizer.lr`).
        total_epochs: ``T_max``, the ``epochs`` given to ``fit`` (the full search, not what is left of it).
        mixing: BBN's ``alpha_T`` schedule (:data:`hlrs_tf.losses.bbn_mixing.MIXING_SCHEDULES`), which the
            ``mixing`` and ``freeze`` rates follow.
    """

    def __init__(self, arch: ArchOptimizer, total_epochs: int, mixing: str = "parabolic"):
        if total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1 (--epochs), got {total_epochs}")
        check_mixing(mixing)
        self.arch = arch
        self.mixing = mixing
        self.total_epochs = int(total_epochs)
        super().__init__({
            "arch_lr": (lambda epoch: arch.lr(epoch, self.total_epochs, mixing), _arch_lr_variable),
            "bbn_alpha": (lambda epoch: mixing_factor(mixing, epoch, self.total_epochs), model_variable("bbn_alpha")),
        })

    @property
    def arch_lr(self) -> float | None:
        """This epoch's architecture learning rate (``None`` before the first epoch)."""
        return self.values.get("arch_lr")

    @property
    def alpha(self) -> float | None:
        """This epoch's ``alpha_T`` (``None`` before the first epoch)."""
        return self.values.get("bbn_alpha")


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


class AlphaHeatmaps:
    """The search's add-on of the :class:`~hlrs_tf.runtime.callbacks.TensorBoardWriter`: after every epoch, the
    softmaxed alphas as heatmap images (``alphas/normal``, ``alphas/reduce``), PC-DARTS' edge weights likewise
    (``betas/...``) and the genotype as text.

    Args:
        genotype_logger: Source of the epoch's genotype (avoids deriving it twice); ``None`` derives it.
    """

    def __init__(self, genotype_logger: GenotypeLogger | None = None):
        self.genotype_logger = genotype_logger

    def write_epoch(self, model, step: int) -> None:
        network = model.network
        w_normal, w_reduce = (keras.ops.convert_to_numpy(w) for w in network.arch_weights())
        tf.summary.image("alphas/normal", alpha_heatmap(w_normal, f"normal cell, epoch {step}")[None])
        tf.summary.image("alphas/reduce", alpha_heatmap(w_reduce, f"reduction cell, epoch {step}")[None])
        e_normal, e_reduce = network.edge_weights()
        if e_normal is not None:  # PC-DARTS: the edge weights (softmaxed betas), drawn like the alphas
            for cell, e in (("normal", e_normal), ("reduce", e_reduce)):
                e = keras.ops.convert_to_numpy(e)
                image = edge_weight_heatmap(e, network.steps, f"{cell} cell edge weights, epoch {step}")
                tf.summary.image(f"betas/{cell}", image[None])
        genotype = self.genotype_logger.last_genotype if self.genotype_logger else model.genotype()
        tf.summary.text("genotype", "```\n" + genotype.to_json() + "\n```")
