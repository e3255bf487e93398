# [agent] ksm = manage: the agent runs the kernel's KSM for as long as it
# runs, on what it hands over: a region read all the time (found hot by
# its sample, wset.h) goes to KSM, which merges its duplicates, while the
# cold region of the same contents is evicted. At the agent's stop the
# KSM settings it changed are put back as they were (run = 0 here), smart
# scan among them: off while the agent runs it.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
KSM=/sys/kernel/mm/ksm
[[ -e $KSM/run ]] || fail "this kernel has no KSM ($KSM)"
ksm_take
KSM_ADVISOR=$(cat $KSM/advisor_mode 2>/dev/null || echo none)
KSM_SMART=$(cat $KSM/smart_scan 2>/dev/null || echo none)
echo 0 >$KSM/run
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=200 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=2 --set agent.evict_rate=1000000 \
	--set agent.wset=1 --set agent.wset_sample_ms=2000 --set agent.ksm=manage --set agent.ksm_scan_seconds=2 \
	--set agent.ksm_max_cpu=50
wait_for "registration" 10 log_has agent "registered with shard 0"
wait_for "the kernel's KSM run by the agent" 10 log_has agent "running the kernel's KSM"
[[ $(cat $KSM/run) == 1 ]] || fail "ksm = manage left $KSM/run at $(cat $KSM/run)"
[[ $KSM_SMART == none || $(cat $KSM/smart_scan) == 0 ]] ||
	fail "ksm = manage left smart_scan at $(cat $KSM/smart_scan) (it skips handed pages for passes)"
m() { metric "$AMET" "$1"; }

LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 CKSM_SOCKET=$T/agent.sock timeout 90 \
	"$ROOT/build/cksm-hotcold" --hot-mb 8 --cold-mb 8 --threads 1 --seconds 30 \
	--hold-ms 3000 >"$T/hc.json" 2>"$T/hc.err" &
HC=$!
wait_for "cksm-hotcold" 10 bash -c "pgrep -f cksm-hotcold >/dev/null"
HPID=$(pgrep -f cksm-hotcold | tail -1)
merged=0
for ((i = 0; i < 300 && merged == 0; i++)); do
	merged=$(cat /proc/"$HPID"/ksm_merging_pages 2>/dev/null || echo 0)
	sleep 0.1
done
wait_for "the end of the reads" 60 grep -q resident "$T/hc.json"
merged=$(cat /proc/"$HPID"/ksm_merging_pages 2>/dev/null || echo "$merged")
echo "agent: windows handed to KSM $(m cksm_ksm_windows_total), evictions $(m cksm_evictions_total);" \
	"KSM merging $merged pages of the process; KSM run $(cat $KSM/run), advisor $(cat $KSM/advisor_mode 2>/dev/null)"
rc=0
reap "$HC" 60 "cksm-hotcold" || rc=$?
echo "cksm-hotcold (exit $rc): $(tr '\n' ' ' <"$T/hc.json") $(head -c 300 "$T/hc.err")"
[[ $rc == 0 ]] || fail "cksm-hotcold exited with $rc (a page was wrong?)"
(($(m cksm_ksm_windows_total) > 0)) || fail "no hot window was handed to KSM"
((merged > 0)) || fail "KSM merged nothing of the hot region"
head -n 1 "$T/hc.json" | jq -e '.cold_resident < 0.25' >/dev/null || fail "the cold region was not evicted"
stop agent
echo "after the agent's stop: KSM run $(cat $KSM/run), advisor $(cat $KSM/advisor_mode 2>/dev/null)"
[[ $(cat $KSM/run) == 0 ]] || fail "the agent's stop left $KSM/run at $(cat $KSM/run), not 0"
[[ $(cat $KSM/advisor_mode 2>/dev/null || echo none) == "$KSM_ADVISOR" ]] ||
	fail "the agent's stop left advisor_mode at $(cat $KSM/advisor_mode)"
[[ $(cat $KSM/smart_scan 2>/dev/null || echo none) == "$KSM_SMART" ]] ||
	fail "the agent's stop left smart_scan at $(cat $KSM/smart_scan), not $KSM_SMART"
[[ ! -e $T/state/ksm-saved ]] || fail "ksm-saved is left in the state directory"

# A killed agent cannot put KSM's settings back; the next one, started on
# the same state directory, does it at its own stop: the operator's
# settings, not the killed agent's.
[[ $KSM_SMART == none ]] || echo 1 >$KSM/smart_scan
KSM_SMART=$(cat $KSM/smart_scan 2>/dev/null || echo none)
start agent -c "$T/cksm.conf" --role agent --set agent.ksm=manage
wait_for "the kernel's KSM run by the agent again" 10 log_has agent "running the kernel's KSM"
kill -9 "$PID_agent"
reap "$PID_agent" 10 "the agent, killed" || true
echo "after kill -9: KSM run $(cat $KSM/run), smart_scan $(cat $KSM/smart_scan 2>/dev/null)," \
	"ksm-saved: $(tr '\n' ' ' <"$T/state/ksm-saved" 2>/dev/null)"
[[ -e $T/state/ksm-saved ]] || fail "the killed agent left no ksm-saved"
start agent -c "$T/cksm.conf" --role agent --set agent.ksm=manage
wait_for "the next agent" 10 log_has agent "running the kernel's KSM"
stop agent
echo "after the next agent's stop: KSM run $(cat $KSM/run), smart_scan $(cat $KSM/smart_scan 2>/dev/null)"
[[ $(cat $KSM/run) == 0 ]] || fail "the next agent left $KSM/run at $(cat $KSM/run), not 0"
[[ $(cat $KSM/smart_scan 2>/dev/null || echo none) == "$KSM_SMART" ]] ||
	fail "the next agent left smart_scan at $(cat $KSM/smart_scan), not $KSM_SMART"
[[ ! -e $T/state/ksm-saved ]] || fail "ksm-saved is left after the next agent's stop"

# An older agent's ksm-saved names no smart_scan (it never changed it): the
# new agent adds it as it finds it before turning it off, and puts it back.
if [[ $KSM_SMART != none ]]; then
	printf 'pages_to_scan=%s\nsleep_millisecs=%s\nrun=0\n' "${KSM_OLD[1]}" "${KSM_OLD[2]}" \
		>"$T/state/ksm-saved"
	start agent -c "$T/cksm.conf" --role agent --set agent.ksm=manage
	wait_for "an agent after an older one" 10 log_has agent "running the kernel's KSM"
	[[ $(cat $KSM/smart_scan) == 0 ]] || fail "smart_scan not turned off after an older agent"
	stop agent
	echo "after an older agent's ksm-saved: KSM run $(cat $KSM/run), smart_scan $(cat $KSM/smart_scan)"
	[[ $(cat $KSM/smart_scan) == "$KSM_SMART" ]] ||
		fail "smart_scan left at $(cat $KSM/smart_scan) after an older agent's ksm-saved, not $KSM_SMART"
	[[ $(cat $KSM/run) == 0 ]] || fail "run left at $(cat $KSM/run) after an older agent's ksm-saved"
fi
echo "ok"
