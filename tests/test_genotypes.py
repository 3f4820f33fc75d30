"""Tests for hlrs_tf.space.genotypes: derivation (vs the reference `_parse`), JSON format, validation, presets."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hlrs_tf.space import genotypes as G
from hlrs_tf.space.genotypes import (
    DARTS_V1,
    DARTS_V2,
    PRESETS,
    PRIMITIVES,
    Genotype,
    GenotypeError,
    derive_cell,
    derive_genotype,
    get_genotype,
    softmax,
)

OPS = {name: k for k, name in enumerate(PRIMITIVES)}


def edge_index(node, inp):
    """Row of the (14, 8) alpha tensor for the edge from state `inp` into intermediate node `node`."""
    return sum(2 + j for j in range(node)) + inp


def reference_parse(weights, steps=4):
    """The reference DARTS `_parse` (model_search.py), transcribed loop for loop."""
    gene = []
    n = 2
    start = 0
    none = PRIMITIVES.index("none")
    for i in range(steps):
        end = start + n
        W = weights[start:end].copy()
        edges = sorted(
            range(i + 2),
            key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none),
        )[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != none:
                    if k_best is None or W[j][k] > W[j][k_best]:
                        k_best = k
            gene.append((PRIMITIVES[k_best], j))
        start = end
        n += 1
    return gene


def reference_softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------- derivation


def test_primitives_order():
    assert PRIMITIVES == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    )


def test_softmax_stable_and_normalised():
    x = np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]])
    s = softmax(x)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s.sum(axis=-1), 1.0)
    np.testing.assert_allclose(s[0], [0.5, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(s[1], np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum())


def handmade_weights():
    """Weights with a known derivation, covering 'none' dominance, ties and score ordering."""
    w = np.full((14, 8), 0.01)

    def put(node, inp, op, value):
        w[edge_index(node, inp), OPS[op]] = value

    # Node 0: edge from input 0 is dominated by 'none' (0.9) -- its label must be the best *other* op.
    put(0, 0, "none", 0.9)
    put(0, 0, "sep_conv_3x3", 0.05)
    put(0, 1, "max_pool_3x3", 0.3)
    # Node 1: input 0 holds the largest weight of the whole cell, on 'none'; its best real op (0.04) loses
    # to inputs 1 and 2, so input 0 must be dropped.
    put(1, 0, "none", 0.95)
    put(1, 0, "sep_conv_5x5", 0.04)
    put(1, 1, "dil_conv_3x3", 0.5)
    put(1, 2, "skip_connect", 0.3)
    # Node 2: three-way edge tie at 0.4 (inputs 0, 2, 3) -> stable sort keeps 0 and 2; input 2 also has an
    # op tie (sep_conv_3x3 == sep_conv_5x5) -> the first in PRIMITIVES order wins.
    put(2, 0, "avg_pool_3x3", 0.4)
    put(2, 1, "max_pool_3x3", 0.2)
    put(2, 2, "sep_conv_3x3", 0.4)
    put(2, 2, "sep_conv_5x5", 0.4)
    put(2, 3, "dil_conv_5x5", 0.4)
    # Node 3: the higher input index has the higher score -> emitted first (order of the sorted edges).
    put(3, 1, "dil_conv_3x3", 0.6)
    put(3, 4, "sep_conv_5x5", 0.7)
    put(3, 3, "skip_connect", 0.5)
    return w


HANDMADE_EXPECTED = (
    ("max_pool_3x3", 1), ("sep_conv_3x3", 0),
    ("dil_conv_3x3", 1), ("skip_connect", 2),
    ("avg_pool_3x3", 0), ("sep_conv_3x3", 2),
    ("sep_conv_5x5", 4), ("dil_conv_3x3", 1),
)


def test_derive_cell_handmade():
    w = handmade_weights()
    assert derive_cell(w) == HANDMADE_EXPECTED
    # And the transcribed reference agrees on the same weights.
    assert tuple(reference_parse(w)) == HANDMADE_EXPECTED


def test_derive_cell_never_selects_none():
    # 'none' largest on every edge: every label must still be a real op.
    w = np.full((14, 8), 0.01)
    w[:, OPS["none"]] = 0.9
    w[:, OPS["skip_connect"]] = 0.05
    cell = derive_cell(w)
    assert all(op == "skip_connect" for op, _ in cell)
    # All edges tie on the non-none score -> the two lowest input indices for every node.
    assert [idx for _, idx in cell] == [0, 1] * 4


def test_derive_genotype_all_zero_alphas_is_degenerate_tie():
    # Uniform softmax: every edge ties and every op ties -> inputs 0, 1 with the first non-none op.
    z = np.zeros((14, 8))
    g = derive_genotype(z, z)
    assert g.normal == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4
    assert g.reduce == g.normal
    assert g.normal_concat == (2, 3, 4, 5) and g.reduce_concat == (2, 3, 4, 5)


def test_derive_genotype_from_raw_logits():
    normal = np.zeros((14, 8))
    reduce = np.zeros((14, 8))
    normal[edge_index(0, 1), OPS["sep_conv_3x3"]] = 5.0
    normal[edge_index(0, 0), OPS["skip_connect"]] = 3.0
    # A large 'none' logit shrinks the other ops of that edge after softmax: input 2 of node 1 loses.
    normal[edge_index(1, 2), OPS["none"]] = 10.0
    normal[edge_index(1, 2), OPS["dil_conv_5x5"]] = 5.0
    normal[edge_index(1, 0), OPS["avg_pool_3x3"]] = 2.0
    normal[edge_index(1, 1), OPS["dil_conv_3x3"]] = 1.0
    reduce[edge_index(3, 4), OPS["max_pool_3x3"]] = 4.0
    reduce[edge_index(3, 2), OPS["avg_pool_3x3"]] = 4.5
    g = derive_genotype(normal, reduce)
    assert g.normal[:4] == (
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1),
    )
    assert g.reduce[6:] == (("avg_pool_3x3", 2), ("max_pool_3x3", 4))


@pytest.mark.parametrize("seed", range(20))
def test_derive_genotype_matches_reference_on_random_alphas(seed):
    rng = np.random.default_rng(seed)
    # Mix of DARTS-init scale (1e-3) and larger logits so both near-ties and clear winners occur.
    scale = 1e-3 if seed % 2 else 1.0
    an = scale * rng.standard_normal((14, 8))
    ar = scale * rng.standard_normal((14, 8))
    g = derive_genotype(an, ar)
    assert list(g.normal) == reference_parse(reference_softmax(an))
    assert list(g.reduce) == reference_parse(reference_softmax(ar))
    assert g.normal_concat == tuple(range(2, 6)) == g.reduce_concat


def test_derive_genotype_multiplier_and_steps():
    g = derive_genotype(np.zeros((14, 8)), np.zeros((14, 8)), multiplier=2)
    assert g.normal_concat == (4, 5)
    g3 = derive_genotype(np.zeros((9, 8)), np.zeros((9, 8)), steps=3, multiplier=3)
    assert len(g3.normal) == 6 and g3.steps == 3
    assert g3.normal_concat == (2, 3, 4)
    # Files of a non-standard step count load only when the caller says so.
    assert Genotype.from_json(g3.to_json(), steps=3) == g3
    with pytest.raises(GenotypeError, match="exactly 8"):
        Genotype.from_json(g3.to_json())


def test_derive_genotype_bad_shapes():
    with pytest.raises(GenotypeError, match=r"alphas_normal must have shape \(14, 8\)"):
        derive_genotype(np.zeros((14, 7)), np.zeros((14, 8)))
    with pytest.raises(GenotypeError, match="alphas_reduce"):
        derive_genotype(np.zeros((14, 8)), np.zeros((8, 14)))
    with pytest.raises(GenotypeError, match="NaN"):
        derive_genotype(np.full((14, 8), np.nan), np.zeros((14, 8)))
    with pytest.raises(GenotypeError, match="multiplier"):
        derive_genotype(np.zeros((9, 8)), np.zeros((9, 8)), steps=3, multiplier=4)
    with pytest.raises(GenotypeError, match="shape"):
        derive_cell(np.zeros((13, 8)))


# ------------------------------------------------------------------------------------------ value semantics


def test_presets_verbatim_and_normalised_to_tuples():
    assert isinstance(DARTS_V2.normal, tuple) and all(isinstance(p, tuple) for p in DARTS_V2.normal)
    assert DARTS_V2.normal[7] == ("dil_conv_3x3", 2)
    assert DARTS_V1.reduce[7] == ("avg_pool_3x3", 0)
    assert PRESETS["DARTS"] is DARTS_V2
    # Built from lists == built from tuples, and hashable (frozen dataclass of tuples).
    same = Genotype(
        normal=[list(p) for p in DARTS_V2.normal], normal_concat=[2, 3, 4, 5],
        reduce=list(DARTS_V2.reduce), reduce_concat=(2, 3, 4, 5),
    )
    assert same == DARTS_V2 and hash(same) == hash(DARTS_V2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DARTS_V2.normal = ()  # frozen


def test_count():
    assert DARTS_V2.count("skip_connect") == 2
    assert DARTS_V2.count("sep_conv_3x3") == 5
    assert DARTS_V2.count("max_pool_3x3", cell="reduce") == 5
    assert DARTS_V1.count("skip_connect", "reduce") == 3
    assert DARTS_V2.count("none") == 0
    with pytest.raises(GenotypeError, match="unknown op"):
        DARTS_V2.count("conv_7x7")
    with pytest.raises(GenotypeError, match="unknown cell"):
        DARTS_V2.count("skip_connect", cell="normals")


def test_constructor_validates():
    with pytest.raises(GenotypeError, match="'none' is not allowed"):
        Genotype(normal=[("none", 0)] * 8, normal_concat=[2, 3, 4, 5],
                 reduce=DARTS_V2.reduce, reduce_concat=[2, 3, 4, 5])


# ------------------------------------------------------------------------------------------------ JSON I/O

DARTS_V2_DICT = {
    "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1],
               ["sep_conv_3x3", 1], ["skip_connect", 0], ["skip_connect", 0], ["dil_conv_3x3", 2]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1],
               ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["max_pool_3x3", 1]],
    "reduce_concat": [2, 3, 4, 5],
}


def derived_example():
    rng = np.random.default_rng(123)
    return derive_genotype(rng.standard_normal((14, 8)), rng.standard_normal((14, 8)))


@pytest.mark.parametrize("geno", [DARTS_V1, DARTS_V2, derived_example()], ids=["v1", "v2", "derived"])
def test_round_trips(geno, tmp_path):
    assert Genotype.from_dict(geno.to_dict()) == geno
    assert Genotype.from_json(geno.to_json()) == geno
    path = tmp_path / "g.json"
    geno.save(path)
    assert Genotype.load(path) == geno
    assert Genotype.load(str(path)) == geno
    # Atomic write leaves no temporary files behind.
    assert os.listdir(tmp_path) == ["g.json"]


def test_file_format(tmp_path):
    assert DARTS_V2.to_dict() == DARTS_V2_DICT
    path = tmp_path / "genotype.json"
    DARTS_V2.save(path)
    text = path.read_text()
    assert json.loads(text) == DARTS_V2_DICT
    assert list(json.loads(text)) == ["normal", "normal_concat", "reduce", "reduce_concat"]
    assert text.startswith('{\n  "normal": [')  # indent=2
    assert text.endswith("}\n")


def test_save_overwrites(tmp_path):
    path = tmp_path / "genotype.json"
    DARTS_V1.save(path)
    DARTS_V2.save(path)
    assert Genotype.load(path) == DARTS_V2
    assert sorted(os.listdir(tmp_path)) == ["genotype.json"]


def _mutated(**changes):
    d = json.loads(json.dumps(DARTS_V2_DICT))
    for key, value in changes.items():
        if value is _DELETE:
            del d[key]
        else:
            d[key] = value
    return d


_DELETE = object()


def _with_normal_entry(i, entry):
    normal = [list(p) for p in DARTS_V2_DICT["normal"]]
    normal[i] = entry
    return _mutated(normal=normal)


BAD_DICTS = [
    ("unknown op", _with_normal_entry(3, ["conv_7x7", 1]), r"field 'normal' entry 3: unknown op 'conv_7x7'"),
    ("unknown op lists allowed", _with_normal_entry(3, ["conv_7x7", 1]), "allowed: max_pool_3x3"),
    ("none op", _with_normal_entry(0, ["none", 0]), "op 'none' is not allowed"),
    ("index too large", _with_normal_entry(2, ["sep_conv_3x3", 3]),
     r"entry 2: input index 3 out of range for intermediate node 1 \(expected 0..2\)"),
    ("index too large node 0", _with_normal_entry(1, ["sep_conv_3x3", 2]), r"expected 0..1"),
    ("index negative", _with_normal_entry(6, ["skip_connect", -1]), "input index -1 out of range"),
    ("index non-int", _with_normal_entry(4, ["sep_conv_3x3", 1.0]), "input index must be an integer"),
    ("index string", _with_normal_entry(4, ["sep_conv_3x3", "1"]), "input index must be an integer"),
    ("index bool", _with_normal_entry(4, ["sep_conv_3x3", True]), "input index must be an integer"),
    ("not a pair", _with_normal_entry(4, ["sep_conv_3x3"]), "expected a pair"),
    ("op not str", _with_normal_entry(4, [4, 1]), "op name must be a string"),
    ("wrong length", _mutated(reduce=DARTS_V2_DICT["reduce"][:7]),
     "field 'reduce' must have exactly 8 .* got 7"),
    ("too long", _mutated(normal=DARTS_V2_DICT["normal"] + [["skip_connect", 0]]), "exactly 8 .* got 9"),
    ("not a list", _mutated(normal="sep_conv_3x3"), "field 'normal' must be a list"),
    ("missing key", _mutated(reduce_concat=_DELETE), "missing key.*reduce_concat"),
    ("extra key", _mutated(comment="hi"), "unexpected key.*comment"),
    ("concat out of range", _mutated(normal_concat=[2, 3, 4, 6]),
     r"field 'normal_concat' entry 3: concat index 6 out of range \(expected 0..5\)"),
    ("concat negative", _mutated(reduce_concat=[-1, 2]), "concat index -1 out of range"),
    ("concat duplicate", _mutated(normal_concat=[2, 3, 3, 5]), "concat index 3 is duplicated"),
    ("concat bool", _mutated(normal_concat=[2, 3, 4, True]), "concat index must be an integer"),
    ("concat empty", _mutated(normal_concat=[]), "must not be empty"),
    ("concat not list", _mutated(normal_concat=5), "field 'normal_concat' must be a list"),
]


@pytest.mark.parametrize("d,fragment", [(d, f) for _, d, f in BAD_DICTS], ids=[n for n, _, _ in BAD_DICTS])
def test_from_dict_rejects(d, fragment):
    with pytest.raises(GenotypeError, match=fragment):
        Genotype.from_dict(d, source="my/file.json")
    with pytest.raises(GenotypeError, match="my/file.json"):
        Genotype.from_dict(d, source="my/file.json")


@pytest.mark.parametrize("d,fragment", [(d, f) for _, d, f in BAD_DICTS], ids=[n for n, _, _ in BAD_DICTS])
def test_load_rejects_bad_files_naming_path(d, fragment, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(GenotypeError, match=fragment) as info:
        Genotype.load(path)
    assert str(path) in str(info.value)


def test_from_dict_rejects_non_object():
    with pytest.raises(GenotypeError, match="must be a JSON object"):
        Genotype.from_dict([1, 2, 3])


def test_load_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"normal": [["sep_conv_3x3", 0],')
    with pytest.raises(GenotypeError, match="invalid JSON") as info:
        Genotype.load(path)
    assert str(path) in str(info.value)


def test_load_never_evals(tmp_path):
    # The reference stores genotypes as Python source; such a file must be rejected, not executed.
    path = tmp_path / "geno.py.json"
    path.write_text("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[])")
    with pytest.raises(GenotypeError, match="invalid JSON"):
        Genotype.load(path)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match="not found") as info:
        Genotype.load(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------- get_genotype


@pytest.mark.parametrize("name", ["DARTS_V1", "DARTS_V2", "DARTS"])
def test_get_genotype_preset(name):
    assert get_genotype(name) is PRESETS[name]


def test_get_genotype_file_and_workdir(tmp_path):
    geno = derived_example()
    path = tmp_path / "genotype.json"
    geno.save(path)
    assert get_genotype(str(path)) == geno
    assert get_genotype(path) == geno
    assert get_genotype(str(tmp_path)) == geno
    other = tmp_path / "elsewhere.json"
    DARTS_V1.save(other)
    assert get_genotype(str(other)) == DARTS_V1


def test_get_genotype_errors(tmp_path):
    with pytest.raises(GenotypeError, match="not a preset") as info:
        get_genotype("darts_v2")  # case-sensitive
    for name in PRESETS:
        assert name in str(info.value)
    with pytest.raises(GenotypeError, match="no genotype.json"):
        get_genotype(str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(GenotypeError, match="missing key"):
        get_genotype(str(bad))


def test_modules_do_not_import_tensorflow(child_env):
    # Load the modules by file path so a heavier hlrs_tf/__init__ cannot mask the check (data/long_tail imports
    # hlrs_tf.data.spec by name, so hlrs_tf/__init__ and hlrs_tf/data/__init__ are covered too).
    package = os.path.dirname(os.path.dirname(os.path.abspath(G.__file__)))  # .../hlrs_tf
    code = (
        "import importlib.util, sys\n"
        "for name in ('space/genotypes', 'data/long_tail_metrics', 'data/spec', 'data/long_tail', 'data/samplers'):\n"
        f"    path = {package!r} + '/' + name + '.py'\n"
        "    spec = importlib.util.spec_from_file_location('m_' + name.replace('/', '_'), path)\n"
        "    mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod\n"
        "    spec.loader.exec_module(mod)\n"
        "bad = [m for m in ('tensorflow', 'keras', 'absl') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env)
