# Duplicates in transparent huge pages are saved where it pays, by
# default (scan_thp = 1): a cold huge page made of duplicates is split
# and evicted; a huge page of which only a quarter is duplicates is kept
# whole (cksm_thp_pages_kept), since splitting it would cost TLB reach
# for little; a huge page read all the time is sampled once and then
# left alone. Every page is checked at the end.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
SECS=${THP_SECONDS:-20}
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=200 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=2 --set agent.evict_rate=1000000 \
	--set agent.wset=1 --set agent.wset_sample_ms=2000
wait_for "registration" 10 log_has agent "registered with shard 0"
m() { metric "$AMET" "$1"; }

# The regions are named with MADV_MERGEABLE once filled: a range the
# agent registers at attach (CKSM_MERGE_ALL) has its first touches filled
# page by page, and gets no huge pages (operations.md, "Huge pages").
LD_PRELOAD=$LIB CKSM_SOCKET=$T/agent.sock timeout $((SECS + 60)) \
	"$ROOT/build/cksm-hotcold" --thp --mergeable --hot-mb 4 --cold-mb 8 --mixed-mb 4 --threads 1 \
	--seconds "$SECS" --hold-ms 3000 >"$T/hc.json" 2>"$T/hc.err" &
HC=$!
wait_for "the end of the reads" $((SECS + 30)) grep -q resident "$T/hc.json"
kept=$(m cksm_thp_pages_kept)
echo "agent: evictions $(m cksm_evictions_total), THP pages kept whole $kept," \
	"skipped as THP $(m 'cksm_pages_skipped{reason="thp"}')," \
	"faults $(m 'cksm_faults_total{source="local"}') local, $(m 'cksm_faults_total{source="zero"}') zero"
rc=0
reap "$HC" 60 "cksm-hotcold" || rc=$?
echo "cksm-hotcold (exit $rc): $(tr '\n' ' ' <"$T/hc.json") $(head -c 300 "$T/hc.err")"
[[ $rc == 0 ]] || fail "cksm-hotcold exited with $rc (a page was wrong?)"
r() { head -n 1 "$T/hc.json" | jq -e "$1" >/dev/null; }
r '.thp_kb >= 8192' ||
	fail "the kernel gave too few huge pages (transparent_hugepage=$(cat /sys/kernel/mm/transparent_hugepage/enabled))"
r '.cold_resident < 0.25' || fail "the cold huge pages of duplicates were not evicted"
r '.mixed_resident == 1' || fail "a huge page of a quarter duplicates was split and evicted"
r '.hot_resident > 0.9' || fail "the hot huge pages were evicted"
((kept > 0)) || fail "no page was counted as kept for its huge page"
stop agent
echo "ok"
