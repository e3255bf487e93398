# Two coordinator shards serve disjoint bucket ranges for two real agents
# (two nodes) that hold the same planted pages: each shard receives exactly
# the digests of its own buckets, refuses none, promotes the contents both
# nodes hold into its stable tree, and answers with decisions; a node that
# stops is declared dead by both shards; a restarted shard is filled again
# by the agents' re-reports.
source "$(dirname "$0")/lib.sh"

PLANTER=$ROOT/build/cksm-planter
cluster_conf "$T/cksm.conf" 2
S0=$(conf_get "$T/cksm.conf" shard.0 metrics)
S1=$(conf_get "$T/cksm.conf" shard.1 metrics)

"$PLANTER" --seed 9 >"$T/pa.json" &
PIDS+=($!)
"$PLANTER" --seed 9 >"$T/pb.json" &
PIDS+=($!)
wait_for "planters" 5 bash -c "test -s '$T/pa.json' && test -s '$T/pb.json'"
PA=$(jq .pid "$T/pa.json")
PB=$(jq .pid "$T/pb.json")

start c0 -c "$T/cksm.conf" --role coord --shard 0
start c1 -c "$T/cksm.conf" --role coord --shard 1
agent() { # NAME PID RACK
	start "$1" -c "$T/cksm.conf" --role agent --set agent.node_name="$1" --set agent.rack="$3" \
		--set agent.state_dir="$T/$1.state" --set agent.socket="$T/$1.sock" \
		--set agent.metrics=127.0.0.1:"$(free_port)" --set agent.scan_mergeable=0 \
		--set agent.pids="$2" --set agent.pass_millisecs=200 --set agent.sleep_millisecs=5
}
agent node-a "$PA" r1
agent node-b "$PB" r2
for c in c0 c1; do
	wait_for "both nodes at $c" 10 bash -c "grep -q 'node node-a' '$T/$c.log' && grep -q 'node node-b' '$T/$c.log'"
done

# Both nodes hold the same 32 unique and 32 identical pages (and the
# planters' other stable pages): every such content is seen twice, by
# the shard that owns its bucket.
contents() { metric "$1" cksm_coord_contents; }
wait_for "contents in both trees" 30 bash -c "
	c0=\$(curl -sf http://$S0/metrics | awk '\$1==\"cksm_coord_contents\"{print \$2}')
	c1=\$(curl -sf http://$S1/metrics | awk '\$1==\"cksm_coord_contents\"{print \$2}')
	[[ \${c0:-0} -ge 8 && \${c1:-0} -ge 8 ]]"
for s in "$S0" "$S1"; do
	[[ $(metric "$s" 'cksm_coord_reports_refused_total{reason="foreign_bucket"}') == 0 ]] ||
		fail "a shard was sent digests of buckets it does not own"
	[[ $(metric "$s" 'cksm_coord_decisions_total{action="leave"}') -gt 0 ]] || fail "no decisions at $s"
	curl -sf "http://$s/metrics" | promtool check metrics || fail "promtool rejects $s"
done
# The two shards split the contents: neither has them all.
total=$(( $(contents "$S0") + $(contents "$S1") ))
(( $(contents "$S0") < total && $(contents "$S1") < total )) || fail "one shard took every content"
echo "contents: shard 0 $(contents "$S0"), shard 1 $(contents "$S1")"

# Forged dup references, negative counts and unordered dups are refused
# with an Error; the connection, and everything else, carries on.
C0=$(conf_get "$T/cksm.conf" shard.0 address)
"$PEER" "$C0" "$T/cluster.key" forged || fail "forged inputs"
[[ $(metric "$S0" 'cksm_coord_refused_total{what="reference"}') -ge 2 ]] || fail "refused references not counted"
[[ $(metric "$S0" 'cksm_coord_refused_total{what="dup"}') -ge 1 ]] || fail "refused dup not counted"
[[ $(metric "$S0" 'cksm_coord_refused_total{what="census"}') -ge 4 ]] || fail "refused censuses not counted"
# The census it was let send (the highest registers over 1000 pages)
# leaves the figures within the pages counted.
"$CKSMCTL" -c "$T/cksm.conf" -o json stats >"$T/forged_stats.json" || fail "stats after the forged census: exit $?"
jq -e '.census == null or (.census.local_saveable_bytes >= 0 and .census.cluster_saveable_bytes >= 0 and
	.census.cluster_saveable_bytes <= .census.stable_bytes + .census.zero_bytes)' "$T/forged_stats.json" >/dev/null ||
	fail "census after the forged one: $(jq -c .census "$T/forged_stats.json")"
"$PEER" "$C0" "$T/cluster.key" stats | grep -q "nodes 3" || fail "per-node stats: $("$PEER" "$C0" "$T/cluster.key" stats)"

# A stopped node is dead at both shards.
stop node-b
for c in c0 c1; do
	wait_for "node-b dead at $c" 10 log_has "$c" "node node-b is dead"
done

# Shard 0 restarts empty; node-a's re-reports reach it again.
stop c0
start c0 -c "$T/cksm.conf" --role coord --shard 0
wait_for "node-a back at shard 0" 15 log_has c0 "node node-a"
wait_for "node-a resynced with shard 0" 10 log_has c0 "node node-a resynced"
wait_for "shard 0 hears again" 20 bash -c "[[ \$(curl -sf http://$S0/metrics | awk '\$1==\"cksm_coord_digest_pages_total\"{print \$2}') -ge 16 ]]"
echo "ok"
