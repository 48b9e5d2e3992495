#!/usr/bin/env bash
# `make bench-gateway`: the gateway against nginx, side by side, on this machine.
#
# Both proxy the same upstream (a small nginx answering 200 with a short body, kept
# alive). nginx proxies with keep-alive and does nothing else. The gateway does all
# of its work on each request: trusted host, CORS, a rate-limit decision in Redis
# (GCRA, one round trip), validation, EdDSA verification of the bearer token, the
# revocation check, identity headers, security headers. Compression is off on both.
# Release builds; wrk (Debian) drives the load. Prints requests/s and p99 of each
# and their ratios.
#
# Environment: DURATION (default 15s), CONNECTIONS (64), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
work=$(mktemp -d /tmp/aia-bench.XXXXXX)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
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

# nginx: the upstream (18081) and the reference proxy (18082).
cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  gzip off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:18081; keepalive 128; }
  server {
    listen 127.0.0.1:18081;
    location / { default_type application/json; return 200 '{"ok":true}'; }
  }
  server {
    listen 127.0.0.1:18082;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"

export APP_ENV=development LOG_FORMAT=text RUST_LOG=warn
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/aia_bench
export REDIS_KEY_PREFIX="bench:$$:"
export AUDIT_GRPC_ADDR=127.0.0.1:15053 AUDIT_ADMIN_ADDR=127.0.0.1:19103
export SESSION_GRPC_ADDR=127.0.0.1:15052 SESSION_ADMIN_ADDR=127.0.0.1:19102
export AUTH_GRPC_ADDR=127.0.0.1:15051 AUTH_ADMIN_ADDR=127.0.0.1:19101
export GATEWAY_HTTP_ADDR=127.0.0.1:18080 GATEWAY_ADMIN_ADDR=127.0.0.1:19100
export AUDIT_GRPC_URL=http://127.0.0.1:15053 SESSION_GRPC_URL=http://127.0.0.1:15052 AUTH_GRPC_URL=http://127.0.0.1:15051
export UPSTREAMS=/api/=http://127.0.0.1:18081
# Limits stay on (every request is decided in Redis), with a quota the load cannot
# exhaust.
export RATE_LIMIT_API=1000000000/60 RATE_LIMIT_LOGIN=1000/60 RATE_LIMIT_REGISTER=1000/60
export MAIL_DIR="$work/mail"
"$bin/aia" migrate >/dev/null

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}
for service in audit session auth gateway; do
  "$bin/aia-$service" >"$work/$service.log" 2>&1 &
  pids+=($!)
done
wait_port 18080
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.2; done

email="bench-$$@example.com"
curl -sf -X POST http://127.0.0.1:18080/v1/auth/register -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"correct horse battery staple\"}" >/dev/null
token=$(curl -sf -X POST http://127.0.0.1:18080/v1/auth/login -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"correct horse battery staple\"}" | jq -r .access_token)
status=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/api/bench -H "authorization: Bearer $token")
[ "$status" = 200 ] || { echo "the gateway does not proxy (status $status)"; exit 1; }
curl -s -D - -o /dev/null http://127.0.0.1:18080/api/bench -H "authorization: Bearer $token" \
  >/dev/null

run() { # name url [header]
  local name=$1 url=$2; shift 2
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s "$@" "$url" >/dev/null # warm-up
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$work/$name.txt"
  local rps p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/$name.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$name.txt")
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$work/$name.txt")
  echo "$rps $p99 ${errors:-0}"
}
to_ms() { # wrk latency (e.g. 812.00us, 2.31ms, 1.02s) in ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

echo "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION (after 3 s of warm-up each), $(nproc) cores"
read -r nginx_rps nginx_p99 nginx_errors < <(run nginx http://127.0.0.1:18082/api/bench)
read -r gw_rps gw_p99 gw_errors < <(run gateway http://127.0.0.1:18080/api/bench -H "Authorization: Bearer $token")
nginx_ms=$(to_ms "$nginx_p99"); gw_ms=$(to_ms "$gw_p99")
printf '%-44s %12s %10s %8s\n' "" "requests/s" "p99 ms" "non-2xx"
printf '%-44s %12s %10s %8s\n' "nginx, plain keep-alive proxy" "$nginx_rps" "$nginx_ms" "$nginx_errors"
printf '%-44s %12s %10s %8s\n' "gateway, authenticated + rate-limited proxy" "$gw_rps" "$gw_ms" "$gw_errors"
awk -v g="$gw_rps" -v n="$nginx_rps" -v gp="$gw_ms" -v np="$nginx_ms" 'BEGIN {
  printf "throughput ratio gateway/nginx: %.2f (target >= 1.00)\n", g / n
  printf "p99 ratio gateway/nginx:        %.2f (target <= 1.00)\n", gp / np
}'
