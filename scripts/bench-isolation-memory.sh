#!/usr/bin/env bash
# Peak memory of a batch whose rows run one at a time and emit much text in all: the `explode`
# guest (memory_mb 64) turns each row into 150 copies of a 120 KiB text, 17.6 MiB a row. The
# batch call runs out of guest memory, so the rows run one at a time. 125 rows (2.1 GiB) meet
# the bound on what such a batch may emit (64 x memory_mb, 4096 MiB, text counted twice); 100
# rows (1.7 GiB) come out whole. Prints the peak resident memory of `sluice transform test`
# against the bound, and against the same run on rows of 120 B (the host's own cost).
#   scripts/bench-isolation-memory.sh [SLUICE_BINARY]   (default target/release/sluice, built here)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
bin="${1:-}"
if [ -z "$bin" ]; then
  scripts/setup.sh >&2
  cargo build --locked --release -p sluice --bin sluice >&2
  bin=target/release/sluice
fi
bin="$(realpath "$bin")"
explode="${EXPLODE_WASM:-$here/transforms/target/wasm32-wasip2/release/transform_explode.wasm}"
[ -f "$explode" ] || "$bin" transform build explode >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'EOF'
import sys
tag = ",".join(["a"] * 150)
for name, width, rows in (("narrow", 120, 125), ("wide", 120 << 10, 125), ("whole", 120 << 10, 100)):
    with open(f"{sys.argv[1]}/{name}.csv", "w") as f:
        f.write("id,blob,tag\n")
        for i in range(rows):
            f.write(f"{i},{'x' * width},\"{tag}\"\n")
EOF
# Peak resident memory (KiB) of one run, from the kernel's accounting of the waited-for child.
peak() {
  python3 - "$bin" "$explode" "$work/$1.csv" <<'EOF'
import resource, subprocess, sys
bin, wasm, csv = sys.argv[1:]
subprocess.run([bin, "transform", "test", "--component", wasm, "--with", "field=tag",
                "--input", csv, "--batch-size", "125", "--memory-mb", "64"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
EOF
}
narrow=$(peak narrow)
wide=$(peak wide)
whole=$(peak whole)
bound=$((4096 * 1024))
printf '%-34s %12s %14s %16s\n' "run (memory_mb 64)" "peak MiB" "peak / bound" "peak / narrow"
printf '%-34s %12.1f %14.3f %16.2f\n' "narrow (120 B, 1.8 MiB out)" "$(echo "$narrow/1024" | bc -l)" \
  "$(echo "$narrow/$bound" | bc -l)" 1
printf '%-34s %12.1f %14.3f %16.2f\n' "wide (120 KiB, 2.1 GiB out)" "$(echo "$wide/1024" | bc -l)" \
  "$(echo "$wide/$bound" | bc -l)" "$(echo "$wide/$narrow" | bc -l)"
printf '%-34s %12.1f %14.3f %16.2f\n' "100 wide rows (1.7 GiB, whole)" "$(echo "$whole/1024" | bc -l)" \
  "$(echo "$whole/$bound" | bc -l)" "$(echo "$whole/$narrow" | bc -l)"
