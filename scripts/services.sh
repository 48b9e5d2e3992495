#!/usr/bin/env bash
# Makes sure Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer: starts them
# if they are installed but stopped, installs them from Debian's packages if missing
# (only when running as root, as CI does). Installs Chromium for the browser test the
# same way. Idempotent.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {
  echo "installing $* from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if ! pg_up; then
  command -v pg_ctlcluster >/dev/null || install_packages postgresql postgresql-client
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "starting Postgres $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "Postgres does not answer on 127.0.0.1:5432" >&2; exit 1; }
fi
# The tests and `make run` connect as `postgres` without a password (trust on
# loopback, as on the dev machines).
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  echo "Postgres answers but refuses user postgres over TCP without a password." >&2
  echo "Set DATABASE_URL (and TEST_DATABASE_URL) to a URL with credentials." >&2
  [ -n "${TEST_DATABASE_URL:-}${DATABASE_URL_OVERRIDE:-}" ] || exit 1
fi

if ! redis_up; then
  command -v redis-server >/dev/null || install_packages redis-server
  echo "starting Redis"
  mkdir -p /tmp/aia-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
    --dir /tmp/aia-redis --logfile /tmp/aia-redis/redis.log
  for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
  redis_up || { echo "Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }
fi
# The browser CORS test drives headless Chromium.
if ! command -v "${CHROMIUM:-chromium}" >/dev/null 2>&1; then
  install_packages chromium || echo "warning: Chromium is missing; the browser CORS test will fail (apt-get install chromium, or set CHROMIUM)" >&2
fi
echo "Postgres and Redis answer"
