# A region read all the time is not thrashed, while a cold region of the
# same process, holding the same contents, is evicted (wset.h). Each 2 MiB
# region gives a sample of wset_sample_pages first; the hot region's
# samples come straight back, so it is backed off and nothing more of it
# goes; the cold one's stay out, and the rest of it follows. The hot
# region's faults are bounded by its samples (a few per region), where
# without the working set every one of its pages would be evicted and
# fault back. Every page is checked at the end.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
SECS=${HOTCOLD_SECONDS:-20}
HOT_MB=16
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=200 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=2 --set agent.evict_rate=1000000 \
	--set agent.wset=1 --set agent.wset_sample_ms=2000 --set agent.wset_sample_pages=8
wait_for "registration" 10 log_has agent "registered with shard 0"
m() { metric "$AMET" "$1"; }

LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 CKSM_SOCKET=$T/agent.sock timeout $((SECS + 60)) \
	"$ROOT/build/cksm-hotcold" --hot-mb $HOT_MB --cold-mb 16 --threads 2 --seconds "$SECS" \
	--hold-ms 3000 >"$T/hc.json" 2>"$T/hc.err" &
HC=$!
# The counters before the check at the end faults the cold region back.
wait_for "the end of the reads" $((SECS + 30)) grep -q resident "$T/hc.json"
faults=$(($(m 'cksm_faults_total{source="local"}') + $(m 'cksm_faults_total{source="zero"}')))
echo "agent: evictions $(m cksm_evictions_total), faults on evicted pages $faults," \
	"held back: hot $(m 'cksm_evictions_held_total{reason="hot"}')," \
	"sampling $(m 'cksm_evictions_held_total{reason="sampling"}')," \
	"budget $(m 'cksm_evictions_held_total{reason="budget"}');" \
	"regions hot $(m 'cksm_wset_regions{state="hot"}'), open $(m 'cksm_wset_regions{state="open"}')"
rc=0
reap "$HC" 60 "cksm-hotcold" || rc=$?
echo "cksm-hotcold (exit $rc): $(tr '\n' ' ' <"$T/hc.json") $(head -c 300 "$T/hc.err")"
[[ $rc == 0 ]] || fail "cksm-hotcold exited with $rc (a page was wrong?)"
head -n 1 "$T/hc.json" | jq -e '.cold_resident < 0.25' >/dev/null ||
	fail "the cold region was not evicted"
head -n 1 "$T/hc.json" | jq -e '.hot_resident > 0.9' >/dev/null ||
	fail "the hot region was evicted"
# 8 hot regions, a sample of 8 pages each, sampled at most twice in the
# run (a 30 s back-off): 128; without the working set, 4096 or more.
bound=$((HOT_MB / 2 * 8 * 2))
((faults <= bound)) || fail "$faults faults on evicted pages, more than the samples allow ($bound)"
(($(m 'cksm_evictions_held_total{reason="hot"}') > 0)) || fail "no eviction was held back as hot"
stop agent
echo "ok"
