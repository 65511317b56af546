#!/usr/bin/env bash
# The whole test suite, as the README gives it and as CI (.ci/run) runs it: machine setup, format
# and lint checks, unit and integration tests against a real nisshi broker and the fakesnow
# emulator (the tests start both themselves), then the demo pipeline with --until-end and verify.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all --check
(cd transforms && cargo fmt --all --check)
(cd tests/guests && cargo fmt --all --check)
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace 2>&1 | tee target/test-output.txt
echo "== guest SDK tests (native build of transforms/sluice-guest)"
host_triple="$(rustc -vV | sed -n 's/^host: //p')"
(cd transforms && cargo test --locked -p sluice-guest --target "$host_triple") 2>&1 |
    tee -a target/test-output.txt
echo "== demo: sluice run pipeline.json --until-end, then sluice verify"
scripts/demo.sh
echo "== summary"
grep -E '^test result:' target/test-output.txt | awk '{p+=$4; f+=$6; i+=$8} END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, i}'
