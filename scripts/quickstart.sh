#!/usr/bin/env bash
# One command from a fresh machine to a finished search: install, then a small real DARTS search on
# long-tailed Fashion-MNIST (about 5 minutes on 2 CPU cores). Extra flags are passed on, e.g. --workdir=runs/qs
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m hlrs_tf.search --flagfile=configs/quickstart.cfg "$@"
