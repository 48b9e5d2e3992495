#!/usr/bin/env bash
# Shared by `make bench-gateway` and `make bench` (sourced, not run): installs wrk and
# nginx if missing, builds release binaries, starts nginx (the upstream on 18081 and
# the reference proxy on 18082) and the four services (gateway on 18080) against a
# `aia_bench` database, registers a user and logs in ($email, $password, $token), and
# defines `run NAME URL [wrk args]` (prints "req/s p99 non-2xx") and `to_ms`.
# Everything it started is stopped when the sourcing script exits.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
work=$(mktemp -d /tmp/aia-bench.XXXXXX)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  for instance in upstream proxy; do
    [ -f "$work/$instance/nginx.pid" ] && kill "$(cat "$work/$instance/nginx.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "installing $2"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx-light
need jq jq
bash scripts/services.sh >/dev/null

echo "building release binaries..."
cargo build --release --quiet -p aia-admin -p aia-audit -p aia-session -p aia-auth -p aia-gateway
bin=target/release

# nginx: the upstream (18081) and the reference proxy (18082), each its own instance
# (master and workers), so that the reference, like the gateway, hands every request
# to another process, and the CPU each one spends per request can be read apart.
start_nginx() { # directory, server blocks
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<NGINX
worker_processes auto;
pid $1/nginx.pid;
error_log $1/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  gzip off;
  keepalive_requests 1000000;
  $2
}
NGINX
  nginx -c "$1/nginx.conf" -p "$1"
}
# The upstream reads a request's head in one 4 KiB buffer, as application servers do
# (Go's net/http, hyper, Node read 4 KiB or more at once); nginx's own 1 KiB default
# would make any head over 1 KiB cost it a second read. The gateway's requests carry
# the identity headers and come near 1 KiB; the reference's are about 600 bytes
# either way.
start_nginx "$work/upstream" "client_header_buffer_size 4k;
  server {
    listen 127.0.0.1:18081;
    location / { default_type application/json; return 200 '{\"ok\":true}'; }
  }"
start_nginx "$work/proxy" "upstream app { server 127.0.0.1:18081; keepalive 128; }
  server {
    listen 127.0.0.1:18082;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"

export APP_ENV=development LOG_FORMAT=text RUST_LOG=warn
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/aia_bench
export REDIS_KEY_PREFIX="bench:$$:"
export AUDIT_GRPC_ADDR=127.0.0.1:15053 AUDIT_ADMIN_ADDR=127.0.0.1:19103
export SESSION_GRPC_ADDR=127.0.0.1:15052 SESSION_ADMIN_ADDR=127.0.0.1:19102
export AUTH_GRPC_ADDR=127.0.0.1:15051 AUTH_ADMIN_ADDR=127.0.0.1:19101
export GATEWAY_HTTP_ADDR=127.0.0.1:18080 GATEWAY_ADMIN_ADDR=127.0.0.1:19100
export AUDIT_GRPC_URL=http://127.0.0.1:15053 SESSION_GRPC_URL=http://127.0.0.1:15052 AUTH_GRPC_URL=http://127.0.0.1:15051
# /api/ needs a token or API key; /pub/ is public (limited per client IP, which the
# scaling curve varies through X-Forwarded-For from the trusted loopback).
export UPSTREAMS=/api/=http://127.0.0.1:18081,/pub/=http://127.0.0.1:18081 UPSTREAM_PUBLIC_PREFIXES=/pub/
export TRUSTED_PROXIES=127.0.0.1/32
# Limits stay on, with a quota the load cannot exhaust, and every request is decided
# in Redis: at saturation the gateway's own queueing makes the default 5 ms budget
# expire on a third or more of the decisions, which then go to the (cheaper)
# in-process limiter; a 50 ms budget keeps the comparison honest. `make bench` prints
# how many decisions fell back.
export RATE_LIMIT_REDIS_BUDGET_MS=${RATE_LIMIT_REDIS_BUDGET_MS:-50}
export RATE_LIMIT_API=1000000000/60 RATE_LIMIT_LOGIN=1000000000/60 RATE_LIMIT_LOGIN_ACCOUNT=1000000000/60 RATE_LIMIT_REGISTER=1000/60
export MAIL_DIR="$work/mail"
"$bin/aia" migrate >/dev/null

source scripts/lib.sh
for service in audit session auth gateway; do
  "$bin/aia-$service" >"$work/$service.log" 2>&1 &
  pids+=($!)
done
gateway_pid=$!
wait_port 18080
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.2; done

email="bench-$$@example.com"
password="correct horse battery staple"
curl -sf -X POST http://127.0.0.1:18080/v1/auth/register -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"$password\"}" >/dev/null
token=$(curl -sf -X POST http://127.0.0.1:18080/v1/auth/login -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"$password\"}" | jq -r .access_token)
status=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/api/bench -H "authorization: Bearer $token")
[ "$status" = 200 ] || { echo "the gateway does not proxy (status $status)"; exit 1; }
curl -s -D - -o /dev/null http://127.0.0.1:18080/api/bench -H "authorization: Bearer $token" \
  | grep -qi '^ratelimit:' || { echo "no rate-limit decision on the proxied route"; exit 1; }

# The processes whose CPU time `run` reads, by role.
role_pids() {
  case $1 in
    gateway) echo "$gateway_pid" ;;
    redis) pgrep -x redis-server || true ;;
    upstream | proxy) pgrep -P "$(cat "$work/$1/nginx.pid")" || true ;;
  esac
}
ticks() { # pids...: their CPU time (user + system, all threads) in clock ticks
  local sum=0 pid
  for pid in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0))); done
  echo "$sum"
}
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

