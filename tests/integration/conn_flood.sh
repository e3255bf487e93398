# Connection floods crowd out nobody. A shard's control port and an
# agent's data port each get 1,000 TCP connections that never speak, half
# from one address and half from 50 others, reopened as soon as they are
# closed; an admin client asks the shard for stats over and over and
# never reads an answer. Meanwhile:
#  - `cksmctl status` works, every time;
#  - the agents stay registered;
#  - a process whose pages are backed by the other node's dups has them
#    evicted and faulted back over that node's flooded data port, with
#    the right content;
#  - the silent peers are displaced (per address, and the oldest when the
#    queue is full) and the reader that does not read is disconnected,
#    each with a log line naming the peer, and counted.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
FLOOD=$BIN/cksm-flood
SILENT=1000 # per port
ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= 3 * SILENT)) || skip "needs a descriptor limit of $((3 * SILENT)), have $(ulimit -n)"

cluster_conf "$T/cksm.conf" 1
COORD=$(conf_get "$T/cksm.conf" shard.0 address)
CMET=$(conf_get "$T/cksm.conf" shard.0 metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=1
wait_for "the shard" 10 log_has c0 "ready"
declare -A MET
start_node a --set agent.lost_after_ms=5000
start_node b --set agent.lost_after_ms=5000
DP_A=$(awk -F= '/^agent.data_listen=/ { print $2 }' "$T/node-a.args")
m() { metric "${MET[$1]}" "$2"; }

# flood NAME ADDR FIRST NSOURCES: half the silent peers of one port.
FLOODS=()
flood() {
	"$FLOOD" "$2" "$3" "$4" $((SILENT / 2)) 120 500 >"$T/$1.out" 2>&1 &
	PIDS+=($!)
	FLOODS+=($!)
}
flood flood-c1 "$COORD" 127.1.0.1 1
flood flood-c2 "$COORD" 127.2.0.1 50
flood flood-d1 "$DP_A" 127.3.0.1 1
flood flood-d2 "$DP_A" 127.4.0.1 50
"$PEER" "$COORD" "$T/cluster.key" slow-reader >"$T/slow.out" 2>&1 &
SLOW=$!
PIDS+=($SLOW)
sleep 2 # every port's queue full of silent peers

# The admin's view, all along.
status_ok=0
status() {
	local i
	for i in $(seq "$1"); do
		if "$CKSMCTL" -c "$T/cksm.conf" status >"$T/status.txt" 2>&1; then
			status_ok=$((status_ok + 1))
		else
			fail "cksmctl status during the flood: $(cat "$T/status.txt")"
		fi
		sleep 0.2
	done
}
status 10

# Node A's process: its own dups. Node B's, the same contents: backed by
# A's dups, read over A's flooded data port.
CKSM_SOCKET=$T/a.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 60 >"$T/a.json" &
PA=$!
PIDS+=($PA)
wait_for "node-a's process evicted" 30 test -s "$T/a.json"
CKSM_SOCKET=$T/b.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 60 >"$T/b.json" &
PB=$!
PIDS+=($PB)
wait_for "node-b's process evicted" 30 test -s "$T/b.json"
[[ $(m b 'cksm_pages_backed{source="remote"}') -ge 100 ]] ||
	fail "node-b backed remotely: $(m b 'cksm_pages_backed{source="remote"}'), local $(m b 'cksm_pages_backed{source="local"}')"
status 5
# B reads everything back, from A, during the flood.
kill -TERM $PB
rc=0
wait $PB || rc=$?
((rc == 0)) || fail "node-b's process: exit $rc: $(tail -1 "$T/b.json")"
tail -1 "$T/b.json" | jq -e '.bad == 0' >/dev/null || fail "node-b: $(tail -1 "$T/b.json")"
[[ $(m b 'cksm_faults_total{source="remote"}') -ge 100 ]] || fail "remote faults: $(m b 'cksm_faults_total{source="remote"}')"
[[ $(m b cksm_sigbus_total) == 0 ]] || fail "node-b's process got SIGBUS"
echo "node-b faults from node-a's pool during the flood: $(m b 'cksm_faults_total{source="remote"}'), read errors $(m b cksm_remote_read_errors_total)"
status 5
echo "cksmctl status during the flood: $status_ok of $status_ok"

# The reader that does not read is let go; named and counted.
wait $SLOW || fail "the slow reader: $(cat "$T/slow.out")"
cat "$T/slow.out"
wait_for "the slow reader's log line" 5 log_has c0 "it does not read"
[[ $(metric "$CMET" cksm_send_queue_overflows_total) -ge 1 ]] || fail "the slow reader was not counted"

# The silent peers gave way, named and counted, on both ports.
for f in "${FLOODS[@]}"; do kill -TERM "$f"; done
for f in "${FLOODS[@]}"; do wait "$f" || true; done
cat "$T"/flood-*.out
for w in "c0 $CMET 127.1.0.1 127.2.0." "node-a ${MET[a]} 127.3.0.1 127.4.0."; do
	read -r d met one many <<<"$w"
	grep -q "closing connection from $one:[0-9]*: unauthenticated after [0-9]* ms, displaced by a newer connection: [0-9]* from its address" "$T/$d.log" ||
		fail "$d: no log line of a peer of $one displaced by its own address's"
	grep -q "closing connection from ${many//./\\.}[0-9]*:[0-9]*: unauthenticated after [0-9]* ms, displaced by a newer connection: [0-9]* peers in the handshake" "$T/$d.log" ||
		fail "$d: no log line of a peer displaced from a full queue"
	a=$(metric "$met" 'cksm_handshakes_displaced_total{reason="address"}')
	f=$(metric "$met" 'cksm_handshakes_displaced_total{reason="full"}')
	[[ ${a:-0} -ge 1 && ${f:-0} -ge 1 ]] || fail "$d: displaced peers counted: address ${a:-none}, full ${f:-none}"
	echo "$d: displaced peers: by address $a, from a full queue $f"
done

# Nothing else was affected.
log_has node-a "lost shard" && fail "node-a lost its shard during the flood"
log_has node-b "lost shard" && fail "node-b lost its shard during the flood"
kill -TERM $PA
wait $PA || fail "node-a's process read wrong data: $(tail -1 "$T/a.json")"
for d in c0 node-a node-b; do
	var="PID_${d//-/_}"
	kill -0 "${!var}" || fail "$d died"
done
echo "ok"
