# cksmctl against a real shard and agent: every command answers in text
# and in JSON, the JSON of stats, nodes and matrix has the documented
# schema (docs/cli.md), --help works on every command, and the exit codes
# are 0 (all up), 1 (a shard down, named) and 2 (usage).
source "$(dirname "$0")/lib.sh"

cluster_conf "$T/cksm.conf" 2
"$ROOT/build/cksm-planter" --seed 11 --mergeable >"$T/p.json" &
PIDS+=($!)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start c1 -c "$T/cksm.conf" --role coord --shard 1
start agent -c "$T/cksm.conf" --role agent --set agent.node_name=cli-node --set agent.pass_millisecs=200
wait_for "registration" 10 bash -c "grep -q 'registered with shard 0' '$T/agent.log' && grep -q 'registered with shard 1' '$T/agent.log'"
ctl() { "$CKSMCTL" -c "$T/cksm.conf" "$@"; }

for cmd in status nodes stats matrix top; do
	ctl "$cmd" >"$T/$cmd.txt" || fail "cksmctl $cmd: exit $?: $(cat "$T/$cmd.txt")"
	ctl -o json "$cmd" >"$T/$cmd.json" || fail "cksmctl -o json $cmd"
	jq -e . "$T/$cmd.json" >/dev/null || fail "$cmd -o json is not JSON"
	ctl "$cmd" --help | grep -q "usage: cksmctl \[options\] $cmd" || fail "$cmd --help"
done
ctl --help | grep -q "stats" || fail "cksmctl --help"

# The documented schemas: keys, types, integers for sizes and counts.
jq -e '
	(.shards | type == "array" and length == 2) and
	all(.shards[]; (.id | type == "number") and (.up | type == "boolean") and (has("error"))) and
	(.cluster | keys == ["net_saved_bytes","pages_shared","pages_sharing","pages_unshared","saved_bytes","stable_node_chains","stable_node_dups"]) and
	all(.cluster | del(.net_saved_bytes)[]; type == "number" and . == floor and . >= 0) and
	(.cluster.net_saved_bytes | type == "number" and . == floor) and
	(.cluster.saved_bytes == .cluster.pages_sharing * 4096) and
	(.cluster.net_saved_bytes == ([.nodes[] | .pages_backed - .dups_held] | add // 0) * 4096) and
	(.nodes | type == "array") and
	all(.nodes[]; keys == ["dups_held","name","node_id","pages_backed"] and
		(.node_id | type == "number") and (.name | type == "string") and
		(.dups_held | . == floor) and (.pages_backed | . == floor))
' "$T/stats.json" >/dev/null || fail "stats JSON does not match its schema: $(cat "$T/stats.json")"
jq -e 'any(.nodes[]; .name == "cli-node")' "$T/stats.json" >/dev/null || fail "stats lacks the node"
# The census: null before the first full scan reached shard 0, then this.
wait_for "a census" 20 bash -c "\"$CKSMCTL\" -c '$T/cksm.conf' -o json stats | jq -e '.census != null' >/dev/null"
"$CKSMCTL" -c "$T/cksm.conf" -o json stats >"$T/stats.json"
jq -e '
	(.census | keys == ["cluster_adds_bytes","cluster_copies_kept","cluster_saveable_bytes","local_saveable_bytes","nodes","stable_bytes","zero_bytes"]) and
	all(.census | to_entries[] | select(.key | endswith("_bytes")) | .value; type == "number" and . == floor and . >= 0 and . % 4096 == 0) and
	(.census.cluster_copies_kept | type == "number" and . >= 1 and . <= 8) and
	(.census.cluster_adds_bytes == .census.cluster_saveable_bytes - .census.local_saveable_bytes) and
	all(.census.nodes[]; keys == ["local_saveable_bytes","node_id","stable_bytes","zero_bytes"])
' "$T/stats.json" >/dev/null || fail "census JSON does not match its schema: $(jq .census "$T/stats.json")"
jq -e '
	(.nodes | type == "array" and length == 2) and
	all(.nodes[]; keys == ["address","last_seen_ms","live","name","node_id","rack","shard"] and .live == true)
' "$T/nodes.json" >/dev/null || fail "nodes JSON: $(cat "$T/nodes.json")"
jq -e '(.cells | type == "array") and (.nodes | type == "array") and
	all(.cells[]; keys == ["bytes","from","pages","to"] and .bytes == .pages * 4096)' \
	"$T/matrix.json" >/dev/null || fail "matrix JSON: $(cat "$T/matrix.json")"
# top: the planter's row once the agent's first full scan reached shard 0.
wait_for "a top row" 20 bash -c "\"$CKSMCTL\" -c '$T/cksm.conf' -o json top | jq -e '.processes | length > 0' >/dev/null"
ctl -o json top >"$T/top.json"
jq -e --argjson pid "$(jq .pid "$T/p.json")" '
	(keys == ["cgroups","processes"]) and
	all(.processes[]; keys == ["cgroup","comm","fault_seconds","fault_share","node","node_id","pid","refaults","shareable_bytes","shared_bytes","stable_bytes","zero_bytes"] and
		(.refaults | type == "number" and . >= 0) and (.fault_share >= 0 and .fault_share <= 1) and
		all(.stable_bytes, .zero_bytes, .shared_bytes, .shareable_bytes; type == "number" and . == floor and . % 4096 == 0) and
		.shareable_bytes == .shared_bytes + .zero_bytes and .node == "cli-node") and
	any(.processes[]; .pid == $pid and .comm == "cksm-planter") and
	all(.cgroups[]; keys == ["cgroup","node","node_id","processes","shareable_bytes","shared_bytes","stable_bytes","zero_bytes"])
' "$T/top.json" >/dev/null || fail "top JSON does not match its schema: $(cat "$T/top.json")"
ctl top | grep -q "cksm-planter" || fail "top text: $(ctl top)"
grep -q "pages_unshared" "$T/stats.txt" || fail "stats text"
grep -q "cli-node" "$T/nodes.txt" || fail "nodes text"

# Usage errors exit 2; a shard down exits 1 and is named.
rc=0; ctl bogus 2>/dev/null || rc=$?
[[ $rc -eq 2 ]] || fail "unknown command: exit $rc"
rc=0; ctl stats extra 2>/dev/null || rc=$?
[[ $rc -eq 2 ]] || fail "extra argument: exit $rc"
stop c1
rc=0; ctl stats >/dev/null 2>"$T/down.err" || rc=$?
[[ $rc -eq 1 ]] && grep -q "shard 1 unreachable" "$T/down.err" || fail "shard down: exit $rc, $(cat "$T/down.err")"
ctl -o json stats >"$T/down.json" 2>/dev/null || true
jq -e '.shards[1].up == false and (.shards[1].error | type == "string")' "$T/down.json" >/dev/null ||
	fail "JSON does not show shard 1 down: $(cat "$T/down.json")"
echo "ok"
