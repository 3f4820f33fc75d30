"""CPU-only runtime settings without a GPU, GPU memory growth with one; the TensorFlow extras and their set-up.

No GPU is available here, so the GPU path runs on faked device lists: ``tf.config.list_physical_devices``
returns ``PhysicalDevice`` objects of type GPU. The settings TensorFlow accepts only before its runtime starts
(thread pools, grappler options, memory growth; a fake GPU cannot take memory growth at all) are recorded
instead of applied, so the test process keeps its own. The real CPU path runs in a subprocess.
"""

import json
import os
import subprocess
import sys
import tomllib

import pytest
import tensorflow as tf
from packaging.requirements import Requirement

from hlrs_tf.config.search import SearchConfig
from hlrs_tf.config.train import TrainConfig
from hlrs_tf.runtime import cli
from hlrs_tf.runtime import devices as runtime
from hlrs_tf.search import task as trainer
from hlrs_tf.train import task as retrainer

TF_PIN = "==2.21.0"


@pytest.fixture
def calls(monkeypatch):
    """Records the runtime setters instead of applying them."""
    record = {"growth": [], "intra": [], "inter": [], "grappler": []}
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda device, on: record["growth"].append((device.name, on)))
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", record["intra"].append)
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", record["inter"].append)
    monkeypatch.setattr(tf.config.optimizer, "set_experimental_options", record["grappler"].append)
    return record


def fake_gpus(monkeypatch, count: int) -> list:
    """Makes TensorFlow list ``count`` GPUs (0: none, also on a machine that has some)."""
    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(count)]
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda device_type=None: list(gpus) if device_type == "GPU" else real(device_type))
    return gpus


# ------------------------------------------------------------------------------------------------ after import
def test_search_with_gpus_skips_cpu_settings_and_grows_memory(monkeypatch, calls):
    fake_gpus(monkeypatch, 2)
    trainer.configure_runtime(SearchConfig.create(strategy="default"))
    assert calls["growth"] == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]
    # no 1 intra-op x N inter-op layout, grappler left on (both measured on CPU only)
    assert calls["intra"] == calls["inter"] == calls["grappler"] == []


def test_search_threads_flag_with_a_gpu_sets_both_pools(monkeypatch, calls):
    fake_gpus(monkeypatch, 1)
    trainer.configure_runtime(SearchConfig.create(strategy="default", threads=3))
    assert calls["intra"] == calls["inter"] == [3] and calls["grappler"] == []
    assert calls["growth"] == [("/physical_device:GPU:0", True)]


def test_search_without_gpu_applies_cpu_settings(monkeypatch, calls):
    fake_gpus(monkeypatch, 0)
    trainer.configure_runtime(SearchConfig.create(strategy="default"))
    assert calls["growth"] == []
    assert calls["intra"] == [1] and calls["inter"] == [os.cpu_count()]
    assert calls["grappler"] == [{"disable_meta_optimizer": True}]


def test_retraining_grows_memory_on_each_gpu(monkeypatch, calls):
    fake_gpus(monkeypatch, 2)
    retrainer.configure_runtime(TrainConfig.create(genotype="DARTS_V2", threads=2))
    assert [name for name, on in calls["growth"] if on] == ["/physical_device:GPU:0", "/physical_device:GPU:1"]
    assert calls["intra"] == calls["inter"] == [2]  # --threads of train means both pools, on any device


def test_device_names_recorded(monkeypatch):
    assert runtime.Devices().names() == ["cpu"]
    gpus = fake_gpus(monkeypatch, 2)
    devices = runtime.visible_devices()
    assert devices.gpus == tuple(gpus) and not devices.cpu_only
    # TensorFlow has no details of a fake device: its own name stands in for the model name
    assert devices.names() == ["/physical_device:GPU:0", "/physical_device:GPU:1"]


