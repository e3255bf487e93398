# Shared helpers for integration tests: each test sources this, gets a
# private directory, a fresh cluster key and free ports, and every daemon
# it starts is stopped when it exits.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${CKSM_BIN:-$ROOT/build/san}
CKSMD=$BIN/cksmd
CKSMCTL=$BIN/cksmctl
PEER=$BIN/cksm-testpeer
# On tmpfs, as /run/cksm is where the agents run for real: the page pool
# lives in the state directory, and a disk file system's large folios
# would make a few dups cost megabytes.
TMPBASE=/dev/shm
[[ -d $TMPBASE && -w $TMPBASE ]] || TMPBASE=/tmp
T=$(mktemp -d "$TMPBASE/cksm-it.XXXXXX")
PIDS=()

cleanup() {
	local p
	# A stopped process is continued first, then told to end; never the
	# other way round: a SIGCONT after the SIGTERM would cancel the stop
	# LeakSanitizer's tracer uses at the daemon's exit, and hang it.
	for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do reap "$p" 30 "process $p, told to end at the test's end" 2>/dev/null || true; done
	rm -rf "$T"
}
trap cleanup EXIT

# descendants PID: PID and every process under it.
descendants() {
	local c
	echo "$1"
	for c in $(pgrep -P "$1" || true); do descendants "$c"; done
}

# stacks PID: where each thread of PID and of the processes under it
# waits, in the kernel and (with gdb) in user space.
stacks() {
	local p t
	for p in $(descendants "$1"); do
		[[ -r /proc/$p/cmdline ]] || continue
		echo "== $p: $(tr '\0' ' ' <"/proc/$p/cmdline" | head -c 160)"
		for t in /proc/"$p"/task/*; do
			echo "   thread ${t##*/} $(cat "$t/comm" 2>/dev/null): $(head -n 4 "$t/stack" 2>/dev/null | awk '{ printf "%s ", $2 }')"
		done
		command -v gdb >/dev/null &&
			timeout -k 5 20 gdb -batch -nx -p "$p" -ex 'thread apply all bt 12' 2>/dev/null |
			grep -E '^(Thread|#)' | sed 's/^/   /'
	done
}

