#!/usr/bin/env bash
# The core benchmarks of BENCHMARKS.md, end to end: builds release binaries, starts a hub
# on a free port, and runs telehub-sim bench against it for each workload; then a fresh
# hub for the idle-memory figure.
# Usage: benches/core.sh [extra `telehub serve` flags, e.g. --no-persist]
# Everything runs on 127.0.0.1; hubs are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/hub.sh
cargo build --release -q -p telehub -p telehub-sim
hub=target/release/telehub
sim=target/release/telehub-sim
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

start_hub() {
  cleanup_pid=$pid; [ -n "$cleanup_pid" ] && kill "$cleanup_pid" && wait "$cleanup_pid" 2>/dev/null || true
  rm -rf "$work/data" && mkdir -p "$work/data"
  : >"$work/log"
  (cd "$work" && exec "$OLDPWD/$hub" serve --listen 127.0.0.1:0 "$@") >"$work/log" 2>&1 &
  pid=$!
  wait_addr "$work/log"
  echo "== hub $pid on $addr $*"
}
run() { echo "== telehub-sim bench $*"; "$sim" bench --url "ws://$addr" --pid "$pid" "$@"; }

start_hub "$@"
run --rooms 10 --devices 10 --dashboards 10 --rate 10 --duration 20s
run --rooms 1 --devices 20 --dashboards 200 --rate 10 --duration 20s
for hz in 20 40 80 160; do
  run --rooms 1 --devices 20 --dashboards 200 --rate "$hz" --duration 10s
done
start_hub "$@"
run --idle 10000
