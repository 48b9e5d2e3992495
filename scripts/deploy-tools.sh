#!/usr/bin/env bash
# The tools the deployment checks (crates/admin/tests/k8s.rs) run: kubectl (for its
# built-in kustomize) and kubernetes-validate (PyPI; the Kubernetes OpenAPI schemas,
# offline) in a virtualenv under target/. Idempotent; reinstalls when
# deploy/requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null; then
  echo "installing kubectl from Debian's packages"
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq kubectl >/dev/null || {
    echo "kubectl is needed to render deploy/k8s (kubectl kustomize); install it" >&2
    exit 1
  }
fi

venv=target/deploy-tools/venv
stamp=$venv/requirements.txt
if ! cmp -s deploy/requirements.txt "$stamp" 2>/dev/null; then
  echo "installing the deployment checkers into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r deploy/requirements.txt
  cp deploy/requirements.txt "$stamp"
fi
