"""Numbers that cannot work are refused before any work (issue 16, point 4).

* a long-tail profile that leaves a class without an image on a search split (or without a training image for
  retraining), refused from the label counts before the model is built;
* every float flag of the search, the retraining and the export: NaN and inf refused with the allowed range,
  by the one check (``config.check_floats``) both configs and the export options run;
* data that cannot be right (pixels not finite or outside their dtype's range, test labels outside the
  training classes, class lists that differ between the splits), refused at load for every source;
* an export ``--out`` where no folder can be made, named with its cause.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from absl import flags

from hlrs_tf.config import flags as config_flags
from hlrs_tf.config.search import FLOAT_RANGES, ConfigError, SearchConfig, float_settings
from hlrs_tf.config.train import TrainConfig
from hlrs_tf.data.long_tail import (
    check_class_counts,
    class_counts,
    long_tailed_class_counts,
    make_long_tailed,
    split_class_counts,
    stratified_split,
)
from hlrs_tf.data.sources import dataset_spec, load_dataset
from hlrs_tf.data.spec import DEFAULT_FASHION_MNIST_DIR, DatasetError
from hlrs_tf.export.savedmodel_onnx import ExportError, ExportOptions

FMNIST_DIR = DEFAULT_FASHION_MNIST_DIR
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST_DIR, "train-labels-idx1-ubyte.gz")),
    reason="apt-get install -y dataset-fashion-mnist")
NOT_FINITE = ("nan", "inf")
TINY_SEARCH = ["--dataset=digits", "--channels=4", "--layers=3", "--batch_size=16", "--epochs=1",
               "--steps_per_epoch=1", "--verbose=0"]


def _error_line(proc, prog):
    """The command's own error line (TensorFlow may log start-up lines before it); asserts there is one."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


# ------------------------------------------------------------------------------------------------
# 1. A long-tail profile that leaves a class without images.


@needs_fmnist
def test_class_count_check_mirrors_the_real_subsampling_and_split():
    y = load_dataset("fashion_mnist").y_train  # 6,000 per class: the tail keeps int(6000 / ratio)
    for ratio in (1, 100, 2999, 3000, 3001, 6000, 6001):
        kept = long_tailed_class_counts(class_counts(y, 10), ratio)
        _, y_lt = make_long_tailed(y, y, ratio, seed=0)
        np.testing.assert_array_equal(class_counts(y_lt, 10), kept)
        for portion in (0.1, 0.5, 0.9):
            a, b = stratified_split(y_lt, portion, seed=0)
            count_a, count_b = split_class_counts(kept, portion)
            np.testing.assert_array_equal(class_counts(y_lt[a], 10), count_a)
            np.testing.assert_array_equal(class_counts(y_lt[b], 10), count_b)
    # The search needs 2 images of the tail class (one per split): 6000 / 3000 = 2 is the last ratio that works.
    check_class_counts(y, 10, 3000, 0.5)
    with pytest.raises(DatasetError, match=r"--imbalance_ratio=3001 leaves class 9 \(Ankle boot\) with 1 "
                                           r"training image, so none on the architecture search split"):
        check_class_counts(y, 10, 3001, 0.5, dataset_spec("fashion_mnist").class_names)
    # Retraining has no split: 1 image is enough.
    check_class_counts(y, 10, 6000)
    with pytest.raises(DatasetError, match="lower --imbalance_ratio to at most 6000"):
        check_class_counts(y, 10, 6001)


@needs_fmnist
def test_issue_ratio_on_fashion_mnist_is_refused_with_the_counts():
    y = load_dataset("fashion_mnist").y_train
    with pytest.raises(DatasetError) as err:
        check_class_counts(y, 10, 100000, 0.5)
    message = str(err.value)
    assert message.startswith("--imbalance_ratio=100000 leaves class 7 with 0 training images (counts per class: "
                              "6000, 1669, 464, 129, 35, 10, 2, 0, 0, 0); per search split (--train_portion=0.5): "
                              "weights 3000, 835, 232, 65, 18, 5, 1, 0, 0, 0, architecture 3000, 834, "), message
    assert message.endswith("lower --imbalance_ratio to at most 3000"), message


