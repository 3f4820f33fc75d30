"""Which devices a run uses, and so which runtime settings apply: the CPU-only ones, or GPU memory growth.

The CPU settings (oneDNN's kernels, glibc malloc capped at 2 arenas, 1 intra-op x N inter-op threads, grappler
off for the search) were all measured on CPU (benchmarks/NOTES.md) and are wrong or pointless with a GPU: the
step's ops run there, grappler's layout optimizer and remapper are what make cuDNN fast, and one intra-op
thread would starve the host side of the input pipeline. The decision is taken in two places, because
TensorFlow reads part of its settings once, at import:

* **before TensorFlow is imported** (:func:`gpu_expected`, used by :func:`hlrs_tf.runtime.cli.prepare_process` for
  oneDNN and the malloc arenas): TensorFlow cannot be asked yet, so a cheap guess from what the driver and
  the installed build leave behind -- ``CUDA_VISIBLE_DEVICES`` not hiding every GPU, ``/dev/nvidia<N>``
  device nodes (the NVIDIA driver creates one per GPU, also inside GPU containers), and a CUDA build of
  TensorFlow (read from its ``build_info.py``, without importing it; ``tensorflow-cpu`` is none);
* **after the import** (:func:`configure_devices`, called first thing by the search -- and so by tune and
  each run of compare -- train and ``benchmarks/search_step.py``): TensorFlow's own list of GPUs. This is
  the decision that counts: threads and grappler are keyed on it, memory growth is enabled on every GPU in
  it, and ``model_summary.json`` records it (``"devices"``). If the guess was wrong (a GPU node without a
  working CUDA set-up: TensorFlow's own warning about it is hidden by ``TF_CPP_MIN_LOG_LEVEL=2``), the run
  goes on on the CPU, with one warning line, and ``"onednn"`` in the summary says which kernels ran.

Also here: the one-line answer when TensorFlow is not installed, or installed twice
(:func:`tensorflow_install_problem`), since the ``cpu`` and ``gpu`` extras of the package are what bring it.

No GPU was available to this work: the GPU path is tested with faked device lists
(``tests/test_runtime_devices.py``), never on a GPU.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import importlib.util
import os
import re
import sys

__all__ = ["Devices", "configure_devices", "gpu_expected", "set_thread_pools", "tensorflow_install_problem",
           "visible_devices"]

#: The TensorFlow distributions that ship the ``tensorflow`` module (the package's ``cpu`` / ``gpu`` extras).
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu")

_INSTALL_HINT = ('pip install "hlrs_tf[cpu]" (or "hlrs_tf[gpu]" on a machine with NVIDIA GPUs); from a '
                 "checkout: bash scripts/setup.sh (or bash scripts/setup.sh gpu)")


def tensorflow_install_problem() -> str | None:
    """What is wrong with the installed TensorFlow, as one line naming the fix; ``None`` if nothing is.

    Cheap (no TensorFlow import): the package's base dependencies have no TensorFlow, its ``cpu`` and ``gpu``
    extras bring one, and ``tensorflow`` and ``tensorflow-cpu`` installed side by side overwrite each other's
    files (the module is whichever came last).
    """
    if importlib.util.find_spec("tensorflow") is None:
        return f"TensorFlow is not installed: {_INSTALL_HINT}"
    installed = []
    for name in TENSORFLOW_DISTRIBUTIONS:
        try:
            installed.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(installed) > 1:
        return (f"{' and '.join(installed)} are both installed; they ship the same module and overwrite each "
                f"other: pip uninstall -y {' '.join(TENSORFLOW_DISTRIBUTIONS)}, then {_INSTALL_HINT}")
    return None


def _tensorflow_is_cuda_build() -> bool:
    """Whether the installed TensorFlow was built with CUDA, from its generated ``build_info.py`` (not
    imported: importing TensorFlow would fix the settings this answer is for). Unknown counts as yes."""
    spec = importlib.util.find_spec("tensorflow")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            with open(os.path.join(folder, "python", "platform", "build_info.py")) as f:
                text = f.read()
        except OSError:
            continue
        found = re.search(r"""['"]is_cuda_build['"]\s*[,:]\s*(True|False)""", text)
        if found:
            return found.group(1) == "True"
    return spec is not None


