# A process that answers its zaps without dropping the pages (ZAPPED with
# status 0, the page still there: libcksm-slowzap.so's "lie") must not
# hold up the node's evictions. The agent waits a bounded time for the
# removal that an honest zap is followed by, then checks the page in
# pagemap: still there, the entry goes, the process is named and
# counted, and nothing more of it is evicted; an honest process beside it
# is evicted as usual, and neither reads anything wrong. Nor may
# processes whose zaps come late, or late and failed (slowzap's "slow").
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
SLOWZAP=$ROOT/build/libcksm-slowzap.so
EVICTEE=$ROOT/build/cksm-evictee
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 --set agent.evict_cooldown_millisecs=0
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
mkdir -p "$T/liar" && touch "$T/liar/lie"

LD_PRELOAD="$LIB $SLOWZAP" SLOWZAP_DIR=$T/liar "$EVICTEE" hold --pages 256 --wait-s 1 \
	>"$T/liar.json" 2>"$T/liar.err" &
LIAR=$!
PIDS+=($LIAR)
sleep 3 # its first zap is answered by now
rc=0
LD_PRELOAD=$LIB "$EVICTEE" verify --pages 256 --wait-s 15 >"$T/honest.json" 2>"$T/honest.err" || rc=$?
lrc=0
kill -TERM $LIAR
wait $LIAR || lrc=$?
echo "liar (exit $lrc): $(tail -n1 "$T/liar.json") $(head -c 200 "$T/liar.err")"
echo "honest (exit $rc): $(cat "$T/honest.json") $(head -c 200 "$T/honest.err")"
echo "agent: zaps unkept $(metric "$AMET" cksm_zaps_unkept_total), evictions $(metric "$AMET" cksm_evictions_total)"
jq -e '.evicted >= 230 and .bad == 0' "$T/honest.json" >/dev/null ||
	fail "a process beside the liar was not evicted (the evictor waits on the liar?)"
jq -se 'last | .bad == 0' "$T/liar.json" >/dev/null || fail "the liar read its pages wrong"
[[ $rc == 0 && $lrc == 0 ]] || fail "a process exited with an error"
log_has agent "answered the zap of page .* without dropping it (pagemap): nothing more of it is evicted" ||
	fail "the liar was not named"
[[ $(metric "$AMET" cksm_zaps_unkept_total) -ge 1 ]] || fail "the unkept zap was not counted"

# Two processes whose zaps come late (1.9 s each) and fail:
# the evictor, shared by all, waits at most ZAP_WAIT_MS for an answer,
# parks the rest, and backs such a process off, so a third is evicted.
for s in slow slowfail; do
	mkdir -p "$T/$s" && echo 1900 >"$T/$s/slow"
done
touch "$T/slow/fail" "$T/slowfail/fail"
for s in slow slowfail; do
	LD_PRELOAD="$LIB $SLOWZAP" SLOWZAP_DIR=$T/$s "$EVICTEE" hold --pages 256 --wait-s 1 \
		>"$T/$s.json" 2>"$T/$s.err" &
	eval "${s^^}=$!"
	PIDS+=($!)
done
sleep 3
rc=0
LD_PRELOAD=$LIB "$EVICTEE" verify --pages 256 --wait-s 15 >"$T/third.json" 2>"$T/third.err" || rc=$?
kill -TERM "$SLOW" "$SLOWFAIL"
src=0 frc=0
wait "$SLOW" || src=$?
wait "$SLOWFAIL" || frc=$?
echo "late and failed zaps (exit $src, $frc): $(tail -n1 "$T/slow.json"), $(tail -n1 "$T/slowfail.json")"
echo "beside them (exit $rc): $(cat "$T/third.json")"
jq -e '.evicted >= 230 and .bad == 0' "$T/third.json" >/dev/null ||
	fail "a process beside two slow zappers was not evicted (the evictor waits on them?)"
log_has agent "has not answered a zap for 250 ms" || fail "the late zaps were waited for, not parked"
for s in slow slowfail; do
	jq -se 'last | .bad == 0' "$T/$s.json" >/dev/null || fail "the $s process read its pages wrong"
done
[[ $rc == 0 && $src == 0 && $frc == 0 ]] || fail "a process exited with an error"
stop agent
echo "ok"
