#!/usr/bin/env bash
# Create .venv (if needed) and install tiersync into it with the given extras, e.g. "all".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root (or sudo) to run: $*" >&2; exit 1; fi; }

apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv python3-pip
    "$PYTHON" -m venv .venv
  fi
fi
# the C part (connectors/postgres/_copytext.c) needs a compiler and Python's headers; without them the
# install still works and the same code runs in Python, slower
if ! command -v cc >/dev/null || [ ! -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
  apt_install gcc python3-dev || echo "no C compiler: tiersync runs its pure Python code instead" >&2
fi
stamp=".venv/.tiersync-${extras}-$(cat setup.cfg setup.py pyproject.toml connectors/postgres/_copytext.c | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[${extras}]"
  touch "$stamp"
fi
