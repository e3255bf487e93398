# A key holder that never registered reads another node's pool: slots
# 0..15 at generation 1 and at random generations, live slots with a
# wrong content id or the same content's id in another domain. Every read
# is refused with zeroes, the holder logs each with what was wrong, a read
# naming the right content is still served, and a real process backed by
# the holder's dups reads all its pages back intact.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1
declare -A MET
start_node a
start_node b
DP=$(sed -n 's/^agent.data_listen=//p' "$T/node-a.args")
m() { metric "${MET[$1]}" "$2"; }

# A's process makes dups in A's pool; B's, with the same contents, is
# backed by them over TCP.
CKSM_SOCKET=$T/a.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 30 >"$T/a.json" &
PA=$!
PIDS+=($PA)
wait_for "node-a's process evicted" 30 test -s "$T/a.json"
CKSM_SOCKET=$T/b.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 30 >"$T/b.json" &
PB=$!
PIDS+=($PB)
wait_for "node-b's process evicted" 30 test -s "$T/b.json"
[[ $(m b 'cksm_pages_backed{source="remote"}') -ge 100 ]] ||
	fail "node-b backed remotely: $(m b 'cksm_pages_backed{source="remote"}')"

rc=0
"$BIN/cksm-datafuzz" --walls "$T/a.state" "$DP" "$T/cluster.key" "$PID_node_a" || rc=1
[[ $rc -eq 0 ]] || fail "a read across the wall was served (FAIL lines above)"
# The holder says what was wrong with each refused read, naming the reader.
n_gen=$(grep -c "from datafuzz refused: no such live slot" "$T/node-a.log" || true)
n_id=$(grep -c "from datafuzz refused: it holds another content" "$T/node-a.log" || true)
echo "node-a: $n_gen reads refused for their (slot, generation), $n_id for their content id"
((n_gen >= 32)) || fail "refused reads of dead (slot, generation) not logged: $n_gen"
((n_id >= 2)) || fail "refused reads of another content not logged: $n_id"

# Nothing else is affected: both processes read every page back intact,
# B's over the data port.
kill -TERM $PA $PB
wait $PA || fail "node-a's process read wrong data: $(tail -1 "$T/a.json")"
wait $PB || fail "node-b's process read wrong data: $(tail -1 "$T/b.json")"
tail -1 "$T/b.json" | jq -e '.bad == 0' >/dev/null || fail "node-b: $(tail -1 "$T/b.json")"
[[ $(m b 'cksm_faults_total{source="remote"}') -ge 100 ]] ||
	fail "remote faults: $(m b 'cksm_faults_total{source="remote"}')"
[[ $(m a cksm_sigbus_total) == 0 && $(m b cksm_sigbus_total) == 0 ]] || fail "pages lost"
echo "node-b faults from node-a's pool: $(m b 'cksm_faults_total{source="remote"}')"
! grep -E "runtime error|AddressSanitizer|LeakSanitizer" "$T"/node-*.log || fail "a sanitizer report"
stop node-a
echo "ok"
