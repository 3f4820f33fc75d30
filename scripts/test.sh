#!/usr/bin/env bash
# One command from a fresh machine to a passing test suite: install (with test extras), lint, then pytest.
#   bash scripts/test.sh                  # everything (what CI runs)
#   bash scripts/test.sh -m "not slow"    # the quick loop: leaves out the tests that start real commands
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
python3 -m ruff check .
exec python3 -m pytest -q tests "$@"
