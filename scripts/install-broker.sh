#!/usr/bin/env bash
# Installs the nisshi Kafka-protocol broker once into a per-user cache outside the clone, so every
# clean clone on this machine (CI's included) reuses it. Prints the binary's path.
set -euo pipefail
NISSHI_VERSION=0.8.1
root="${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}/nisshi-${NISSHI_VERSION}"
bin="$root/bin/nisshi"
if [ ! -x "$bin" ]; then
  echo "installing nisshi ${NISSHI_VERSION} into $root (about 12 minutes on 2 cores, once per machine)" >&2
  mkdir -p "$root"
  # --ignore-rust-version: nisshi declares rustc 1.96; it builds and runs on 1.95.
  cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --no-default-features --features libsql --root "$root" >&2
fi
# sluice runs the broker only from directories no other user can write (a umask of 002 leaves
# them group-writable); fixed here rather than refused later.
chmod go-w "$root" "$root/bin" "$bin" 2>/dev/null || true
echo "$bin"