run() { # name url [wrk args]; CONNECTIONS, DURATION and WARMUP (3s) from the environment
  # Also writes $work/NAME.cpu: the CPU time per request (µs) of each role and of the
  # whole machine during the measured run.
  local name=$1 url=$2; shift 2
  local threads=$THREADS
  [ "$CONNECTIONS" -lt "$threads" ] && threads=$CONNECTIONS
  wrk -t"$threads" -c"$CONNECTIONS" -d"${WARMUP:-3s}" "$@" "$url" >/dev/null
  local role before=() machine_before
  for role in gateway redis upstream proxy; do before+=("$(ticks $(role_pids $role))"); done
  machine_before=$(busy_ticks)
  wrk -t"$threads" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$work/$name.txt"
  local machine=$(($(busy_ticks) - machine_before)) requests i=0
  requests=$(awk '/requests in/ {print $1}' "$work/$name.txt")
  : >"$work/$name.cpu"
  for role in gateway redis upstream proxy machine; do
    local spent
    if [ "$role" = machine ]; then spent=$machine; else spent=$(($(ticks $(role_pids $role)) - before[i])); fi
    i=$((i + 1))
    awk -v r="$role" -v t="$spent" -v n="${requests:-0}" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%s %.1f\n", r, (n > 0 ? t * 1e6 / hz / n : 0) }' >>"$work/$name.cpu"
  done
  local rps p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/$name.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$name.txt")
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$work/$name.txt")
  echo "$rps $p99 ${errors:-0}"
}
cpu() { # name role: µs of CPU per request of that role in run NAME
  awk -v r="$2" '$1 == r {print $2}' "$work/$1.cpu"
}
cpu_table() { # nginx-run gateway-run: where the CPU time of one proxied request went
  echo "| CPU per proxied request (µs, user + system) | the proxy | Redis | upstream | whole machine, wrk included |"
  echo "|---|---:|---:|---:|---:|"
  echo "| nginx | $(cpu "$1" proxy) | $(cpu "$1" redis) | $(cpu "$1" upstream) | $(cpu "$1" machine) |"
  echo "| gateway | $(cpu "$2" gateway) | $(cpu "$2" redis) | $(cpu "$2" upstream) | $(cpu "$2" machine) |"
}
metric() { # admin port, series name, [label filter]: the sum of the matching series
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" -v f="${3:-}" \
    'index($0, n) == 1 && substr($0, length(n) + 1, 1) ~ /[{ ]/ && index($0, f) { s += $NF } END { printf "%.0f\n", s }'
}
to_ms() { # wrk latency (e.g. 812.00us, 2.31ms, 1.02s) in ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

