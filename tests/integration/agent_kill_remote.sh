# Killed agents on two nodes: node-b's process has its pages backed by
# node-a's dups (replicas = 1), read over TCP.
#  1. The holder, node-a, is killed (SIGKILL) and node-b's process then
#     reads its pages: the faults wait, node-a starts again with its kept
#     pool, and they are served from it, intact. node-a's own process
#     comes back to the new node-a as well.
#  2. node-b's agent is killed by its fault point in the middle of a
#     remote fault (bytes read, page not filled): the next node-b serves
#     the fault again. Nothing reads zeroes; nothing gets SIGBUS.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1
declare -A MET
ARGS=(--set agent.lost_after_ms=30000)
start_node a "${ARGS[@]}"
start_node b "${ARGS[@]}"
m() { metric "${MET[$1]}" "$2"; }
hold() { # hold NODE NAME: a process of node NODE with 256 duplicate pages
	CKSM_SOCKET=$T/$1.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/$2.json" &
	PIDS+=($!)
	eval "P_$2=$!"
	wait_for "$2 evicted" 30 test -s "$T/$2.json"
}
hold a a1
hold b b1
[[ $(m b 'cksm_pages_backed{source="remote"}') -ge 100 ]] ||
	fail "node-b backed remotely: $(m b 'cksm_pages_backed{source="remote"}')"
echo "node-a backed locally $(m a 'cksm_pages_backed{source="local"}'), node-b remotely $(m b 'cksm_pages_backed{source="remote"}')"

# 1. The holder killed; node-b's process reads every page meanwhile.
kill -9 "$PID_node_a"
wait "$PID_node_a" 2>/dev/null || true
kill -TERM "$P_b1" # it reads and checks every page, and exits
sleep 2
kill -0 "$P_b1" 2>/dev/null || fail "node-b's process did not wait for the killed holder: $(tail -1 "$T/b1.json")"
node_again a
rc=0
wait "$P_b1" || rc=$?
[[ $rc == 0 ]] || fail "node-b's process after the holder came back: exit $rc, $(tail -1 "$T/b1.json")"
tail -1 "$T/b1.json" | jq -e '.bad == 0' >/dev/null || fail "node-b: $(tail -1 "$T/b1.json")"
log_has node-a "came back to this agent" || fail "node-a's process did not come back to the new node-a"
kill -TERM "$P_a1"
wait "$P_a1" || fail "node-a's process: $(tail -1 "$T/a1.json")"
echo "holder killed and back: node-b's process read $(tail -1 "$T/b1.json" | jq -c '{checked, bad}'), $(m b 'cksm_remote_fault_waits_total') faults waited for it"

# 2. node-b killed in the middle of a remote fault.
hold a a2
hold b b2
[[ $(m b 'cksm_pages_backed{source="remote"}') -ge 100 ]] || fail "second round not backed remotely"
kill -9 "$PID_node_b" # its pages stay backed, for the next one to serve
wait "$PID_node_b" 2>/dev/null || true
node_again b CKSM_INJECT=die_in_fault
sleep 1
kill -TERM "$P_b2"
wait_for "node-b killed at its fault point" 20 bash -c "! kill -0 $PID_node_b 2>/dev/null"
node_again b
rc=0
wait "$P_b2" || rc=$?
[[ $rc == 0 ]] || fail "node-b's process after a kill mid-fault: exit $rc, $(tail -1 "$T/b2.json")"
tail -1 "$T/b2.json" | jq -e '.bad == 0' >/dev/null || fail "node-b: $(tail -1 "$T/b2.json")"
echo "node-b killed mid remote fault: its process read $(tail -1 "$T/b2.json" | jq -c '{checked, bad}')"
[[ $(m a cksm_sigbus_total) == 0 && $(m b cksm_sigbus_total) == 0 ]] || fail "pages lost"
echo ok
