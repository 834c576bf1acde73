#!/usr/bin/env bash
# Sets everything up and runs the test suite; extra arguments go to pytest. The tests run in .venv-test (the
# runtime set plus the oracles they compare against), apart from the job's .venv. The GCS and BigQuery emulators
# (.emu) are installed only when the selected tests may need them: no path given (the whole suite), or tests/gcp.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
needs_emulators=yes
paths=0
for arg in "$@"; do
  path=${arg%%::*}
  [ -e "$path" ] || continue
  paths=$((paths + 1))
  case "$(realpath --relative-to=. "$path")" in
    .|tests|tests/gcp|tests/gcp/*) needs_emulators=yes; break ;;
    *) needs_emulators=no ;;
  esac
done
[ "$paths" -eq 0 ] && needs_emulators=yes
if [ "$needs_emulators" = yes ]; then
  bash scripts/emulators.sh || echo "==> scripts/emulators.sh failed: the tests in tests/gcp will fail" >&2
fi
.venv-test/bin/ruff check .
exec .venv-test/bin/python -m pytest "$@"
