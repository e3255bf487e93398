# Stopping a cluster's agents together (an upgrade, an uninstall): node
# B's process has pages backed by node A's dups only (replicas = 1); A's
# agent stops first, then B's. B cannot bring those pages back before it
# goes: they must not read as zeroes afterwards. Where the kernel can
# poison a page (Linux 6.6 and later) they are poisoned, so the process
# gets SIGBUS when it touches one.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1
declare -A MET
start_node a --set agent.data_timeout_ms=500
start_node b --set agent.data_timeout_ms=500
m() { metric "${MET[$1]}" "$2"; }

CKSM_SOCKET=$T/a.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/a.json" &
PA=$!
PIDS+=($PA)
wait_for "node-a's process evicted" 30 test -s "$T/a.json"
CKSM_SOCKET=$T/b.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/b.json" &
PB=$!
PIDS+=($PB)
wait_for "node-b's process evicted" 30 test -s "$T/b.json"
remote=$(m b 'cksm_pages_backed{source="remote"}')
[[ $remote -ge 100 ]] || fail "node-b backed remotely: $remote"

stop node-a
stop node-b
grep -q 'could not be and were poisoned' "$T/node-b.log" ||
	fail "node-b's stop: $(grep 'before stopping' "$T/node-b.log")"
echo "node-b at stop: $(grep -o 'brought back.*' "$T/node-b.log")"
kill -TERM $PB
rc=0
wait $PB || rc=$?
if (($(uname -r | cut -d. -f1) * 100 + $(uname -r | cut -d. -f2) >= 606)); then
	[[ $rc == 135 ]] || fail "node-b's process touching a page nobody could bring back: exit $rc, not SIGBUS (135): $(tail -1 "$T/b.json")"
	echo "node-b's process got SIGBUS, not zeroes"
else
	echo "this kernel cannot poison: the pages read zeroes (exit $rc)"
fi
kill -TERM $PA
wait $PA || fail "node-a's process read wrong data"
echo "ok"
