# A dup is never released under a page just evicted against it from
# another node. Node A's process makes the dups and ends; node B's
# process, holding the same contents, is backed by A's dups, reads them
# all back (no page references them any more) and is evicted again, three
# times, with dup_idle_millisecs at 2 s. A release crossing the count of
# a page B evicted at that moment would free the page's only copy: B
# must read every object right, with no page lost.
source "$(dirname "$0")/lib.sh"

heap_nodes 2000 2000
m() { metric "${MET[$1]}" "$2"; }
dupheap a 96 6 1 &
PA=$!
PIDS+=($PA)
sleep 3
rc=0
dupheap b 96 6 4 || rc=$?
echo "node-b's dupheap.py (exit $rc): $(cat "$T/b.json" "$T/b.err" | tail -3)"
wait $PA || fail "node-a's process read an object wrong: $(cat "$T/a.json" "$T/a.err")"
echo "node-a: dups $(m a cksm_pool_dups); node-b: evictions $(m b cksm_evictions_total)," \
	"faults from node-a $(m b 'cksm_faults_total{source="remote"}'), lost $(m b cksm_sigbus_total)," \
	"reference updates refused $(grep -c "reference update refused" "$T/c0.log" || true)"
[[ $(m b 'cksm_faults_total{source="remote"}') -ge 1000 ]] || fail "too little was backed from node-a to tell"
[[ $rc == 0 ]] || fail "node-b's process read an object wrong or died (exit $rc)"
[[ $(m b cksm_sigbus_total) == 0 ]] || fail "node-b lost pages: a dup was released under them"
echo ok
