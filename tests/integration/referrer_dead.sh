# A node declared dead while its processes live on keeps the dups their
# pages are backed by. Node A's process makes the dups and ends; node B's
# process, holding the same contents, is backed by A's dups (replicas =
# 1). B's agent is then stopped (SIGSTOP) for 3 s: the shard declares B
# dead (dead_after_ms 600), and with dup_idle_millisecs at 1 s it would
# release A's dups, which only B's pages use, were B's references dropped
# with it. B's process must read every object right once its agent runs
# again, and no page may be lost.
source "$(dirname "$0")/lib.sh"

heap_nodes 1000 2000
m() { metric "${MET[$1]}" "$2"; }
dupheap a 32 3 1 &
PA=$!
PIDS+=($PA)
sleep 2.5
dupheap b 32 8 1 &
PB=$!
PIDS+=($PB)
wait $PA || fail "node-a's process read an object wrong: $(cat "$T/a.json" "$T/a.err")"
sleep 3
backed=$(m b 'cksm_pages_backed{source="remote"}')
kill -STOP "$PID_node_b"
sleep 3
kill -CONT "$PID_node_b"
log_has c0 "node node-b is dead" || fail "node-b was not declared dead: the test tells nothing"
rc=0
wait $PB || rc=$?
echo "node-b: $backed pages backed by node-a before its agent stopped; its process (exit $rc):" \
	"$(cat "$T/b.json" "$T/b.err" | tail -2); faults from node-a $(m b 'cksm_faults_total{source="remote"}')," \
	"lost $(m b cksm_sigbus_total)"
((backed >= 1000)) || fail "too little was backed from node-a to tell"
[[ $rc == 0 ]] || fail "node-b's process read an object wrong or died (exit $rc)"
[[ $(m b cksm_sigbus_total) == 0 ]] || fail "node-b lost pages: the dups went with its references"
echo ok
