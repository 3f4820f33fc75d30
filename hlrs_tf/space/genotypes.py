"""DARTS genotypes: the operation list, derivation from alphas, and a JSON file format.

A genotype describes a derived (discrete) DARTS architecture: for the normal and the reduction cell, a list of
``2 * steps`` ``(op_name, input_index)`` pairs (two incoming edges per intermediate node, node by node) and the
list of states concatenated into the cell output. It carries exactly the content of the reference
implementation's ``Genotype`` namedtuple (Liu et al., ``genotypes.py``), but it is stored as JSON and validated
on load -- the reference stores genotypes as Python source and ``eval``s them, which we never do.

JSON format (``Genotype.to_json``)::

    {
      "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ...],   # 8 pairs
      "normal_concat": [2, 3, 4, 5],
      "reduce": [["max_pool_3x3", 0], ...],                        # 8 pairs
      "reduce_concat": [2, 3, 4, 5]
    }

Input index convention (as in the reference): for intermediate node ``j`` (0-based among the ``steps`` nodes),
index 0 is the cell input ``s0`` (cell k-2), 1 is ``s1`` (cell k-1) and ``i >= 2`` is intermediate node
``i - 2``; so node ``j`` may only take inputs ``0 .. j + 1``. Concat indices use the same numbering.

This module is pure numpy + stdlib on purpose: it is imported by tools (export, inspection, tests) that must not
pay for a TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hlrs_tf.runtime.workdir import GENOTYPE_FILENAME, atomic_write_text

__all__ = [
    "PRIMITIVES",
    "STEPS",
    "MULTIPLIER",
    "GenotypeError",
    "Genotype",
    "softmax",
    "num_edges",
    "edge_pairs",
    "derive_cell",
    "cap_skip_connect",
    "derive_genotype",
    "DARTS_V1",
    "DARTS_V2",
    "PRESETS",
    "GENOTYPE_FILENAME",
    "get_genotype",
]

# The order is part of the genotype/alpha format: column k of an alpha tensor is PRIMITIVES[k]. It must match
# the reference DARTS implementation so alphas and genotypes are interchangeable with it.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

#: Number of intermediate nodes per cell in the standard DARTS search space.
STEPS: int = 4
#: Number of intermediate nodes concatenated into the cell output.
MULTIPLIER: int = 4
#: File name under which a search run stores its derived genotype in its working directory.

_NONE_INDEX = PRIMITIVES.index("none")
_SKIP_INDEX = PRIMITIVES.index("skip_connect")
_KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")


class GenotypeError(ValueError):
    """A genotype (file, dict or alpha tensor) is malformed.

    The message names the source (e.g. the file path), the field and the entry at fault, and what was expected.
    """


def _is_int(x: Any) -> bool:
    # bool is a subclass of int, but `true` as an input index is certainly a mistake in a hand-edited file.
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def num_edges(steps: int = STEPS) -> int:
    """Number of edges of a cell with ``steps`` intermediate nodes (14 for 4): node ``j`` has ``2 + j`` incoming
    edges, ``2 + 3 + ... + (steps + 1)``."""
    return sum(2 + j for j in range(steps))


def edge_pairs(steps: int = STEPS) -> list[tuple[int, int]]:
    """The edges of a cell as ``(node j, input i)`` in the reference's row order (the alphas' rows): node by node,
    input 0 and 1 the cell inputs ``k-2`` and ``k-1``, input ``2 + m`` node ``m``."""
    return [(j, i) for j in range(steps) for i in range(2 + j)]


def _validate_cell(value: Any, field: str, steps: int, source: str) -> tuple[tuple[str, int], ...]:
    """Validates one cell's list of (op, input_index) pairs and returns it as a tuple of tuples."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise GenotypeError(
            f"{source}: field '{field}' must be a list of [op_name, input_index] pairs, "
            f"got {type(value).__name__}"
        )
    if len(value) != 2 * steps:
        raise GenotypeError(
            f"{source}: field '{field}' must have exactly {2 * steps} [op_name, input_index] pairs "
            f"(2 per intermediate node, {steps} nodes), got {len(value)}"
        )
    pairs = []
    for i, entry in enumerate(value):
        where = f"{source}: field '{field}' entry {i}"
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise GenotypeError(f"{where}: expected a pair [op_name, input_index], got {entry!r}")
        op, idx = entry[0], entry[1]
        if not isinstance(op, str):
            raise GenotypeError(f"{where}: op name must be a string, got {op!r}")
        if op == "none":
            # 'none' is a search-time candidate only; the derivation never selects it, so a derived cell
            # containing it is a corrupt or hand-made file.
            raise GenotypeError(
                f"{where}: op 'none' is not allowed in a derived cell "
                f"(allowed: {', '.join(PRIMITIVES[1:])})"
            )
        if op not in PRIMITIVES:
            raise GenotypeError(
                f"{where}: unknown op {op!r} (allowed: {', '.join(PRIMITIVES[1:])})"
            )
        node = i // 2
        if not _is_int(idx):
            raise GenotypeError(
                f"{where}: input index must be an integer, got {idx!r} ({type(idx).__name__})"
            )
        idx = int(idx)
        if not 0 <= idx <= node + 1:
            raise GenotypeError(
                f"{where}: input index {idx} out of range for intermediate node {node} "
                f"(expected 0..{node + 1})"
            )
        pairs.append((op, idx))
    return tuple(pairs)


