# Run inside the guest (tests/vm/run.sh): soft-RoCE (rdma_rxe) on a veth,
# a shard and three agents whose pools are read with RDMA READ.
#  1. node-a's and node-c's processes make the dups (replicas = 2, so
#     every content has a dup on two nodes); node-b's process, holding
#     the same contents, is backed by them remotely. It reads every page
#     back over RDMA, checked.
#  2. The holder of one replica is killed (SIGKILL): a second process of
#     node-b reads every page, served from the other replica. The holder
#     comes back with its kept pool and its own process reads its pages.
#     Hostile readers of node-c's pool are refused, and node-c serves on.
#  3. Both holders stopped (SIGSTOP): node-b's process still reads every
#     page (a READ needs no CPU of the holder). Then the three agents
#     stopped at once: every page comes home, and every process reads its
#     pages right with no agent.
#  4. transport = rdma on an address no RDMA device has is an error at
#     start, never TCP in its place.
# The nodes share one rxe device, told apart by their ports (rxe.sh).
source "$(dirname "$0")/../integration/lib.sh"

source "$(dirname "$0")/rxe.sh"

LIB=$ROOT/build/libcksm.so
IP=$RXE_IP
rxe_up || fail "no soft-RoCE in the guest"
echo "soft-RoCE: $(rdma link show | head -1)"

cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=2
declare -A MET DP
m() { metric "${MET[$1]}" "$2"; }
rnode() { # rnode N [--set ...]: node-N over RDMA on $IP
	local n=$1 dp
	shift
	dp=$(free_port)
	DP[$n]=$dp
	start_node "$n" --set agent.transport=rdma --set agent.evict_with=zap \
		--set agent.data_listen=$IP:"$dp" --set agent.data_address=$IP:"$dp" \
		--set agent.lost_after_ms=20000 --set agent.stop_wait_ms=1000 --set agent.pool_pages=16384 "$@"
}
rnode a
rnode b
rnode c
for n in a b c; do
	log_has "node-$n" "data transport: rdma" || fail "node-$n does not use RDMA"
	log_has "node-$n" "registered for RDMA READ" || fail "node-$n's pool is not registered"
done
hold() { # hold NODE NAME: a process of node NODE with 256 duplicate pages
	CKSM_SOCKET=$T/$1.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 60 >"$T/$2.json" &
	PIDS+=($!)
	eval "P_$2=$!"
	wait_for "$2 evicted" 120 test -s "$T/$2.json"
}
check() { # check NAME: its process reads and checks every page, and exits 0
	local pv=P_$1 rc=0
	kill -TERM "${!pv}"
	wait "${!pv}" || rc=$?
	[[ $rc == 0 ]] && tail -1 "$T/$1.json" | jq -e '.bad == 0' >/dev/null ||
		fail "$1: exit $rc, $(tail -1 "$T/$1.json")"
}
remote() { # remote N: node-b's pages backed remotely, at least N
	(($(m b 'cksm_pages_backed{source="remote"}') >= $1))
}
hold a a1
hold c c1
hold b b1
wait_for "node-b's pages backed remotely" 60 remote 100
echo "backed: node-a locally $(m a 'cksm_pages_backed{source="local"}'), node-c locally $(m c 'cksm_pages_backed{source="local"}'), node-b remotely $(m b 'cksm_pages_backed{source="remote"}')"
echo "RDMA readers of node-a's pool $(m a cksm_rdma_readers), of node-c's $(m c cksm_rdma_readers)"

# 1. node-b's process reads every page back (SIGTERM: check, exit).
check b1
R1=$(m b 'cksm_faults_total{source="remote"}')
[[ $R1 -ge 100 ]] || fail "remote faults: $R1"
[[ $(m a 'cksm_data_reads_total{status="ok"}') == 0 && $(m c 'cksm_data_reads_total{status="ok"}') == 0 ]] ||
	fail "pages were read over TCP: node-a $(m a 'cksm_data_reads_total{status="ok"}'), node-c $(m c 'cksm_data_reads_total{status="ok"}')"
echo "node-b: $R1 remote faults over RDMA, $(tail -1 "$T/b1.json" | jq -c '{checked, bad}'), read errors $(m b cksm_remote_read_errors_total)"

