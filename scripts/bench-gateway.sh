#!/usr/bin/env bash
# `make bench-gateway`: the gateway against nginx, side by side, on this machine.
#
# Both proxy the same upstream (a small nginx answering 200 with a short body, kept
# alive). nginx proxies with keep-alive and does nothing else. The gateway does all
# of its work on each request: trusted host, CORS, a rate-limit decision in Redis
# (GCRA, one round trip), validation, EdDSA verification of the bearer token, the
# revocation check, identity headers, security headers. Compression is off on both.
# Release builds; wrk (Debian) drives the load. Prints requests/s and p99 of each
# and their ratios, then the CPU time one request cost each process (the machine's two
# cores are the limit: wrk, the proxy, Redis and the upstream share them).
#
# Environment: DURATION (default 15s), CONNECTIONS (64), THREADS (2).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

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
echo
cpu_table nginx gateway
