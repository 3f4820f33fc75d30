"""tf.distribute: strategy selection and its errors, synchronised BatchNorm, and real distributed runs.

* ``make_strategy`` names, errors and TF_CONFIG handling (in this process: nothing here creates devices).
* The synchronised BN arithmetic against the fused kernel on one device (identity reduction).
* MirroredStrategy over 2 logical CPU devices against one device, same global batch, first and second order: the
  alphas, weights, BN statistics and losses agree to float precision, every replica holds identical copies and
  derives the same genotype -- and, as a control, *without* BN synchronisation they do not.
* A 2-worker MultiWorkerMirroredStrategy run as two local processes (127.0.0.1, free ports) against one device.

The distributed runs need a fresh process each (the CPU split and the collective runtime must be configured
before TensorFlow initialises), so they run ``tests/distribute_worker.py`` in subprocesses, with timeouts.
``HLRS_FULL_DISTRIBUTE_TESTS=1`` runs the multi-worker test on ``trainer.build_model``'s 4-node supernet
(about 2.5 min on 2 cores) instead of the 1-node one.
"""

import json
import os
import socket
import sys

import numpy as np
import pytest
import tensorflow as tf

from hlrs_tf.runtime import distribute, sync_bn
from hlrs_tf.runtime.distribute import DistributeError, make_strategy, parse_tf_config
from hlrs_tf.space.ops import BatchNorm


def tf_config(index, workers=("127.0.0.1:1", "127.0.0.1:2"), chief=None, kind="worker"):
    cluster = {"worker": list(workers)}
    if chief:
        cluster["chief"] = [chief]
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


# ------------------------------------------------------------------------------------------------ (a) strategies
def test_strategy_names():
    assert distribute.STRATEGIES == ("auto", "default", "mirrored", "multi_worker")


@pytest.mark.parametrize("name,kwargs,needle", [
    ("bogus", {}, "--strategy='bogus' is invalid: it must be one of auto, default, mirrored, multi_worker"),
    ("mirrored", {"cpu_replicas": -1}, "--cpu_replicas=-1 is invalid: it must be an integer >= 0"),
    ("mirrored", {"cpu_replicas": True}, "--cpu_replicas=True is invalid"),
    ("default", {"cpu_replicas": 2}, "--cpu_replicas=2 is invalid with --strategy=default: it only applies to"),
    ("multi_worker", {"cpu_replicas": 2}, "--cpu_replicas=2 is invalid with --strategy=multi_worker"),
])
def test_make_strategy_rejects_bad_arguments(monkeypatch, name, kwargs, needle):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributeError) as info:
        make_strategy(name, **kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI reports ValueErrors as flag errors


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributeError, match=r"--strategy=multi_worker needs the TF_CONFIG environment variable"
                                              r".*e\.g\. TF_CONFIG='\{\"cluster\""):
        make_strategy("multi_worker")


@pytest.mark.parametrize("raw,needle", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" object'),
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}', 'list of "host:port" strings'),
    ('{"cluster": {"worker": ["h1"]}, "task": {"type": "worker", "index": 0}}', 'list of "host:port" strings'),
    ('{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}', 'no "worker" (or "chief") task'),
    ('{"cluster": {"worker": ["h:1"]}}', 'no "task" object'),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}', "task type 'chief' is not in"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}', "task index 2 is out of range"),
])
def test_invalid_tf_config_is_named(monkeypatch, raw, needle):
    with pytest.raises(DistributeError) as info:
        parse_tf_config({"TF_CONFIG": raw})
    message = str(info.value)
    assert message.startswith("TF_CONFIG is invalid: ") and needle in message, message
    assert "it must be JSON like TF_CONFIG=" in message
    # make_strategy validates it too (also for "auto": a broken TF_CONFIG must not be ignored silently).
    monkeypatch.setenv("TF_CONFIG", raw)
    for name in ("multi_worker", "auto"):
        with pytest.raises(DistributeError, match="TF_CONFIG is invalid"):
            make_strategy(name)


