"""From genotype to deployment on real data: search -> retrain -> export -> ONNX Runtime, and the errors on the way.

One real round trip at a tiny size on scikit-learn's digits (8x8 grey, offline): a first-order search gives a
genotype; ``hlrs_tf.train`` retrains it (auxiliary head, drop-path, cutout, long-tailed set) into a work
directory and resumes it; ``hlrs_tf.export`` writes SavedModel + ONNX; both are checked against Keras on real
test images, and ``export/predict_onnx.py`` classifies them in a process where TensorFlow cannot be imported.
"""

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.config.train import ConfigError, TrainConfig
from hlrs_tf.data.long_tail import make_long_tailed
from hlrs_tf.data.pipeline import cutout_batch, cutout_length_for, normalize, retrain_dataset
from hlrs_tf.data.sources import load_dataset
from hlrs_tf.export.savedmodel_onnx import ExportError, ExportOptions, ParityError, export_model
from hlrs_tf.space.genotypes import Genotype, GenotypeError
from hlrs_tf.train.callbacks import drop_path_probability

SEARCH = ["--dataset=digits", "--channels=4", "--layers=3", "--epochs=1", "--steps_per_epoch=2", "--batch_size=16",
          "--imbalance_ratio=10", "--verbose=0", "--eval_batch_size=512"]
