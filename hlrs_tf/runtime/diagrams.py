"""Cell diagrams of a genotype, drawn with matplotlib (headless Agg canvas, no pyplot state).

One PNG per cell type, with the labels of the DARTS paper's figures: the cell inputs ``c_{k-2}`` and
``c_{k-1}``, the intermediate nodes ``0 .. steps-1`` and the output ``c_{k}``, left to right on one line; every
genotype edge is an arc above the line labelled with its operation (one colour per operation), and dashed grey
arcs below the line show which nodes are concatenated into the output. An arc diagram keeps every edge clear
of the nodes it skips and every label in its own place, for any genotype.

    from hlrs_tf.runtime.diagrams import plot_genotype
    plot_genotype(genotype, "runs/x")      # -> runs/x/normal.png, runs/x/reduce.png

Only matplotlib and the genotype module are imported, so the diagrams can be drawn without TensorFlow.
"""

from __future__ import annotations

import os

from hlrs_tf.space.genotypes import Genotype, GenotypeError

__all__ = ["CELLS", "OP_COLORS", "plot_cell", "plot_genotype"]

CELLS = ("normal", "reduce")

#: Edge colour of each operation (colour-blind-safe Okabe-Ito palette).
OP_COLORS = {
    "max_pool_3x3": "#0072B2",
    "avg_pool_3x3": "#56B4E9",
    "skip_connect": "#7F7F7F",
    "sep_conv_3x3": "#D55E00",
    "sep_conv_5x5": "#E69F00",
    "dil_conv_3x3": "#009E73",
    "dil_conv_5x5": "#CC79A7",
    "none": "#000000",
}

_INPUT_LABELS = (r"$c_{k-2}$", r"$c_{k-1}$")
_OUTPUT_LABEL = r"$c_{k}$"


_SPACING = 2.3  # horizontal distance between consecutive states


def _layout(steps: int) -> dict:
    """States on one line, in order: c_{k-2}, c_{k-1}, the intermediate nodes, then the output."""
    pos = {i: (_SPACING * i, 0.0) for i in range(2 + steps)}
    pos["out"] = (_SPACING * (2 + steps) + 0.4, 0.0)
    return pos


def _arc_height(span: int) -> float:
    # Longer edges arc higher, so arcs of different spans (and their labels) never coincide; two edges of a
    # node come from different states, so they always differ in span.
    return 0.45 + 0.5 * span


def plot_cell(genotype: Genotype, cell: str, path: str, title: str | None = None) -> str:
    """Draws one cell of a genotype to a PNG file (an arc diagram).

    The states lie on one line in topological order (``c_{k-2}``, ``c_{k-1}``, nodes ``0 .. steps-1``, then
    ``c_{k}``); each genotype edge is an arc above the line, labelled with its operation at its apex and
    coloured by operation, so no edge passes through a node; the dashed arcs below the line show the nodes
    concatenated into ``c_{k}``.

    Args:
        genotype: The genotype.
        cell: ``"normal"`` or ``"reduce"``.
        path: Output ``.png`` path (its folder is created).
        title: Figure title; default ``"normal cell"`` / ``"reduction cell"``.

    Returns:
        ``path``.

    Raises:
        GenotypeError: ``cell`` is not ``"normal"`` or ``"reduce"``.
    """
    if cell not in CELLS:
        raise GenotypeError(f"unknown cell {cell!r} (expected 'normal' or 'reduce')")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyBboxPatch

    pairs = getattr(genotype, cell)
    concat = getattr(genotype, f"{cell}_concat")
    steps = len(pairs) // 2
    pos = _layout(steps)
    top = _arc_height(max(2 + k // 2 - src for k, (_, src) in enumerate(pairs))) + 0.5
    out_x = pos["out"][0]
    bottom = max((0.3 + 0.22 * (out_x - pos[s][0]) / _SPACING for s in concat), default=0.5) + 0.4

    width = out_x + 1.6
    fig = Figure(figsize=(1.0 + 0.62 * width, 0.9 + 0.62 * (top + bottom)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.5 / fig.get_size_inches()[1]))
    ax.set_xlim(-0.8, out_x + 0.8)
    ax.set_ylim(-bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")

    patches = {}
    for key, (x, y) in pos.items():
        if key in (0, 1):
            patch = FancyBboxPatch((x - 0.45, y - 0.3), 0.9, 0.6, boxstyle="round,pad=0.05", fc="#C8E6C9",
                                   ec="#2E7D32", lw=1.5, zorder=3)
            label = _INPUT_LABELS[key]
        elif key == "out":
            patch = FancyBboxPatch((x - 0.4, y - 0.3), 0.8, 0.6, boxstyle="round,pad=0.05", fc="#FFF9C4",
                                   ec="#F9A825", lw=1.5, zorder=3)
            label = _OUTPUT_LABEL
        else:
            patch = Circle((x, y), 0.36, fc="#BBDEFB", ec="#1565C0", lw=1.5, zorder=3)
            label = str(key - 2)
        ax.add_patch(patch)
        patches[key] = patch
        ax.text(x, y, label, ha="center", va="center", fontsize=13, zorder=4)

    def arc(src, dst, height, **props):
        # matplotlib's arc3 puts the control point at chord midpoint + rad * (dy, -dx); the curve's apex is
        # half-way there, so rad = -2 * height / dx gives an apex `height` above a horizontal chord.
        (x0, y0), (x1, _) = pos[src], pos[dst]
        rad = -2.0 * height / (x1 - x0)
        ax.annotate("", xy=pos[dst], xytext=pos[src], arrowprops=dict(
            arrowstyle="-|>", patchA=patches[src], patchB=patches[dst], connectionstyle=f"arc3,rad={rad}",
            **props))
        return (x0 + x1) / 2, y0 + height

    for state in concat:
        span = (out_x - pos[state][0]) / _SPACING
        arc(state, "out", -(0.3 + 0.22 * span), color="#9E9E9E", lw=1.0, ls="--", mutation_scale=11, zorder=1)
    for k, (op, src) in enumerate(pairs):
        dst = 2 + k // 2
        color = OP_COLORS.get(op, "#000000")
        lx, ly = arc(src, dst, _arc_height(dst - src), color=color, lw=1.8, mutation_scale=14, zorder=2)
        ax.text(lx, ly, op, ha="center", va="center", fontsize=9, color=color, zorder=5,
                bbox=dict(boxstyle="round,pad=0.18", fc="white", ec=color, lw=0.7))

    fig.suptitle(title or ("normal cell" if cell == "normal" else "reduction cell"), fontsize=13)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    return path


def plot_genotype(genotype: Genotype, out_dir: str) -> dict:
    """Draws both cells of a genotype: ``<out_dir>/normal.png`` and ``<out_dir>/reduce.png``.

    Args:
        genotype: The genotype.
        out_dir: Output folder (created).

    Returns:
        ``{"normal": path, "reduce": path}``.
    """
    return {cell: plot_cell(genotype, cell, os.path.join(out_dir, f"{cell}.png")) for cell in CELLS}