def test_unset_or_empty_tf_config_is_none():
    assert parse_tf_config({}) is None
    assert parse_tf_config({"TF_CONFIG": "  "}) is None


def test_default_and_auto_without_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert make_strategy("default") is tf.distribute.get_strategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        pytest.skip("auto picks mirrored with several GPUs")
    auto = make_strategy("auto")
    assert auto is tf.distribute.get_strategy() and auto.num_replicas_in_sync == 1
    # A TF_CONFIG naming a single worker is not a multi-worker run either.
    monkeypatch.setenv("TF_CONFIG", tf_config(0, workers=("127.0.0.1:1",)))
    assert make_strategy("auto") is tf.distribute.get_strategy()


def test_auto_rejects_cpu_replicas_with_a_cluster(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config(0))
    with pytest.raises(DistributeError, match="--cpu_replicas=2 is invalid with a multi-worker TF_CONFIG"):
        make_strategy("auto", cpu_replicas=2)


def test_cpu_split_after_tf_started_is_a_clear_error():
    tf.config.list_logical_devices("CPU")  # make sure this process's runtime is initialised
    with pytest.raises(DistributeError, match=r"--cpu_replicas=3 cannot be applied: TensorFlow has already "
                                              r"initialised its devices .*before any other TensorFlow operation"):
        make_strategy("mirrored", cpu_replicas=3)


@pytest.mark.parametrize("config,chief", [
    (None, True),
    (tf_config(0), True),                                  # worker 0 is the chief when there is no chief task
    (tf_config(1), False),
    (tf_config(0, chief="127.0.0.1:3"), False),            # ... but not when the cluster has one
    (tf_config(0, chief="127.0.0.1:3", kind="chief"), True),
])
def test_worker_info_and_is_chief(monkeypatch, config, chief):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    info = distribute.worker_info()
    assert info.is_chief is chief and distribute.is_chief() is chief
    assert info.num_workers == (1 if config is None else 2 + ("chief" in json.loads(config)["cluster"]))


def test_worker_workdir_chief_writes_others_throw_away(monkeypatch, tmp_path):
    workdir = str(tmp_path / "run")
    monkeypatch.setenv("TF_CONFIG", tf_config(0))
    with distribute.worker_workdir(workdir) as path:
        assert path == workdir
    monkeypatch.setenv("TF_CONFIG", tf_config(1))
    with distribute.worker_workdir(workdir) as path:
        assert path != workdir and os.path.isdir(path) and "worker1" in os.path.basename(path)
        with open(os.path.join(path, "x.txt"), "w") as f:
            f.write("copy")
    assert not os.path.exists(path)  # removed afterwards
    assert not os.path.exists(workdir)


def test_batch_helpers_on_one_replica():
    strategy = tf.distribute.get_strategy()
    assert distribute.global_batch_size(16, strategy) == 16
    assert distribute.check_global_batch_size(7, strategy) == 7
    with pytest.raises(DistributeError, match=r"--batch_size=0 is invalid"):
        distribute.check_global_batch_size(0, strategy)
    logs = {"loss": tf.constant(1.0)}
    assert distribute.step_logs(logs) is logs and not distribute.is_multi_worker()


