# A node declared dead while its processes live on keeps the dups their
# pages are backed by. Node A's process makes the dups and ends; node B's
# process, holding the same contents, is backed by A's dups (replicas =
# 1). B's agent is then stopped (SIGSTOP) for 3 s: the shard declares B
# dead (dead_after_ms 600), and with dup_idle_millisecs at 1 s it would
# release A's dups, which only B's pages use, were B's references dropped
# with it. B's process must read every object right once its agent runs
# again, and no page may be lost.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1 \
	--set cluster.dup_idle_millisecs=1000 --set cluster.prune_millisecs=100
declare -A MET
for n in a b; do
	start_node $n --set agent.sleep_millisecs=0 --set agent.evict_rate=1000000 \
		--set agent.cpu_percent=100 --set agent.pool_pages=65536 --set agent.lost_after_ms=2000
done
m() { metric "${MET[$1]}" "$2"; }
heap() { # NODE WAIT
	CKSM_SOCKET=$T/$1.sock CKSM_MERGE_ALL=1 LD_PRELOAD=$LIB timeout 120 /usr/bin/python3 \
		"$ROOT/tests/tools/dupheap.py" 32 "$2" 1 >"$T/$1.json" 2>"$T/$1.err"
}
heap a 3 &
PA=$!
PIDS+=($PA)
sleep 2.5
heap b 8 &
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
