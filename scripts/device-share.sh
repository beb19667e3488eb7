#!/bin/bash
# One loud device beside eight quiet ones on one gateway, with and without
# admission.max_queue_per_device: fashion, edf, the embedded broker on a free
# port, a 400-request queue, no answers from the estimate at admission, 10 s
# deadlines, input_u8_b64, 15 s. The loud device publishes 2,000 requests a
# second, the eight 80 between them; it prints each side's devsim summary.
# Usage: make build && scripts/device-share.sh CAP   (0: no per-device cap)
# docs/deployment.md, "One device's share".
set -u
cd "$(dirname "$0")/.."
CAP=${1:?usage: scripts/device-share.sh CAP (admission.max_queue_per_device; 0 for none)}
W=$(mktemp -d /tmp/sneakgate-share-XXXXXX)
trap 'rm -rf "$W"' EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
P=$(port)
cat > "$W/gw.yaml" <<Y
log: {level: info, format: json}
mqtt: {broker: "tcp://127.0.0.1:$P", client_id: sneakgate-share, embedded: {enabled: true, listen: "127.0.0.1:$P"}}
store: {path: $W/journal.db}
engine: {library: ${SNEAKGATE_ORT_LIB:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.30.0}, intra_op_threads: 1, profile_cache: $PWD/.cache/profiles}
scheduler: {policy: edf}
admission: {max_queue: 400, max_queue_per_device: $CAP, degrade_refused: false, price_shed: false}
apps: [{manifest: $PWD/models/fashion/manifest.yaml}]
Y
bin/sneakgate serve -config "$W/gw.yaml" > "$W/gw.log" 2>&1 & GW=$!
for _ in $(seq 1 120); do grep -q 'gateway ready' "$W/gw.log" 2>/dev/null && break; sleep 0.5; done
grep -q 'gateway ready' "$W/gw.log" || { echo "the gateway did not start:"; cat "$W/gw.log"; kill $GW; exit 1; }
bin/sneakgate devsim -broker "tcp://127.0.0.1:$P" -app fashion -devices 1 -device-prefix loud -rate 2000 \
  -duration 15s -deadline 10s -u8 -seed 2 > "$W/loud.txt" 2>&1 & L=$!
bin/sneakgate devsim -broker "tcp://127.0.0.1:$P" -app fashion -devices 8 -device-prefix quiet -rate 80 \
  -duration 15s -deadline 10s -u8 -seed 3 > "$W/quiet.txt" 2>&1
wait $L
echo "== max_queue_per_device $CAP: the eight quiet devices"; grep -E "sent |replies |status |deadline|round trip" "$W/quiet.txt"
echo "== the loud device"; grep -E "sent |replies |status |deadline|round trip" "$W/loud.txt"
kill $GW; wait $GW 2>/dev/null
