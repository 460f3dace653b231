#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the tools
# and services the tests need, builds, and runs unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${BK_TEST_THREADS:-2}"
# Every parser of stored or received data, fuzzed for FUZZ_SECONDS per target (20 by
# default) from the checked-in corpus: see docs/security.md.
bash scripts/fuzz.sh
