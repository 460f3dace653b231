#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the tools
# and services the tests need, builds, and runs unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${BK_TEST_THREADS:-2}"
