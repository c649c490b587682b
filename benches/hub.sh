# Sourced by the bench scripts: what they share about a hub they started themselves.
#
# wait_addr LOG [TRIES]: waits for the hub's "listening on http://ADDR" line in LOG (TRIES
# tenths of a second, 100 by default) and sets $addr; prints the log and exits if it
# never comes.
wait_addr() {
  addr=""
  for _ in $(seq "${2:-100}"); do
    addr=$(grep -o 'listening on http://[0-9.:]*' "$1" | head -1 | sed 's|listening on http://||' || true)
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  echo "hub did not start:"
  cat "$1"
  exit 1
}
