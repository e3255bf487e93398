# Pages dropped from real processes and brought back, with their memory
# intact (libcksm under LD_PRELOAD, a real agent and shard):
#  (a) threads rewrite pages at random while eviction runs: every check of
#      the program's own, and a digest of the whole region, match what it
#      wrote (CHURN_RUNS runs, 2 by default);
#  (b) fork after backing: parent and child read the right data; forked
#      children attach again and have their own pages evicted;
#  (c) mremap and munmap of backed ranges;
#  (d) madvise(MADV_DONTNEED) by the program reads zeroes, the rest intact;
#  (e) exit releases everything: no process, no backed page, and the dups
#      freed once the shard releases them;
#  libcksm without an agent (or with CKSM_DISABLE=1) changes nothing, and
#  garbage or silence on the agent's socket is dropped with a reason, and
#  a userfaultfd sent by another process than the one that connected too;
#  a stopped process does not stall the others' eviction;
#  (g) stressapptest (Debian's, unmodified, multi-threaded) passes its own
#      memory checks with every mapping mergeable.
# No page is ever lost: cksm_sigbus_total stays 0.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.dup_idle_millisecs=1000 \
	--set cluster.prune_millisecs=200
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.evict_cooldown_millisecs=0
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

# Hostile local clients: garbage, and silence, on the agent's socket. Each
# is dropped with a reason; the agent keeps serving.
echo "not a cksm message" | socat - "UNIX-CONNECT:$T/agent.sock,type=5" >/dev/null 2>&1 || true
sleep 7 | socat - "UNIX-CONNECT:$T/agent.sock,type=5" >/dev/null 2>&1 &
PIDS+=($!)
wait_for "the garbage refused" 5 log_has agent "a message of the wrong size; detached"
wait_for "the silent client dropped" 10 log_has agent "no handshake within 5 s; detached"
# A userfaultfd sent by a child of the process that connected is refused.
"$PEER" "$T/agent.sock" - uffd-child || fail "a child's userfaultfd"
wait_for "the child's userfaultfd logged" 5 log_has agent "a userfaultfd sent by another process"

# Without an agent libcksm does nothing: the program runs as without it.
CKSM_SOCKET=$T/nobody.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-churner" --threads 2 --pages 256 \
	--seconds 1 --quiet-ms 100 >"$T/alone.json" || fail "without an agent: $(cat "$T/alone.json")"
LD_PRELOAD=$LIB CKSM_DISABLE=1 "$ROOT/build/cksm-evictee" verify --pages 64 --wait-s 1 >"$T/off.json" ||
	fail "CKSM_DISABLE=1: $(cat "$T/off.json")"
jq -e '.evicted == 0' "$T/off.json" >/dev/null || fail "evicted with CKSM_DISABLE=1: $(cat "$T/off.json")"

# (a)
for ((i = 1; i <= ${CHURN_RUNS:-2}; i++)); do
	LD_PRELOAD=$LIB "$ROOT/build/cksm-churner" --threads 4 --pages 2048 --seconds 8 \
		--quiet-ms 400 >"$T/churn.json" 2>"$T/churn.err" ||
		fail "churn run $i: $(cat "$T/churn.json" "$T/churn.err")"
	echo "churn $i: $(cat "$T/churn.json")"
done
[[ $(m cksm_evictions_total) -gt 0 ]] || fail "nothing was evicted"
echo "evictions $(m cksm_evictions_total), aborted by racing writers $(m cksm_evictions_aborted_total)," \
	"faults: local $(m 'cksm_faults_total{source="local"}'), zero $(m 'cksm_faults_total{source="zero"}')"
[[ $(m 'cksm_faults_total{source="local"}') -gt 0 ]] || fail "no page came back from the pool"

# (b)-(d)
for sc in verify fork mremap munmap dontneed; do
	LD_PRELOAD=$LIB timeout 60 "$ROOT/build/cksm-evictee" "$sc" --pages 256 --wait-s 20 \
		>"$T/$sc.json" 2>"$T/$sc.err" || fail "$sc: $(cat "$T/$sc.json" "$T/$sc.err")"
	jq -e '.evicted >= 230 and .bad == 0' "$T/$sc.json" >/dev/null || fail "$sc: $(cat "$T/$sc.json")"
	echo "$sc: $(cat "$T/$sc.json")"
done
[[ $(m cksm_forks_total) -ge 1 ]] || fail "the fork was not followed"

# Memory marked MADV_DONTFORK (how RDMA registration marks what a device
# may write) is never dropped; where pages are moved out (the kernel
# refuses a pinned one: evict_pinned.sh) it is evicted like the rest.
LD_PRELOAD=$LIB timeout 60 "$ROOT/build/cksm-evictee" dma --pages 256 --wait-s 20 \
	>"$T/dma.json" 2>"$T/dma.err" || fail "dma: $(cat "$T/dma.json" "$T/dma.err")"
