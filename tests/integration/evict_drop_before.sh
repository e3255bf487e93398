# A page dropped just before its eviction: the program frees a zero page
# with madvise(MADV_DONTNEED) as the agent is about to evict it, and
# writes into it a moment later (0..1 ms). The agent's write-protection
# of an empty PTE does nothing, its read faults the page in as the zero
# page (not write-protected), the page compares equal to zero and is
# zapped: a write landing between that read and the zap was lost, and the
# page read zeroes. cksm-dropper follows the agent's sweep so that many
# drops land there; every write must be found at the round's end.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=3000
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

rc=0
LD_PRELOAD=$LIB timeout 120 "$ROOT/build/cksm-dropper" before --threads 4 --pages 1024 \
	--seconds "${DROP_SECONDS:-30}" --delay-us 1000 --verbose >"$T/drop.json" 2>"$T/drop.err" || rc=$?
echo "dropper: $(cat "$T/drop.json")"
echo "agent: evictions $(m cksm_evictions_total), aborted $(m cksm_evictions_aborted_total)," \
	"faults zero $(m 'cksm_faults_total{source="zero"}'), fresh $(m 'cksm_faults_total{source="fresh"}')"
[[ $rc -le 1 ]] || fail "cksm-dropper exited with $rc: $(tail -5 "$T/drop.err")"
J=$T/drop.json
jq -e '.lost == 0 and .bad == 0' "$J" >/dev/null ||
	fail "$(jq -r '"\(.lost) of \(.tries) writes into pages dropped just before their eviction were lost (the page read zeroes; \(.seen_back) drops saw the page read back in by the agent before the write), \(.bad) pages held other bytes"' "$J")"
# Not a pass unless the race was run: the sweep followed, drops made.
jq -e '.evicted_seen >= 500 and .tries >= 300' "$J" >/dev/null ||
	fail "too few evictions followed or drops made: $(cat "$J")"
[[ $(m cksm_sigbus_total) == 0 ]] || fail "pages lost: cksm_sigbus_total $(m cksm_sigbus_total)"
stop agent
echo "ok"
