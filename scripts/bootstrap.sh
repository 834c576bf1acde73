#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its test extras, pinned by constraints.txt.
# Re-running is cheap: the install is skipped while setup.py and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat setup.py constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "==> installing the project and its pinned dependencies into .venv (first run takes a few minutes)"
  mkdir -p out
  if ! { .venv/bin/pip install --upgrade pip && .venv/bin/pip install -c constraints.txt -e '.[test]'; } \
      > out/bootstrap.log 2>&1; then
    tail -40 out/bootstrap.log
    echo "bootstrap failed; the full log is out/bootstrap.log" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
