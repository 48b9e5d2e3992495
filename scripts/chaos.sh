#!/usr/bin/env bash
# `make chaos`: builds the release binaries and runs scripts/chaos.py (faults under a
# steady mixed load, on a Postgres and a Redis of its own; see that file). Needs
# Postgres's and Redis's binaries (scripts/services.sh installs them) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh >/dev/null
command -v redis-server >/dev/null || { echo "redis-server is missing"; exit 1; }
echo "building release binaries..."
cargo build --release --quiet -p aia-admin -p aia-audit -p aia-session -p aia-auth -p aia-gateway
exec python3 scripts/chaos.py "$@"
