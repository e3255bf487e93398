# Stopping a cluster's agents (an upgrade, an uninstall): node B's process
# has pages backed by node A's dups only (replicas = 1).
#  1. A and B stopped at once (SIGTERM together): A serves its pool while
#     B reads its pages home, and only then goes; B's process reads every
#     page right, with no agent running.
#  2. A stopped first, then B: B cannot bring those pages home, and they
#     wait, kept, for the next agents: the process touching one waits (no
#     zeroes, no SIGBUS); with A and B started again it reads every page.
#  3. B killed, then `cksmd --restore` on B: every kept page goes home and
#     it exits; the process reads every page with no agent running.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1
declare -A MET
start_node a --set agent.data_timeout_ms=500
start_node b --set agent.data_timeout_ms=500
m() { metric "${MET[$1]}" "$2"; }

hold() { # hold NODE NAME: a process of NODE with 256 duplicate pages, evicted
	CKSM_SOCKET=$T/$1.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/$2.json" &
	PIDS+=($!)
	eval "P_$2=$!"
	wait_for "$2 evicted" 30 test -s "$T/$2.json"
}
pair() { # pair ROUND: both nodes' processes, B's pages backed by A's dups
	hold a "a$1"
	hold b "b$1"
	[[ $(m b 'cksm_pages_backed{source="remote"}') -ge 100 ]] ||
		fail "round $1: node-b backed remotely: $(m b 'cksm_pages_backed{source="remote"}')"
}
check() { # check NAME: its process reads and checks every page, and exits
	local var="P_$1" rc=0
	kill -TERM "${!var}"
	wait "${!var}" || rc=$?
	[[ $rc == 0 ]] || fail "$1: exit $rc, $(tail -1 "$T/$1.json")"
	tail -1 "$T/$1.json" | jq -e '.bad == 0' >/dev/null || fail "$1: $(tail -1 "$T/$1.json")"
}

# 1. Together.
pair 1
kill -TERM "$PID_node_a" "$PID_node_b"
wait "$PID_node_a" || fail "node-a's stop"
wait "$PID_node_b" || fail "node-b's stop"
log_has node-a "page reads to other nodes while stopping" || fail "node-a did not wait for node-b's reads"
log_has node-b "wait for the next agent" && fail "node-b left pages waiting: $(grep 'wait for the next' "$T/node-b.log")"
echo "together: $(grep -o 'served [0-9]* page reads.*' "$T/node-a.log" | tail -1); node-b $(grep -o 'brought back [0-9]* backed pages' "$T/node-b.log" | tail -1)"
check b1
check a1

# 2. The holder first: node-b's pages wait for the next agents.
node_again a
node_again b
pair 2
stop node-a
stop node-b
grep -q "backed pages whose holders do not answer now, or whose zap was not answered, wait for the next agent" "$T/node-b.log" ||
	fail "node-b at its stop: $(grep 'before stopping' "$T/node-b.log" | tail -1)"
echo "holder first: node-b $(grep -o '[0-9]* backed pages whose holders.*' "$T/node-b.log" | tail -1)"
kill -TERM "$P_b2" # it reads every page: those kept wait
sleep 2
kill -0 "$P_b2" 2>/dev/null || fail "node-b's process did not wait: $(tail -1 "$T/b2.json")"
node_again a
node_again b
check b2
check a2
echo "holder first: node-b's process waited, then read every page right"

# 3. cksmd --restore after a kill.
pair 3
kill -9 "$PID_node_b"
wait "$PID_node_b" 2>/dev/null || true
node_again b -- --restore
wait "$PID_node_b" || fail "cksmd --restore exited with $?"
grep -q "brought back [0-9]* backed pages before stopping" "$T/node-b.log" || fail "--restore brought nothing back"
echo "--restore: node-b $(grep -o 'brought back [0-9]* backed pages' "$T/node-b.log" | tail -1)"
check b3 # with no agent on node-b
check a3
[[ $(m a cksm_sigbus_total) == 0 ]] || fail "pages lost on node-a"
echo ok
