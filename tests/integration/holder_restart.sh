# A holder killed and back within half a second is asked again before a
# page is given up. Node A's process makes the dups and ends; node B's
# process is backed by A's dups (replicas = 1), reads them back and is
# evicted again, in rounds. A's agent is killed (kill -9) and started
# again 0.5 s later: B's reads of A fail meanwhile, and back A off for
# seconds, longer than lost_after_ms (5 s) leaves some faults. Before a
# fault's page is given up, every replica is asked once more, backed off
# or not: B must read every object right, and lose no page.
source "$(dirname "$0")/lib.sh"

heap_nodes 1000 5000
m() { metric "${MET[$1]}" "$2"; }
dupheap a 32 3 1 &
PA=$!
PIDS+=($PA)
sleep 2.5
dupheap b 32 2 8 &
PB=$!
PIDS+=($PB)
sleep 4
kill -9 "$PID_node_a"
wait "$PID_node_a" 2>/dev/null || true
sleep 0.5
node_again a
rc=0
wait $PB || rc=$?
wait $PA || fail "node-a's process read an object wrong: $(cat "$T/a.json" "$T/a.err")"
echo "node-b's process (exit $rc): $(cat "$T/b.json" "$T/b.err" | tail -2); faults from node-a" \
	"$(m b 'cksm_faults_total{source="remote"}'), deferred reads $(m b cksm_remote_reads_deferred_total)," \
	"lost $(m b cksm_sigbus_total)"
[[ $(m b 'cksm_faults_total{source="remote"}') -ge 1000 ]] || fail "too little was backed from node-a to tell"
[[ $rc == 0 ]] || fail "node-b's process read an object wrong or died (exit $rc)"
[[ $(m b cksm_sigbus_total) == 0 ]] || fail "node-b gave pages up while node-a was back"
echo ok
