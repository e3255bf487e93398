# (f) Two nodes: pages backed by a dup on the other node, read over the
# TCP data transport. Node A's process gets its pages backed by A's own
# dups; node B's process, holding the same contents, gets them backed by
# A's dups (replicas = 1), and reads them back intact. A's dups stay while
# B references them, even after A's own process is gone and across a
# restart of the shard, and go once B's references go. With the only holder
# gone, a backed page gives SIGBUS, never zeroes.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
CMET=$(conf_get "$T/cksm.conf" shard.0 metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1 \
	--set cluster.dup_idle_millisecs=1000 --set cluster.prune_millisecs=200
declare -A MET DP
for n in a b; do
	MET[$n]=127.0.0.1:$(free_port)
	dp=$(free_port)
	start "node-$n" -c "$T/cksm.conf" --role agent --set agent.node_name="node-$n" \
		--set agent.metrics="${MET[$n]}" --set agent.socket="$T/$n.sock" --set agent.state_dir="$T/$n.state" \
		--set agent.data_listen=127.0.0.1:"$dp" --set agent.data_address=127.0.0.1:"$dp" \
		--set agent.scan_mergeable=0 --set agent.pass_millisecs=100 --set agent.evict_age=1 \
		--set agent.evict_cooldown_millisecs=0 --set agent.lost_after_ms=2000
	wait_for "node-$n registered" 10 log_has "node-$n" "registered with shard 0"
	DP[$n]=127.0.0.1:$dp
done
# The data port: a stale read gets -ESTALE and zeroes, a bad request or an
# admin is disconnected, and the port keeps serving the nodes below.
"$PEER" "${DP[a]}" "$T/cluster.key" data || fail "the data port"
log_has node-a "a request that is not a page read" || fail "no word of the bad data request"
m() { metric "${MET[$1]}" "$2"; }

# A first: its own dups.
CKSM_SOCKET=$T/a.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/a.json" &
PA=$!
PIDS+=($PA)
wait_for "node-a's process evicted" 30 test -s "$T/a.json"
[[ $(m a 'cksm_pages_backed{source="local"}') -ge 100 ]] || fail "node-a backed locally: $(m a 'cksm_pages_backed{source="local"}')"
DUPS_A=$(m a cksm_pool_dups)
# Then B: the same contents, backed from A over TCP.
CKSM_SOCKET=$T/b.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/b.json" &
PB=$!
PIDS+=($PB)
wait_for "node-b's process evicted" 30 test -s "$T/b.json"
[[ $(m b 'cksm_pages_backed{source="remote"}') -ge 100 ]] ||
	fail "node-b backed remotely: $(m b 'cksm_pages_backed{source="remote"}'), local $(m b 'cksm_pages_backed{source="local"}')"
[[ $(m b cksm_pool_dups) == 0 ]] || fail "node-b made dups of its own: $(m b cksm_pool_dups)"
echo "node-a: $DUPS_A dups, backed locally $(m a 'cksm_pages_backed{source="local"}'); node-b backed remotely $(m b 'cksm_pages_backed{source="remote"}')"

# A's process goes: its dups stay, B still uses them.
kill -TERM $PA
wait $PA || fail "node-a's process read wrong data: $(cat "$T/a.json")"
sleep 3 # several prune rounds and dup_idle_millisecs
[[ $(m a cksm_pool_dups) -ge 1 ]] || fail "node-a freed dups that node-b references"
# The shard restarts and rebuilds its tree from the nodes' resync: B's
# references on A's dups come back with it, so they are not released.
stop c0
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1 \
	--set cluster.dup_idle_millisecs=1000 --set cluster.prune_millisecs=200
wait_for "both nodes back" 15 bash -c "[[ \$(grep -c 'resynced' '$T/c0.log') -ge 2 ]]"
sleep 3
[[ $(m a cksm_pool_dups) -ge 1 ]] || fail "after a shard restart node-a freed dups that node-b references"
# B reads everything back: over TCP, checked, intact.
kill -TERM $PB
wait $PB || fail "node-b's process read wrong data: $(tail -1 "$T/b.json")"
tail -1 "$T/b.json" | jq -e '.bad == 0' >/dev/null || fail "node-b: $(tail -1 "$T/b.json")"
[[ $(m b 'cksm_faults_total{source="remote"}') -ge 100 ]] || fail "remote faults: $(m b 'cksm_faults_total{source="remote"}')"
echo "node-b faults from node-a's pool: $(m b 'cksm_faults_total{source="remote"}'), read errors $(m b cksm_remote_read_errors_total)"
[[ $(m a 'cksm_data_reads_total{status="ok"}') -ge 100 && $(m a 'cksm_data_reads_total{status="stale"}') -ge 1 ]] ||
	fail "node-a's reads served: ok $(m a 'cksm_data_reads_total{status="ok"}'), stale $(m a 'cksm_data_reads_total{status="stale"}')"
curl -sf "http://${MET[a]}/metrics" | promtool check metrics || fail "promtool rejects node-a's metrics"
# The last references are gone: the shard releases A's dups and A frees them.
wait_for "node-a's dups freed" 20 bash -c "[[ \$(curl -sf http://${MET[a]}/metrics | awk '\$1 == \"cksm_pool_dups\" { print \$2 }') == 0 ]]"
[[ $(m a cksm_sigbus_total) == 0 && $(m b cksm_sigbus_total) == 0 ]] || fail "pages lost"

# A page whose every copy is gone is never read as zeroes: with its only
# holder stopped, touching it gives the process SIGBUS, logged and counted.
CKSM_SOCKET=$T/a.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/a2.json" &
PA2=$!
PIDS+=($PA2)
wait_for "node-a's second process evicted" 30 test -s "$T/a2.json"
CKSM_SOCKET=$T/b.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/b2.json" &
PB2=$!
PIDS+=($PB2)
wait_for "node-b's second process evicted" 30 test -s "$T/b2.json"
[[ $(m b 'cksm_pages_backed{source="remote"}') -ge 100 ]] || fail "second round not backed remotely"
kill -TERM $PA2
wait $PA2 || fail "node-a's second process read wrong data"
stop node-a
kill -TERM $PB2
rc=0; wait $PB2 || rc=$?
[[ $rc == 135 ]] || fail "node-b's process touching a lost page: exit $rc, not SIGBUS (135): $(tail -1 "$T/b2.json")"
[[ $(m b cksm_sigbus_total) -ge 1 ]] || fail "the lost page was not counted"
log_has node-b "cannot be brought back" || fail "the lost page was not logged"
echo "lost holder: node-b's process got SIGBUS; cksm_sigbus_total $(m b cksm_sigbus_total)"
echo "ok"
