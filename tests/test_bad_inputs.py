"""Bad input, table-driven: every case ends in one ``hlrs_tf.search: error: ...`` line naming the cause,
exit status 2, no traceback, and nothing half-done.

The cases run in-process through the same parser and ``main`` as ``python -m hlrs_tf.search`` (absl's
``app.run`` only adds logging set-up), so 40 cases cost seconds; ``test_real_process_exit_status`` checks
the real process for a few of them.
"""

import contextlib
import gzip
import io
import os
import shutil

import numpy as np
import pytest

from hlrs_tf.runtime import cli
from hlrs_tf.search import __main__ as search_cli

FLAGS = search_cli.FLAGS
# Ratio 10: the default 100 leaves digits' tail class 1 image, none for the architecture split (refused).
DIGITS = ["--dataset=digits", "--imbalance_ratio=10", "--channels=4", "--layers=3", "--batch_size=16", "--epochs=1",
          "--steps_per_epoch=1", "--verbose=0"]


def run_in_process(argv):
    """Returns ``(exit status, stderr)`` of ``hlrs_tf.search <argv>``."""
    err = io.StringIO()
    FLAGS.unparse_flags()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parsed = cli.flags_parser(search_cli.PROG)(["hlrs_tf.search", *argv])
                search_cli.main(parsed)
                code = 0
            except SystemExit as e:
                code = e.code
    finally:
        FLAGS.unparse_flags()
    return code, err.getvalue()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "random.npz").write_bytes(os.urandom(300))
    np.savez(root / "nokeys.npz", images=np.zeros((4, 8, 8), np.uint8))
    np.savez(root / "mismatch.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(3, int),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, int))
    np.savez(root / "negative.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, -1, 0]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, int))
    fm = root / "fashion"
    shutil.copytree("/usr/share/datasets/fashion-mnist", fm)
    (fm / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    fm_trunc = root / "fashion_trunc"
    shutil.copytree("/usr/share/datasets/fashion-mnist", fm_trunc)
    with gzip.open(fm_trunc / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x27\x10" + b"\x00" * 10)  # header says 10,000 labels, has 10
    np.savez(root / "nan_pixels.npz", x_train=np.full((4, 8, 8), np.nan), y_train=np.array([0, 1, 0, 1]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 1]))
    np.savez(root / "untrained_test_label.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 0, 1]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 2]))
    (root / "a_file").write_text("x")
    (root / "empty_folder").mkdir()
    corrupt = root / "corrupt_ckpt"
    (corrupt / "checkpoints").mkdir(parents=True)
    (corrupt / "checkpoints" / "state.json").write_text("{not json")
    missing = root / "missing_ckpt"
    (missing / "checkpoints").mkdir(parents=True)
    (missing / "checkpoints" / "state.json").write_text(
        '{"epoch": 1, "weights": "epoch_001.weights.h5", "optimizers": "epoch_001.optimizers.npz"}')
    return root


CASES = [
    # --- flag syntax and enums (absl) ---
    (["--order=third"], "flag --order=third: value should be one of <first|second>"),
    (["--method=bbn"], "flag --method=bbn: value should be one of <darts|darts_resample|darts_reweight|"),
    (["--mixing=exponential"], "flag --mixing=exponential: value should be one of <parabolic|linear|cosine|"),
    (["--arch_lr_schedule=step"], "flag --arch_lr_schedule=step: value should be one of <constant|mixing|"),
    (["--weight_sampler=inverse"], "flag --weight_sampler=inverse: value should be one of <uniform|"),
    (["--arch_sampler=x"], "flag --arch_sampler=x: value should be one of <uniform|class_balanced|reversed>"),
    (["--loss=softmax_focal"], "flag --loss=softmax_focal: value should be one of <ce|class_balanced|logit_adjusted|"),
    (["--batch_size=abc"], "flag --batch_size=abc: invalid literal for int()"),
    (["--seed=1.5"], "flag --seed=1.5"),
    (["--deterministic=maybe"], "flag --deterministic=maybe"),
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["--epochs=0"], "flag --epochs=0: 0 is not a positive integer"),
    (["--channels=1"], "flag --channels=1: 1 is not integer >= 2"),
    (["--layers=2"], "flag --layers=2: 2 is not integer >= 3"),
    (["--imbalance_ratio=0.5"], "flag --imbalance_ratio=0.5: 0.5 is not number >= 1.0"),
    (["--steps_per_epoch=-1"], "flag --steps_per_epoch=-1: -1 is not a non-negative integer"),
    (["--flagfile=/nonexistent/x.cfg"], "/nonexistent/x.cfg"),
    # --- values checked by the typed config ---
    (["--channels=7"], "--channels=7 is invalid: it must be an even integer >= 2"),
    (["--train_portion=1.5"], "--train_portion=1.5 is invalid: it must be in (0, 1)"),
    (["--learning_rate=-1"], "--learning_rate=-1.0 is invalid: it must be > 0"),
    (["--learning_rate_min=1"], "--learning_rate_min=1.0 is invalid: it must be in [0, learning_rate]"),
    (["--momentum=1.2"], "--momentum=1.2 is invalid: it must be in [0, 1)"),
    (["--weight_decay=-1"], "--weight_decay=-1.0 is invalid: it must be >= 0"),
    (["--grad_clip=0"], "--grad_clip=0.0 is invalid: it must be > 0"),
    (["--arch_learning_rate=-1"], "--arch_learning_rate=-1.0 is invalid: it must be >= 0"),
    (["--arch_beta1=1"], "--arch_beta1=1.0 is invalid: it must be in [0, 1)"),
    (["--arch_beta2=1.5"], "--arch_beta2=1.5 is invalid: it must be in [0, 1)"),
    (["--arch_weight_decay=-1"], "--arch_weight_decay=-1.0 is invalid: it must be >= 0"),
    (["--eval_batch_size=0"], "flag --eval_batch_size=0: 0 is not a positive integer"),
    (["--threads=-1"], "flag --threads=-1: -1 is not a non-negative integer"),
    (["--epochs=5", "--warmup_epochs=5"], "--warmup_epochs=5 is invalid: it must be an integer in [0, epochs=5)"),
    (["--freeze_threshold=2"], "--freeze_threshold=2.0 is invalid: it must be in [0, 1]"),
    (["--reweight_beta=1"], "--reweight_beta=1.0 is invalid: it must be in [0, 1)"),
    (["--method=hlrs", "--weight_sampler=reversed"], "--weight_sampler='reversed' is invalid: it must be uniform "
                                                      "with --bbn"),
    (["--method=darts_bbn", "--loss=class_balanced"], "--loss='class_balanced' is invalid: it must be ce with --bbn"),
    (["positional"], "unexpected arguments ['positional']"),
    # --- distribution ---
    (["--strategy=tpu"], "flag --strategy=tpu: value should be one of <auto|default|mirrored|multi_worker>"),
    (["--strategy=multi_worker"], "--strategy=multi_worker needs the TF_CONFIG environment variable"),
    (["--strategy=default", "--cpu_replicas=2"], "--cpu_replicas=2 is invalid with --strategy=default"),
    # --- data sources ---
    (["--dataset=no_such_dataset_xyz"], "unknown dataset 'no_such_dataset_xyz'"),
    (["--dataset=npz:/nonexistent/d.npz"], "/nonexistent/d.npz"),
    (["--dataset=folder:/nonexistent/images"], "image folder /nonexistent/images not found"),
    (["--dataset=folder:{root}/empty_folder"], "has no class sub-folders"),
    (["--dataset=npz:{root}/random.npz"], "is unreadable"),
    (["--dataset=npz:{root}/nokeys.npz"], "lacks keys ['x_train', 'y_train', 'x_test', 'y_test']"),
    (["--dataset=npz:{root}/mismatch.npz"], "x_train has 4 images but y_train 3 labels"),
    (["--dataset=npz:{root}/negative.npz"], "labels must be >= 0"),
    (["--dataset=npz:{root}/nan_pixels.npz"], "{root}/nan_pixels.npz: x_train: 256 of 256 pixel values are not finite"),
    (["--dataset=npz:{root}/untrained_test_label.npz"],
     "{root}/untrained_test_label.npz: y_test: test labels [2] are not among the training classes (0..1)"),
    (["--dataset=fashion_mnist", "--fashion_mnist_dir=/nonexistent/fm"],
     "apt-get install -y dataset-fashion-mnist"),
    (["--dataset=fashion_mnist", "--fashion_mnist_dir={root}/fashion"], "train-labels-idx1-ubyte.gz is corrupt"),
    (["--dataset=fashion_mnist", "--fashion_mnist_dir={root}/fashion_trunc"], "t10k-labels-idx1-ubyte.gz holds"),
    (["--batch_size=5000"], "batch_size=5000 is larger than the smaller search split"),
    (["--imbalance_ratio=200"], "--imbalance_ratio=200 leaves class 8 with 1 training image, so none on the "
                                "architecture search split (counts per class: 131, 72, 40, 22, 12, 6, 3, 2, 1, 0)"),
    (["--learning_rate=inf"], "--learning_rate=inf is invalid: it must be > 0 and finite"),
    (["--arch_learning_rate=nan"], "--arch_learning_rate=nan is invalid: it must be >= 0 and finite"),
    # --- work directory and checkpoints ---
    (["--workdir={root}/a_file/run"], "cannot use work directory"),
    (["--workdir={root}/corrupt_ckpt"], "corrupt checkpoint state"),
    (["--workdir={root}/missing_ckpt"], "cannot restore checkpoint epoch 1"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_names_the_cause(bad_files, tmp_path, argv, message):
    argv = [a.format(root=bad_files) for a in argv]
    message = message.format(root=bad_files)
    if not any(a.startswith("--workdir") for a in argv):
        argv.append(f"--workdir={tmp_path / 'wd'}")
    code, err = run_in_process(DIGITS + argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hlrs_tf.search: error: "), err
    assert message in lines[0]


def test_resuming_with_other_settings_is_refused(tmp_path):
    wd = tmp_path / "wd"
    code, err = run_in_process(DIGITS + ["--epochs=2", f"--workdir={wd}"])
    assert code == 0, err
    # Pretend the run was interrupted after epoch 1 (the checkpoint is there) and rerun with another method.
    code, err = run_in_process(DIGITS + ["--epochs=2", "--method=hlrs", f"--workdir={wd}"])
    assert code == 2
    assert "holds a checkpointed run with other settings (--arch_lr_schedule=constant -> mixing, --bbn=false " \
           "-> true, --method=darts -> hlrs)" in err
    # the refused run touched nothing
    assert "--method=darts" in (wd / "flags.cfg").read_text()


def test_real_process_exit_status(tmp_path, run_cli):
    for argv, needle in ((["--order=third"], "--order=third"), (["--dataset=npz:/nope.npz"], "/nope.npz")):
        proc = run_cli("hlrs_tf.search", *argv, "--dry_run", f"--workdir={tmp_path}", timeout=120)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("hlrs_tf.search: error:")
