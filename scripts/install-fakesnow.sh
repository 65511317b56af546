#!/usr/bin/env bash
# Creates the project-local venv (.venv/) with the fakesnow Snowflake emulator and the official
# Python connector (used by tests as an independent client). Idempotent. Prints the venv path.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SLUICE_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/fakesnow" ] || ! "$venv/bin/python" -c 'import fakesnow, snowflake.connector, confluent_kafka' 2>/dev/null; then
  echo "creating $venv with fakesnow and snowflake-connector-python<5" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'fakesnow[server]==0.12.1' 'snowflake-connector-python<5' 'confluent-kafka' >&2
fi
echo "$venv"
