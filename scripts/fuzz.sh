#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time, starting from its checked-in
# seed corpus (fuzz/corpus/TARGET/seed-*). Inputs found along the way go to a scratch
# directory, not into the checkout.
#
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_TARGETS   targets to run (default: all, see `cargo fuzz list`)
#   FUZZ_JOBS      targets fuzzed at the same time (default 2)
#   FUZZ_SANITIZER none (default: bk is safe Rust, and CI's time is short) or address
#
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. A crash fails the script: its input is kept under
# fuzz/artifacts/TARGET/; fix the bug and add the input as a regression test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-20}"
jobs="${FUZZ_JOBS:-2}"
sanitizer="${FUZZ_SANITIZER:-none}"
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
build=(--dev --sanitizer "$sanitizer")

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: run scripts/test-deps.sh" >&2; exit 2; }
started=$(date +%s)
cargo fuzz build "${build[@]}"
echo "fuzz: built in $(( $(date +%s) - started ))s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fuzz_one() {
  local target=$1
  mkdir -p "$scratch/$target"
  if cargo fuzz run "${build[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$scratch/$target.log" 2>&1; then
    echo "fuzz: $target: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$target.log" | grep -o '[0-9]*$') executions in ${seconds}s, no crash"
  else
    echo "fuzz: $target FAILED; its log:" >&2
    tail -n 60 "$scratch/$target.log" >&2
    return 1
  fi
}
export -f fuzz_one
export scratch seconds sanitizer
export build_flags="${build[*]}"
status=0
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'build=($build_flags); fuzz_one "$@"' _ {} || status=1
exit $status
