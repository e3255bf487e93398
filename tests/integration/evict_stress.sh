# Stress: served processes race the agent's eviction at a high rate with
# their own writes, madvise(MADV_DONTNEED), mremap, forks (each child
# checks its copy, writes, checks again and exits) and early exits, all
# at once, in several processes (cksm-racer). Each keeps a shadow of what
# every page must hold and checks pages as it goes and every page at the
# end: no page may ever be wrong, and a dropped page reads zeroes at once,
# never what it held. Afterwards the agent holds nothing of any of them.
# STRESS_SECONDS sets how long the processes race (90 by default).
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
RACER=$ROOT/build/cksm-racer
SECS=${STRESS_SECONDS:-90}
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.dup_idle_millisecs=1000 \
	--set cluster.prune_millisecs=200
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=50 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

# race NAME ARGS...: one cksm-racer; its counts in $T/NAME.json, its exit
# status in $T/NAME.rc.
race() {
	local name=$1 rc=0
	shift
	LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 timeout $((SECS + 60)) "$RACER" --threads 4 --rate 3000 \
		--settle-ms 2000 "$@" >"$T/$name.json" 2>"$T/$name.err" || rc=$?
	echo "$rc" >"$T/$name.rc"
}
# Short lives, one after another: each exits mid-way with pages evicted.
exits() {
	local i=0 until=$((SECONDS + SECS))
	while ((SECONDS + 6 <= until)); do
		race "exit$((i++))" --pages 2048 --seconds 4 --dontneed 10 --mremap-ms 300 \
			--fork-ms 900 --exit-early
	done
}
race writes --pages 8192 --seconds "$SECS" --dontneed 20 &
R1=$!
race forks --pages 8192 --seconds "$SECS" --dontneed 10 --mremap-ms 300 --fork-ms 700 &
R2=$!
race drops --pages 4096 --seconds "$SECS" --dontneed 45 --mremap-ms 500 &
R3=$!
exits &
R4=$!
PIDS+=($R1 $R2 $R3 $R4)
wait $R1 $R2 $R3 $R4

for f in "$T"/*.json; do
	n=$(basename "$f" .json)
	echo "$n (exit $(cat "$T/$n.rc")): $(head -c 600 "$f") $(head -c 300 "$T/$n.err")"
done
jq -s '{processes: length, ops: (map(.ops) | add), checks: (map(.checks) | add),
	bad: (map(.bad + .child_bad) | add), old: (map(.old) | add), forks: (map(.forks) | add),
	remaps: (map(.remaps) | add)}' "$T"/*.json >"$T/total.json"
faults=$(($(m 'cksm_faults_total{source="local"}') + $(m 'cksm_faults_total{source="zero"}')))
echo "agent: evictions $(m cksm_evictions_total), aborted $(m cksm_evictions_aborted_total)," \
	"faults local $(m 'cksm_faults_total{source="local"}'), zero $(m 'cksm_faults_total{source="zero"}')," \
	"fresh $(m 'cksm_faults_total{source="fresh"}'), forks followed $(m cksm_forks_total)," \
	"sigbus $(m cksm_sigbus_total)"
echo "total: $(jq -r '"\(.processes) processes, \(.ops) ops, \(.checks) checks, \(.forks) forks, \(.remaps) mremaps"' "$T/total.json")," \
	"$(m cksm_evictions_total) evictions, $faults faults from backed pages, bad $(jq .bad "$T/total.json") (old content $(jq .old "$T/total.json"))"
jq -e '.bad == 0 and .old == 0' "$T/total.json" >/dev/null ||
	fail "$(jq -r '"\(.bad) of \(.checks) checks found a page wrong (\(.old) of them a dropped page that read its old content, not zeroes), in \(.ops) ops"' "$T/total.json")"
for f in "$T"/*.rc; do
	[[ $(cat "$f") == 0 ]] || fail "$(basename "$f" .rc) exited with $(cat "$f")"
done
[[ $(m cksm_sigbus_total) == 0 ]] || fail "pages lost: cksm_sigbus_total $(m cksm_sigbus_total)"
[[ $(m cksm_evictions_total) -ge 10000 ]] || fail "too few evictions: $(m cksm_evictions_total)"
gone() {
	[[ $(m cksm_attached_processes) == 0 && $(m 'cksm_pages_backed{source="local"}') == 0 &&
		$(m 'cksm_pages_backed{source="zero"}') == 0 && $(m cksm_saved_bytes) == 0 ]]
}
wait_for "everything released after the exits" 20 gone
stop agent
echo "ok"