TRAIN = ["--flagfile=configs/retrain_quick.cfg", "--dataset=digits", "--imbalance_ratio=10", "--channels=4",
         "--layers=4", "--epochs=2", "--steps_per_epoch=3", "--batch_size=16", "--verbose=0",
         "--eval_batch_size=512"]


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory, run_cli):
    """search -> train -> export, each through its command line."""
    root = tmp_path_factory.mktemp("deploy")
    search_wd, train_wd, out = str(root / "search"), str(root / "train"), str(root / "export" / "digits")
    proc = run_cli("hlrs_tf.search", *SEARCH, f"--workdir={search_wd}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = run_cli("hlrs_tf.train", f"--genotype={search_wd}", *TRAIN, f"--workdir={train_wd}")
    assert train.returncode == 0, train.stderr[-3000:]
    export = run_cli("hlrs_tf.export", f"--model={train_wd}", f"--out={out}", "--num_images=300")
    assert export.returncode == 0, export.stderr[-3000:]
    return {"search": search_wd, "train": train_wd, "out": out, "train_proc": train, "export_proc": export,
            "root": root}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ------------------------------------------------------------------------------------------------ retraining
def test_train_work_directory(round_trip):
    wd = round_trip["train"]
    for name in ("flags.cfg", "model_summary.json", "genotype.json", "normal.png", "reduce.png", "history.csv",
                 "metrics.json", "model.keras", "checkpoints/state.json"):
        assert os.path.isfile(os.path.join(wd, name)), name
    # the genotype trained is the one the search found (given as the search work directory)
    assert Genotype.load(os.path.join(wd, "genotype.json")) == Genotype.load(
        os.path.join(round_trip["search"], "genotype.json"))
    flags_cfg = open(os.path.join(wd, "flags.cfg")).read()
    assert f"--genotype={round_trip['search']}" in flags_cfg and "--dataset=digits" in flags_cfg
    summary = json.load(open(os.path.join(wd, "model_summary.json")))
    assert summary["aux_params"] == 476_426 - 576 * 128 + 4 * 4 * 4 * 128  # head on 4C*4 = 64 channels
    assert summary["params"] == summary["params_without_aux"] + summary["aux_params"]
    assert summary["cutout_length"] == 4 and summary["steps_per_epoch"] == 3  # 16 scaled to 8x8
    assert summary["num_train"] == sum(summary["train_class_counts"])
    assert summary["train_class_counts"][0] / summary["train_class_counts"][-1] == pytest.approx(10, rel=0.15)
    assert "test top-1" in round_trip["train_proc"].stdout


def test_train_history_and_metrics(round_trip):
    wd = round_trip["train"]
    rows = list(csv.DictReader(open(os.path.join(wd, "history.csv"))))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for key in ("loss", "accuracy", "aux_loss", "lr", "drop_path_prob"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    # drop-path ramps linearly from 0 to max * (epochs - 1) / epochs; the cosine lr decays to learning_rate_min
    assert [float(r["drop_path_prob"]) for r in rows] == pytest.approx([0.0, 0.1])
    assert float(rows[0]["lr"]) > float(rows[1]["lr"]) and float(rows[1]["lr"]) == pytest.approx(0.0, abs=1e-7)
    m = json.load(open(os.path.join(wd, "metrics.json")))
    for key in ("top1", "per_class", "many_shot", "medium_shot", "few_shot", "train_class_counts"):
        assert key in m, key
    assert len(m["per_class"]) == 10 and 0 <= m["top1"] <= 1 and m["num_test"] > 0
    events = glob.glob(os.path.join(wd, "tensorboard", "events.out.tfevents.*"))
    tags = {v.tag for path in events for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value}
    assert {"epoch/loss", "epoch/drop_path_prob", "epoch/lr", "genotype", "cells/normal", "cells/reduce"} <= tags


#: The retraining's settings by name (= flag), blocks flattened.
TRAIN_SETTINGS = {leaf.name: leaf for leaf in TrainConfig.leaves()}


def _config_from_flags_cfg(root, path):
    values = _flagfile_values(root, path)
    fields = TRAIN_SETTINGS
    return TrainConfig.create(**{
        k: (v if isinstance(v, bool) or fields[k].default is None else type(fields[k].default)(v))
        for k, v in values.items()})


def test_rerun_resumes_from_the_last_epoch(round_trip, tmp_path, capsys, repo_root):
    """Rerunning a finished run's flags restores its last checkpoint (nothing left to train: same model); other
    settings or another genotype are refused before anything in the work directory changes."""
    from hlrs_tf.train.task import run_retrain

    wd = str(tmp_path / "train")
    shutil.copytree(round_trip["train"], wd)  # the exported model stays untouched
    flags_text = open(os.path.join(wd, "flags.cfg")).read()
    config = _config_from_flags_cfg(repo_root, os.path.join(wd, "flags.cfg"))
    before = json.load(open(os.path.join(wd, "metrics.json")))
    result = run_retrain(config, wd, flags_text=flags_text)
    assert "resuming from the checkpoint of epoch 2" in capsys.readouterr().out
    assert [r["epoch"] for r in csv.DictReader(open(os.path.join(wd, "history.csv")))] == ["0", "1"]
    assert result.metrics == before  # the restored weights give exactly the same test predictions

    with pytest.raises(ValueError, match=r"other settings \(--epochs=2 -> 3\)"):
        run_retrain(config, wd, flags_text=flags_text.replace("--epochs=2", "--epochs=3"))
    with pytest.raises(GenotypeError, match="holds checkpoints of another genotype"):
        run_retrain(TrainConfig.create(genotype="DARTS_V1", dataset="digits"), wd, flags_text="--genotype=DARTS_V1\n")
    assert open(os.path.join(wd, "flags.cfg")).read() == flags_text


def test_checkpoint_restores_weights_and_optimizer(tmp_path, digits):
    from hlrs_tf.runtime.callbacks import EpochCheckpoint as RetrainCheckpoint
    from hlrs_tf.space.genotypes import DARTS_V2
    from hlrs_tf.train.callbacks import DropPathSchedule
    from hlrs_tf.train.task import build_model, build_network

    config = TrainConfig.create(genotype="DARTS_V2", channels=4, layers=3, batch_size=8, epochs=2)
    x, y = make_long_tailed(digits.x_train, digits.y_train, 10, seed=0)
    models = [build_model(config, build_network(config, DARTS_V2, digits.spec), digits.spec, total_steps=4)
              for _ in range(2)]
    checkpoint = RetrainCheckpoint(str(tmp_path))
    models[0].fit(retrain_dataset(x, y, digits.spec, 8, seed=0, cutout_length=4), epochs=1, steps_per_epoch=2,
                  callbacks=[DropPathSchedule(0.2, 2), checkpoint], verbose=0)
    assert RetrainCheckpoint(str(tmp_path)).restore(models[1]) == 1
    trained, restored = models
    assert int(restored.optimizer.iterations.numpy()) == 2
    for a, b in zip(trained.variables + trained.optimizer.variables,
                    restored.variables + restored.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    momentum = [v for v in restored.optimizer.variables if "momentum" in v.path]
    assert momentum and any(np.abs(np.asarray(v)).max() > 0 for v in momentum)


def test_dry_run_of_the_paper_setting_has_the_reference_count(tmp_path, run_cli):
    proc = run_cli("hlrs_tf.train", "--genotype=DARTS_V2", "--flagfile=configs/retrain.cfg", "--dry_run",
                   f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == [".lock", "checkpoints", "flags.cfg", "genotypes", "model_summary.json",
                                           "tensorboard"]
    summary = json.load(open(tmp_path / "model_summary.json"))
    assert summary["params_without_aux"] == 3_349_342 and summary["params"] == 3_825_768
    assert summary["input_shape"] == [32, 32, 3] and summary["channels"] == 36 and summary["layers"] == 20
    assert summary["devices"] == ["cpu"] and summary["onednn"] is True  # no GPU here (hlrs_tf.runtime.devices)


def _flagfile_values(root, path, seen=None):
    """The --name=value pairs of a flagfile (a relative path is under ``root``), nested flagfiles first (later
    lines win, as in absl)."""
    values = {}
    for line in open(os.path.join(root, path)):
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, _, value = line[2:].partition("=")
        if name == "flagfile":
            values.update(_flagfile_values(root, value))
        elif name.startswith("no") and not value and name[2:] in TRAIN_SETTINGS:
            values[name[2:]] = False
        else:
            values[name] = True if not value else value
    return values


@pytest.mark.parametrize("cfg", ["configs/retrain.cfg", "configs/retrain_quick.cfg"])
def test_config_files_are_valid_train_configs(cfg, repo_root):
    values = _flagfile_values(repo_root, cfg)
    fields = TRAIN_SETTINGS
    assert set(values) <= set(fields), set(values) - set(fields)
    typed = {k: (v if isinstance(v, bool) else type(fields[k].default)(v) if fields[k].default is not None else v)
             for k, v in values.items()}
    config = TrainConfig.create(genotype="DARTS_V2", **typed)
    text = open(os.path.join(repo_root, cfg)).read()
    assert "python -m hlrs_tf.train" in text.splitlines()[1]
    if cfg.endswith("retrain.cfg"):
        assert (config.channels, config.layers, config.epochs, config.batch_size) == (36, 20, 600, 96)
        optimizer = config.optimizer
        assert (optimizer.learning_rate, optimizer.momentum, optimizer.weight_decay, optimizer.grad_clip) == (
            0.025, 0.9, 3e-4, 5)
        assert (config.auxiliary_weight, config.drop_path_prob, config.data.cutout_length) == (0.4, 0.2, 16)
    else:
        assert config.data.dataset == "fashion_mnist" and config.channels < 36 and config.epochs < 10


# ------------------------------------------------------------------------------------------------ export
def test_export_folder_and_report(round_trip):
    out = round_trip["out"]
    for name in ("saved_model/saved_model.pb", "saved_model/assets.extra/labels.json", "model.onnx",
                 "labels.json", "export_report.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    report = json.load(open(os.path.join(out, "export_report.json")))
    assert report["passed"] and report["dataset"] == "digits" and report["num_images"] == 300
    for runtime in ("saved_model", "onnx"):
        assert report[runtime]["max_abs_diff_logits"] <= 1e-4
        assert report[runtime]["top1_agreement"] == 1.0
    labels = json.load(open(os.path.join(out, "labels.json")))
    assert labels["input"] == {"name": "images", "dtype": "uint8", "shape": [None, 8, 8, 1], "layout": "NHWC",
                               "range": [0, 255]}
    assert labels["class_names"] == [str(i) for i in range(10)]
    assert labels["onnx"]["opset"] == 17 and len(labels["preprocessing"]["mean"]) == 1
    assert "parity on 300 digits test images" in round_trip["export_proc"].stdout


def test_savedmodel_and_onnx_match_keras_on_real_images(round_trip, digits):
    import keras
    import onnxruntime as ort

    out, x = round_trip["out"], digits.x_test[:97]  # an odd batch: the batch dimension is dynamic
    network = keras.saving.load_model(os.path.join(round_trip["train"], "model.keras"), compile=False)
    keras_logits = network(normalize(x, digits.spec), training=False).numpy()

    serve = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 8, 8, 1]
    sm = serve(images=tf.constant(x))
    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)" and inp.shape == ["batch", 8, 8, 1]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    logits, probs = session.run(["logits", "probabilities"], {"images": x})

    np.testing.assert_allclose(sm["logits"].numpy(), keras_logits, atol=1e-4)
    np.testing.assert_allclose(logits, keras_logits, atol=1e-4)
    np.testing.assert_allclose(probs, tf.nn.softmax(keras_logits).numpy(), atol=1e-5)
    assert (logits.argmax(1) == keras_logits.argmax(1)).all()
    # the model learned something real in 9 steps? not required; but it must not be constant
    assert len(np.unique(keras_logits.round(4), axis=0)) > 1


def _poisoned_env(tmp_path, child_env):
    """A PYTHONPATH where `import tensorflow` (and `import hlrs_tf`) raise ImportError."""
    poison = tmp_path / "poison"
    for pkg in ("tensorflow", "hlrs_tf", "keras"):
        (poison / pkg).mkdir(parents=True, exist_ok=True)
        (poison / pkg / "__init__.py").write_text(f"raise ImportError('{pkg} must not be imported here')\n")
    return dict(child_env, PYTHONPATH=str(poison))


def test_predict_onnx_runs_without_tensorflow(round_trip, digits, tmp_path, repo_root, child_env):
    import onnxruntime as ort
    from PIL import Image

    env = _poisoned_env(tmp_path, child_env)
    control = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert control.returncode != 0 and "must not be imported" in control.stderr

    out, script = round_trip["out"], os.path.join(repo_root, "export", "predict_onnx.py")
    npz = tmp_path / "test.npz"
    np.savez(npz, x_test=digits.x_test[:40, :, :, 0], y_test=digits.y_test[:40])  # [N, H, W] also accepted
    proc = subprocess.run([sys.executable, script, out, str(npz), "--out", str(tmp_path / "p.csv"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"images": digits.x_test[:40]})[0].argmax(1)
    assert [int(r["class"]) for r in rows] == expected.tolist()
    assert [int(r["label"]) for r in rows] == digits.y_test[:40].tolist()
    assert "accuracy" in proc.stdout

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(digits.x_test[i, :, :, 0]).save(folder / f"digit_{i}.png")
    proc = subprocess.run([sys.executable, script, os.path.join(out, "model.onnx"), str(folder), "--out",
                           str(tmp_path / "p.json"), "--top_k", "3"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = json.load(open(tmp_path / "p.json"))
    assert [p["id"] for p in preds] == [f"digit_{i}.png" for i in range(3)]
    assert [p["class"] for p in preds] == expected[:3].tolist()
    assert all(len(p["top_k"]) == 3 and p["top_k"][0]["class"] == p["class"] for p in preds)

    bad = subprocess.run([sys.executable, script, out, str(tmp_path / "missing.npz")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


def test_parity_failure_fails_loudly_and_keeps_the_good_export(round_trip, tmp_path):
    out = str(tmp_path / "strict")
    # Which format trips a 1e-12 tolerance depends on the thread layout (one intra-op thread makes the SavedModel
    # bit-identical to Keras); ONNX Runtime's kernels always differ in the last bits.
    with pytest.raises(ParityError, match=r"parity check failed on 64 digits test images: (saved_model|onnx): max"):
        export_model(round_trip["train"], out, ExportOptions(num_images=64, tolerance=1e-12))
    assert not os.path.exists(out)
    rejected = json.load(open(out + ".rejected/export_report.json"))
    assert rejected["passed"] is False and rejected["failures"]


def test_bad_export_targets(round_trip, tmp_path, run_cli):
    train = round_trip["train"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.keras").write_text("not a zip")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "data.bin").write_text("x")
    cases = [
        (str(tmp_path / "nope"), str(tmp_path / "o1"), "no such file or directory"),
        (str(tmp_path / "empty"), str(tmp_path / "o2"), "folder has no model.keras"),
        (str(tmp_path / "notes.txt"), str(tmp_path / "o3"), "not a Keras .keras model file"),
        (str(tmp_path / "fake.keras"), str(tmp_path / "o4"), "not a Keras .keras model file"),
        (train, str(tmp_path / "notes.txt"), "is a file, not a folder"),
        (train, str(tmp_path / "busy"), "non-empty folder that holds no earlier export"),
    ]
    for target, out, needle in cases:
        with pytest.raises(ExportError, match=needle):
            export_model(target, out)
    with pytest.raises(ExportError, match="--tolerance"):
        ExportOptions(tolerance=0)
    proc = run_cli("hlrs_tf.export", f"--model={tmp_path / 'empty'}", f"--out={tmp_path / 'o5'}", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hlrs_tf.export: error: --model=")


# ------------------------------------------------------------------------------------------------ bad genotypes
@pytest.mark.parametrize("content,needle", [
    ("{not json", "invalid JSON"),
    ('{"normal": [["sep_conv_9x9", 0]], "normal_concat": [2], "reduce": [], "reduce_concat": [2]}', "exactly 8"),
    (None, "unknown op 'conv_7x7'"),
    ('{"normal": "sep_conv_3x3", "normal_concat": [2, 3, 4, 5], "reduce": [], "reduce_concat": [2]}',
     "must be a list of"),
    ('[1, 2, 3]', "must be a JSON object"),
])
def test_bad_genotype_files_give_clear_errors(tmp_path, content, needle):
    from hlrs_tf.train.task import run_retrain

    if content is None:  # a valid structure with one wrong op name
        from hlrs_tf.space.genotypes import DARTS_V2

        d = DARTS_V2.to_dict()
        d["normal"][3] = ["conv_7x7", 1]
        content = json.dumps(d)
    path = tmp_path / "genotype.json"
    path.write_text(content)
    with pytest.raises(GenotypeError, match=needle) as err:
        run_retrain(TrainConfig.create(genotype=str(path), dataset="digits", channels=4, layers=3),
                    str(tmp_path / "wd"), dry_run=True)
    assert str(path) in str(err.value)


def test_bad_genotype_on_the_command_line(tmp_path, run_cli):
    path = tmp_path / "g.json"
    path.write_text('{"normal": [["sep_conv_3x3", 7]]}')
    proc = run_cli("hlrs_tf.train", f"--genotype={path}", "--dataset=digits", "--dry_run",
                   f"--workdir={tmp_path / 'wd'}", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"hlrs_tf.train: error: {path}: missing key(s) normal_concat, reduce, reduce_concat "
        "(expected normal, normal_concat, reduce, reduce_concat)")
    # the other two ways to name no valid genotype, in-process (same code path after the flags)
    from hlrs_tf.train.task import run_retrain

    with pytest.raises(ConfigError, match="--genotype='' is invalid"):
        TrainConfig.create(genotype="")
    with pytest.raises(GenotypeError, match="unknown genotype 'DARTS_V9'.*DARTS_V2"):
        run_retrain(TrainConfig.create(genotype="DARTS_V9"), str(tmp_path / "wd3"), dry_run=True)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(drop_path_prob=1.0), "--drop_path_prob=1.0 is invalid: it must be in [0, 1)"),
    (dict(channels=7), "--channels=7 is invalid"),
    (dict(mixing="sometimes"), "--mixing='sometimes' is invalid"),
    (dict(bbn=True, layers=3), "--layers=3 is invalid: it must be an integer >= 4 with --bbn"),
    (dict(cutout_length=-1), "--cutout_length=-1 is invalid"),
    (dict(learning_rate_min=1.0), "--learning_rate_min=1.0 is invalid"),
])
def test_train_config_validation(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        TrainConfig.create(genotype="DARTS_V2", **kwargs)
    assert str(err.value).startswith(needle)


# ------------------------------------------------------------------------------------------------ data + BBN
def test_cutout():
    assert cutout_length_for((32, 32, 3)) == 16 and cutout_length_for((28, 28, 1)) == 14
    assert cutout_length_for((8, 8, 1)) == 4 and cutout_length_for((32, 32, 3), 10) == 10
    x = tf.ones((64, 32, 32, 2))
    y = cutout_batch(x, 16, tf.constant([3, 4], tf.int64)).numpy()
    zeros = (y == 0).all(axis=-1).reshape(64, 32, 32)
    counts = zeros.sum(axis=(1, 2))
    assert counts.max() == 256 and counts.min() >= 64  # 16x16 when inside; clipped at borders down to 8x8
    for img in zeros:  # one axis-aligned rectangle per image, at most 16 wide
        rows, cols = np.where(img.any(axis=1))[0], np.where(img.any(axis=0))[0]
        assert rows.size <= 16 and cols.size <= 16 and img.sum() == rows.size * cols.size
    assert len({tuple(np.argwhere(z)[0]) for z in zeros}) > 10  # centres differ per image
    again = cutout_batch(x, 16, tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(y, again)  # stateless: same seed, same holes


def test_retrain_dataset_and_drop_path_ramp(digits):
    x, y = make_long_tailed(digits.x_train, digits.y_train, 10, seed=0)
    ds = retrain_dataset(x, y, digits.spec, 8, seed=0, cutout_length=4, bbn=True)
    (xc, yc), (xr, yr) = next(iter(ds))
    assert xc.shape == (8, 8, 8, 1) and xr.shape == (8, 8, 8, 1) and yc.dtype == tf.int32
    # the re-balancing stream favours the tail: over many draws its labels are far more even than the data's
    labels = np.concatenate([b[1][1].numpy() for b in ds.take(60)])
    counts = np.bincount(labels, minlength=10)
    assert counts[9] > counts[0]
    assert drop_path_probability(0, 10, 0.2) == 0.0 and drop_path_probability(5, 10, 0.2) == pytest.approx(0.1)


def test_bbn_retraining_runs(tmp_path):
    """A BBN-searched architecture retrains with --bbn: two branches, mixing factor logged, model saved."""
    from hlrs_tf.train.task import run_retrain

    config = TrainConfig.create(genotype="DARTS_V1", dataset="digits", imbalance_ratio=10, channels=4, layers=4,
                         bbn=True, epochs=2, steps_per_epoch=2, batch_size=16, verbose=0, eval_batch_size=512)
    result = run_retrain(config, str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [float(r["bbn_alpha"]) for r in rows] == pytest.approx([1.0, 0.75])  # parabolic 1 - (T/2)^2
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert 0 <= result.metrics["top1"] <= 1
    import keras

    network = keras.saving.load_model(str(tmp_path / "model.keras"), compile=False)
    assert network.bbn and len(network.branch_cells) == 2
