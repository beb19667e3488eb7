#!/bin/bash
# One gateway against two in one mqtt.shared_group, on this machine, behind a
# private Mosquitto started fresh for every run (Mosquitto keeps an absent member's
# share of a shared subscription for its session, so a broker that has seen two
# members would starve a lone one), the same devsim load for each: fixed-batch on
# fashion/logreg, input_b64, 200 ms deadlines, 16 devices, 8 s.
# Usage: make build && RATES="8000 11000" scripts/shared-group-capacity.sh
# docs/benchmarks.md, "Two gateways in a shared group".
set -u
cd "$(dirname "$0")/.."
W=$(mktemp -d /tmp/sneakgate-group-XXXXXX)
trap 'rm -rf "$W"' EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
mkcfg() { # name port
  cat > "$W/$1.yaml" <<Y
log: {level: info, format: json}
mqtt: {broker: "tcp://127.0.0.1:$2", client_id: $1, shared_group: cap}
store: {path: $W/$1.db}
engine: {library: ${SNEAKGATE_ORT_LIB:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.30.0}, intra_op_threads: 1, profile_cache: $PWD/.cache/profiles}
scheduler: {policy: fixed-batch, fixed_variant: {fashion: logreg}}
apps: [{manifest: $PWD/models/fashion/manifest.yaml}]
Y
}
run() { # label rate gateways...
  local label=$1 rate=$2; shift 2
  local p; p=$(port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n' "$p" > "$W/m.conf"
  mosquitto -c "$W/m.conf" > "$W/m.log" 2>&1 & local mp=$!
  sleep 1
  local pids=()
  for g in "$@"; do
    mkcfg "$g" "$p"; rm -f "$W/$g.db"
    bin/sneakgate serve -config "$W/$g.yaml" > "$W/$g.log" 2>&1 & pids+=($!)
  done
  for g in "$@"; do for _ in $(seq 1 60); do grep -q 'gateway ready' "$W/$g.log" 2>/dev/null && break; sleep 0.5; done; done
  echo "== $label, $rate req/s"
  bin/sneakgate devsim -broker "tcp://127.0.0.1:$p" -app fashion -devices 16 -b64 -rate "$rate" -duration 8s \
    -deadline 200ms 2>&1 | grep -E "sent |replies |status |utility |gateway total"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null
  kill "$mp"; wait "$mp" 2>/dev/null
}
for rate in ${RATES:-8000 11000}; do
  run "one gateway" "$rate" gw-a
  run "two gateways" "$rate" gw-a gw-b
done
