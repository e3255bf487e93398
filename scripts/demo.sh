#!/bin/bash
# The local demo: one coordinator shard and one node agent on this machine,
# with a fresh cluster key, then their status every few seconds until
# Ctrl-C (or DEMO_SECONDS). Everything lives in build/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CKSM_BIN:-build}
D=$PWD/build/demo
rm -rf "$D"
mkdir -p "$D"
pids=()

stop_all() {
	trap - INT TERM EXIT
	echo
	echo "stopping the demo cluster"
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_all INT TERM EXIT

port_free() { ! ss -Htln "sport = :$1" | grep -q .; }
pick() {
	local p=$1
	while ! port_free "$p"; do p=$((p + 1)); done
	echo "$p"
}
CTRL=$(pick 17470)
SMET=$(pick 19471)
AMET=$(pick $((SMET + 1)))

"$BIN/cksmd" --gen-key "$D/cluster.key"
cat >"$D/cksm.conf" <<CONF
[cluster]
key_file = $D/cluster.key
heartbeat_ms = 500
dead_after_ms = 2000

[agent]
node_name = demo-node-1
rack = rack-a
metrics = 127.0.0.1:$AMET

[shard.0]
address = 127.0.0.1:$CTRL
metrics = 127.0.0.1:$SMET
buckets = 0-4095
CONF
"$BIN/cksmd" -c "$D/cksm.conf" --check-config

"$BIN/cksmd" -c "$D/cksm.conf" --role coord --shard 0 2>"$D/coord.log" &
pids+=($!)
"$BIN/cksmd" -c "$D/cksm.conf" --role agent 2>"$D/agent.log" &
pids+=($!)

for _ in $(seq 100); do
	grep -q "registered with shard 0" "$D/agent.log" && break
	sleep 0.1
done
echo "cksm demo: coordinator shard 0 on 127.0.0.1:$CTRL, agent demo-node-1"
echo "  metrics: http://127.0.0.1:$SMET/metrics (shard)  http://127.0.0.1:$AMET/metrics (agent)"
echo "  logs:    $D/coord.log $D/agent.log"
echo "  try:     $BIN/cksmctl -c $D/cksm.conf status"
echo

end=$((SECONDS + ${DEMO_SECONDS:-1000000000}))
while ((SECONDS < end)); do
	"$BIN/cksmctl" -c "$D/cksm.conf" status || true
	hb=$(curl -sf "http://127.0.0.1:$SMET/metrics" | awk '$1 == "cksm_coord_heartbeats_total" { print $2 }')
	echo "heartbeats received by the shard: ${hb:-?}   (Ctrl-C stops the demo)"
	echo
	sleep "$(((end - SECONDS) < 5 ? (end - SECONDS > 0 ? end - SECONDS : 0) : 5))"
done
