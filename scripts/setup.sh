#!/usr/bin/env bash
# Installs everything hlrs_tf needs on a fresh Debian machine with Python 3.11 (run as root, or with sudo):
# the Fashion-MNIST files from Debian (the offline default dataset) and the pinned Python packages.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh dev      # + test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
extra=""; [ "${1:-}" = "dev" ] && extra="[dev]"
python3 -m pip install -q --disable-pip-version-check -e ".${extra}"