def gpu_expected(environ=None, dev_dir: str = "/dev", cuda_build: bool | None = None) -> bool:
    """Whether TensorFlow is likely to see a GPU, decided without importing it (see the module docstring).

    Args:
        environ: Mapping to read ``CUDA_VISIBLE_DEVICES`` from instead of ``os.environ`` (tests).
        dev_dir: Where the NVIDIA driver's device nodes are (tests).
        cuda_build: Whether TensorFlow is a CUDA build; ``None`` reads it from the installed TensorFlow.
    """
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    # CUDA stops at the first invalid entry: "" and "-1" (the usual ways to hide every GPU) leave none.
    if visible is not None and visible.split(",")[0].strip() in ("", "-1"):
        return False
    if not glob.glob(os.path.join(dev_dir, "nvidia[0-9]*")):
        return False
    return _tensorflow_is_cuda_build() if cuda_build is None else cuda_build


@dataclasses.dataclass(frozen=True)
class Devices:
    """The GPUs TensorFlow lists for this process (none: the run is on the CPU).

    Attributes:
        gpus: ``tf.config.PhysicalDevice`` objects of type GPU.
    """

    gpus: tuple = ()

    @property
    def cpu_only(self) -> bool:
        """No GPU: the CPU-only runtime settings apply."""
        return not self.gpus

    def names(self) -> list[str]:
        """What ``model_summary.json`` records: the GPUs' model names (TensorFlow's device name where it has
        none), or ``["cpu"]``."""
        import tensorflow as tf

        names = []
        for gpu in self.gpus:
            try:
                names.append(tf.config.experimental.get_device_details(gpu).get("device_name") or gpu.name)
            except ValueError:  # a device TensorFlow's runtime does not know (a faked list in the tests)
                names.append(gpu.name)
        return names or ["cpu"]


def visible_devices() -> Devices:
    """TensorFlow's own list of GPUs (imports TensorFlow; does not initialise the devices)."""
    import tensorflow as tf

    return Devices(tuple(tf.config.list_physical_devices("GPU")))


_warned: list = []  # whether configure_devices has warned in this process


def configure_devices() -> Devices:
    """The device decision of every command: call after importing TensorFlow, before any op runs.

    With GPUs, enables memory growth on each (TensorFlow otherwise maps nearly all of every GPU's memory at
    the first op, which keeps every other process off that GPU; ``TF_FORCE_GPU_ALLOW_GROWTH`` in the
    environment still overrides it). Without, warns once per process if :func:`gpu_expected` guessed
    otherwise before the import. The caller applies its CPU-only settings when the answer is
    :attr:`Devices.cpu_only`. Safe to call again in the same process (each tuner trial does).

    Returns:
        The :class:`Devices` of this process.
    """
    import tensorflow as tf

    devices = visible_devices()
    for gpu in devices.gpus:
        tf.config.experimental.set_memory_growth(gpu, True)  # a no-op when already on
    if devices.cpu_only and not _warned and gpu_expected():
        _warned.append(True)
        print("hlrs_tf: warning: an NVIDIA GPU is present but TensorFlow lists none (check the driver and "
              "bash scripts/setup.sh gpu); running on the CPU without the CPU-only settings TensorFlow reads at "
              "import (oneDNN kernels, malloc arenas)", file=sys.stderr)
    return devices


def set_thread_pools(threads: int) -> None:
    """Both TensorFlow thread pools at ``threads`` (0 leaves TensorFlow's defaults): what ``--threads`` means
    for retraining, and for the search on a GPU."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
