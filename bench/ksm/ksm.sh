#!/bin/bash
# bench/ksm/ksm.sh - cksm beside the kernel's KSM, on this node, in one run.
#
#   bench/ksm/ksm.sh [ROW...]          rows: hot cold thp mix guests cold3 hot3
#
# Each row runs one workload three times, KSMBENCH_SECONDS (60) each:
#   none  no deduplication: the workload's own throughput, the yardstick
#   ksm   the kernel's KSM, the workload's memory marked MADV_MERGEABLE,
#         ksmd at 5000 pages every 10 ms
#   cksm  a shard and an agent (ksm = manage, the rest as installed), the
#         workload under libcksm
# Workloads: 3 workers (cksm-ksmwork) holding the same 64 MiB table
# (KSMBENCH_MB), read at random all along (hot), never touched (cold), in
# huge pages (thp), read with one write in 64 (mix); or two QEMU guests
# booted from one image (guests, tests/integration/guest.sh).
# Printed per row and run: memory saved net of the pool (cksm's net
# saving plus what ksmd shares; ksmd's sharing alone for ksm) at 10 s, 30
# s and the end, the workers' reads against "none", and the CPU seconds
# of the agent and of ksmd. KSM's sysfs settings are put back at the end.
# cold3: three nodes on this machine, each in network, pid and mount
# namespaces of its own, joined by a bridge (three agents, each with its
# node name, address, pool and data port; one shard on the bridge's
# address), each with the 3 cold workers in its namespaces: cksm
# merges across the nodes, keeping [cluster] replicas (2) copies of each
# content (its agents leave the kernel's KSM alone: three would each run
# it). The kernel's KSM cannot merge across nodes: its figure is what
# it saves on one node with that node's workers (the cold row's run),
# times three.
# hot3: the same with the hot workers, and a run of the nine workers with
# no deduplication as the yardstick of their reads. On one machine the
# three agents cannot each run a ksmd of their own (there is one kernel,
# whose ksmd would merge across the nodes), so cksm's figure there is
# what it does without the kernel's KSM: hot duplicates are not evicted.
# KSMBENCH_RUNS (none ksm cksm) names the runs of a one-node row to make;
# KSMBENCH_LOGS=DIR keeps each cksm run's logs and its agents' last
# metrics there (ROW-*.log, ROW-*.metrics).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${CKSM_BUILD:-$ROOT/build}
SECS=${KSMBENCH_SECONDS:-60}
RUNS=${KSMBENCH_RUNS:-none ksm cksm}
LOGS=${KSMBENCH_LOGS:-}
MB=${KSMBENCH_MB:-64}
WORKERS=3
KSM=/sys/kernel/mm/ksm
ROWS=("$@")
((${#ROWS[@]})) || ROWS=(hot cold thp mix guests)
[[ -w $KSM/run ]] || {
	echo "bench/ksm: needs root and the kernel's KSM ($KSM)" >&2
	exit 1
}
T=$(mktemp -d /tmp/cksm-bench-ksm.XXXXXX)
# The agents' state directories (the page pool) on tmpfs, as /run/cksm is
# where agents run: a disk file system keeps blocks of a pool file whose
# slots were freed, and the net saving would count them.
S=$(mktemp -d /dev/shm/cksm-bench-ksm.XXXXXX)
KSM_OLD=("$(cat $KSM/run)" "$(cat $KSM/pages_to_scan)" "$(cat $KSM/sleep_millisecs)")
PIDS=()
finish() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo 2 >$KSM/run
	echo "${KSM_OLD[1]}" >$KSM/pages_to_scan
	echo "${KSM_OLD[2]}" >$KSM/sleep_millisecs
	echo "${KSM_OLD[0]}" >$KSM/run
	! declare -F ns_down >/dev/null || ns_down
	rm -rf "$T" "$S"
}
trap finish EXIT
# shellcheck source=tests/integration/guest.sh
source "$ROOT/tests/integration/guest.sh"

ticks() { # CPU ticks of pid (utime + stime), 0 if gone
	awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
HZ=$(getconf CLK_TCK)
ksmd_pid() { pgrep -x ksmd | head -1; }
sharing() { echo $(($(cat $KSM/pages_sharing) * 4096)); }
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 10000))
		ss -Htln "sport = :$p" | grep -q . || {
			echo "$p"
			return
		}
	done
}

