#!/usr/bin/env bash
# `make bench`: the platform's figures beside a reference measured in the same run on
# this machine, printed as a table and written to docs/BENCHMARKS.md:
#   - the gateway (authenticated, rate-limited, proxied) vs nginx proxying the same
#     upstream (`make bench-gateway` alone runs just this);
#   - logins per second vs the raw argon2id hash rate of the same parameters on the
#     same cores (`aia bench-hash`), and the p99 of /healthz and of a proxied request
#     while logins flood the gateway;
#   - resident memory of each service idle, and of the gateway after its load.
#   - revocation propagation: a logout at the first gateway until a second gateway
#     refuses the token, p50/p99/max over 50 logouts (polled with curl: an upper bound).
# Not yet measured here (issue #8): ValidateToken vs a bare tonic rpc, scaling curves.
#
# Environment: DURATION (default 15s), CONNECTIONS (64), THREADS (2).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
pid_of() { pgrep -f "$bin/aia-$1" | head -1; }
sleep 2
declare -A idle
for s in audit session auth gateway; do idle[$s]=$(rss_mib "$(pid_of "$s")"); done

echo "gateway vs nginx: wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
read -r nginx_rps nginx_p99 _ < <(run nginx http://127.0.0.1:18082/api/bench)
read -r gw_rps gw_p99 gw_errors < <(run gateway http://127.0.0.1:18080/api/bench -H "Authorization: Bearer $token")
gw_loaded=$(rss_mib "$(pid_of gateway)")

echo "raw argon2id: aia bench-hash"
hash_line=$("$bin/aia" bench-hash --seconds 5)
hash_rate=$(echo "$hash_line" | sed -E 's/.*: ([0-9.]+) hashes.*/\1/')

echo "login flood: wrk -t2 -c16 -d15s POST /v1/auth/login, with /healthz and a proxied request measured meanwhile"
cat > "$work/login.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"email":"$email","password":"$password"}'
LUA
wrk -t2 -c16 -d15s --latency -s "$work/login.lua" http://127.0.0.1:18080/v1/auth/login >"$work/login.txt" &
flood=$!
sleep 3
wrk -t1 -c2 -d10s --latency http://127.0.0.1:18080/healthz >"$work/healthz.txt" &
h=$!
wrk -t1 -c2 -d10s --latency -H "Authorization: Bearer $token" http://127.0.0.1:18080/api/bench >"$work/proxied.txt" &
p=$!
wait "$h" "$p" "$flood"
field() { awk -v k="$2" '$1 == k {print $2}' "$work/$1.txt"; }
login_rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/login.txt")
login_errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$work/login.txt")
healthz_p99=$(to_ms "$(field healthz 99%)")
proxied_p99=$(to_ms "$(field proxied 99%)")
nginx_ms=$(to_ms "$nginx_p99"); gw_ms=$(to_ms "$gw_p99")

echo "revocation propagation: logout at one gateway, polled at a second one every 2 ms, 50 times"
GATEWAY_HTTP_ADDR=127.0.0.1:18083 GATEWAY_ADMIN_ADDR=127.0.0.1:19104 "$bin/aia-gateway" >"$work/gateway2.log" 2>&1 &
pids+=($!)
wait_port 18083
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18083/readyz >/dev/null && break; sleep 0.2; done
: >"$work/propagation.txt"
for _ in $(seq 1 50); do
  t=$(curl -sf -X POST http://127.0.0.1:18080/v1/auth/login -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"$password\"}" | jq -r .access_token)
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18083/v1/auth/me -H "authorization: Bearer $t")" = 200 ] || continue
  start=$(date +%s%N)
  curl -s -o /dev/null -X POST http://127.0.0.1:18080/v1/auth/logout -H "authorization: Bearer $t"
  while [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18083/v1/auth/me -H "authorization: Bearer $t")" != 401 ]; do
    sleep 0.002
    [ $(( ($(date +%s%N) - start) / 1000000 )) -gt 5000 ] && break
  done
  echo $(( ($(date +%s%N) - start) / 1000 )) >>"$work/propagation.txt"
done
read -r prop_n prop_p50 prop_p99 prop_max < <(sort -n "$work/propagation.txt" | awk '{v[NR] = $1} END {
  i50 = int(NR * 0.5); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99 + 0.999); if (i99 > NR) i99 = NR
  printf "%d %.1f %.1f %.1f\n", NR, v[i50] / 1000, v[i99] / 1000, v[NR] / 1000 }')

table=$(awk -v nr="$nginx_rps" -v np="$nginx_ms" -v gr="$gw_rps" -v gp="$gw_ms" \
  -v lr="$login_rps" -v hr="$hash_rate" -v hz="$healthz_p99" -v px="$proxied_p99" \
  -v ia="${idle[audit]}" -v is="${idle[session]}" -v iu="${idle[auth]}" -v ig="${idle[gateway]}" -v gl="$gw_loaded" \
  -v pn="$prop_n" -v p50="$prop_p50" -v p99="$prop_p99" -v pm="$prop_max" 'BEGIN {
  print "| measure | platform | reference (same run) | ratio | target |"
  print "|---|---|---|---|---|"
  printf "| proxied requests/s (authenticated, rate-limited) | %.0f | nginx %.0f | %.2f | >= 1.00 |\n", gr, nr, gr / nr
  printf "| proxied p99 | %.2f ms | nginx %.2f ms | %.2f | <= 1.00 |\n", gp, np, gp / np
  printf "| logins/s | %.1f | raw argon2id %.1f hashes/s | %.2f | >= 0.90 |\n", lr, hr, lr / hr
  printf "| /healthz p99 during the login flood | %.2f ms | | | < 10 ms |\n", hz
  printf "| proxied p99 during the login flood | %.2f ms | | | < 10 ms |\n", px
  printf "| RSS idle: audit, session, auth, gateway | %s, %s, %s, %s MiB | | | < 30 MiB each |\n", ia, is, iu, ig
  printf "| RSS of the gateway after its load | %s MiB | | | |\n", gl
  printf "| revocation: logout to refusal at a second gateway (%d logouts) | p50 %s ms, p99 %s ms, max %s ms | | | p99 < 1000 ms |\n", pn, p50, p99, pm
}')
echo
echo "$table"
echo "non-2xx: proxied ${gw_errors:-0}, logins ${login_errors:-0}"

mkdir -p docs
{
  echo "# Benchmarks"
  echo
  echo "Written by \`make bench\` ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)),"
  echo "on $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)."
  echo "Every reference ran on the same machine in the same run; compare ratios, not"
  echo "absolute figures (shared machines are noisy)."
  echo
  echo "Load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION after 3 s of warm-up for the proxy; wrk -t2 -c16 -d15s for the login flood;"
  echo "$hash_line."
  echo
  echo "$table"
  echo
  echo "Non-2xx answers: proxied ${gw_errors:-0}, logins ${login_errors:-0}."
  echo
  echo "Not yet measured (issue #8): ValidateToken against a bare tonic rpc, scaling"
  echo "curves over connections and rate-limit keys."
} > docs/BENCHMARKS.md
echo "written to docs/BENCHMARKS.md"
