#!/bin/bash
# The local demo: two coordinator shards and three node agents on this
# machine (distinct loopback ports), each node running a workload with
# planted pages: nodes 1 and 2 hold the same contents, node 3 its own, and
# every workload holds 32 copies of one page (the nodes scan the
# workloads' mergeable regions). After a few scan passes it shows the
# cluster's status, what each node's scanner found, what the shards'
# stable trees hold, and the census: what node-local merging (KSM) could
# save and what merging across the cluster adds; every few seconds until
# Ctrl-C (or DEMO_SECONDS). Everything lives in build/demo/ and stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CKSM_BIN:-build}
PLANTER=build/cksm-planter
D=$PWD/build/demo
rm -rf "$D"
mkdir -p "$D"
pids=()

# Nodes live in network namespaces, each joined to this host by a veth
# pair (a /30 of 192.0.2.0/24, TEST-NET-1: host 192.0.2.4n+1, node
# 192.0.2.4n+2), when this runs as root and the kernel allows; otherwise
# every daemon shares the loopback, on distinct ports.
host_ip() { echo "192.0.2.$((4 * $1 + 1))"; }
node_ip() { echo "192.0.2.$((4 * $1 + 2))"; }
FORWARD_WAS=""
teardown_netns() {
	for n in 1 2 3; do
		ip netns del "cksmdemo-n$n" 2>/dev/null || true
		ip link del "cksmd$n" 2>/dev/null || true
	done
	if [[ -n $FORWARD_WAS ]]; then
		sysctl -qw net.ipv4.ip_forward="$FORWARD_WAS" || true
		FORWARD_WAS=""
	fi
}
setup_netns() {
	[[ $(id -u) == 0 ]] && command -v ip >/dev/null || return 1
	teardown_netns
	for n in 1 2 3; do
		ip netns add "cksmdemo-n$n" 2>/dev/null &&
			ip link add "cksmd$n" type veth peer name eth0 netns "cksmdemo-n$n" &&
			ip addr add "$(host_ip $n)/30" dev "cksmd$n" &&
			ip link set "cksmd$n" up &&
			ip -n "cksmdemo-n$n" addr add "$(node_ip $n)/30" dev eth0 &&
			ip -n "cksmdemo-n$n" link set eth0 up &&
			ip -n "cksmdemo-n$n" link set lo up || return 1
	done
	# Nodes read each other's pools through this host: route the /24 via
	# the veth, and forward while the demo runs (restored at the end).
	FORWARD_WAS=$(sysctl -n net.ipv4.ip_forward 2>/dev/null) || FORWARD_WAS=""
	if [[ -n $FORWARD_WAS ]] && sysctl -qw net.ipv4.ip_forward=1 2>/dev/null; then
		for n in 1 2 3; do
			ip -n "cksmdemo-n$n" route add 192.0.2.0/24 via "$(host_ip $n)" 2>/dev/null || true
		done
	else
		FORWARD_WAS=""
	fi
}

stop_all() {
	trap - INT TERM EXIT
	echo
	echo "stopping the demo cluster"
	# Last started, first stopped: the workloads before the agents that
	# serve them (an agent puts their pages back as it stops), the agents
	# before the shards.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
	((NETNS)) && teardown_netns
	return 0
}
NETNS=0
trap stop_all INT TERM EXIT
if setup_netns; then
	NETNS=1
else
	teardown_netns 2>/dev/null || true
fi
HOST=127.0.0.1

