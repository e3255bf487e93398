# A dup is never released under a page just evicted against it from
# another node. Node A's process makes the dups and ends; node B's
# process, holding the same contents, is backed by A's dups, reads them
# all back (no page references them any more) and is evicted again, three
# times, with dup_idle_millisecs at 2 s. A release crossing the count of
# a page B evicted at that moment would free the page's only copy: B
# must read every object right, with no page lost.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1 \
	--set cluster.dup_idle_millisecs=2000 --set cluster.prune_millisecs=200
declare -A MET
for n in a b; do
	start_node $n --set agent.sleep_millisecs=0 --set agent.evict_rate=1000000 \
		--set agent.cpu_percent=100 --set agent.pool_pages=65536 --set agent.lost_after_ms=2000
done
m() { metric "${MET[$1]}" "$2"; }
heap() { # NODE WAIT ROUNDS
	CKSM_SOCKET=$T/$1.sock CKSM_MERGE_ALL=1 LD_PRELOAD=$LIB timeout 180 /usr/bin/python3 \
		"$ROOT/tests/tools/dupheap.py" 96 "$2" "$3" >"$T/$1.json" 2>"$T/$1.err"
}
heap a 6 1 &
PA=$!
PIDS+=($PA)
sleep 3
rc=0
heap b 6 4 || rc=$?
echo "node-b's dupheap.py (exit $rc): $(cat "$T/b.json" "$T/b.err" | tail -3)"
wait $PA || fail "node-a's process read an object wrong: $(cat "$T/a.json" "$T/a.err")"
echo "node-a: dups $(m a cksm_pool_dups); node-b: evictions $(m b cksm_evictions_total)," \
	"faults from node-a $(m b 'cksm_faults_total{source="remote"}'), lost $(m b cksm_sigbus_total)," \
	"reference updates refused $(grep -c "reference update refused" "$T/c0.log" || true)"
[[ $(m b 'cksm_faults_total{source="remote"}') -ge 1000 ]] || fail "too little was backed from node-a to tell"
[[ $rc == 0 ]] || fail "node-b's process read an object wrong or died (exit $rc)"
[[ $(m b cksm_sigbus_total) == 0 ]] || fail "node-b lost pages: a dup was released under them"
echo ok
