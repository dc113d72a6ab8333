#!/usr/bin/env bash
# make bench: builds the benchmark driver and runs the sections given (default: all).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p edgeguard-tests --bin edgeguard-bench
EDGEGUARD_BIN=${EDGEGUARD_BIN:-$PWD/target/release/edgeguard} exec target/release/edgeguard-bench "$@"
