#!/usr/bin/env bash
# Syscalls the hub makes per delivery, counted by `strace -c -f` over a fixed run.
# strace slows every syscall, so the load is lighter than the workloads' (the figure is
# per delivery, and batching is what it shows: writev per delivery, epoll_wait wake-ups,
# futex wakes across threads).
# Usage: benches/syscalls.sh [extra `telehub serve` flags, e.g. --threads 1]
# Env: ROOMS DEVICES DASHBOARDS RATE DURATION (seconds; default: the W2 shape at 5 Hz
#   for 10 s).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/hub.sh
[ -x target/release/telehub ] && [ -x target/release/telehub-sim ] ||
  cargo build --release -q -p telehub -p telehub-sim
command -v strace >/dev/null || { echo "strace is needed (apt-get install strace)"; exit 1; }
hub=$PWD/target/release/telehub
sim=$PWD/target/release/telehub-sim
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
(cd "$work" && exec "$hub" serve --listen 127.0.0.1:0 "$@") >"$work/log" 2>&1 &
pid=$!
wait_addr "$work/log"
# Connections first, then strace attaches for the measured window only.
"$sim" bench --url "ws://$addr" --rooms "${ROOMS:-1}" --devices "${DEVICES:-20}" \
  --dashboards "${DASHBOARDS:-200}" --rate "${RATE:-5}" --duration "${DURATION:-10}s" \
  --warmup 3s --json >"$work/bench.json" &
bench=$!
# strace attaches for the measured window only (the bench's window starts after its
# connections are up and the 3 s warm-up).
sleep 3
strace -c -f -p "$pid" -o "$work/strace" &
tracer=$!
sleep "${DURATION:-10}"
kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
wait "$bench"
[ -n "${SHOW:-}" ] && cat "$work/strace"
python3 - "$work/bench.json" "$work/strace" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["deliveries"]
rows = {}
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
        calls = int(f[3]); rows[f[-1]] = calls
total = sum(rows.values())
top = sorted(rows.items(), key=lambda kv: -kv[1])[:6]
print(json.dumps({"deliveries": d, "syscalls": total,
                  "syscalls_per_delivery": round(total / d, 3) if d else None,
                  "per_delivery": {k: round(v / d, 3) for k, v in top}}))
PY
