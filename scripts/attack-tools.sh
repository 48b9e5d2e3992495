#!/usr/bin/env bash
# The outside tools the hostile-input tests run against a live stack
# (services/gateway/tests/api/hostile.rs): PyJWT and cryptography for the JWT attack
# script, schemathesis for API schema fuzzing, in a virtualenv under target/.
# Idempotent; reinstalls when tests/attack/requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/attack-tools/venv
stamp=$venv/requirements.txt
if ! cmp -s tests/attack/requirements.txt "$stamp" 2>/dev/null; then
  echo "installing the attack tools into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/attack/requirements.txt
  cp tests/attack/requirements.txt "$stamp"
fi