def test_warns_once_when_a_gpu_was_expected_but_none_is_listed(monkeypatch, calls, capsys):
    fake_gpus(monkeypatch, 0)
    monkeypatch.setattr(runtime, "gpu_expected", lambda: True)
    monkeypatch.setattr(runtime, "_warned", [])
    assert runtime.configure_devices().cpu_only and runtime.configure_devices().cpu_only
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "TensorFlow lists none" in err


def test_cpu_path_for_real_in_a_fresh_process(tmp_path, child_env):
    """The search's runtime set-up in a fresh process, unfaked (this machine has no GPU)."""
    script = (
        "from hlrs_tf.runtime.cli import prepare_process; prepare_process()\n"
        "import json, os, tensorflow as tf\n"
        "from hlrs_tf.runtime.cli import onednn_enabled\n"
        "from hlrs_tf.config.search import SearchConfig\n"
        "from hlrs_tf.runtime.devices import visible_devices\n"
        "from hlrs_tf.search.task import configure_runtime\n"
        "configure_runtime(SearchConfig.create(strategy='default', threads=2))\n"
        "print(json.dumps({'intra': tf.config.threading.get_intra_op_parallelism_threads(),\n"
        "  'inter': tf.config.threading.get_inter_op_parallelism_threads(),\n"
        "  'grappler': tf.config.optimizer.get_experimental_options().get('disable_meta_optimizer'),\n"
        "  'onednn': onednn_enabled(), 'devices': visible_devices().names()}))\n"
    )
    env = {k: v for k, v in child_env.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"intra": 1, "inter": 2, "grappler": True, "onednn": True,
                   "devices": ["cpu"]}


# ------------------------------------------------------------------------------------------------ before import
@pytest.mark.parametrize("expected", [False, True])
def test_prepare_process_sets_cpu_only_settings_only_without_an_expected_gpu(monkeypatch, expected):
    arenas = []
    monkeypatch.setattr(runtime, "gpu_expected", lambda: expected)
    monkeypatch.setattr(cli, "limit_malloc_arenas", lambda: arenas.append(True))
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    cli.prepare_process()
    assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") == (None if expected else "1")
    assert arenas == ([] if expected else [True])


@pytest.mark.parametrize("visible,nodes,cuda_build,expected", [
    (None, ["nvidia0", "nvidiactl"], True, True),
    ("0,1", ["nvidia0"], True, True),
    ("", ["nvidia0"], True, False),        # every GPU hidden
    ("-1", ["nvidia0"], True, False),
    (None, ["nvidiactl"], True, False),    # driver control node only: no GPU
    (None, [], True, False),
    (None, ["nvidia0"], False, False),     # tensorflow-cpu cannot use it
])
def test_gpu_expected(tmp_path, visible, nodes, cuda_build, expected):
    for name in nodes:
        (tmp_path / name).touch()
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert runtime.gpu_expected(environ, dev_dir=str(tmp_path), cuda_build=cuda_build) is expected


def test_cuda_build_read_without_import_matches_tensorflow():
    assert runtime._tensorflow_is_cuda_build() is bool(tf.sysconfig.get_build_info()["is_cuda_build"])


def test_missing_tensorflow_is_one_line_naming_the_extras(repo_root, child_env):
    # sys.modules["tensorflow"] = None is how Python spells "cannot be imported" (find_spec answers None)
    script = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = ['hlrs_tf.search', '--dry_run']; "
              "runpy.run_module('hlrs_tf.search', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo_root, env=child_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hlrs_tf: error: TensorFlow is not installed")
    assert 'pip install "hlrs_tf[cpu]"' in lines[0] and '"hlrs_tf[gpu]"' in lines[0]


def fake_distribution(root, name: str) -> None:
    """A ``<name>-2.21.0.dist-info`` folder, as pip leaves one (what importlib.metadata reads)."""
    info = root / f"{name.replace('-', '_')}-2.21.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 2.21.0\n")


