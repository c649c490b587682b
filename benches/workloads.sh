#!/usr/bin/env bash
# Issue 13's new workloads against a fresh release hub each, on 127.0.0.1:
#   W5  1 room x 1 device x 10,000 dashboards joining at once: time until all are
#       welcomed, the hub's CPU seconds for it, its peak memory (VmHWM).
#   W6  CHURN_RATE connections/s (500) opened and closed for CHURN_FOR (10m) beside W2
#       traffic: RSS and open fds before/after, W2's p99 quiet and during the churn.
#   FDS 19,930 idle connections asked for (all the simulator's open files allow): how
#       many the hub holds under its cap, and what those past it get (503 server_full).
# Usage: benches/workloads.sh [W5] [W6] [FDS]   (default: all three)
# Env: CHURN_RATE CHURN_FOR W5_DASHBOARDS; extra hub flags in HUB_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/hub.sh
[ -x target/release/telehub ] && [ -x target/release/telehub-sim ] ||
  cargo build --release -q -p telehub -p telehub-sim
hub=$PWD/target/release/telehub
sim=$PWD/target/release/telehub-sim
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cpu_secs() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

start_hub() {
  [ -n "$pid" ] && kill "$pid" && wait "$pid" 2>/dev/null || true
  rm -rf "$work/data" && mkdir -p "$work/data" && : >"$work/log"
  (cd "$work" && exec env "$@" "$hub" serve --listen 127.0.0.1:0 ${HUB_ARGS:-}) >"$work/log" 2>&1 &
  pid=$!
  wait_addr "$work/log"
  sleep 0.5
  echo "== hub $pid on $addr $*"
}

w5() {
  local n=${W5_DASHBOARDS:-10000}
  start_hub TELEHUB_LIMITS_MAX_MEMBERS_PER_ROOM=$((n + 16))
  # The one device, sending at 1 Hz while the dashboards join.
  "$sim" bench --url "ws://$addr" --rooms 1 --devices 1 --dashboards 1 --rate 1 \
    --duration 60s --warmup 0s >/dev/null 2>&1 &
  local dev=$!
  sleep 1
  local cpu0; cpu0=$(cpu_secs "$pid")
  "$sim" bench --url "ws://$addr" --idle "$n" --idle-per-room "$n" --idle-hold 1s --pid "$pid" --json >"$work/w5.json"
  local cpu1; cpu1=$(cpu_secs "$pid")
  kill "$dev" 2>/dev/null; wait "$dev" 2>/dev/null || true
  python3 - "$work/w5.json" "$cpu0" "$cpu1" "$(hwm_kib "$pid")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = float(sys.argv[3]) - float(sys.argv[2])
print(f"W5: {r['opened']} of {r['requested']} dashboards welcomed in {r['connect_secs']:.2f} s, "
      f"{r['failed']} failed; hub CPU {cpu:.2f} s over the join, hold and close; "
      f"peak RSS (VmHWM) {int(sys.argv[4]) / 1024:.1f} MiB; "
      f"{r['bytes_per_connection']:.0f} bytes per connection open")
PY
}

w6() {
  local rate=${CHURN_RATE:-500} dur=${CHURN_FOR:-10m}
  start_hub
  echo "-- W2 quiet (20 s)"
  "$sim" bench --url "ws://$addr" --rooms 1 --devices 20 --dashboards 200 --rate 10 \
    --duration 20s --pid "$pid" --json >"$work/quiet.json"
  echo "-- W2 during $rate connections/s for $dur"
  "$sim" bench --url "ws://$addr" --churn "$rate" --churn-for "$dur" --pid "$pid" --json >"$work/churn.json" &
  local churn=$!
  sleep 2
  local secs; secs=$(python3 -c "
import re,sys; s='$dur'; m=re.fullmatch(r'([0-9.]+)(ms|s|m|h)?', s); n=float(m.group(1)); u=m.group(2) or 's'
print(max(5, int(n*{'ms':0.001,'s':1,'m':60,'h':3600}[u]) - 6))")
  "$sim" bench --url "ws://$addr" --rooms 1 --devices 20 --dashboards 200 --rate 10 \
    --duration "${secs}s" --pid "$pid" --json >"$work/busy.json"
  wait "$churn"
  python3 - "$work/quiet.json" "$work/busy.json" "$work/churn.json" <<'PY'
import json, sys
q, b, c = (json.load(open(p)) for p in sys.argv[1:])
p99 = lambda r: r["latency"]["p99_us"] / 1000
print(f"W6: churn {c['completed']} of {c['started']} welcomed and closed, {c['failed']} failed, "
      f"{c['skipped']} skipped; hub RSS {c['rss_before_kib']} -> {c['rss_after_kib']} KiB "
      f"({100 * (c['rss_after_kib'] - c['rss_before_kib']) / c['rss_before_kib']:+.1f} %), "
      f"open fds {c['fds_before']} -> {c['fds_after']}")
print(f"W6: W2 p99 quiet {p99(q):.2f} ms, during churn {p99(b):.2f} ms ({p99(b) / p99(q):.2f}x); "
      f"lost {q['lost']} / {b['lost']}")
PY
}

fds() {
  start_hub
  sed "s/\x1b\[[0-9;]*m//g" "$work/log" | grep -o "max_connections=[0-9]*" | head -1 | sed "s/^/FDS: cap /" || true
  # The simulator has the same 20,000 open files as the hub, less 64 of its own.
  "$sim" bench --url "ws://$addr" --idle 19930 --idle-per-room 200 --idle-hold 2s --pid "$pid" --json >"$work/fds.json" || true
  python3 - "$work/fds.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"FDS: {r['opened']} of {r['requested']} held ({r['failed']} refused; first: {r['first_error']}); "
      f"{r['bytes_per_connection']:.0f} bytes per connection")
PY
}

for w in "${@:-W5 W6 FDS}"; do
  for x in $w; do
    case $x in W5) w5 ;; W6) w6 ;; FDS) fds ;; *) echo "unknown workload $x"; exit 2 ;; esac
  done
done
