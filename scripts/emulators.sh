#!/usr/bin/env bash
# Creates .emu (once): a virtualenv holding the GCS and BigQuery emulators that tests/gcp/ starts on loopback.
# They live apart from .venv because bqemulator pins its own DuckDB and registers a pytest plugin that would
# break the project's pytest. bqemulator runs `INSTALL spatial` at startup, which downloads from
# extensions.duckdb.org; the extensions are installed here from their PyPI wheels instead, into .emu/home
# (the HOME that tests/gcp/conftest.py gives bqemulator), so nothing is written outside the repository.
# Re-running is cheap: the install is skipped while this script is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.emu/.installed-$(sha256sum scripts/emulators.sh | cut -c1-16)
if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x .emu/bin/python ]; then
  echo "==> creating .emu (GCS and BigQuery emulators for tests/gcp)"
  "$PYTHON" -m venv .emu
fi
echo "==> installing gcp-storage-emulator and bqemulator into .emu"
# duckdb 1.5.5 is the newest DuckDB whose extensions ship as PyPI wheels; bqemulator imports numpy undeclared.
.emu/bin/pip install --quiet gcp-storage-emulator==2026.7.19 bqemulator==1.4.0 duckdb==1.5.5 \
  duckdb-extension-spatial==1.5.5 duckdb-extension-avro==1.5.5 numpy
mkdir -p .emu/home
HOME="$PWD/.emu/home" .emu/bin/python - <<'PY'
import importlib
import pathlib

import duckdb

for name in ("spatial", "avro"):
    package = pathlib.Path(importlib.import_module(f"duckdb_extension_{name}").__file__).parent
    extension = next(package.rglob("*.duckdb_extension"))
    connection = duckdb.connect()
    connection.execute(f"INSTALL '{extension}'")
    connection.execute(f"LOAD {name}")
PY
rm -f .emu/.installed-*
touch "$stamp"