def test_search_cli_refuses_the_ratio_before_any_training(tmp_path, run_cli):
    wd = tmp_path / "wd"
    proc = run_cli("hlrs_tf.search", *TINY_SEARCH, "--imbalance_ratio=1000", f"--workdir={wd}", timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc, "hlrs_tf.search")
    # digits: 131 images in its smallest training class, so ratio 1000 keeps 1 of class 6 (none for the
    # architecture split) and 0 of classes 7-9.
    assert "--imbalance_ratio=1000 leaves class 6 with 1 training image, so none on the architecture search " \
           "split (counts per class: 131, 60, 28, 13, 6, 2, 1, 0, 0, 0)" in line
    assert "lower --imbalance_ratio to at most 65" in line
    assert not os.listdir(wd / "checkpoints")  # nothing trained, nothing checkpointed
    assert not (wd / "model_summary.json").exists()  # the model was never built


def test_retraining_refuses_a_class_without_training_images(tmp_path):
    from hlrs_tf.train import task as retrainer

    config = TrainConfig.create(genotype="DARTS_V2", dataset="digits", imbalance_ratio=200, channels=4, layers=3,
                         batch_size=16, epochs=1, verbose=0)
    wd = tmp_path / "wd"
    with pytest.raises(DatasetError, match=r"--imbalance_ratio=200 leaves class 9 with 0 training images "
                                           r"\(counts per class: 131, .*\): every class needs at least 1 "
                                           r"training image: lower --imbalance_ratio to at most 131"):
        retrainer.run_retrain(config, str(wd))
    assert not os.listdir(wd / "checkpoints")
    assert not (wd / "genotype.json").exists() and not (wd / "model_summary.json").exists()


# ------------------------------------------------------------------------------------------------
# 2. Every float flag: finite, in its range.

# The search's flags in their own FlagValues: the global ones may already hold them under another module name
# (a test that imports hlrs_tf.search.__main__ defines them there), and this list must never come out empty.
SEARCH_FLAGS = flags.FlagValues()
config_flags.define_search_flags(SEARCH_FLAGS)
SEARCH_FLOAT_FLAGS = [f.name for f in SEARCH_FLAGS.get_flags_for_module("hlrs_tf.search")
                      if isinstance(f.parser, flags.FloatParser)]


def test_every_float_setting_has_a_declared_range():
    # A new float flag must say what it accepts; the check would otherwise only demand a finite number.
    for config_class in (SearchConfig, TrainConfig, ExportOptions):
        for name in float_settings(config_class):
            assert name in FLOAT_RANGES, f"{config_class.__name__}.{name} has no entry in config.FLOAT_RANGES"
    SearchConfig.create(), TrainConfig.create(genotype="DARTS_V2"), ExportOptions()  # the defaults lie in their ranges
    assert set(SEARCH_FLOAT_FLAGS) == set(float_settings(SearchConfig))


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("name", SEARCH_FLOAT_FLAGS)
def test_search_float_flag_not_finite_is_refused(name, value):
    fv = SEARCH_FLAGS
    fv.unparse_flags()
    try:
        fv(["hlrs_tf.search", f"--{name}={value}"])
        with pytest.raises(ConfigError) as err:
            config_flags.config_from_flags(SearchConfig, fv)
    finally:
        fv.unparse_flags()
    assert str(err.value).startswith(f"--{name}={value} is invalid: it must be {FLOAT_RANGES[name].describe()}")


