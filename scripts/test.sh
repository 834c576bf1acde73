#!/usr/bin/env bash
# Sets everything up (virtualenv, emulators) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
bash scripts/emulators.sh || echo "==> scripts/emulators.sh failed: the tests in tests/gcp will fail" >&2
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