def _validate_concat(value: Any, field: str, steps: int, source: str) -> tuple[int, ...]:
    """Validates a concat list (state indices 0..steps+1, no duplicates) and returns it as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise GenotypeError(
            f"{source}: field '{field}' must be a list of state indices, got {type(value).__name__}"
        )
    if len(value) == 0:
        raise GenotypeError(f"{source}: field '{field}' must not be empty")
    out = []
    for i, idx in enumerate(value):
        where = f"{source}: field '{field}' entry {i}"
        if not _is_int(idx):
            raise GenotypeError(f"{where}: concat index must be an integer, got {idx!r}")
        idx = int(idx)
        if not 0 <= idx <= steps + 1:
            raise GenotypeError(f"{where}: concat index {idx} out of range (expected 0..{steps + 1})")
        if idx in out:
            raise GenotypeError(f"{where}: concat index {idx} is duplicated")
        out.append(idx)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A derived DARTS architecture (immutable, hashable, validated on construction).

    Lists given to the constructor are normalised to tuples, so ``Genotype(normal=[...], ...)`` with lists (as
    in the reference's source form) works and compares equal to one built from tuples.

    Attributes:
        normal: ``2 * steps`` ``(op_name, input_index)`` pairs of the normal cell, two per node, node by node.
        normal_concat: State indices concatenated into the normal cell's output (``(2, 3, 4, 5)`` in DARTS).
        reduce: The reduction cell's pairs, same layout as ``normal``.
        reduce_concat: State indices concatenated into the reduction cell's output.

    Raises:
        GenotypeError: on construction, if a field is malformed (see ``from_dict``).
    """

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        # The number of nodes is implied by the cell length; non-standard step counts are allowed here (they
        # come from derive_genotype(steps=...)), while from_dict/load insist on the expected count.
        n = len(self.normal) if isinstance(self.normal, Sequence) else 0
        if n % 2 or (n == 0 and isinstance(self.normal, Sequence)):
            raise GenotypeError(
                f"Genotype: field 'normal' must have a positive even number of pairs "
                f"(2 per intermediate node), got {n}"
            )
        steps = max(n // 2, 1)
        self._normalise(steps, "Genotype")

    def _normalise(self, steps: int, source: str) -> None:
        if isinstance(self.normal, Sequence) and isinstance(self.reduce, Sequence):
            if len(self.normal) != len(self.reduce):
                raise GenotypeError(
                    f"{source}: 'normal' and 'reduce' must have the same number of pairs, "
                    f"got {len(self.normal)} and {len(self.reduce)}"
                )
        # object.__setattr__ because the dataclass is frozen; this runs once, at construction.
        object.__setattr__(self, "normal", _validate_cell(self.normal, "normal", steps, source))
        object.__setattr__(
            self, "normal_concat", _validate_concat(self.normal_concat, "normal_concat", steps, source)
        )
        object.__setattr__(self, "reduce", _validate_cell(self.reduce, "reduce", steps, source))
        object.__setattr__(
            self, "reduce_concat", _validate_concat(self.reduce_concat, "reduce_concat", steps, source)
        )

    @property
    def steps(self) -> int:
        """Number of intermediate nodes per cell (``len(normal) // 2``)."""
        return len(self.normal) // 2

    def to_dict(self) -> dict:
        """Returns the genotype as JSON-ready plain lists.

        Returns:
            ``{"normal": [[op, idx], ...], "normal_concat": [...], "reduce": [...], "reduce_concat": [...]}``.
        """
        return {
            "normal": [[op, idx] for op, idx in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, idx] for op, idx in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "genotype", steps: int = STEPS) -> Genotype:
        """Builds a validated genotype from a dict such as ``to_dict`` returns (or parsed JSON).

        Args:
            d: Mapping with exactly the keys ``normal``, ``normal_concat``, ``reduce``, ``reduce_concat``.
            source: Name used in error messages (e.g. the file path).
            steps: Expected number of intermediate nodes; each cell must have ``2 * steps`` pairs.

        Returns:
            The genotype.

        Raises:
            GenotypeError: missing or extra keys, a field that is not a list, a cell of the wrong length, an
                unknown op or ``'none'``, an input index that is not an int (bools rejected) or is out of range
                for its node (node ``j`` takes ``0..j+1``), or a concat entry out of ``0..steps+1`` or
                duplicated.
        """
        if not isinstance(d, Mapping):
            raise GenotypeError(
                f"{source}: a genotype must be a JSON object with keys {', '.join(_KEYS)}, "
                f"got {type(d).__name__}"
            )
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise GenotypeError(f"{source}: missing key(s) {', '.join(missing)} (expected {', '.join(_KEYS)})")
        extra = sorted(str(k) for k in d if k not in _KEYS)
        if extra:
            raise GenotypeError(f"{source}: unexpected key(s) {', '.join(extra)} (expected {', '.join(_KEYS)})")
        # Validate with the caller's source and step count before the constructor re-checks (which would
        # report the less helpful source "Genotype").
        normal = _validate_cell(d["normal"], "normal", steps, source)
        normal_concat = _validate_concat(d["normal_concat"], "normal_concat", steps, source)
        reduce = _validate_cell(d["reduce"], "reduce", steps, source)
        reduce_concat = _validate_concat(d["reduce_concat"], "reduce_concat", steps, source)
        return cls(normal=normal, normal_concat=normal_concat, reduce=reduce, reduce_concat=reduce_concat)

    def to_json(self) -> str:
        """Serialises the genotype as indented JSON (see the module docstring for the format).

        Returns:
            JSON text with indent 2 and no trailing newline (``save`` adds one).
        """
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "genotype", steps: int = STEPS) -> Genotype:
        """Parses and validates a genotype from JSON text.

        Args:
            text: JSON text.
            source: Name used in error messages.
            steps: Expected number of intermediate nodes.

        Returns:
            The genotype.

        Raises:
            GenotypeError: invalid JSON or an invalid genotype.
        """
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise GenotypeError(f"{source}: invalid JSON: {e}") from e
        return cls.from_dict(d, source=source, steps=steps)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the genotype as JSON, atomically.

        The text goes to a temporary file in the same directory, is fsynced, and then ``os.replace``d over
        ``path`` (:func:`hlrs_tf.runtime.workdir.atomic_write_text`) so a reader (or a crash) never sees a
        half-written genotype.

        Args:
            path: Destination file (its directory is created).
        """
        atomic_write_text(os.fspath(path), self.to_json() + "\n")  # mode 0644: a genotype is meant to be shared

    @classmethod
    def load(cls, path: str | os.PathLike, steps: int = STEPS) -> Genotype:
        """Reads and validates a genotype JSON file (never ``eval``).

        Args:
            path: The JSON file.
            steps: Expected number of intermediate nodes.

        Returns:
            The genotype.

        Raises:
            GenotypeError: the file is missing or unreadable, is not valid JSON, or is not a valid genotype;
                the message names the path.
        """
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError as e:
            raise GenotypeError(f"{path}: genotype file not found") from e
        except (OSError, UnicodeDecodeError) as e:
            raise GenotypeError(f"{path}: cannot read genotype file: {e}") from e
        return cls.from_json(text, source=path, steps=steps)

    def count(self, op: str, cell: str = "normal") -> int:
        """Counts how often ``op`` appears in one cell.

        Args:
            op: An operation name from ``PRIMITIVES``.
            cell: ``"normal"`` or ``"reduce"``.

        Returns:
            The number of edges of that cell labelled ``op``.

        Raises:
            GenotypeError: unknown op or cell name (a typo would otherwise silently count 0).
        """
        if op not in PRIMITIVES:
            raise GenotypeError(f"unknown op {op!r} (allowed: {', '.join(PRIMITIVES)})")
        if cell not in ("normal", "reduce"):
            raise GenotypeError(f"unknown cell {cell!r} (expected 'normal' or 'reduce')")
        return sum(1 for name, _ in getattr(self, cell) if name == op)


def softmax(x: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax.

    Args:
        x: Array-like of logits.
        axis: Axis to normalise over.

    Returns:
        Float64 array of the same shape whose entries along ``axis`` sum to 1.
    """
    x = np.asarray(x, dtype=np.float64)
    # Subtracting the max leaves the result unchanged and keeps exp() from overflowing on large logits.
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def derive_cell(
    weights: Any,
    steps: int = STEPS,
    max_skip_connect: int | None = None,
    replaced: list | None = None,
) -> tuple[tuple[str, int], ...]:
    """Derives one discrete cell from softmaxed architecture weights (the reference DARTS ``_parse``).

    For intermediate node ``j``, each incoming edge is scored by its largest non-``none`` weight; the two
    best edges are kept (stable sort by descending score, so ties keep the lower input index first), and each is
    labelled with its argmax non-``none`` op (the first maximum wins on ties, i.e. the op earlier in
    ``PRIMITIVES``). Pairs are emitted in the order of the sorted top-2 edges, exactly as the reference does.

    With ``max_skip_connect`` set, the P-DARTS cap is applied on top (:func:`cap_skip_connect`). It works on
    ``weights`` as given, i.e. on whatever matrix ranks the edges (softmaxed alphas, or PC-DARTS' edge-normalised
    weights), so it composes with any re-weighting done before this call.

    Args:
        weights: ``(num_edges, len(PRIMITIVES))`` array of already-softmaxed weights, edges ordered node by node
            (node 0: inputs 0, 1; node 1: inputs 0, 1, 2; ...), ``num_edges = 14`` for 4 steps.
        steps: Number of intermediate nodes.
        max_skip_connect: Keep at most this many ``skip_connect`` edges (P-DARTS); ``None``: no cap.
        replaced: If given, a list the cap's replacement record is appended to (see :func:`cap_skip_connect`);
            nothing is appended without a cap or when the cap changes nothing.

    Returns:
        ``2 * steps`` ``(op_name, input_index)`` pairs.

    Raises:
        GenotypeError: wrong shape or non-finite weights (or, with a cap, negative weights or a bad cap).
    """
    if max_skip_connect is not None:
        cell, record = cap_skip_connect(weights, steps, max_skip_connect)
        if replaced is not None:
            replaced.extend(record)
        return cell
    w = np.asarray(weights, dtype=np.float64)
    expected = (num_edges(steps), len(PRIMITIVES))
    if w.shape != expected:
        raise GenotypeError(f"derive_cell: weights must have shape {expected}, got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise GenotypeError("derive_cell: weights contain NaN or inf")
    # Masking 'none' with -inf is equivalent to the reference's "k != none" filters for both the edge score
    # and the op choice; np.argmax returns the first maximum, like the reference's strict '>' loop.
    masked = w.copy()
    masked[:, _NONE_INDEX] = -np.inf
    gene: list[tuple[str, int]] = []
    start = 0
    for j in range(steps):
        n_in = 2 + j
        block = masked[start:start + n_in]
        scores = block.max(axis=1)
        # sorted() is stable: equal scores keep ascending input order, as in the reference.
        edges = sorted(range(n_in), key=lambda e: -scores[e])[:2]
        for e in edges:
            gene.append((PRIMITIVES[int(np.argmax(block[e]))], e))
        start += n_in
    return tuple(gene)


def node_edge_slices(steps: int = STEPS) -> list[slice]:
    """The rows of each intermediate node's incoming edges in the ``(num_edges, ...)`` edge order: node ``j``
    has ``2 + j`` edges (``slice(0, 2), slice(2, 5), slice(5, 9), slice(9, 14)`` for 4 nodes)."""
    return [slice(num_edges(j), num_edges(j + 1)) for j in range(steps)]


def edge_normalised_weights(weights: Any, betas: Any, steps: int = STEPS) -> np.ndarray:
    """PC-DARTS' derivation weights: each edge's softmaxed op weights times its edge weight, the softmax of the
    betas over the edges of its node (``yuhuixu1993/PC-DARTS``, ``model_search.py``, ``Network.genotype``:
    ``W[j, :] = W[j, :] * W2[j]`` with ``weights2`` built per node). Ranking the edges of a node by the largest
    non-``none`` entry of these is the reference's ``_parse``; the op choice per edge is unchanged (a positive
    factor per row).

    Args:
        weights: ``(num_edges, num_ops)`` softmaxed alphas.
        betas: Raw ``(num_edges,)`` betas.
        steps: Number of intermediate nodes.
    """
    w = np.asarray(weights, dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64)
    if b.shape != (num_edges(steps),):
        raise GenotypeError(f"betas must have shape ({num_edges(steps)},), got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise GenotypeError("betas contain NaN or inf")
    edge = np.concatenate([softmax(b[node]) for node in node_edge_slices(steps)])
    return w * edge[:, None]
def _count_skips(cell: Sequence[tuple[str, int]]) -> int:
    return sum(1 for op, _ in cell if op == "skip_connect")


def cap_skip_connect(
    weights: Any, steps: int = STEPS, max_skip_connect: int = 2
) -> tuple[tuple[tuple[str, int], ...], list[dict]]:
    """Derives a cell with at most ``max_skip_connect`` skip connections: the P-DARTS rule.

    Follows P-DARTS (Chen et al. 2019), ``train_search.py`` of github.com/chenxin061/pdarts, the "Restricting
    skipconnect" loop with ``check_sk_number``, ``delete_min_sk_prob``, ``keep_1_on`` and ``keep_2_branches``:
    while the derived cell has more than ``max_skip_connect`` skip edges, the ``skip_connect`` weight of the
    chosen skip edge with the *smallest* skip weight is set to 0 (``delete_min_sk_prob``; ``np.argmin`` over the
    edges, so on a tie the lower edge index goes first) and the cell is derived again -- each edge's op is its
    best remaining op (``keep_1_on``) and each node keeps its two best edges (``keep_2_branches``). The removed
    skip is so replaced by the next-best op on the same edge, or by the node's next-best edge if that one now
    scores higher.

    Departures from P-DARTS: P-DARTS applies this to its final-stage switches, where each edge has a reduced op
    set left from its progressive pruning; we apply it to the full 8-op weights of a DARTS search. Edges and ops
    are ranked by :func:`derive_cell` (the reference DARTS ``_parse``, ties to the lower index), not by
    P-DARTS' own ascending sort (ties to the higher index). The caller chooses which cells to cap; P-DARTS (and
    :func:`derive_genotype`) caps only the normal cell.

    Args:
        weights: Non-negative ``(num_edges, len(PRIMITIVES))`` weights as for :func:`derive_cell` (softmaxed
            alphas, possibly multiplied by edge weights); not modified.
        steps: Number of intermediate nodes.
        max_skip_connect: Largest number of ``skip_connect`` edges kept (``>= 0``).

    Returns:
        ``(cell, replaced)``: the capped cell and one dict per removal, in removal order: ``node`` (0-based
        intermediate node), ``removed`` (``[op, input]``, always a ``skip_connect``), ``replacement``
        (``[op, input]`` the node took instead; itself a ``skip_connect`` if the node's next-best edge is one,
        which a later step may then remove) and ``skip_weight`` (the removed skip's weight). Empty when the
        plain derivation is within the cap.

    Raises:
        GenotypeError: as :func:`derive_cell`, or a negative weight or ``max_skip_connect``.
    """
    if not _is_int(max_skip_connect) or max_skip_connect < 0:
        raise GenotypeError(f"cap_skip_connect: max_skip_connect must be an integer >= 0, got {max_skip_connect!r}")
    w = np.array(weights, dtype=np.float64)  # a copy: the caller's weights stay as they are
    cell = derive_cell(w, steps)  # validates shape and finiteness
    if np.any(w < 0):
        # Zeroing a weight removes it only if no weight is below 0, as with P-DARTS' probabilities.
        raise GenotypeError("cap_skip_connect: weights must be non-negative (softmaxed), got a negative weight")
    replaced: list[dict] = []
    while _count_skips(cell) > max_skip_connect:
        rows = [num_edges(i // 2) + idx for i, (op, idx) in enumerate(cell) if op == "skip_connect"]
        row = min(rows, key=lambda r: (w[r, _SKIP_INDEX], r))
        node = next(j for j in range(steps) if row < num_edges(j + 1))
        skip_weight = float(w[row, _SKIP_INDEX])
        w[row, _SKIP_INDEX] = 0.0
        new_cell = derive_cell(w, steps)
        old, new = cell[2 * node:2 * node + 2], new_cell[2 * node:2 * node + 2]
        # Only this node's block changed and its other edge stays, so exactly one of its pairs is new.
        replacement = next(pair for pair in new if pair not in old)
        replaced.append({
            "node": node,
            "removed": ["skip_connect", row - num_edges(node)],
            "replacement": list(replacement),
            "skip_weight": skip_weight,
        })
        cell = new_cell
    return cell, replaced


def derive_genotype(
    alphas_normal: Any,
    alphas_reduce: Any,
    steps: int = STEPS,
    multiplier: int = MULTIPLIER,
    betas_normal: Any = None,
    betas_reduce: Any = None,
    max_skip_connect: int | None = None,
    replaced: list | None = None,
) -> Genotype:
    """Derives the genotype from raw architecture logits (the reference ``Network.genotype``).

    ``max_skip_connect`` caps the skip connections of the normal cell only, as P-DARTS does (the reduction
    cell is derived as in DARTS); see :func:`cap_skip_connect`.

    Args:
        alphas_normal: Raw ``(num_edges, len(PRIMITIVES))`` logits of the normal cell (softmax applied here,
            per edge, over all ops including ``none``).
        alphas_reduce: Raw logits of the reduction cell, same shape.
        steps: Number of intermediate nodes.
        multiplier: Number of last nodes concatenated into the output; concat is
            ``range(2 + steps - multiplier, steps + 2)``.
        betas_normal: PC-DARTS' raw ``(num_edges,)`` edge betas of the normal cell, or ``None`` (DARTS); with
            betas, the edges are ranked by :func:`edge_normalised_weights`, as PC-DARTS does.
        betas_reduce: The same for the reduction cell (given together with ``betas_normal``).
        max_skip_connect: At most this many ``skip_connect`` edges in the normal cell (P-DARTS); ``None``: no cap.
        replaced: If given, the normal cell's replacement record is appended to it (:func:`cap_skip_connect`).

    Returns:
        The derived genotype.

    Raises:
        GenotypeError: wrong alpha or beta shape, non-finite values, an invalid ``multiplier`` or
            ``max_skip_connect``.
    """
    expected = (num_edges(steps), len(PRIMITIVES))
    arrays = []
    for name, a in (("alphas_normal", alphas_normal), ("alphas_reduce", alphas_reduce)):
        arr = np.asarray(a, dtype=np.float64)
        if arr.shape != expected:
            raise GenotypeError(f"derive_genotype: {name} must have shape {expected}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise GenotypeError(f"derive_genotype: {name} contains NaN or inf")
        arrays.append(arr)
    if not 1 <= multiplier <= steps:
        raise GenotypeError(f"derive_genotype: multiplier must be in 1..{steps}, got {multiplier}")
    if (betas_normal is None) != (betas_reduce is None):
        raise GenotypeError("derive_genotype: give both betas_normal and betas_reduce, or neither")
    weights = [softmax(a, axis=-1) for a in arrays]
    if betas_normal is not None:
        weights = [edge_normalised_weights(w, b, steps) for w, b in zip(weights, (betas_normal, betas_reduce))]
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(
        normal=derive_cell(weights[0], steps=steps, max_skip_connect=max_skip_connect, replaced=replaced),
        normal_concat=concat,
        reduce=derive_cell(weights[1], steps=steps),
        reduce_concat=concat,
    )


# Published genotypes, copied verbatim from the reference implementation's genotypes.py.
DARTS_V1 = Genotype(
    normal=[
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0),
    ],
    reduce_concat=[2, 3, 4, 5],
)
DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)

#: Genotypes available by name; "DARTS" is the reference's alias for DARTS_V2.
PRESETS: dict[str, Genotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2}


def get_genotype(name_or_path: str | os.PathLike) -> Genotype:
    """Resolves a genotype from a preset name, a JSON file, or a search working directory.

    Args:
        name_or_path: A preset name from ``PRESETS`` (case-sensitive), a path to a genotype JSON file, or a
            directory containing ``genotype.json`` (a search run's workdir).

    Returns:
        The genotype.

    Raises:
        GenotypeError: not a preset and no such file/directory (the message lists the presets), a directory
            without ``genotype.json``, or an invalid file.
    """
    key = os.fspath(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    if os.path.isdir(key):
        candidate = os.path.join(key, GENOTYPE_FILENAME)
        if not os.path.isfile(candidate):
            raise GenotypeError(f"{key}: directory has no {GENOTYPE_FILENAME}")
        return Genotype.load(candidate)
    if os.path.isfile(key):
        return Genotype.load(key)
    raise GenotypeError(
        f"unknown genotype {key!r}: not a preset ({', '.join(sorted(PRESETS))}) "
        f"and no such file or directory"
    )
