#!/usr/bin/env bash
# The demo, end to end on embedded defaults: sets the machine up, builds sluice and the example
# transforms, then replays data/data.csv through a managed local Kafka broker and the transform
# chain into MY_TABLE on a local Snowflake emulator, and reconciles the run with `sluice verify`.
# With KAFKA_BROKERS / SNOWFLAKE_* in the environment the same pipeline.json runs against them.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
scripts/setup.sh
cargo build --locked -p sluice --bin sluice
sluice=target/debug/sluice
"$sluice" transform build
state=.sluice/demo
rm -rf "$state"
"$sluice" run pipeline.json --until-end --state-dir "$state" --summary "$state/summary.json" "$@"
"$sluice" verify pipeline.json --state-dir "$state" --summary "$state/summary.json"
