"""Cell diagrams: valid PNG files that show every operation of the cell, drawn without TensorFlow."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hlrs_tf.runtime.diagrams import OP_COLORS, plot_cell, plot_genotype
from hlrs_tf.space.genotypes import DARTS_V1, DARTS_V2, GenotypeError, derive_genotype

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rgb(hex_color):
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def _colours(path):
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    return {tuple(p) for p in np.unique(pixels, axis=0)}


@pytest.mark.parametrize("genotype", [DARTS_V1, DARTS_V2], ids=["DARTS_V1", "DARTS_V2"])
def test_plot_genotype_writes_two_valid_pngs(tmp_path, genotype):
    paths = plot_genotype(genotype, str(tmp_path / "cells"))
    assert set(paths) == {"normal", "reduce"}
    for cell, path in paths.items():
        assert os.path.basename(path) == f"{cell}.png"
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
        with Image.open(path) as im:
            im.verify()  # structural check of the whole file
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG" and im.width > 600 and im.height > 250
        # every operation of the cell is drawn in its colour; coloured operations the cell lacks are not
        # (grey skip_connect is left out of the second check: anti-aliased black text makes greys too)
        colours = _colours(path)
        ops_in_cell = {op for op, _ in getattr(genotype, cell)}
        for op, colour in OP_COLORS.items():
            if op in ops_in_cell:
                assert _rgb(colour) in colours, (cell, op)
            elif op not in ("none", "skip_connect"):
                assert _rgb(colour) not in colours, (cell, op)


def test_plot_cell_of_a_derived_genotype(tmp_path):
    rng = np.random.default_rng(0)
    genotype = derive_genotype(rng.standard_normal((14, 8)), rng.standard_normal((14, 8)))
    path = plot_cell(genotype, "reduce", str(tmp_path / "deep" / "r.png"), title="epoch 3")
    with Image.open(path) as im:
        assert im.format == "PNG"
    with pytest.raises(GenotypeError, match="unknown cell 'middle'"):
        plot_cell(genotype, "middle", str(tmp_path / "x.png"))


def test_diagrams_do_not_import_tensorflow(tmp_path, repo_root, child_env):
    code = (
        "import sys; from hlrs_tf.runtime.diagrams import plot_genotype; from hlrs_tf.space.genotypes import DARTS_V2; "
        f"plot_genotype(DARTS_V2, {str(tmp_path)!r}); assert 'tensorflow' not in sys.modules, 'tf imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120,
                          env=child_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "normal.png").exists() and (tmp_path / "reduce.png").exists()
