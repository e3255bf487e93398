# One of two replica holders hangs (its agent stopped with SIGSTOP): the
# pages it backs are read from the other replica. With replicas = 2, nodes
# A and B hold dups of the same contents, and node C's processes have their
# pages backed remotely by them, A first (A and C share a rack). A's agent
# is stopped, and C's first process reads all its pages back:
#  - every page reads right, from B (a SIGBUS counts as a failure here: B
#    is alive and holds every content);
#  - C's agent stays alive and registered at the shard (a fault waiting on
#    the hung holder must not stall the agent's loop past dead_after_ms,
#    nor may anything kill it);
#  - only the first read that meets the hung holder waits the whole
#    data_timeout_ms: all of them together take well under
#    N x data_timeout_ms (the bound is 3 x data_timeout_ms).
# Then A is continued, and C's second process reads its pages back right.
# Every cksmd, agent and shard, ignores SIGPIPE (a peer that went away is
# an error on one connection, never the daemon's death).
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
EVICTEE=$ROOT/build/cksm-evictee
TIMEOUT_MS=1000 # [agent] data_timeout_ms
PAGES=128       # per process: the first half 4 contents, backed remotely at C
REMOTE=$((PAGES / 2))
BOUND_MS=$((3 * TIMEOUT_MS))
WAIT_S=20 # how long C's first process may take to read its pages back at all

PROBLEMS=()
problem() {
	echo "problem: $*" >&2
	PROBLEMS+=("$*")
}

cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=2
declare -A MET RACK=([a]=rack-1 [b]=rack-2 [c]=rack-1)
for n in a b c; do
	MET[$n]=127.0.0.1:$(free_port)
	dp=$(free_port)
	start "node-$n" -c "$T/cksm.conf" --role agent --set agent.node_name="node-$n" \
		--set agent.rack="${RACK[$n]}" --set agent.metrics="${MET[$n]}" --set agent.socket="$T/$n.sock" --set agent.state_dir="$T/$n.state" \
		--set agent.data_listen=127.0.0.1:"$dp" --set agent.data_address=127.0.0.1:"$dp" \
		--set agent.data_timeout_ms=$TIMEOUT_MS \
		--set agent.scan_mergeable=0 --set agent.pass_millisecs=100 --set agent.evict_age=1
	wait_for "node-$n registered" 10 log_has "node-$n" "registered with shard 0"
done
m() { metric "${MET[$1]}" "$2"; }

# alive PID: the process exists and has not exited (not a zombie).
alive() {
	local st
	st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n $st && $st != Z ]]
}

# dead NAME WHEN: true, and the problem said, if NAME's agent is gone.
dead() {
	local var="PID_${1//-/_}" rc=0 why
	alive "${!var}" && return 1
	wait "${!var}" || rc=$?
	why="exit $rc"
	((rc > 128)) && why="$why, signal $((rc - 128))"
	((rc == 141)) && why="$why: SIGPIPE"
	problem "$1's agent died $2 ($why)"
	return 0
}

# Every cksmd ignores SIGPIPE: bit 13 (mask 1 << 12) of SigIgn.
for d in c0 node-a node-b node-c; do
	var="PID_${d//-/_}"
	ign=$(awk '$1 == "SigIgn:" { print $2 }' "/proc/${!var}/status")
	if (((0x$ign >> 12 & 1) == 0)); then
		problem "$d (cksmd, pid ${!var}) does not ignore SIGPIPE (SigIgn: $ign): a write to a connection its peer closed kills it"
	fi
done

# hold NAME NODE: a process holding the contents, served by NODE.
hold() {
	CKSM_SOCKET=$T/$2.sock LD_PRELOAD=$LIB "$EVICTEE" hold --pages $PAGES --wait-s 20 >"$T/$1.json" 2>"$T/$1.err" &
	PIDS+=($!)
	eval "P_$1=$!"
	wait_for "$1's process evicted" 30 test -s "$T/$1.json"
}
hold a a
hold b b
wait_for "dups on node-a and node-b" 20 bash -c "[[ \$(curl -sf http://${MET[a]}/metrics | awk '\$1 == \"cksm_pool_dups\" { print \$2 }') -ge 4 && \$(curl -sf http://${MET[b]}/metrics | awk '\$1 == \"cksm_pool_dups\" { print \$2 }') -ge 4 ]]"
hold c1 c
hold c2 c
wait_for "node-c's pages backed remotely" 30 bash -c "[[ \$(curl -sf http://${MET[c]}/metrics | awk '\$1 == \"cksm_pages_backed{source=\\\"remote\\\"}\" { print \$2 }') -ge $((2 * REMOTE)) ]]"
[[ $(m c cksm_pool_dups) == 0 ]] || fail "node-c made dups of its own: $(m c cksm_pool_dups)"
echo "node-a $(m a cksm_pool_dups) dups, node-b $(m b cksm_pool_dups); node-c backed remotely $(m c 'cksm_pages_backed{source="remote"}') pages of 2 processes"
READS_A=$(m a 'cksm_data_reads_total{status="ok"}')
READS_B=$(m b 'cksm_data_reads_total{status="ok"}')