# reap PID SECS WHAT: wait for PID, a child of this shell, to end, at most
# SECS seconds, and return its status. One that outlives that is a hang:
# where its threads wait is printed, it is killed and the status is 124.
reap() {
	local pid=$1 secs=$2 what=$3 i state ppid
	for ((i = 0; i < secs * 10; i++)); do
		read -r state ppid _ < <(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || true
		# Gone, ended, or the number taken by a process not ours.
		[[ -z $state || $state == Z || $ppid != "$BASHPID" ]] && break
		sleep 0.1
	done
	[[ $ppid == "$BASHPID" ]] || state=
	if [[ -n $state && $state != Z ]]; then
		echo "HANG: $what: still running after $secs s; where it waits:"
		stacks "$pid"
		kill -CONT "$pid" 2>/dev/null || true
		for i in $(descendants "$pid"); do kill -9 "$i" 2>/dev/null || true; done
		wait "$pid" 2>/dev/null || true
		return 124
	fi
	wait "$pid"
}

# show_logs N: the last N lines of each daemon's log, on stderr.
show_logs() {
	local f
	for f in "$T"/*.log; do
		[[ -e $f ]] || continue
		echo "--- $f" >&2
		tail -n "$1" "$f" >&2
	done
}

fail() {
	echo "FAIL: $*" >&2
	show_logs 40
	exit 1
}

# need_moves NAME: skip unless agent NAME moves evicted pages out
# (UFFDIO_MOVE, Linux 6.8; it logs which way at start).
need_moves() {
	if ! log_has "$1" "by UFFDIO_MOVE"; then
		skip "this kernel's userfaultfd cannot move pages (UFFDIO_MOVE, Linux 6.8)"
	fi
}

skip() {
	echo "$*"
	exit 77
}

# A port that nothing listens on now, and not handed out before in this
# test (a daemon given one may not have bound it yet).
free_port() { # below the kernel's ephemeral range, not used by any socket
	local p
	while :; do
		p=$((20000 + RANDOM % 12000))
		grep -qx "$p" "$T/.ports" 2>/dev/null && continue
		if ! ss -Htan "sport = :$p" | grep -q .; then
			echo "$p" >>"$T/.ports"
			echo "$p"
			return
		fi
	done
}

# cluster_conf FILE NSHARDS: a config with NSHARDS shards splitting the buckets.
cluster_conf() {
	local file=$1 n=$2 i per
	per=$((4096 / n))
	"$CKSMD" --gen-key "$T/cluster.key"
	{
		printf '[cluster]\nkey_file = %s\nheartbeat_ms = 100\ndead_after_ms = 600\n' "$T/cluster.key"
		printf 'auth_timeout_ms = 1000\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n'
		printf '[log]\nlevel = info\n'
		printf '[agent]\nmetrics = 127.0.0.1:%s\nsocket = %s\nstate_dir = %s\n' "$(free_port)" "$T/agent.sock" "$T/state"
		# Eviction as the scanner offers it: the tests of the working set
		# (wset.h) and the soak turn it on.
		printf 'wset = 0\n'
		for ((i = 0; i < n; i++)); do
			printf '[shard.%d]\naddress = 127.0.0.1:%s\nmetrics = 127.0.0.1:%s\nbuckets = %d-%d\n' \
				"$i" "$(free_port)" "$(free_port)" $((i * per)) $(((i + 1) * per - 1))
		done
	} >"$file"
}

# conf_get FILE SECTION KEY
conf_get() {
	awk -v s="[$2]" -v k="$3" '
		/^\[/ { in_s = ($0 == s) }
		in_s && $1 == k { print $3; exit }' "$1"
}

# start NAME ARGS...: run cksmd in the background, log to $T/NAME.log
start() {
	local name=$1
	shift
	"$CKSMD" "$@" >"$T/$name.log" 2>&1 &
	PIDS+=($!)
	eval "PID_${name//-/_}=$!"
}

# stop NAME: SIGTERM and wait; fails if the daemon did not exit cleanly
stop() {
	local var="PID_${1//-/_}" rc=0
	kill -TERM "${!var}"
	reap "${!var}" 60 "$1, told to stop" || rc=$?
	[[ $rc -eq 0 ]] || fail "$1 exited with $rc after SIGTERM"
}

# agent_up: one more agent of a test that kills and starts them again
# (started with AGENT_ARGS, logged to agent-N, N in RUN; AGENT its pid),
# once its socket is there.
RUN=0
agent_up() {
	RUN=$((RUN + 1))
	start "agent-$RUN" "${AGENT_ARGS[@]}"
	AGENT=$!
	wait_for "agent $RUN's socket" 15 log_has "agent-$RUN" "processes attach at"
}

# wait_for DESCRIPTION SECONDS CMD...: poll until CMD succeeds
wait_for() {
	local what=$1 secs=$2 i
	shift 2
	for ((i = 0; i < secs * 10; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	fail "timed out waiting for $what"
}

log_has() { grep -q -- "$2" "$T/$1.log"; }

metric() {
	curl -sf "http://$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}

# vmflags PID ADDR: the VmFlags of the mapping of PID holding ADDR (hex).
vmflags() {
	awk -v a="$2" '
		/^[0-9a-f]+-[0-9a-f]+ / { split($1, r, "-"); inside = (r[1] <= a && a < r[2]) && length(r[1]) == length(a) }
		inside && /^VmFlags:/ { print; exit }' "/proc/$1/smaps"
}

# finish N: stop the hot reader $HOT (cksm-evictee hot, its lines in
# $T/hotN.json); its checks must all have passed.
finish() {
	kill -TERM "$HOT"
	wait "$HOT" || fail "the hot reader found bad pages: $(tail -1 "$T/hot$1.json")"
	jq -e '.bad == 0' <(tail -1 "$T/hot$1.json") >/dev/null || fail "bad pages: $(tail -1 "$T/hot$1.json")"
}

# uffd_sysctl_zero: vm.unprivileged_userfaultfd is 0 for this test, and
# as it was again at its exit.
uffd_sysctl_zero() {
	UFFD_SYSCTL=$(cat /proc/sys/vm/unprivileged_userfaultfd)
	trap 'echo "$UFFD_SYSCTL" >/proc/sys/vm/unprivileged_userfaultfd; cleanup' EXIT
	echo 0 >/proc/sys/vm/unprivileged_userfaultfd
}

# ksm_take: the kernel's KSM is this test's; as it was, unmerged, at exit.
ksm_take() {
	KSM=/sys/kernel/mm/ksm
	[[ -w $KSM/run ]] || fail "$KSM/run is not writable (run as root)"
	KSM_OLD=("$(cat $KSM/run)" "$(cat $KSM/pages_to_scan)" "$(cat $KSM/sleep_millisecs)"
		"$(cat $KSM/smart_scan 2>/dev/null)")
	trap 'ksm_restore; cleanup' EXIT
}
ksm_restore() {
	echo 2 >$KSM/run # unmerge everything KSM merged
	echo "${KSM_OLD[1]}" >$KSM/pages_to_scan
	echo "${KSM_OLD[2]}" >$KSM/sleep_millisecs
	[[ -z ${KSM_OLD[3]} ]] || echo "${KSM_OLD[3]}" >$KSM/smart_scan
	echo "${KSM_OLD[0]}" >$KSM/run
}

# start_node N [--set ...]: node-N's agent of a multi-node test, with its
# own socket ($T/N.sock), metrics (MET[N]) and data port, evicting fast
# (a scan every 100 ms, pages stable for one scan); waits for it to
# register with shard 0. The caller declares MET (declare -A MET).
start_node() {
	local n=$1 dp
	shift
	MET[$n]=127.0.0.1:$(free_port)
	dp=$(free_port)
	start "node-$n" -c "$T/cksm.conf" --role agent --set agent.node_name="node-$n" \
		--set agent.metrics="${MET[$n]}" --set agent.socket="$T/$n.sock" --set agent.state_dir="$T/$n.state" \
		--set agent.data_listen=127.0.0.1:"$dp" --set agent.data_address=127.0.0.1:"$dp" \
		--set agent.scan_mergeable=0 --set agent.pass_millisecs=100 --set agent.evict_age=1 \
		--set agent.evict_cooldown_millisecs=0 "$@"
	wait_for "node-$n registered" 10 log_has "node-$n" "registered with shard 0"
	local var="PID_node_$n"
	tr '\0' '\n' </proc/"${!var}"/cmdline | tail -n +2 >"$T/node-$n.args"
}

# heap_nodes DUP_IDLE_MS LOST_AFTER_MS: a shard (replicas = 1, a prune
# tick every 100 ms) and nodes a and b evicting as fast as they can (MET
# holds their metrics), for the tests of dupheap.py processes.
heap_nodes() {
	local n
	declare -gA MET
	cluster_conf "$T/cksm.conf" 1
	start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1 \
		--set cluster.dup_idle_millisecs="$1" --set cluster.prune_millisecs=100
	for n in a b; do
		start_node $n --set agent.sleep_millisecs=0 --set agent.evict_rate=1000000 \
			--set agent.cpu_percent=100 --set agent.pool_pages=65536 --set agent.lost_after_ms="$2"
	done
}

# dupheap NODE MB WAIT ROUNDS: tests/tools/dupheap.py under libcksm, as
# node NODE's process; its JSON line in $T/NODE.json, its errors in
# $T/NODE.err.
dupheap() {
	CKSM_SOCKET=$T/$1.sock CKSM_MERGE_ALL=1 LD_PRELOAD=$ROOT/build/libcksm.so timeout 180 \
		/usr/bin/python3 "$ROOT/tests/tools/dupheap.py" "$2" "$3" "$4" >"$T/$1.json" 2>"$T/$1.err"
}

# node_again [-n] N [VAR=VALUE...] [-- ARGS...]: node-N's agent once
# more, as start_node made it (its state directory, metrics and data
# port), with VARs in its environment and ARGS added; its log goes on in
# node-N.log. Waits for it to register again unless ARGS has --restore,
# or -n is given (an agent that may die at once, by a fault point).
node_again() {
	local nowait=0
	[[ $1 == -n ]] && nowait=1 && shift
	local n=$1 var="PID_node_$1" envs=() extra=() args regs
	shift
	while (($#)) && [[ $1 != -- ]]; do envs+=("$1"); shift; done
	(($#)) && shift && extra=("$@")
	mapfile -t args <"$T/node-$n.args"
	regs=$(grep -c 'registered with shard 0' "$T/node-$n.log" || true)
	env "${envs[@]}" "$CKSMD" "${args[@]}" "${extra[@]}" >>"$T/node-$n.log" 2>&1 &
	PIDS+=($!)
	eval "$var=$!"
	((nowait)) || [[ " ${extra[*]} " == *" --restore "* ]] ||
		wait_for "node-$n back" 15 bash -c "[[ \$(grep -c 'registered with shard 0' '$T/node-$n.log') -gt $regs ]]"
}
