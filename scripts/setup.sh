#!/usr/bin/env bash
# Installs everything hlrs_tf needs on a fresh Debian machine with Python 3.11 (run as root, or with sudo):
# the Fashion-MNIST files from Debian (the offline default dataset) and the pinned Python packages.
#   bash scripts/setup.sh                # runtime, CPU TensorFlow (extra `cpu`: tensorflow-cpu on x86_64,
#                                        #   tensorflow elsewhere)
#   bash scripts/setup.sh dev            # + test dependencies
#   bash scripts/setup.sh gpu [dev]      # GPU TensorFlow (extra `gpu`: tensorflow[and-cuda], CUDA + cuDNN from
#                                        #   pip; needs an NVIDIA driver)
#   bash scripts/setup.sh cpu [dev]      # CPU TensorFlow, replacing a GPU one
#   ... --dry-run                        # print the pip commands, run nothing
# Without `cpu` or `gpu` it installs the CPU TensorFlow, unless the GPU one is already installed (so that
# scripts/test.sh, which runs `setup.sh dev`, keeps a GPU set-up). tensorflow and tensorflow-cpu ship the same
# module, so the one not wanted is uninstalled first (see the comments on the extras in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
variant="" extras="" dry_run=""
for arg in "$@"; do
  case "$arg" in
    cpu|gpu)
      if [ -n "$variant" ] && [ "$variant" != "$arg" ]; then
        echo "setup.sh: error: cpu and gpu exclude each other: give one" >&2; exit 2
      fi
      variant="$arg" ;;
    dev) extras=",dev" ;;
    --dry-run) dry_run=1 ;;
    *) echo "setup.sh: error: unknown argument '$arg': the arguments are cpu or gpu, dev, --dry-run" >&2; exit 2 ;;
  esac
done
if [ -z "$dry_run" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
run() { if [ -n "$dry_run" ]; then echo "$*"; else "$@"; fi; }
PIP=(python3 -m pip --disable-pip-version-check)
installed() { python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$1" 2>/dev/null; }
# The distribution each extra brings here (pyproject.toml markers: platform_machine).
if [ "$(python3 -c 'import platform; print(platform.machine())')" = "x86_64" ]; then cpu_dist=tensorflow-cpu
else cpu_dist=tensorflow; fi
if [ -z "$variant" ]; then
  variant=cpu
  if [ "$cpu_dist" != tensorflow ] && installed tensorflow; then
    variant=gpu
    echo "setup.sh: keeping the GPU TensorFlow installed here (bash scripts/setup.sh cpu replaces it)"
  fi
fi
want=tensorflow; [ "$variant" = cpu ] && want="$cpu_dist"
other=tensorflow-cpu; [ "$want" = tensorflow-cpu ] && other=tensorflow
if installed "$other"; then
  # Uninstalling one of two distributions that share files breaks the other one: remove both, then install.
  remove=("$other"); installed "$want" && remove+=("$want")
  run "${PIP[@]}" uninstall -y -q "${remove[@]}"
fi
run "${PIP[@]}" install -q -e ".[${variant}${extras}]"