# Hostile readers of node-c's pool: no data, another key, an old or a
# replayed request are refused; a READ past the pool fails at the reader.
"$ROOT/build/cksm-rdmapeer" "$IP:${DP[c]}" "$T/cluster.key" >"$T/peer.json" ||
	fail "cksm-rdmapeer: $(cat "$T/peer.json")"
for why in "no cksm connect request" "bad key" "stale request" "replayed request"; do
	log_has node-c "refused: $why" || fail "node-c did not log a refusal: $why"
done
echo "hostile readers: $(jq -r '.case + ": " + .result + (if .why != "" then " (" + .why + ")" else "" end)' "$T/peer.json" | paste -sd';')"

# 2. A second process on node-b; one replica's holder is killed; the
# other serves.
hold b b2
wait_for "node-b's second process backed remotely" 120 remote 100
kill -9 "$PID_node_a"
wait "$PID_node_a" 2>/dev/null || true
check b2 # with node-a killed
R2=$(m b 'cksm_faults_total{source="remote"}')
[[ $((R2 - R1)) -ge 100 ]] || fail "remote faults after the kill: $((R2 - R1))"
[[ $(m b cksm_sigbus_total) == 0 ]] || fail "pages lost: $(m b cksm_sigbus_total)"
echo "node-a killed: node-b's second process read $(tail -1 "$T/b2.json" | jq -c '{checked, bad}'), $((R2 - R1)) remote faults served by node-c, read errors $(m b cksm_remote_read_errors_total)"

# node-a again, with its kept pool: its own process, whose faults waited
# for it, reads every page; so does node-c's.
node_again a
check a1
check c1
echo "node-a back: its process and node-c's read every page right"

# 3. The three agents stopped together (SIGTERM at once): node-b brings
# its remote pages home over RDMA while node-a and node-c, which cannot
# see its READs, wait for its queue pairs to go; every process then reads
# every page right with no agent running. Each agent exits 0 (no leak,
# no error).
hold a a4
hold c c4
hold b b4
hold b b5
wait_for "node-b's last processes backed remotely" 120 remote 200
# Both holders stopped (SIGSTOP): a READ needs no CPU of theirs, so
# node-b's process reads every page all the same.
kill -STOP "$PID_node_a" "$PID_node_c"
R3=$(m b 'cksm_faults_total{source="remote"}')
check b5
R4=$(m b 'cksm_faults_total{source="remote"}')
kill -CONT "$PID_node_a" "$PID_node_c"
((R4 - R3 >= 100)) || fail "remote faults with both holders stopped: $((R4 - R3))"
echo "both holders stopped: node-b's process read $(tail -1 "$T/b5.json" | jq -c '{checked, bad}'), $((R4 - R3)) remote faults"
kill -TERM "$PID_node_a" "$PID_node_b" "$PID_node_c"
for n in a b c; do
	pv=PID_node_$n
	rc=0
	reap "${!pv}" 60 "node-$n, stopped with the others" || rc=$?
	[[ $rc == 0 ]] || fail "node-$n exited $rc after SIGTERM"
done
log_has node-b "wait for the next agent" && fail "node-b left pages waiting: $(grep 'wait for the next' "$T/node-b.log")"
for p in a4 b4 c4; do check $p; done # no agent runs
echo "stopped together: node-b $(grep -o 'brought back [0-9]* backed pages' "$T/node-b.log" | tail -1), every process read its pages right"

# 4. rdma asked for where no device has the address: an error, not TCP.
rc=0
timeout 20 "$CKSMD" -c "$T/cksm.conf" --role agent --set agent.node_name=node-x \
	--set agent.socket="$T/x.sock" --set agent.state_dir="$T/x.state" \
	--set agent.metrics=127.0.0.1:"$(free_port)" --set agent.transport=rdma \
	--set agent.data_listen=127.0.0.1:"$(free_port)" >"$T/x.log" 2>&1 || rc=$?
[[ $rc != 0 && $rc != 124 ]] || fail "transport = rdma without a device on its address started (exit $rc)"
grep -q "transport = rdma cannot run here" "$T/x.log" || fail "no clear error: $(tail -3 "$T/x.log")"
echo "rdma on 127.0.0.1: $(grep -o 'transport = rdma cannot run here.*' "$T/x.log")"
echo ok
