#!/bin/sh
# Runs one fuzz target for SECONDS (default 600) from its committed seeds; new inputs go
# to fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET (neither is committed).
# Usage: fuzz/run.sh TARGET [SECONDS]. Run one at a time: libFuzzer takes a whole core.
set -eu
cd "$(dirname "$0")/.."
target=$1
secs=${2:-600}
mkdir -p "fuzz/corpus/$target"
exec cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$secs" -print_final_stats=1
