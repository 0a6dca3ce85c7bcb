#!/usr/bin/env bash
# The one test command: sets up what the tests need, then runs the whole suite.
#   ./run-tests.sh [pytest arguments]
# - Debian's `prometheus` (the integration tests start a real server on 127.0.0.1): installed with
#   apt-get when missing and this user is root or has password-less sudo; otherwise it says what to install.
# - Go and openssl for the real-cluster tests (tests/cluster): their binaries are built once per set of
#   versions by e2e/build.sh (the tests call it), cached outside the checkout.
# - .venv with the project and its test extras (reinstalled when pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v prometheus >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else
    echo "run-tests.sh: the 'prometheus' binary is missing and this user cannot install packages." >&2
    echo "  install it first:  sudo apt-get install prometheus   (Debian/Ubuntu; or put a prometheus binary on PATH)" >&2
    exit 1
  fi
  echo "run-tests.sh: installing Debian's prometheus package" >&2
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a system-wide service on :9090 where systemd runs; the tests start their own.
fi

# The cluster tests (tests/cluster) build a Kubernetes control plane from the Go module proxy once
# (e2e/build.sh, cached in ~/.cache/melange/e2e by version) and make certificates with openssl.
if ! command -v go >/dev/null 2>&1; then
  echo "run-tests.sh: Go >= 1.26 is needed to build the cluster tests' Kubernetes binaries (https://go.dev/dl)" >&2
  exit 1
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "run-tests.sh: the openssl command is missing (apt-get install openssl)" >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv || { echo "run-tests.sh: python3 -m venv failed; install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
fi
stamp=.venv/.melange-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  # Not `python -m pip`: with the checkout root as the first import path, the project's `operator/`
  # folder would shadow the standard library's `operator` module.
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

exec .venv/bin/pytest "$@"