# The cluster for the cksm runs: one shard, one agent.
cksm_up() {
	local c=$T/cksm.conf
	rm -f "$T/cluster.key"
	"$B/cksmd" --gen-key "$T/cluster.key"
	AMET=127.0.0.1:$(free_port)
	AMETS=("$AMET")
	{
		printf '[cluster]\nkey_file = %s\n[log]\nlevel = info\n' "$T/cluster.key"
		printf '[agent]\nmetrics = %s\nsocket = %s\nstate_dir = %s\nksm = manage\n' \
			"$AMET" "$T/agent.sock" "$S/state"
		printf '[shard.0]\naddress = 127.0.0.1:%s\nmetrics = 127.0.0.1:%s\nbuckets = 0-4095\n' \
			"$(free_port)" "$(free_port)"
	} >"$c"
	rm -rf "$S/state"
	"$B/cksmd" -c "$c" --role coord --shard 0 >"$T/coord.log" 2>&1 &
	COORD=$!
	"$B/cksmd" -c "$c" --role agent >"$T/agent.log" 2>&1 &
	AGENT=$!
	PIDS+=("$COORD" "$AGENT")
	for _ in $(seq 300); do
		grep -q "registered with shard 0" "$T/agent.log" && return
		sleep 0.1
	done
	echo "bench/ksm: the agent did not register: $(tail -3 "$T/agent.log")" >&2
	exit 1
}
# keep ROW FILE...: the run's logs and the agents' metrics, in LOGS
keep() {
	local row=$1 f a=0
	shift
	[[ -n $LOGS ]] || return 0
	mkdir -p "$LOGS"
	for f in "$@"; do cp "$f" "$LOGS/$row-$(basename "$f")" 2>/dev/null || true; done
	for f in "${AMETS[@]}"; do
		a=$((a + 1))
		curl -sf "http://$f/metrics" >"$LOGS/$row-agent$a.metrics" || true
	done
}
cksm_down() {
	kill "$AGENT" "$COORD" 2>/dev/null || true
	wait "$AGENT" "$COORD" 2>/dev/null || true
}
net_saved() { # cksm's net saving, in bytes
	curl -sf "http://$AMET/metrics" | awk '$1 == "cksm_net_saved_bytes" { print int($2) }'
}

