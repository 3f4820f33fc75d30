#!/usr/bin/env bash
# One command from a fresh machine to a passing test suite: install (with test extras), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec python3 -m pytest -q tests "$@"
