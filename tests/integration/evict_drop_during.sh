# A page dropped between its entry and its zap: the program drops a page
# with madvise(MADV_DONTNEED) while the agent evicts it (the entry is in
# the agent's table, the zap not done yet). The REMOVE event of the
# program's own drop must take the entry out: otherwise the program's next
# read is filled from the pool with the old content where Linux promises
# zeroes, and a write made after the drop lands on that old content or is
# lost to the zap. cksm-dropper follows the agent's sweep of duplicate
# pages (backed by pool slots) and drops the next page at random moments
# of one eviction's time, then reads it (zeroes) or writes a word into it
# (found at the round's end).
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
# Debug level: the agent says when a page it evicted was removed by the
# program too (how many drops landed inside an eviction).
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=3000 --set log.level=debug
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

rc=0
LD_PRELOAD=$LIB timeout 120 "$ROOT/build/cksm-dropper" during --threads 4 --pages 1024 \
	--seconds "${DROP_SECONDS:-30}" --verbose >"$T/drop.json" 2>"$T/drop.err" || rc=$?
inside=$(grep -c "the program removed the page" "$T/agent.log" || true)
echo "dropper: $(cat "$T/drop.json")"
echo "agent: evictions $(m cksm_evictions_total), aborted $(m cksm_evictions_aborted_total)," \
	"faults local $(m 'cksm_faults_total{source="local"}'), fresh $(m 'cksm_faults_total{source="fresh"}');" \
	"drops inside an eviction (after the entry) $inside"
[[ $rc -le 1 ]] || fail "cksm-dropper exited with $rc: $(tail -5 "$T/drop.err")"
J=$T/drop.json
jq -e '.old == 0 and .old_under_write == 0 and .lost == 0 and .bad == 0' "$J" >/dev/null ||
	fail "$(jq -r '"of \(.tries) pages dropped during their eviction (\(.checks) checks): \(.old) read their old content, not zeroes; \(.old_under_write) writes landed on the old content; \(.lost) writes were lost; \(.bad) pages held other bytes"' "$J") (the agent saw $inside drops inside an eviction)"
# Not a pass unless the race was run: the sweep followed, drops made.
jq -e '.evicted_seen >= 1000 and .tries >= 300' "$J" >/dev/null ||
	fail "too few evictions followed or drops made: $(cat "$J")"
[[ $(m cksm_sigbus_total) == 0 ]] || fail "pages lost: cksm_sigbus_total $(m cksm_sigbus_total)"
stop agent
echo "ok"
