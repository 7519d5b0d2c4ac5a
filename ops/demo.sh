#!/usr/bin/env bash
# The embedded demo: install tiersync into .venv, then replicate a county's SQLite data to a city.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/bootstrap.sh all
exec .venv/bin/tiersync demo "$@"
