#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Python packages, PostgreSQL server
# binaries when they are missing) and runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source_apt() {
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; fi
}
# The tests start their own PostgreSQL servers with initdb, so the server binaries must be here.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing PostgreSQL server packages for the tests" >&2
  source_apt postgresql postgresql-contrib locales
fi
# The MySQL/MariaDB tests start their own MariaDB servers with mariadb-install-db.
if ! command -v mariadb-install-db >/dev/null 2>&1 || ! { command -v mariadbd || ls /usr/sbin/mariadbd; } >/dev/null 2>&1; then
  echo "installing MariaDB server packages for the tests" >&2
  source_apt mariadb-server
fi
if [ "$(id -u)" = 0 ] && ! id mysql >/dev/null 2>&1; then
  useradd --system --home /nonexistent --shell /usr/sbin/nologin mysql
fi
# PostgreSQL refuses to run as root: as root, the tests run their servers as the postgres user.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi
./ops/bootstrap.sh all
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
