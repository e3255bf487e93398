# Named fault points (daemon/common/inject.h), in the test build: node B's
# process has its pages backed by node A's dups and reads them back while
# B's agent has every third UFFDIO_COPY refused with EAGAIN (as when the
# mm is changing) and every other read of a remote dup fail. Every page
# must still read right: a refused copy is tried again, a failed replica
# read is followed by the next replica, or the same one later.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
grep -aq 'fault point %s is on' "$CKSMD" || skip "$CKSMD is not a test build (-DCKSM_INJECT)"
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1
declare -A MET
start_node a
CKSM_INJECT=copy_eagain=3,replica_read_fails=2 start_node b
log_has node-b "fault point copy_eagain is on" || fail "node-b did not switch its fault points on"
m() { metric "${MET[$1]}" "$2"; }

CKSM_SOCKET=$T/a.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/a.json" &
PA=$!
PIDS+=($PA)
wait_for "node-a's process evicted" 30 test -s "$T/a.json"
CKSM_SOCKET=$T/b.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/b.json" &
PB=$!
PIDS+=($PB)
wait_for "node-b's process evicted" 30 test -s "$T/b.json"
[[ $(m b 'cksm_pages_backed{source="remote"}') -ge 100 ]] ||
	fail "node-b backed remotely: $(m b 'cksm_pages_backed{source="remote"}')"
kill -TERM $PB
wait $PB || fail "node-b's process read wrong data: $(tail -1 "$T/b.json")"
tail -1 "$T/b.json" | jq -e '.bad == 0' >/dev/null || fail "node-b: $(tail -1 "$T/b.json")"
remote=$(m b 'cksm_faults_total{source="remote"}') errors=$(m b cksm_remote_read_errors_total)
[[ $remote -ge 100 ]] || fail "remote faults: $remote"
[[ $errors -ge 10 ]] || fail "replica reads failed: $errors (the fault point did not bite)"
[[ $(m b cksm_sigbus_total) == 0 ]] || fail "pages lost: $(m b cksm_sigbus_total)"
echo "node-b: $remote remote faults served, $errors replica reads failed on purpose, every third copy refused; 0 pages wrong"
kill -TERM $PA
wait $PA || fail "node-a's process read wrong data"
echo "ok"