# run ROW CONFIG: one run; RESULT its line of the table
run() {
	local row=$1 cfg=$2 env=() wargs=() saved s10=0 s30=0 reads=0 a0=0 k0 k1 a1=0 w
	local kpid
	echo 2 >$KSM/run
	echo 0 >$KSM/run
	if [[ $cfg == ksm ]]; then
		echo 5000 >$KSM/pages_to_scan
		echo 10 >$KSM/sleep_millisecs
		echo 1 >$KSM/run
	fi
	if [[ $cfg == cksm ]]; then
		cksm_up
		env=(LD_PRELOAD="$B/libcksm.so" CKSM_SOCKET="$T/agent.sock")
		a0=$(ticks "$AGENT")
	fi
	kpid=$(ksmd_pid)
	k0=$(ticks "$kpid")
	local wp=()
	if [[ $row == guests ]]; then
		for w in 1 2; do
			rm -f "$T/g$w.out"
			guest_start "$T" "$w" "${env[@]}"
			wp+=("$GUEST_PID")
		done
	else
		[[ $cfg != none ]] && wargs=(--mergeable)
		for ((w = 0; w < WORKERS; w++)); do
			env "${env[@]}" "$B/cksm-ksmwork" --mb "$MB" --seconds $((SECS + 5)) --mode "$row" \
				"${wargs[@]}" --out "$T/w$w.out" &
			wp+=("$!")
		done
	fi
	PIDS+=("${wp[@]}")
	for ((s = 1; s <= SECS; s++)); do
		sleep 1
		saved=$(sharing)
		[[ $cfg == cksm ]] && saved=$((saved + $(net_saved || echo 0)))
		((s == 10)) && s10=$saved
		((s == 30)) && s30=$saved
	done
	k1=$(ticks "$kpid")
	[[ $cfg == cksm ]] && a1=$(ticks "$AGENT")
	[[ $cfg == cksm ]] && keep "$row" "$T/agent.log" "$T/coord.log"
	if [[ $row == guests ]]; then
		local ok=0
		for w in 1 2; do
			kill "${wp[w - 1]}" 2>/dev/null || true
			guest_checks "$T" "$w" | grep -vq "^$GUEST_WANT\$" || ok=$((ok + 1))
		done
		reads="$ok/2 healthy"
	else
		for ((w = 0; w < WORKERS; w++)); do
			# reads in the second half of the run
			reads=$((reads + $(awk -v h=$((SECS / 2)) '$1 == h { a = $2 } $1 == '"$SECS"' { b = $2 } END { printf "%.0f\n", b - a }' "$T/w$w.out")))
		done
	fi
	kill "${wp[@]}" 2>/dev/null || true
	wait "${wp[@]}" 2>/dev/null || true
	[[ $cfg == cksm ]] && cksm_down
	echo 2 >$KSM/run
	echo 0 >$KSM/run
	RESULT=$(printf '%s %s %d %d %d %s %.1f %.1f' "$row" "$cfg" $((s10 >> 20)) $((s30 >> 20)) \
		$((saved >> 20)) "${reads// /_}" "$(bc -l <<<"($a1 - $a0) / $HZ")" \
		"$(bc -l <<<"($k1 - $k0) / $HZ")")
}

# Three nodes on this machine, each in network, pid and mount namespaces
# of its own: NETNS-nK, with a veth (10.77.0.K) on a bridge BR
# (10.77.0.254) that the shard listens on. Each node's agent is the init
# of its pid namespace, and its workers join its namespaces (node_exec).
BR=cksmb$$
NETNS=$BR
ns_up() {
	local k
	ip link add "$BR" type bridge
	ip addr add 10.77.0.254/24 dev "$BR"
	ip link set "$BR" up
	for k in 1 2 3; do
		ip netns add "$NETNS-n$k"
		ip link add "$BR-v$k" type veth peer name eth0 netns "$NETNS-n$k"
		ip link set "$BR-v$k" master "$BR" up
		ip -n "$NETNS-n$k" addr add "10.77.0.$k/24" dev eth0
		ip -n "$NETNS-n$k" link set eth0 up
		ip -n "$NETNS-n$k" link set lo up
	done
	NS_UP=1
}
ns_down() {
	local k
	[[ -n ${NS_UP:-} ]] || return 0
	for k in 1 2 3; do ip netns del "$NETNS-n$k" 2>/dev/null || true; done
	ip link del "$BR" 2>/dev/null || true
	NS_UP=
}
# node_exec K CMD...: CMD in node K's namespaces (its agent's)
node_exec() {
	local k=$1
	shift
	nsenter -t "${AGENTS[k - 1]}" -n -p -m "$@"
}

