#!/usr/bin/env bash
# Memory of a paced replay against the width of its rows: replays a file of narrow rows (100 B)
# and one of wide rows (200 kB) at 20 rows/s through the managed broker (`--replay-only`, so no
# warehouse), samples the sluice process's resident memory after SECONDS (25) and its peak, and
# prints a table with the wide run's figures as ratios of the narrow run's. A paced producer is
# slower than the reader, so what the reader runs ahead by, and what type inference samples, is
# what a wide file costs.
#   scripts/bench-replay-memory.sh [SLUICE_BINARY]   (default target/release/sluice, built here)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
seconds="${SECONDS_PER_RUN:-25}"
bin="${1:-}"
if [ -z "$bin" ]; then
  scripts/setup.sh >&2
  cargo build --locked --release -p sluice --bin sluice >&2
  bin=target/release/sluice
fi
bin="$(realpath "$bin")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'EOF'
import sys
for name, width in (("narrow", 100), ("wide", 200_000)):
    with open(f"{sys.argv[1]}/{name}.csv", "w") as f:
        f.write("id,doc\n")
        for i in range(1200):
            f.write(f"{i},{'x' * width}\n")
EOF
measure() {
  local name=$1
  cat > "$work/$name.json" <<EOF
{ "version": 1, "name": "bench-$name",
  "source": { "type": "csv", "path": "$name.csv", "pacing": { "mode": "rate", "rows_per_sec": 20 } },
  "kafka": { "brokers": "", "topic": "$name", "partitions": 1 },
  "sink": { "type": "snowflake", "database": "B", "schema": "RAW", "table": "T" } }
EOF
  (cd "$work" && exec "$bin" run "$name.json" --replay-only --no-progress \
    --state-dir "state-$name" > /dev/null 2> "$name.log") &
  local pid=$!
  sleep "$seconds"
  # The subshell exec'd sluice: $pid is sluice's.
  if [ ! -e "/proc/$pid/status" ]; then
    echo "the $name replay ended before it was measured:" >&2
    cat "$work/$name.log" >&2
    exit 1
  fi
  local rss hwm
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  kill -INT "$pid"
  wait "$pid" || true
  echo "$name $rss $hwm"
}
narrow=$(measure narrow)
wide=$(measure wide)
read -r _ n_rss n_hwm <<< "$narrow"
read -r _ w_rss w_hwm <<< "$wide"
printf '%-28s %14s %14s\n' "rows (20 rows/s, ${seconds} s)" "resident MiB" "peak MiB"
printf '%-28s %14.1f %14.1f\n' "narrow (100 B)" "$(echo "$n_rss/1024" | bc -l)" "$(echo "$n_hwm/1024" | bc -l)"
printf '%-28s %14.1f %14.1f\n' "wide (200 kB)" "$(echo "$w_rss/1024" | bc -l)" "$(echo "$w_hwm/1024" | bc -l)"
printf '%-28s %14.2f %14.2f\n' "wide / narrow" "$(echo "$w_rss/$n_rss" | bc -l)" "$(echo "$w_hwm/$n_hwm" | bc -l)"
