# Dups released as pages come back do not flood the logs. A Python
# program's heap of duplicates is evicted, read back whole (every dup
# unreferenced at once), and evicted again, with dup_idle_millisecs at 2 s:
# releases cross the counts of pages evicted against them at that moment.
# Those pages keep their slot until they come back; the slot is not
# counted to the shard any more, whose dup is gone, so no reference
# update may be refused. Every object reads back right.
source "$(dirname "$0")/lib.sh"

cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.dup_idle_millisecs=2000 \
	--set cluster.prune_millisecs=200
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000 \
	--set agent.cpu_percent=100 --set agent.pool_pages=131072
wait_for "registration" 15 log_has agent "registered with shard 0"
rc=0
dupheap agent 192 8 3 || rc=$? # its socket is $T/agent.sock
echo "dupheap.py (exit $rc): $(cat "$T/agent.json" "$T/agent.err")"
[[ $rc == 0 ]] || fail "the program read an object wrong"
sleep 3
refused=$(grep -c "reference update refused" "$T/agent.log" || true)
echo "evictions $(metric "$AMET" cksm_evictions_total)," \
	"faults $(metric "$AMET" 'cksm_faults_total{source="local"}')," \
	"reference updates refused $refused," \
	"sigbus $(metric "$AMET" cksm_sigbus_total)"
[[ $(metric "$AMET" cksm_evictions_total) -gt 10000 ]] || fail "too little was evicted to tell"
[[ $(metric "$AMET" cksm_sigbus_total) == 0 ]] || fail "a page was lost"
((refused == 0)) || fail "$refused reference updates refused: released slots still counted to the shard"
echo ok
