# A daemon whose event loop is held (a callback that computes long) says
# so: a log line with the turn's length and its share of CPU, and
# cksm_loop_held_total. The fault point loop_held holds one turn in 20
# for 600 ms of CPU; the shard goes on serving its agent.
source "$(dirname "$0")/lib.sh"

grep -aq 'fault point %s is on' "$CKSMD" || skip "$CKSMD is not a test build (-DCKSM_INJECT)"
cluster_conf "$T/cksm.conf" 1
CMET=$(conf_get "$T/cksm.conf" shard.0 metrics)
CKSM_INJECT=loop_held=20 start c0 -c "$T/cksm.conf" --role coord --shard 0 \
	--set cluster.dead_after_ms=5000
declare -A MET
start_node a
wait_for "a held turn logged" 30 log_has c0 "the event loop was held"
line=$(grep -o 'the event loop was held [0-9]* ms in one turn ([0-9]* ms of it on the CPU)' "$T/c0.log" | head -1)
read -r held cpu < <(sed 's/[^0-9]*\([0-9]*\) ms in one turn (\([0-9]*\) ms.*/\1 \2/' <<<"$line")
((held >= 500 && cpu >= 400)) || fail "held $held ms, CPU $cpu ms: $line"
[[ $(metric "$CMET" cksm_loop_held_total) -ge 1 ]] || fail "cksm_loop_held_total: $(metric "$CMET" cksm_loop_held_total)"
# The shard served its agent all along (it never declared it dead).
log_has c0 "is dead" && fail "the shard declared its agent dead: $(grep 'is dead' "$T/c0.log")"
echo "shard: $line; cksm_loop_held_total $(metric "$CMET" cksm_loop_held_total)"
echo ok
