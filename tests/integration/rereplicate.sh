# Replicas are restored after a node is lost: with replicas = 2, nodes A
# and B hold dups of the same contents and node C's pages are backed by
# them remotely. B goes away; the shard orders a new replica, and a node
# copies it from A's pool over the data transport (DupCreate, carried out
# off the loop, the bytes' id checked), so C's pages have two copies again
# and still read right.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.replicas=2
declare -A MET
for n in a b c; do
	MET[$n]=127.0.0.1:$(free_port)
	dp=$(free_port)
	start "node-$n" -c "$T/cksm.conf" --role agent --set agent.node_name="node-$n" \
		--set agent.rack="rack-$n" --set agent.metrics="${MET[$n]}" --set agent.socket="$T/$n.sock" --set agent.state_dir="$T/$n.state" \
		--set agent.data_listen=127.0.0.1:"$dp" --set agent.data_address=127.0.0.1:"$dp" \
		--set agent.scan_mergeable=0 --set agent.pass_millisecs=100 --set agent.evict_age=1
	wait_for "node-$n registered" 10 log_has "node-$n" "registered with shard 0"
done
m() { metric "${MET[$1]}" "$2"; }
hold() { # NODE: a process holding the planted contents, served by NODE
	CKSM_SOCKET=$T/$1.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/$1.json" &
	PIDS+=($!)
	eval "P_$1=$!"
	wait_for "node-$1's process evicted" 30 test -s "$T/$1.json"
}
hold a
hold b
wait_for "dups on node-a and node-b" 20 bash -c "[[ \$(curl -sf http://${MET[a]}/metrics | awk '\$1 == \"cksm_pool_dups\" { print \$2 }') -ge 4 && \$(curl -sf http://${MET[b]}/metrics | awk '\$1 == \"cksm_pool_dups\" { print \$2 }') -ge 4 ]]"
hold c
[[ $(m c 'cksm_pages_backed{source="remote"}') -ge 100 ]] || fail "node-c not backed remotely: $(m c 'cksm_pages_backed{source="remote"}')"
DUPS_C=$(m c cksm_pool_dups)
echo "node-a $(m a cksm_pool_dups) dups, node-b $(m b cksm_pool_dups), node-c $DUPS_C; node-c backed remotely $(m c 'cksm_pages_backed{source="remote"}')"

# B goes: its process, then its agent. The shard declares it dead and
# orders the missing replicas; node-c copies them from node-a.
kill -TERM "$P_b"
wait "$P_b" || fail "node-b's process read wrong data"
stop node-b
wait_for "node-b dead" 10 log_has c0 "node node-b is dead"
wait_for "a replica copied" 20 log_has node-c "copied a dup of content"
wait_for "two replicas again" 20 bash -c "[[ \$(curl -sf http://${MET[c]}/metrics | awk '\$1 == \"cksm_pool_dups\" { print \$2 }') -ge \$(( $DUPS_C + 4 )) ]]"
echo "after node-b's loss: node-c holds $(m c cksm_pool_dups) dups (copied from node-a)"
# C's process still reads everything right.
kill -TERM "$P_c"
wait "$P_c" || fail "node-c's process read wrong data: $(tail -1 "$T/c.json")"
[[ $(m c cksm_sigbus_total) == 0 ]] || fail "pages lost at node-c"
echo "ok"