# ------------------------------------------------------------------------------------------------ sync BN maths
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_sync_bn_arithmetic_matches_the_fused_kernel(affine, dynamic_batch):
    """With an identity 'all-reduce' (one replica) the synchronised path is training-mode BN: same output,
    gradients w.r.t. input, scale and offset, and the same moving statistics (momentum, unbiased variance)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(3.0, 2.0, (6, 5, 5, 7)).astype("float32"))  # mean far from 0: tests the shift
    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    fused, synced = BatchNorm(affine), BatchNorm(affine)
    for layer in (fused, synced):
        layer.build(x.shape)
        if affine:
            layer.gamma.assign(np.linspace(0.5, 1.5, 7).astype("float32"))
            layer.beta.assign(np.linspace(-1, 1, 7).astype("float32"))

    spec = tf.TensorSpec([None, 5, 5, 7] if dynamic_batch else x.shape, tf.float32)

    @tf.function(input_signature=[spec])
    def step_fused(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fused(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        return (y, *tape.gradient(loss, [x, *fused.trainable_variables]))

    @tf.function(input_signature=[spec])
    def step_synced(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            scale = synced.gamma if affine else tf.ones((7,))
            offset = synced.beta if affine else tf.zeros((7,))
            y = sync_bn.batch_norm_train(synced, x, scale, offset, reduce_fn=lambda v: v, replicas=1)
            loss = tf.reduce_sum(y * upstream)
        return (y, *tape.gradient(loss, [x, *synced.trainable_variables]))

    for _ in range(3):  # moving statistics accumulate over steps
        a, b = step_fused(x), step_synced(x)
        assert len(a) == len(b) == (4 if affine else 2)
        for u, v in zip(a, b):
            np.testing.assert_allclose(v.numpy(), u.numpy(), rtol=2e-5, atol=3e-5)
        np.testing.assert_allclose(synced.moving_mean.numpy(), fused.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(synced.moving_variance.numpy(), fused.moving_variance.numpy(), rtol=1e-5)
    assert not np.allclose(fused.moving_mean.numpy(), 0.0)  # the statistics did move


def test_sync_bn_switch_and_context():
    assert not sync_bn.should_sync()  # default strategy: one replica
    assert sync_bn.replicas_in_sync() == 1
    sync_bn.set_enabled(False)
    try:
        assert not sync_bn.is_enabled()
    finally:
        sync_bn.set_enabled(True)
    assert sync_bn.is_enabled()


# ------------------------------------------------------------------------------------------------ subprocesses
@pytest.fixture(scope="session")
def worker(repo_root):
    """The path of the worker script the subprocess tests run."""
    return os.path.join(repo_root, "tests", "distribute_worker.py")


def _env(child_env, **extra):
    env = dict(child_env)
    env.pop("TF_CONFIG", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def _result(stdout: str, stderr: str, what: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"{what} printed no RESULT; stderr tail:\n{stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# ------------------------------------------------------------------------------------------------ (b) mirrored
@pytest.fixture(scope="module")
def mirrored(worker, repo_root, child_env, run_side_by_side):
    # One worker process per order, run at the same time (conftest.run_side_by_side), instead of one process
    # looping over both: the orders are independent. Every model the worker builds (run_once, run_init_alphas)
    # goes through small_search_model's keras.utils.set_random_seed(0), and run_once reseeds before building its
    # dataset, so no run depends on RNG state an earlier run consumed; each order gets its own models, its own
    # _INIT_ALPHAS[order] entry, and sync_bn.set_enabled(True) before and after it. Every assertion compares
    # runs within one order (one process). "--control none" names no order, so the second-order half runs no
    # nosync control -- as before, where only "first" was the control.
    base = [sys.executable, worker, "mirrored", "--steps", "3", "--batch", "8", "--nodes", "1"]
    halves = {"first": "first", "second": "none"}  # order -> --control
    outputs = run_side_by_side([(base + ["--orders", order, "--control", control], _env(child_env))
                                for order, control in halves.items()], timeout=600, cwd=repo_root,
                               what="mirrored worker")
    first, second = (_result(out, err, f"mirrored worker ({order} order)")
                     for (out, err), order in zip(outputs, halves))
    # Both halves set up the same strategy (replicas, batch split, odd-batch error, hooks).
    assert {k: v for k, v in first.items() if k != "orders"} == {k: v for k, v in second.items() if k != "orders"}
    assert list(first["orders"]) == ["first"] and list(second["orders"]) == ["second"]
    assert "nosync" not in second["orders"]["second"]  # the control ran for the first order only, as before
    first["orders"].update(second["orders"])
    return first


def test_mirrored_setup(mirrored):
    assert mirrored["replicas"] == 2 and mirrored["per_replica_batch"] == 4
    expected = "--batch_size=7 is invalid: with 2 replicas it must be a positive multiple of 2"
    assert expected in mirrored["odd_batch_error"]


@pytest.mark.parametrize("order", ["first", "second"])
def test_mirrored_matches_one_device(mirrored, order):
    res = mirrored["orders"][order]
    sync = res["sync"]
    # Training moved the alphas by ~3 Adam steps of 3e-4; measured differences are ~1e-8. Second order
    # gets more room: its finite-difference Hessian term divides float noise by eps = 0.01 / ||v||.
    assert sync["alpha_change"] > 5e-4
    assert sync["d_alphas"] < (1e-6 if order == "first" else 1e-5), sync
    assert sync["d_weights"] < 1e-5, sync
    assert sync["d_stats"] < 1e-5, sync
    assert sync["d_loss"] < 1e-5 and sync["d_arch_loss"] < 1e-5, sync
    np.testing.assert_allclose(sync["loss"], res["loss"], atol=1e-5)
    # Every replica holds identical variables (BN statistics included) and derives the same genotype,
    # which is also the single-device genotype.
    assert sync["replica_spread_trainable"] == 0.0 and sync["replica_spread_stats"] == 0.0
    genotypes = set(sync["replica_genotypes"])
    assert genotypes == {sync["genotype"]} == {res["single_genotype"]}


def test_mirrored_without_bn_sync_differs(mirrored):
    """Control: per-replica BN statistics make the same run measurably different (and the replicas' moving
    averages drift apart) -- so the agreement above is due to the synchronisation, and the test can fail."""
    nosync = mirrored["orders"]["first"]["nosync"]
    assert nosync["d_alphas"] > 1e-4 and nosync["d_weights"] > 1e-3 and nosync["d_loss"] > 1e-3, nosync
    assert nosync["replica_spread_stats"] > 1e-3
    assert nosync["replica_spread_trainable"] == 0.0  # the all-reduced parameters themselves stay mirrored


# ------------------------------------------------------------------------------------------------ (c) multi-worker
def test_two_worker_multi_worker_mirrored_run(tmp_path, worker, repo_root, child_env, run_side_by_side):
    nodes = "4" if os.environ.get("HLRS_FULL_DISTRIBUTE_TESTS") == "1" else "1"
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    base = [sys.executable, worker, "multi_worker", "--steps", "2", "--batch", "8", "--nodes", nodes]
    commands = [
        (base + ["--workdir", workdir], _env(child_env, TF_CONFIG=tf_config(i, workers=workers))) for i in range(2)
    ] + [(base + ["--strategy", "default", "--workdir", str(tmp_path / "single")], _env(child_env))]
    os.makedirs(tmp_path / "single")
    outputs = run_side_by_side(commands, timeout=480, cwd=repo_root, what="distributed run (hung collective?)")
    w0, w1, single = (_result(out, err, f"process {i}") for i, (out, err) in enumerate(outputs))

    assert (w0["task_id"], w1["task_id"]) == (0, 1)
    assert w0["replicas"] == w1["replicas"] == 2 and w0["per_replica_batch"] == 4
    assert (w0["is_chief"], w1["is_chief"]) == (True, False)
    # Both workers derive the same genotype from identical alphas -- the single-device one, to float precision.
    assert w0["genotype"] == w1["genotype"] == single["genotype"]
    a0, a1, a_single = (np.array(r["alphas"][0] + r["alphas"][1]) for r in (w0, w1, single))
    np.testing.assert_array_equal(a0, a1)
    np.testing.assert_allclose(a0, a_single, atol=1e-6)
    np.testing.assert_allclose(w0["loss"], single["loss"], atol=1e-5)
    # Only the chief wrote into the work directory; the other worker's copy went to a removed temp dir.
    assert w0["wrote"] == os.path.join(workdir, "genotype.json") and os.path.exists(w0["wrote"])
    assert not w1["wrote"].startswith(workdir) and not os.path.exists(w1["wrote"])
    assert os.listdir(workdir) == ["genotype.json"]
