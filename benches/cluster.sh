#!/usr/bin/env bash
# Issue 11's cluster benchmark: 1 room x 20 devices x 200 dashboards at 10 Hz, measured
# by telehub-sim bench against
#   single   one hub, no [cluster] (today's path)
#   c1       one hub with [cluster] on a local redis-server
#   c2, c3   2 and 3 hubs on that Redis: devices on hub 1, dashboards round-robin over
#            every hub (--dashboard-url per hub)
# For each: deliveries/s, loss, p50/p99 (the bench), every hub's CPU and Redis's CPU
# over the measured window (sampled from /proc and INFO cpu around it), and Redis's
# EVALSHA and PUBLISH calls per reading sent (INFO commandstats).
# Usage: benches/cluster.sh [single] [c1] [c2] [c3]   (default: all)
# Env: DURATION (10s), WARMUP (3s), RATE (10), DEVICES (20), DASHBOARDS (200).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/telehub ] && [ -x target/release/telehub-sim ] ||
  cargo build --release -q -p telehub -p telehub-sim
hub=$PWD/target/release/telehub
sim=$PWD/target/release/telehub-sim
work=$(mktemp -d)
pids=()
redis_pid=""
cleanup() {
  for p in "${pids[@]}" $redis_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
DURATION=${DURATION:-10s}; WARMUP=${WARMUP:-3s}; RATE=${RATE:-10}
DEVICES=${DEVICES:-20}; DASHBOARDS=${DASHBOARDS:-200}
secs() { echo "${1%s}"; }
cpu_secs() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
rport=$(( 20000 + RANDOM % 20000 ))
redis_info() { redis-cli -p "$rport" INFO "$1" | tr -d '\r'; }
stat_calls() { redis_info commandstats | sed -n "s/^cmdstat_$1:calls=\([0-9]*\).*/\1/p" | head -1; }
redis_cpu() { redis_info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}'; }

start_redis() {
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --logfile "$work/redis.log" &
  redis_pid=$!
  for _ in $(seq 100); do grep -q "Ready to accept" "$work/redis.log" 2>/dev/null && return; sleep 0.05; done
  echo "redis did not start"; exit 1
}

addrs=()
start_hubs() { # N [env...]
  local n=$1; shift
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=(); addrs=()
  for i in $(seq "$n"); do
    : >"$work/hub$i.log"
    (cd "$work" && exec env "$@" TELEHUB_CLUSTER_NODE_ID="hub$i" "$hub" serve \
      --listen 127.0.0.1:0 --no-persist) >"$work/hub$i.log" 2>&1 &
    pids+=($!)
    local addr=""
    for _ in $(seq 100); do
      addr=$(grep -o 'listening on http://[0-9.:]*' "$work/hub$i.log" | head -1 | sed 's|listening on http://||' || true)
      [ -n "$addr" ] && break
      sleep 0.1
    done
    [ -n "$addr" ] || { echo "hub $i did not start:"; cat "$work/hub$i.log"; exit 1; }
    addrs+=("$addr")
  done
  sleep 0.5
}

run() { # name hubs [env...]
  local name=$1 n=$2; shift 2
  start_hubs "$n" "$@"
  local durls=()
  if [ "$n" -gt 1 ]; then for a in "${addrs[@]}"; do durls+=(--dashboard-url "ws://$a"); done; fi
  local ev0=0 pub0=0 rc0=0
  if [ -n "$redis_pid" ]; then ev0=$(stat_calls evalsha); pub0=$(stat_calls publish); ev0=${ev0:-0}; pub0=${pub0:-0}; fi
  "$sim" bench --url "ws://${addrs[0]}" "${durls[@]}" --rooms 1 --devices "$DEVICES" \
    --dashboards "$DASHBOARDS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
    --json >"$work/$name.json" &
  local bench=$!
  # Sample CPU around the window: the bench connects, warms up, measures.
  sleep 2; sleep "$(secs "$WARMUP")"
  local c0=() ; for p in "${pids[@]}"; do c0+=("$(cpu_secs "$p")"); done
  [ -n "$redis_pid" ] && rc0=$(redis_cpu)
  sleep "$(secs "$DURATION")"
  local c1=() ; for p in "${pids[@]}"; do c1+=("$(cpu_secs "$p")"); done
  local rc1=0; [ -n "$redis_pid" ] && rc1=$(redis_cpu)
  wait "$bench"
  local ev1=0 pub1=0
  if [ -n "$redis_pid" ]; then ev1=$(stat_calls evalsha); pub1=$(stat_calls publish); fi
  python3 - "$work/$name.json" "$name" "$(secs "$DURATION")" "${c0[*]}" "${c1[*]}" "$rc0" "$rc1" \
    "$ev0" "${ev1:-0}" "$pub0" "${pub1:-0}" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1])); name = sys.argv[2]; win = float(sys.argv[3])
c0 = [float(x) for x in sys.argv[4].split()]; c1 = [float(x) for x in sys.argv[5].split()]
rc0, rc1 = float(sys.argv[6] or 0), float(sys.argv[7] or 0)
ev = int(sys.argv[9]) - int(sys.argv[8]); pub = int(sys.argv[11]) - int(sys.argv[10])
d = rep["deliveries_per_sec"]
lat = rep["latency"]
sent = rep["readings_sent"]
hub_cpu = [b - a for a, b in zip(c0, c1)]
deliv = d * win
per = sum(hub_cpu) / deliv * 1e6 if deliv else 0
print(f"{name}: {json.dumps({k: rep[k] for k in rep if not isinstance(rep[k], (list, dict))})}")
print(f"{name}: latency {json.dumps(lat)}")
print(f"{name}: hub CPU over the window {['%.2f s' % c for c in hub_cpu]} = "
      f"{sum(hub_cpu) / win * 100:.0f}% of a core, {per:.2f} us per delivery; "
      f"redis CPU {rc1 - rc0:.2f} s ({(rc1 - rc0) / win * 100:.0f}% of a core)")
total_sent = sent / rep["window_secs"] * (rep["window_secs"] + rep["warmup_secs"])
print(f"{name}: redis EVALSHA {ev}, PUBLISH {pub} over the whole run "
      f"(readings sent in the window {sent}; in the whole run about {total_sent:.0f})")
PY
}

want=${*:-single c1 c2 c3}
for w in $want; do
  case $w in
    single) run single 1 ;;
    c1|c2|c3)
      [ -n "$redis_pid" ] || start_redis
      run "$w" "${w#c}" TELEHUB_CLUSTER_REDIS_URL="redis://127.0.0.1:$rport" TELEHUB_CLUSTER_KEY_PREFIX="bench$w" ;;
    *) echo "unknown: $w"; exit 2 ;;
  esac
done
