# The agent scans for real: a planted process's mergeable regions show in
# its metrics exactly as planted, the digests of its stable pages reach
# the coordinator (identical pages merged into one digest), a configured
# cgroup gets its own totals, and a shard refuses digests of buckets it
# does not own without harm to anything else.
source "$(dirname "$0")/lib.sh"

PLANTER=$ROOT/build/cksm-planter # unsanitized: ASan makes mlock() a no-op
cluster_conf "$T/cksm.conf" 1
CMET=$(conf_get "$T/cksm.conf" shard.0 metrics)
AMET=$(conf_get "$T/cksm.conf" agent metrics)

"$PLANTER" --seed 3 --mergeable >"$T/m.json" &
PIDS+=($!)
wait_for "planter" 5 test -s "$T/m.json"

# A cgroup of our own under the cgroup v2 hierarchy, with a second planter.
CGROOT=""
for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
	[[ -e $d/cgroup.controllers ]] && CGROOT=$d && break
done
[[ -n $CGROOT ]] || fail "no cgroup v2 hierarchy on this machine"
CG=/cksm-test-$$
mkdir "$CGROOT$CG"
"$PLANTER" --seed 4 >"$T/g.json" &
PG=$!
PIDS+=($PG)
wait_for "cgroup planter" 5 test -s "$T/g.json"
echo "$PG" >"$CGROOT$CG/cgroup.procs"
trap 'kill $PG 2>/dev/null; wait $PG 2>/dev/null; rmdir "$CGROOT$CG" 2>/dev/null; cleanup' EXIT

start coord -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.node_name=scanner \
	--set agent.cgroups="$CG" --set agent.sleep_millisecs=10 --set agent.cpu_percent=50
wait_for "registration" 10 log_has agent "registered with shard 0"
wait_for "three full scans" 20 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1==\"cksm_full_scans_total\"{print \$2}') -ge 3 ]]"

m() { metric "$AMET" "$1"; }
# Mergeable regions of the first planter, plus the whole second planter:
# take the planted parts of the totals apart through the cgroup's figures.
g() { metric "$AMET" "cksm_cgroup_pages_$1{cgroup=\"$CG\"}"; }
[[ $(g stable) -ge 64 ]] || fail "cgroup planter: stable $(g stable) < 64"
[[ $(g zero) -ge 16 ]] || fail "cgroup planter: zero $(g zero) < 16"
[[ $(g volatile) -ge 8 ]] || fail "cgroup planter: volatile $(g volatile) < 8"
[[ $(( $(m cksm_pages_stable) - $(g stable) )) == 64 ]] || fail "mergeable stable: $(m cksm_pages_stable) - $(g stable) != 64"
[[ $(( $(m cksm_pages_zero) - $(g zero) )) == 16 ]] || fail "mergeable zero pages"
[[ $(( $(m cksm_pages_volatile) - $(g volatile) )) == 8 ]] || fail "mergeable volatile pages"
[[ $(m 'cksm_pages_skipped{reason="mlocked"}') == 16 ]] || fail "mlocked: $(m 'cksm_pages_skipped{reason="mlocked"}')"
[[ $(m 'cksm_pages_skipped{reason="shared"}') == 8 ]] || fail "shared: only the whole-process target's shared region counts"
[[ $(m 'cksm_pages_skipped{reason="zero_page"}') -ge 16 ]] || fail "zero_page skips"
[[ $(m cksm_scan_processes) -ge 2 ]] || fail "processes: $(m cksm_scan_processes)"

# Every reported page reached the shard, and identical pages were merged.
wait_for "digests at the shard" 10 bash -c "[[ \$(curl -sf http://$CMET/metrics | awk '\$1==\"cksm_coord_digest_pages_total\"{print \$2}') -ge \$(curl -sf http://$AMET/metrics | awk '\$1==\"cksm_digests_reported_total\"{print \$2}') ]]"
[[ $(metric "$CMET" cksm_coord_digests_total) -lt $(metric "$CMET" cksm_coord_digest_pages_total) ]] ||
	fail "identical pages were not merged into one digest"
# Those processes are only scanned: their digests say the pages stay.
[[ $(metric "$CMET" cksm_coord_digests_staying_total) -gt 0 ]] ||
	fail "no digest said its pages stay: $(metric "$CMET" cksm_coord_digests_staying_total)"
[[ $(m cksm_digest_pages_sent_total) == $(m cksm_digests_reported_total) ]] || fail "queued digests were not all sent"
curl -sf "http://$AMET/metrics" | promtool check metrics || fail "promtool rejects the agent's metrics"

# A shard that owns only half the buckets refuses the other half's digests.
stop agent
stop coord
sed -i 's/^buckets = 0-4095$/buckets = 0-2047/' "$T/cksm.conf"
printf '[shard.1]\naddress = 127.0.0.1:%s\nmetrics = 127.0.0.1:%s\nbuckets = 2048-4095\n' \
	"$(free_port)" "$(free_port)" >>"$T/cksm.conf"
cp "$T/cksm.conf" "$T/agent.conf"
# The agent still believes shard 0 owns everything.
sed -i '/^\[shard.1\]/,$d; s/^buckets = 0-2047$/buckets = 0-4095/' "$T/agent.conf"
start coord -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/agent.conf" --role agent --set agent.node_name=confused --set agent.sleep_millisecs=10
wait_for "refusal" 20 log_has coord "report refused: bucket [0-9]* belongs to shard 1, not 0"
[[ $(metric "$CMET" 'cksm_coord_reports_refused_total{reason="foreign_bucket"}') -ge 1 ]] || fail "refusal not counted"
log_has agent "shard 0 reports: report refused" || fail "the agent was not told"
log_has agent "lost shard" && fail "a refused report cost the connection"
echo "ok"