# A hangs; C's first process reads everything back at once.
kill -STOP "$PID_node_a"
t0=$(date +%s%N)
kill -TERM "$P_c1"
for ((i = 0; i < WAIT_S * 20; i++)); do
	alive "$P_c1" || break
	sleep 0.05
done
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000))
killed=no
if alive "$P_c1"; then
	killed=yes
	problem "node-c's first process still reading its $REMOTE remote-backed pages after ${ms} ms, $(m c 'cksm_faults_total{source="remote"}') of them brought back so far (data_timeout_ms $TIMEOUT_MS; $REMOTE x data_timeout_ms is $((REMOTE * TIMEOUT_MS)) ms)"
	kill -KILL "$P_c1"
fi
rc=0
{ wait "$P_c1"; } 2>/dev/null || rc=$?
res=$(tail -n 1 "$T/c1.json")
nwrong=$(grep -c 'is wrong' "$T/c1.err" || true)
echo "holder node-a stopped: node-c's process read its pages back in ${ms} ms, exit $rc, $nwrong pages wrong: $res"
case $killed/$rc in
*/0 | yes/*) ;;
*/135) problem "node-c's process got SIGBUS (exit 135) with node-b alive holding every content; $(m c cksm_sigbus_total) SIGBUS counted" ;;
*) problem "node-c's process read $nwrong of its $PAGES pages wrong ($REMOTE of them remote-backed) with node-b alive holding every content (exit $rc): $res" ;;
esac
if ((ms >= BOUND_MS)); then
	problem "reading $REMOTE remote-backed pages with one holder hung took ${ms} ms, not under ${BOUND_MS} ms (3 x data_timeout_ms $TIMEOUT_MS): the hung holder is waited for again and again"
fi
C_ALIVE=yes
dead node-c "while its process read pages with node-a hung" && C_ALIVE=no
if log_has c0 "node node-c is dead"; then
	problem "the shard declared node-c dead while it read pages with node-a hung: $(grep -m1 'node node-c is dead' "$T/c0.log")"
fi
"$CKSMCTL" -c "$T/cksm.conf" -o json nodes >"$T/nodes.json" 2>"$T/nodes.err" || true # not 0 while a node is dead
jq -e 'any(.nodes[]; .name == "node-c" and .live)' "$T/nodes.json" >/dev/null 2>&1 ||
	problem "node-c is not live at the shard: $(jq -c '[.nodes[] | {name, live}]' "$T/nodes.json" 2>/dev/null || cat "$T/nodes.err")"
[[ $C_ALIVE == no ]] || echo "node-c's agent alive: $C_ALIVE; remote faults $(m c 'cksm_faults_total{source="remote"}'), remote read errors $(m c cksm_remote_read_errors_total); reads served by node-b $(($(m b 'cksm_data_reads_total{status="ok"}') - READS_B))"

# A continues, comes back to the shard, and C's second process reads
# everything right.
kill -CONT "$PID_node_a"
A_LIVE=no
for ((i = 0; i < 150; i++)); do
	alive "$PID_node_a" || break
	"$CKSMCTL" -c "$T/cksm.conf" -o json nodes >"$T/nodes.json" 2>/dev/null || true # not 0 while a node is dead
	if jq -e 'any(.nodes[]; .name == "node-a" and .live)' "$T/nodes.json" >/dev/null 2>&1; then
		A_LIVE=yes
		break
	fi
	sleep 0.1
done
if ! dead node-a "after it was continued"; then
	[[ $A_LIVE == yes ]] || problem "node-a not live at the shard 15 s after it was continued"
fi
if [[ $C_ALIVE == yes ]]; then
	kill -TERM "$P_c2"
	rc=0
	wait "$P_c2" || rc=$?
	[[ $rc == 0 ]] || problem "after node-a continued, node-c's second process read wrong (exit $rc): $(tail -n 1 "$T/c2.json")"
	echo "node-a continued: node-c's second process exit $rc: $(tail -n 1 "$T/c2.json"); reads served by node-a $(($(m a 'cksm_data_reads_total{status="ok"}') - READS_A))"
	[[ $(m c cksm_sigbus_total) == 0 ]] || problem "node-c counted $(m c cksm_sigbus_total) SIGBUS"
fi
for p in a b; do
	var="P_$p"
	kill -TERM "${!var}"
	rc=0
	wait "${!var}" || rc=$?
	[[ $rc == 0 ]] || problem "node-$p's process read wrong (exit $rc): $(tail -n 1 "$T/$p.json")"
done

if ((${#PROBLEMS[@]})); then
	printf '  - %s\n' "${PROBLEMS[@]}" >&2
	fail "${#PROBLEMS[@]} problem(s) with holder node-a hung (listed above)"
fi
stop node-c
echo "ok"