def test_both_tensorflow_distributions_installed_is_refused(tmp_path, monkeypatch):
    assert runtime.tensorflow_install_problem() is None  # this machine: exactly one
    installed = [n for n in runtime.TENSORFLOW_DISTRIBUTIONS if _installed(n)]
    fake_distribution(tmp_path, next(n for n in runtime.TENSORFLOW_DISTRIBUTIONS if n not in installed))
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = runtime.tensorflow_install_problem()
    assert problem and "both installed" in problem and "pip uninstall -y tensorflow tensorflow-cpu" in problem


def _installed(name: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


# ------------------------------------------------------------------------------------------------ packaging
def _project(root):
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _tensorflow_for(requirements, machine: str) -> list[tuple[str, str]]:
    """(name with extras, specifier) of the TensorFlow requirements that apply on ``machine``."""
    env = {"platform_machine": machine}
    out = []
    for req in map(Requirement, requirements):
        if req.name.startswith("tensorflow") and req.name != "tensorflow-datasets":
            if req.marker is None or req.marker.evaluate(env):
                out.append((req.name + "".join(f"[{e}]" for e in sorted(req.extras)), str(req.specifier)))
    return out


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_pyproject_extras_bring_exactly_one_tensorflow(machine, repo_root):
    project = _project(repo_root)
    extras = project["optional-dependencies"]
    assert _tensorflow_for(project["dependencies"], machine) == []  # an extra cannot remove a base dependency
    cpu = "tensorflow-cpu" if machine == "x86_64" else "tensorflow"
    assert _tensorflow_for(extras["cpu"], machine) == [(cpu, TF_PIN)]
    assert _tensorflow_for(extras["gpu"], machine) == [("tensorflow[and-cuda]", TF_PIN)]
    assert _tensorflow_for(extras["dev"], machine) == []


def _setup_dry_run(root, *args, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run(["bash", os.path.join(root, "scripts", "setup.sh"), *args, "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout.strip().splitlines(), proc.stderr.strip()


PIP = "python3 -m pip --disable-pip-version-check"
needs_cpu_tf = pytest.mark.skipif(not (_installed("tensorflow-cpu") and not _installed("tensorflow")),
                                  reason="expects the set-up of scripts/setup.sh dev on x86_64 (tensorflow-cpu)")


@pytest.mark.slow  # scripts/setup.sh runs python3
@needs_cpu_tf
def test_setup_dev_installs_the_cpu_extra_as_before(repo_root):
    assert _setup_dry_run(repo_root, "dev") == (0, [f"{PIP} install -q -e .[cpu,dev]"], "")
    assert _setup_dry_run(repo_root) == (0, [f"{PIP} install -q -e .[cpu]"], "")


@pytest.mark.slow  # scripts/setup.sh runs python3
@needs_cpu_tf
def test_setup_gpu_replaces_tensorflow_cpu(repo_root):
    assert _setup_dry_run(repo_root, "gpu", "dev") == (
        0, [f"{PIP} uninstall -y -q tensorflow-cpu", f"{PIP} install -q -e .[gpu,dev]"], "")


@pytest.mark.slow  # scripts/setup.sh runs python3
@needs_cpu_tf
def test_setup_removes_both_distributions_when_both_are_installed(tmp_path, repo_root):
    fake_distribution(tmp_path, "tensorflow")
    # uninstalling only one would delete files the other shares
    assert _setup_dry_run(repo_root, "cpu", pythonpath=str(tmp_path)) == (
        0, [f"{PIP} uninstall -y -q tensorflow tensorflow-cpu", f"{PIP} install -q -e .[cpu]"], "")


@pytest.mark.parametrize("args", [["bogus"], ["cpu", "gpu"]])
def test_setup_rejects_bad_arguments_in_one_line(args, repo_root):
    code, out, err = _setup_dry_run(repo_root, *args)
    assert code == 2 and out == [] and len(err.splitlines()) == 1 and err.startswith("setup.sh: error:")