# Three nodes: one shard, agents n1..n3, each its own namespaces, socket,
# state, metrics and data port.
cksm_up3() {
	local k c u
	rm -f "$T/cluster.key"
	"$B/cksmd" --gen-key "$T/cluster.key"
	ns_up
	local shard=10.77.0.254:$(free_port) smet=127.0.0.1:$(free_port)
	AMETS=()
	AGENTS=()
	for k in 1 2 3; do
		c=$T/n$k.conf
		AMETS+=("10.77.0.$k:9100")
		local data=10.77.0.$k:9472
		{
			printf '[cluster]\nkey_file = %s\n[log]\nlevel = info\n' "$T/cluster.key"
			printf '[agent]\nnode_name = n%d\nmetrics = %s\nsocket = %s\nstate_dir = %s\n' \
				"$k" "${AMETS[k - 1]}" "$T/n$k.sock" "$S/state$k"
			printf 'ksm = off\ndata_listen = %s\ndata_address = %s\n' "$data" "$data"
			printf '[shard.0]\naddress = %s\nmetrics = %s\nbuckets = 0-4095\n' "$shard" "$smet"
		} >"$c"
		rm -rf "$S/state$k"
	done
	"$B/cksmd" -c "$T/n1.conf" --role coord --shard 0 >"$T/coord.log" 2>&1 &
	COORD=$!
	PIDS+=("$COORD")
	for k in 1 2 3; do
		ip netns exec "$NETNS-n$k" unshare --pid --fork --mount-proc \
			"$B/cksmd" -c "$T/n$k.conf" --role agent >"$T/agent$k.log" 2>&1 &
		u=$!
		PIDS+=("$u")
		for _ in $(seq 100); do
			c=$(pgrep -P "$u" | head -1) && break
			sleep 0.05
		done
		[[ -n $c ]] || {
			echo "bench/ksm: agent n$k did not start: $(tail -3 "$T/agent$k.log")" >&2
			exit 1
		}
		AGENTS+=("$c")
		PIDS+=("$c")
	done
	for k in 1 2 3; do
		for _ in $(seq 300); do
			grep -q "registered with shard 0" "$T/agent$k.log" && continue 2
			sleep 0.1
		done
		echo "bench/ksm: agent n$k did not register: $(tail -3 "$T/agent$k.log")" >&2
		exit 1
	done
}

