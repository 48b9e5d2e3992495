#!/usr/bin/env bash
# Shell helpers shared by scripts/run.sh and scripts/bench-lib.sh (sourced, not run).

# wait_port PORT: wait up to 10 s for something to listen on 127.0.0.1:PORT, or exit
# with a message (plus $WAIT_PORT_HINT, where to look, when set).
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1${WAIT_PORT_HINT:+; $WAIT_PORT_HINT}" >&2
  exit 1
}