port_free() { ! ss -Htln "sport = :$1" | grep -q .; }
next_port=17470
port() { # VAR: the next free port (no subshell, so the counter advances)
	while ! port_free "$next_port"; do next_port=$((next_port + 1)); done
	printf -v "$1" '%s' "$next_port"
	next_port=$((next_port + 1))
}
metric() { curl -sf "http://$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }

"$BIN/cksmd" --gen-key "$D/cluster.key"
port S0
port S0M
port S1
port S1M
cat >"$D/cksm.conf" <<CONF
[cluster]
key_file = $D/cluster.key
heartbeat_ms = 500
dead_after_ms = 2000

[agent]
scan_mergeable = 0
mergeable_only = 1
pass_millisecs = 500
rereport_millisecs = 3000

[shard.0]
address = $HOST:$S0
listen = 0.0.0.0:$S0
metrics = $HOST:$S0M
buckets = 0-2047

[shard.1]
address = $HOST:$S1
listen = 0.0.0.0:$S1
metrics = $HOST:$S1M
buckets = 2048-4095
CONF
"$BIN/cksmd" -c "$D/cksm.conf" --check-config

for s in 0 1; do
	"$BIN/cksmd" -c "$D/cksm.conf" --role coord --shard "$s" 2>"$D/shard-$s.log" &
	pids+=($!)
done
declare -A AMET
for n in 1 2 3; do
	seed=$((n == 3 ? 2 : 1))
	"$PLANTER" --seed "$seed" --mergeable >"$D/workload-$n.json" &
	pids+=($!)
	for _ in $(seq 50); do [[ -s $D/workload-$n.json ]] && break; sleep 0.1; done
	if ((NETNS)); then
		# Its own network namespace: it reaches the shards through its veth.
		AMET[$n]=$(node_ip $n):9470
		in_node=(ip netns exec "cksmdemo-n$n")
		via=(--set "shard.0.address=$(host_ip $n):$S0" --set "shard.1.address=$(host_ip $n):$S1"
			--set "agent.data_listen=$(node_ip $n):9472" --set "agent.data_address=$(node_ip $n):9472")
	else
		port p
		AMET[$n]=127.0.0.1:$p
		in_node=()
		port dp
		via=(--set "agent.data_listen=127.0.0.1:$dp" --set "agent.data_address=127.0.0.1:$dp")
	fi
	"${in_node[@]}" "$BIN/cksmd" -c "$D/cksm.conf" --role agent "${via[@]}" --set agent.node_name=node-$n \
		--set agent.rack=rack-$((n == 3 ? 2 : 1)) --set agent.metrics="${AMET[$n]}" \
		--set agent.pids="$(jq .pid "$D/workload-$n.json")" --set agent.socket="$D/node-$n.sock" --set agent.state_dir="$D/node-$n.state" \
		--set agent.evict_age=2 --set agent.evict_cooldown_millisecs=10000 2>"$D/node-$n.log" &
	pids+=($!)
done
for n in 1 2 3; do
	for _ in $(seq 100); do
		grep -q "registered with shard 1" "$D/node-$n.log" && break
		sleep 0.1
	done
done
# Each node also runs a workload served by cksm (libcksm under LD_PRELOAD):
# 16 MiB of copies of 31 contents and zero pages; every 2 s each of two
# threads rewrites 16 of its pages and checks 64 at random against what it
# wrote (evicted ones come back on that touch); they report as they go.
LIB=$(cd "$BIN" && pwd)/libcksm.so
for n in 1 2 3; do
	CKSM_SOCKET="$D/node-$n.sock" LD_PRELOAD="$LIB" build/cksm-churner \
		--threads 2 --pages 4096 --contents 32 --seconds 1000000 --quiet-ms 2000 \
		--burst-pages 16 --check-pages 64 \
		--report-ms 2000 >"$D/churn-$n.jsonl" 2>"$D/churn-$n.err" &
	pids+=($!)
done
if ((NETNS)); then
	echo "cksm demo: shards on ports $S0 and $S1, nodes node-1..3 in network namespaces cksmdemo-n1..3 ($(node_ip 1), $(node_ip 2), $(node_ip 3)); logs in $D/"
else
	echo "cksm demo: shards on $HOST:$S0 and :$S1, nodes node-1..3 on the loopback; logs in $D/"
fi
echo "  try: $BIN/cksmctl -c $D/cksm.conf stats"
sleep 2

end=$((SECONDS + ${DEMO_SECONDS:-1000000000}))
while :; do
	"$BIN/cksmctl" -c "$D/cksm.conf" status || true
	echo
	printf '%-8s %10s %10s %10s %10s %12s\n' NODE SCANNED STABLE ZERO VOLATILE REPORTED
	for n in 1 2 3; do
		printf '%-8s %10s %10s %10s %10s %12s\n' "node-$n" \
			"$(metric "${AMET[$n]}" cksm_pages_scanned_total)" \
			"$(metric "${AMET[$n]}" cksm_pages_stable)" "$(metric "${AMET[$n]}" cksm_pages_zero)" \
			"$(metric "${AMET[$n]}" cksm_pages_volatile)" \
			"$(metric "${AMET[$n]}" cksm_digest_pages_sent_total)"
	done
	c0=$(metric "$HOST:$S0M" cksm_coord_contents)
	c1=$(metric "$HOST:$S1M" cksm_coord_contents)
	echo "contents seen on two nodes or twice on one (stable trees): shard 0 ${c0:-0}, shard 1 ${c1:-0}"
	"$BIN/cksmctl" -c "$D/cksm.conf" stats 2>/dev/null | head -n 1 || true
	echo
	printf '%-8s %22s %10s %10s %10s %12s %10s\n' NODE "WORKLOAD RSS" SAVED "FAULTS" EVICTIONS CHECKS MISMATCHES
	saved_all=0
	for n in 1 2 3; do
		first=$(head -n 1 "$D/churn-$n.jsonl" 2>/dev/null || true)
		last=$(tail -n 1 "$D/churn-$n.jsonl" 2>/dev/null || true)
		saved=$(metric "${AMET[$n]}" cksm_saved_bytes)
		saved_all=$((saved_all + ${saved:-0}))
		printf '%-8s %22s %10s %10s %10s %12s %10s\n' "node-$n" \
			"$(jq -r '.rss_kb / 1024 * 10 | floor / 10 | tostring + " MiB"' <<<"${first:-{\}}" 2>/dev/null) -> $(jq -r '.rss_kb / 1024 * 10 | floor / 10 | tostring + " MiB"' <<<"${last:-{\}}" 2>/dev/null)" \
			"$((${saved:-0} / 1024)) KiB" \
			"$(($(metric "${AMET[$n]}" 'cksm_faults_total{source="local"}' || echo 0) + $(metric "${AMET[$n]}" 'cksm_faults_total{source="zero"}' || echo 0) + $(metric "${AMET[$n]}" 'cksm_faults_total{source="remote"}' || echo 0)))" \
			"$(metric "${AMET[$n]}" cksm_evictions_total)" \
			"$(jq -r .checks <<<"${last:-{\}}" 2>/dev/null)" "$(jq -r .mismatches <<<"${last:-{\}}" 2>/dev/null)"
	done
	echo "saved across the cluster: $((saved_all / 1024)) KiB (pages dropped from the workloads and backed by a dup or the zero page)"
	echo
	"$BIN/cksmctl" -c "$D/cksm.conf" top 2>/dev/null || true
	echo "(Ctrl-C stops the demo)"
	echo
	((SECONDS < end)) || break
	sleep "$(((end - SECONDS) < 5 ? (end - SECONDS > 0 ? end - SECONDS : 0) : 5))"
done