if log_has agent "by UFFDIO_MOVE"; then
	want='.dma_evicted >= 1'
else
	want='.dma_evicted == 0'
fi
jq -e ".evicted >= 230 and $want and .bad == 0" "$T/dma.json" >/dev/null || fail "dma: $(cat "$T/dma.json")"
echo "dma: $(cat "$T/dma.json")"

# (b) forked children attach again: three forked at once are told apart,
# each has its pages evicted and reads them right; a fork that execs is
# let go.
LD_PRELOAD=$LIB timeout 90 "$ROOT/build/cksm-evictee" children --pages 256 --wait-s 20 \
	>"$T/children.json" 2>"$T/children.err" || fail "children: $(cat "$T/children.json" "$T/children.err")"
jq -e '.evicted >= 230 and .bad == 0 and .children_evicted == 3' "$T/children.json" >/dev/null ||
	fail "children: $(cat "$T/children.json")"
echo "children: $(cat "$T/children.json")"
[[ $(m cksm_reattached_total) -ge 3 ]] || fail "children re-attached: $(m cksm_reattached_total)"

# (e)
wait_for "the forked child forgotten" 10 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1 == \"cksm_attached_processes\" { print \$2 }') == 0 ]]"
LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 20 >"$T/hold.json" &
HOLD=$!
wait_for "the held process evicted" 30 test -s "$T/hold.json"
[[ $(m 'cksm_pages_backed{source="local"}') -ge 100 && $(m 'cksm_pages_backed{source="zero"}') -ge 100 ]] ||
	fail "backed while held: local $(m 'cksm_pages_backed{source="local"}'), zero $(m 'cksm_pages_backed{source="zero"}')"
[[ $(m cksm_pool_dups) -ge 4 ]] || fail "pool dups while held: $(m cksm_pool_dups)"
# Net of the pool: what is backed less the pool's pages (the gauge follows the heartbeat).
wait_for "the net saving counted" 10 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1 == \"cksm_net_saved_bytes\" { print int(\$2) }') -gt 0 ]]"
echo "held: saved $(m cksm_saved_bytes), pool dups $(m cksm_pool_dups), net saved $(m cksm_net_saved_bytes)"
kill -KILL $HOLD
wait $HOLD 2>/dev/null || true
gone() {
	[[ $(m cksm_attached_processes) == 0 && $(m 'cksm_pages_backed{source="local"}') == 0 &&
		$(m 'cksm_pages_backed{source="zero"}') == 0 && $(m cksm_pool_dups) == 0 ]]
}
wait_for "everything released after the exit" 20 gone

# A stopped process does not stall eviction: its zap waits (parked) while
# another process is evicted; once continued it finishes and reads right.
LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hold --pages 256 --wait-s 60 --stop >"$T/stopped.json" &
STOPPED=$!
PIDS+=($STOPPED)
wait_for "an eviction parked" 20 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1 == \"cksm_evictions_parked\" { print \$2 }') -ge 1 ]]"
log_has agent "has not answered a zap" || fail "no word of the parked eviction"
LD_PRELOAD=$LIB timeout 60 "$ROOT/build/cksm-evictee" verify --pages 256 --wait-s 20 \
	>"$T/beside.json" 2>"$T/beside.err" || fail "beside a stopped process: $(cat "$T/beside.json" "$T/beside.err")"
jq -e '.evicted >= 230 and .bad == 0' "$T/beside.json" >/dev/null || fail "beside a stopped process: $(cat "$T/beside.json")"
echo "beside a stopped process: $(cat "$T/beside.json")"
kill -CONT $STOPPED
wait_for "the stopped process evicted" 30 test -s "$T/stopped.json"
[[ $(m cksm_evictions_parked) == 0 ]] || fail "still parked: $(m cksm_evictions_parked)"
kill -TERM $STOPPED
wait $STOPPED || fail "the stopped process read bad pages: $(cat "$T/stopped.json")"
jq -e '.bad == 0' <(tail -1 "$T/stopped.json") >/dev/null || fail "stopped: $(cat "$T/stopped.json")"
echo "stopped, continued: $(tail -1 "$T/stopped.json")"

# (g)
CKSM_MERGE_ALL=1 LD_PRELOAD=$LIB timeout 120 stressapptest -s 10 -M 64 -m 2 -C 1 -W \
	>"$T/sat.log" 2>&1 || fail "stressapptest: $(tail -20 "$T/sat.log")"
grep -q "Status: PASS" "$T/sat.log" || fail "stressapptest did not pass: $(tail -20 "$T/sat.log")"
echo "after stressapptest: evictions $(m cksm_evictions_total), faults local $(m 'cksm_faults_total{source="local"}')"

[[ $(m cksm_sigbus_total) == 0 ]] || fail "pages lost: cksm_sigbus_total $(m cksm_sigbus_total)"
curl -sf "http://$AMET/metrics" | promtool check metrics || fail "promtool rejects the agent's metrics"
stop agent
echo "ok"
