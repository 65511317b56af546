#!/usr/bin/env bash
# One-time machine setup for sluice, idempotent and safe to re-run: system packages (only when
# missing), the wasm32-wasip2 Rust target, the project venv with the fakesnow Snowflake emulator,
# and the nisshi Kafka broker in a per-user cache (built once per machine, ~12 minutes).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: rustup target add wasm32-wasip2" >&2
  rustup target add wasm32-wasip2
fi

"$here/scripts/install-fakesnow.sh" >/dev/null
"$here/scripts/install-broker.sh" >/dev/null
echo "setup: ok (venv $here/.venv, broker $("$here/scripts/install-broker.sh"))" >&2