# run3 MODE CONFIG: a three-node row's run (CONFIG none or cksm), the
# three nodes' workers of MODE; RESULT as run's
run3() {
	local mode=$1 cfg=$2 k w s saved s10=0 s30=0 a0=0 a1=0 wp=() net reads=0 env=()
	echo 2 >$KSM/run
	echo 0 >$KSM/run
	AGENTS=()
	if [[ $cfg == cksm ]]; then
		cksm_up3
		for k in 0 1 2; do a0=$((a0 + $(ticks "${AGENTS[k]}"))); done
	fi
	for k in 1 2 3; do
		local in=()
		[[ $cfg == cksm ]] && env=(LD_PRELOAD="$B/libcksm.so" CKSM_SOCKET="$T/n$k.sock") &&
			in=(node_exec "$k")
		for ((w = 0; w < WORKERS; w++)); do
			"${in[@]}" env "${env[@]}" "$B/cksm-ksmwork" --mb "$MB" --seconds $((SECS + 5)) \
				--mode "$mode" --mergeable --out "$T/w$k$w.out" &
			wp+=("$!")
		done
	done
	PIDS+=("${wp[@]}")
	for ((s = 1; s <= SECS; s++)); do
		sleep 1
		saved=$(sharing)
		for ((k = 0; k < ${#AGENTS[@]}; k++)); do
			net=$(curl -sf "http://${AMETS[k]}/metrics" |
				awk '$1 == "cksm_net_saved_bytes" { print int($2) }')
			saved=$((saved + ${net:-0}))
		done
		((s == 10)) && s10=$saved
		((s == 30)) && s30=$saved
	done
	for ((k = 0; k < ${#AGENTS[@]}; k++)); do a1=$((a1 + $(ticks "${AGENTS[k]}"))); done
	for k in 1 2 3; do
		for ((w = 0; w < WORKERS; w++)); do
			reads=$((reads + $(awk -v h=$((SECS / 2)) '$1 == h { a = $2 } $1 == '"$SECS"' { b = $2 } END { printf "%.0f\n", b - a }' "$T/w$k$w.out")))
		done
	done
	[[ $cfg == cksm ]] && keep "${mode}3" "$T"/agent?.log "$T/coord.log"
	for w in "${wp[@]}"; do
		# a worker in a node's namespaces is nsenter's child
		kill $(pgrep -P "$w") "$w" 2>/dev/null || true
	done
	{ wait "${wp[@]}" || true; } 2>/dev/null
	if [[ $cfg == cksm ]]; then
		kill "${AGENTS[@]}" "$COORD" 2>/dev/null || true
		{ wait "${PIDS[@]}" || true; } 2>/dev/null
		ns_down
	fi
	echo 2 >$KSM/run
	echo 0 >$KSM/run
	RESULT=$(printf '%s %s %d %d %d %s %.1f %.1f' "${mode}3" "$cfg" $((s10 >> 20)) \
		$((s30 >> 20)) $((saved >> 20)) "$reads" "$(bc -l <<<"($a1 - $a0) / $HZ")" 0)
}

if [[ " ${ROWS[*]} " == *" guests "* ]]; then
	why=$(guest_missing)
	if [[ -n $why ]]; then
		echo "bench/ksm: no guests row: $why" >&2
		ROWS=("${ROWS[@]/guests/}")
	else
		guest_image "$T"
	fi
fi
echo "bench/ksm: $WORKERS workers of ${MB} MiB (or 2 guests), ${SECS} s a run; kernel $(uname -r)"
printf '%-7s %-5s %9s %9s %9s %12s %8s %8s %s\n' row run "net@10s" "net@30s" "net@end" reads \
	"agent_s" "ksmd_s" "vs none"
for row in "${ROWS[@]}"; do
	[[ -z $row ]] && continue
	if [[ $row == cold3 || $row == hot3 ]]; then
		mode=${row%3}
		base=
		if [[ $mode == hot ]]; then
			run3 "$mode" none
			read -r r c s10 s30 se base ac kc <<<"$RESULT"
			printf '%-7s %-5s %7d M %7d M %7d M %12s %8s %8s %s\n' "$r" "$c" "$s10" "$s30" \
				"$se" "$base" - - 1.00
		fi
		run "$mode" ksm
		read -r r c s10 s30 se rd ac kc <<<"$RESULT"
		printf '%-7s %-5s %7d M %7d M %7d M %12s %8s %8s %s\n' "$row" "ksm×3" $((3 * s10)) \
			$((3 * s30)) $((3 * se)) - - "$kc" "(one node's run, times 3)"
		run3 "$mode" cksm
		read -r r c s10 s30 se rd ac kc <<<"$RESULT"
		ratio=-
		[[ -n $base && $base -gt 0 ]] && ratio=$(bc -l <<<"scale=2; $rd / $base")
		[[ $mode == cold ]] && rd=-
		printf '%-7s %-5s %7d M %7d M %7d M %12s %8s %8s %s\n' "$r" "$c" "$s10" "$s30" "$se" \
			"$rd" "$ac" - "$ratio (3 agents)"
		continue
	fi
	base=
	for cfg in $RUNS; do
		run "$row" "$cfg"
		read -r r c s10 s30 se rd ac kc <<<"$RESULT"
		[[ $cfg == none ]] && base=$rd
		ratio=-
		[[ $row != guests && $row != cold && $row != thp && ${base:-0} -gt 0 ]] &&
			ratio=$(bc -l <<<"scale=2; $rd / $base")
		printf '%-7s %-5s %7d M %7d M %7d M %12s %8s %8s %s\n' "$r" "$c" "$s10" "$s30" "$se" \
			"$rd" "$ac" "$kc" "$ratio"
	done
done
