# A page the program replaces or drops while the agent evicts it, in two
# ways the entry must follow (cksm-dropper's fixed and fork modes):
#   fixed  mmap(MAP_FIXED) of a new page over it (an UNMAP event; the
#          zap then drops the new, unregistered page: no REMOVE), the new
#          page made mergeable and read: zeroes, never the old content;
#   fork   madvise(MADV_DONTNEED) and fork at once: the child reads
#          zeroes, never the old content (its table is a copy of the
#          parent's, made while the eviction was under way).
# MODE=fixed|fork names one (both by default). In fork mode the agent
# learns at the fork whether the zap ran (libcksm keeps zaps and forks
# apart, and its zap state beside the beacon).
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
TOOL=$ROOT/build/cksm-dropper
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=3000 --set log.level=debug
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

bad=0
for mode in ${MODE:-fixed fork}; do
	rc=0
	LD_PRELOAD=$LIB timeout 120 "$TOOL" "$mode" --threads 4 --pages 1024 \
		--seconds "${DROP_SECONDS:-30}" --verbose >"$T/$mode.json" 2>"$T/$mode.err" || rc=$?
	echo "$mode: $(cat "$T/$mode.json")"
	[[ $rc -le 1 ]] || fail "cksm-dropper $mode exited with $rc: $(tail -5 "$T/$mode.err")"
	jq -e '.old == 0 and .old_under_write == 0 and .lost == 0 and .bad == 0 and
		.child_old == 0 and .child_other == 0' "$T/$mode.json" >/dev/null || bad=1
done
echo "agent: evictions $(m cksm_evictions_total), aborted $(m cksm_evictions_aborted_total)," \
	"faults local $(m 'cksm_faults_total{source="local"}'), fresh $(m 'cksm_faults_total{source="fresh"}')," \
	"removed inside an eviction $(grep -c "the program removed the page" "$T/agent.log" || true)"
[[ $bad == 0 ]] || fail "a replaced or dropped page read its old content (above)"
[[ $(m cksm_sigbus_total) == 0 ]] || fail "pages lost: cksm_sigbus_total $(m cksm_sigbus_total)"
stop agent
echo "ok"
