#!/usr/bin/env bash
# User-space instructions the hub spends per delivery, counted by valgrind's callgrind.
# Unlike CPU seconds, the count repeats for the same binary and workload whatever else the
# machine is doing, so it compares two builds fairly on a noisy machine.
#
# Usage: benches/instructions.sh [HUB_BINARY] [SIM_BINARY]
#   defaults: target/release/telehub and target/release/telehub-sim (built if missing)
# Env: ROOMS DEVICES DASHBOARDS RATE DURATION (defaults: the W1 shape at 1 Hz for 10 s,
#   slow enough for a hub under callgrind to keep up; the figure is per delivery).
#   RULES=N: N alert rules that match every series and never fire (the worst case of
#   evaluation: N comparisons per reading), written to a config file for the hub.
# Prints one JSON line: instructions, deliveries, instructions per delivery.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/hub.sh
hub=${1:-target/release/telehub}
sim=${2:-target/release/telehub-sim}
if [ ! -x "$hub" ] || [ ! -x "$sim" ]; then
  cargo build --release -q -p telehub -p telehub-sim
fi
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)"; exit 1; }
rooms=${ROOMS:-10} devices=${DEVICES:-10} dashboards=${DASHBOARDS:-10}
rate=${RATE:-1} duration=${DURATION:-10s}
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

hub_abs=$(cd "$(dirname "$hub")" && pwd)/$(basename "$hub")
: >"$work/hub.toml"
for i in $(seq 1 "${RULES:-0}"); do
  printf '[[alerts.rules]]\nid = "r%d"\nroom = "*"\nmetric = "*"\nabove = 1e12\n' "$i" >>"$work/hub.toml"
done
(cd "$work" && exec valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$hub_abs" serve --config "$work/hub.toml" --listen 127.0.0.1:0) >"$work/log" 2>&1 &
pid=$!
wait_addr "$work/log" 300

# Count the load only: the counters are zeroed after start-up and dumped at the end of the
# bench's window (no warm-up, so every delivery counted is one the bench saw), before the
# shutdown.
callgrind_control --zero "$pid" >/dev/null 2>&1
"$sim" bench --url "ws://$addr" --rooms "$rooms" --devices "$devices" --dashboards "$dashboards" \
  --rate "$rate" --duration "$duration" --warmup 0s --json >"$work/bench.json"
callgrind_control --dump=load "$pid" >/dev/null 2>&1
kill -TERM "$pid"
wait "$pid" 2>/dev/null || true
pid=""
ir=$(grep -h '^totals:' "$work"/cg.out.1 | awk '{print $2}')
python3 - "$work/bench.json" "$ir" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
ir = int(sys.argv[2])
deliveries = report["deliveries"]
print(json.dumps({"instructions": ir, "deliveries": deliveries,
                  "instructions_per_delivery": round(ir / deliveries) if deliveries else None,
                  "lost": report["lost"]}))
EOF
