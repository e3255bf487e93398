# A fork while other threads of the process fault evicted pages back:
# each child must read every page as its parent held it at the fork. The
# kernel copies the parent's page tables first and queues the fork event
# after, and a fault is read before an event: a page the parent faults
# back in between is still missing in the child, whose table is copied
# from the parent's when the event is read. cksm-racer's readers fault
# pages back through every fork; its children check their copies.
# FORK_SECONDS sets how long (20 by default).
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
RACER=$ROOT/build/cksm-racer
SECS=${FORK_SECONDS:-20}
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=50 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

rc=0
LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 timeout $((SECS + 60)) "$ROOT/build/cksm-racer" --pages 4096 \
	--threads 1 --rate 200 --readers 3 --fork-ms 15 --settle-ms 3000 --seconds "$SECS" \
	>"$T/racer.json" 2>"$T/racer.err" || rc=$?
echo "racer (exit $rc): $(head -c 800 "$T/racer.json") $(head -c 300 "$T/racer.err")"
echo "agent: evictions $(m cksm_evictions_total), forks $(m cksm_forks_total)," \
	"faults local $(m 'cksm_faults_total{source="local"}')"
jq -e '.forks > 0 and .reads > 0 and .min_resident < 1' "$T/racer.json" >/dev/null ||
	fail "nothing raced: no fork, no read, or nothing evicted"
jq -e '.bad == 0 and .child_bad == 0' "$T/racer.json" >/dev/null ||
	fail "a fork child read a page other than its parent held at the fork (above)"
[[ $rc == 0 ]] || fail "cksm-racer exited with $rc"
stop agent
echo "ok"