@pytest.mark.parametrize("name,value,allowed", [
    ("learning_rate", 0.0, "> 0 and finite"),
    ("learning_rate_min", 0.03, "in [0, learning_rate] (--learning_rate=0.025)"),
    ("momentum", 1.0, "in [0, 1)"),
    ("train_portion", 1.0, "in (0, 1) (share of each class on the weight split)"),
    ("freeze_threshold", 1.5, "in [0, 1]"),
    ("imbalance_ratio", 0.5, ">= 1 and finite (N_max / N_min)"),
    ("grad_clip", 0.0, "> 0 and finite"),
    ("arch_beta2", -0.1, "in [0, 1)"),
])
def test_library_config_gets_the_same_ranges(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        SearchConfig.create(**{name: value})
    assert str(err.value) == f"--{name}={value!r} is invalid: it must be {allowed}"
    SearchConfig.create(learning_rate=1, momentum=0.0, arch_learning_rate=0.0)  # ints and the closed ends are fine


_TRAIN_FLAG_PROBE = textwrap.dedent("""
    import json, sys
    from absl import flags
    from hlrs_tf.config import flags as config_flags
    from hlrs_tf.config.train import ConfigError, TrainConfig
    config_flags.define_train_flags()
    fv = config_flags.FLAGS
    module_flags = fv.get_flags_for_module("hlrs_tf.train")
    names = [f.name for f in module_flags if isinstance(f.parser, flags.FloatParser)]
    refused = {}
    for name in names:
        for value in sys.argv[1:]:
            fv.unparse_flags()
            fv(["hlrs_tf.train", "--genotype=DARTS_V2", f"--{name}={value}"])
            try:
                config_flags.config_from_flags(TrainConfig, fv)
                refused[f"{name}={value}"] = None
            except ConfigError as e:
                refused[f"{name}={value}"] = str(e)
    configs = {}
    for cfg in ("configs/retrain.cfg", "configs/retrain_quick.cfg"):
        fv.unparse_flags()
        fv(["hlrs_tf.train", "--genotype=DARTS_V2", f"--flagfile={cfg}"])
        configs[cfg] = config_flags.config_from_flags(TrainConfig, fv).optimizer.learning_rate
    print(json.dumps({"float_flags": names, "refused": refused, "configs": configs}))
""")


@pytest.fixture(scope="module")
def train_flag_probe(repo_root, child_env):
    """The retraining's float flags and what its config-from-flags makes of NaN/inf, in one process (its flags
    share names with the search's, so they cannot be defined in this one)."""
    proc = subprocess.run([sys.executable, "-c", _TRAIN_FLAG_PROBE, *NOT_FINITE], cwd=repo_root, env=child_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_float_flags_are_the_config_floats(train_flag_probe):
    assert set(train_flag_probe["float_flags"]) == set(float_settings(TrainConfig))
    assert set(train_flag_probe["configs"]) == {"configs/retrain.cfg", "configs/retrain_quick.cfg"}  # both load


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("name", float_settings(TrainConfig))
def test_train_float_flag_not_finite_is_refused(train_flag_probe, name, value):
    message = train_flag_probe["refused"][f"{name}={value}"]
    assert message is not None, f"--{name}={value} was accepted"
    assert message.startswith(f"--{name}={value} is invalid: it must be {FLOAT_RANGES[name].describe()}")
    with pytest.raises(ConfigError, match=f"^--{name}={value} is invalid"):  # the library config, the same check
        TrainConfig.create(genotype="DARTS_V2", **{name: float(value)})


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("name", float_settings(ExportOptions))
def test_export_float_option_not_finite_is_refused(name, value):
    with pytest.raises(ExportError, match=f"^--{name}={value} is invalid: it must be > 0 and finite"):
        ExportOptions(**{name: float(value)})


def test_search_configs_still_load(repo_root):
    fv = SEARCH_FLAGS
    for cfg in ("configs/lt.cfg", "configs/quickstart.cfg"):
        fv.unparse_flags()
        try:
            fv(["hlrs_tf.search", f"--flagfile={os.path.join(repo_root, cfg)}"])
            config_flags.config_from_flags(SearchConfig, fv)
        finally:
            fv.unparse_flags()


def test_cli_refuses_an_infinite_learning_rate(tmp_path, run_cli):
    proc = run_cli("hlrs_tf.search", "--dataset=digits", "--learning_rate=inf", "--dry_run",
                   f"--workdir={tmp_path / 'wd'}", timeout=300)
    assert proc.returncode == 2
    assert _error_line(proc, "hlrs_tf.search") == \
        "hlrs_tf.search: error: --learning_rate=inf is invalid: it must be > 0 and finite"
    assert not (tmp_path / "wd").exists()  # refused before the work directory


# ------------------------------------------------------------------------------------------------
# 3. Data that cannot be right, refused at load.


def _npz(path, **replace):
    arrays = dict(x_train=np.zeros((6, 8, 8), np.uint8), y_train=np.array([0, 1, 2, 0, 1, 2]),
                  x_test=np.zeros((3, 8, 8), np.uint8), y_test=np.array([0, 1, 2]))
    arrays.update(replace)
    np.savez(path, **arrays)
    return f"npz:{path}"


def _with(value, shape, index=(0, 0, 0), dtype=np.float32, fill=0.5):
    x = np.full(shape, fill, dtype)
    x[index] = value
    return x


NPZ_CASES = [
    ("nan_pixel", dict(x_train=_with(np.nan, (6, 8, 8))),
     "x_train: 1 of 384 pixel values are not finite (NaN or inf)"),
    ("inf_pixel", dict(x_test=_with(np.inf, (3, 8, 8))), "x_test: 1 of 192 pixel values are not finite"),
    ("float_above_255", dict(x_train=_with(300.0, (6, 8, 8))),
     "x_train: float images must be in [0, 1] (or 0..255), got values in [0.5, 300]"),
    ("float_negative", dict(x_train=_with(-0.5, (6, 8, 8)))
     , "x_train: float images must be in [0, 1] (or 0..255), got values in [-0.5, 0.5]"),
    ("int_above_255", dict(x_train=np.full((6, 8, 8), 256, np.int16)),
     "x_train: integer images must be in 0..255, got [256, 256]"),
    ("float_scales_differ", dict(x_train=np.full((6, 8, 8), 0.5, np.float32),
                                 x_test=np.full((3, 8, 8), 100.0, np.float32)),
     "x_test: float test images are on the 0..255 scale but the training images"),
    ("test_label_not_trained", dict(y_test=np.array([0, 1, 3])),
     "y_test: test labels [3] are not among the training classes (0..2)"),
    ("train_class_missing", dict(y_train=np.array([0, 1, 3, 0, 1, 3]), y_test=np.array([0, 1, 3])),
     "y_train: class 2 has no training images (per class: 2, 2, 0, 2)"),
    ("nan_label", dict(y_train=np.array([0, 1, np.nan, 0, 1, 2])),
     "y_train: labels must be integer class indices, got float64 values that are not whole finite numbers"),
]


@pytest.mark.parametrize("case,arrays,message", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_npz_that_cannot_be_right_is_refused(tmp_path, case, arrays, message):
    name = _npz(tmp_path / f"{case}.npz", **arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset(name)
    assert str(err.value).startswith(f"{tmp_path / case}.npz: "), err.value  # names the file first
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_valid_npz_with_a_class_missing_from_the_test_split_loads(tmp_path):
    # Allowed on purpose: the evaluation reports such a class's accuracy as undefined
    # (hlrs_tf/data/long_tail_metrics.py).
    ds = load_dataset(_npz(tmp_path / "ok.npz", y_test=np.array([0, 1, 1])))
    assert ds.spec.num_classes == 3


def _folder(root, layout):
    from PIL import Image

    for split, classes in layout.items():
        for c, n in classes.items():
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(d / f"{i}.png")
    return f"folder:{root}"


@pytest.mark.parametrize("case,layout,message", [
    ("test_has_more", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1, "c": 1}},
     "test: its class folders differ from {root}/train's (only in train/: []; only in test/: ['c'])"),
    ("test_has_fewer", {"train": {"a": 2, "b": 2}, "test": {"a": 1}},
     "test: its class folders differ from {root}/train's (only in train/: ['b']; only in test/: [])"),
    ("empty_train_class", {"train": {"a": 2, "b": 0}, "test": {"a": 1, "b": 1}},
     "train: class 1 (b) has no training images (per class: 2, 0)"),
])
def test_folder_that_cannot_be_right_is_refused(tmp_path, case, layout, message):
    root = tmp_path / case
    with pytest.raises(DatasetError) as err:
        load_dataset(_folder(root, layout))
    assert str(err.value).startswith(f"{root}/"), err.value
    assert message.format(root=root) in str(err.value)


@needs_fmnist
def test_fashion_mnist_label_outside_the_classes_is_refused(tmp_path):
    fm = tmp_path / "fashion"
    shutil.copytree(FMNIST_DIR, fm)
    labels = fm / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(labels) as f:
        raw = bytearray(f.read())
    raw[8 + 5] = 12  # the 6th test label (after the 8-byte IDX header): a class Fashion-MNIST does not have
    with gzip.open(labels, "wb") as f:
        f.write(bytes(raw))
    with pytest.raises(DatasetError, match=f"^{labels}: test labels \\[12\\] are not among the training "
                                           f"classes \\(0..9\\)"):
        load_dataset("fashion_mnist", fashion_mnist_dir=str(fm))


# ------------------------------------------------------------------------------------------------
# 4. An export folder that cannot be made.


def test_export_out_that_cannot_be_created_names_out_and_the_cause(tmp_path, run_cli):
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(model, "w") as zf:  # a .keras archive: the --out check comes before the model loads
        zf.writestr("metadata.json", "{}")
    proc = run_cli("hlrs_tf.export", f"--model={model}", "--out=/proc/x", timeout=300)
    assert proc.returncode == 2
    assert _error_line(proc, "hlrs_tf.export") == (
        "hlrs_tf.export: error: --out=/proc/x: cannot create the export there (/proc is not writable: No such "
        "file or directory)")
