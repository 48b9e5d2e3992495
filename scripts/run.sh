#!/usr/bin/env bash
# `make run`: migrate, start the four services in development mode, stop them all on
# Ctrl-C. Logs go to .run/<service>.log as well as the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug

bash scripts/services.sh
"$bin/aia" migrate

export APP_ENV="${APP_ENV:-development}" LOG_FORMAT="${LOG_FORMAT:-text}"
mkdir -p .run
pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "stopped"
  exit 0
}
trap stop INT TERM EXIT

start() {
  local name=$1
  "$bin/aia-$name" > >(tee ".run/$name.log" | sed -u "s/^/[$name] /") 2>&1 &
  pids+=($!)
}
source scripts/lib.sh
WAIT_PORT_HINT="see .run/*.log"

port() { echo "${1##*:}"; }
gateway_addr=${GATEWAY_HTTP_ADDR:-127.0.0.1:8080}
start audit;   wait_port "$(port "${AUDIT_GRPC_ADDR:-127.0.0.1:50053}")"
start session; wait_port "$(port "${SESSION_GRPC_ADDR:-127.0.0.1:50052}")"
start auth;    wait_port "$(port "${AUTH_GRPC_ADDR:-127.0.0.1:50051}")"
start gateway; wait_port "$(port "$gateway_addr")"

echo
echo "AIA is up: gateway at http://$gateway_addr  (Ctrl-C stops everything)"
echo
wait -n "${pids[@]}" || true
echo "a service stopped on its own; see .run/*.log" >&2
exit 1
