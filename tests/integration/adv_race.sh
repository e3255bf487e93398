# Adversarial: a served process's own writes, madvise(MADV_DONTNEED),
# mremap, fork and exit race eviction at a high rate (cksm-racer), and
# every page must read what the program last wrote (or zeroes after
# DONTNEED). Not part of `make test`: run by hand, as root,
#   CKSM_BIN=build/san RACER=build/cksm-racer bash tests/integration/adv_race.sh
# Build the racer first (not in the Makefile):
#   gcc -O2 -g -Wall -pthread -o build/cksm-racer tests/tools/racer.c
# RACE_ARGS="..." adds cksm-racer options to every run; RUNS picks runs.
source "$(dirname "$0")/lib.sh"

LIB=${CKSM_LIB:-$ROOT/build/libcksm.so}
RACER=${RACER:-$ROOT/build/cksm-racer}
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.dup_idle_millisecs=1000 \
	--set cluster.prune_millisecs=200
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=50 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000 --set log.level=debug
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

rc_all=0
run() { # NAME ARGS...
	local name=$1 rc=0
	shift
	LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 timeout 120 "$RACER" "$@" ${RACE_ARGS:-} >"$T/$name.json" 2>"$T/$name.err" || rc=$?
	echo "$name (rc $rc): $(cat "$T/$name.json") $(head -c 300 "$T/$name.err")"
	[[ $rc -eq 0 ]] || rc_all=1
}
for r in ${RUNS:-writes remap fork all dontneed exit}; do
	case $r in
	writes) run writes --pages 2048 --threads 4 --seconds 8 --rate 400 ;;
	remap) run remap --pages 2048 --threads 4 --seconds 8 --rate 400 --mremap-ms 300 ;;
	fork) run fork --pages 2048 --threads 4 --seconds 8 --rate 400 --fork-ms 700 ;;
	all) run all --pages 2048 --threads 4 --seconds 10 --rate 400 --mremap-ms 400 --fork-ms 900 ;;
	dontneed) run dontneed --pages 2048 --threads 4 --seconds 8 --rate 400 --dontneed 15 ;;
	exit) run exit --pages 2048 --threads 4 --seconds 4 --rate 400 --mremap-ms 300 --exit-early ;;
	esac
done
echo "agent: evictions $(m cksm_evictions_total) aborted $(m cksm_evictions_aborted_total)" \
	"faults local $(m 'cksm_faults_total{source="local"}') zero $(m 'cksm_faults_total{source="zero"}')" \
	"fresh $(m 'cksm_faults_total{source="fresh"}') sigbus $(m cksm_sigbus_total) forks $(m cksm_forks_total)" \
	"dropped offers $(m cksm_eviction_offers_dropped_total)"
gone() {
	[[ $(m cksm_attached_processes) == 0 && $(m 'cksm_pages_backed{source="local"}') == 0 &&
		$(m 'cksm_pages_backed{source="zero"}') == 0 && $(m cksm_saved_bytes) == 0 ]]
}
wait_for "everything released after the runs" 20 gone || true
echo "after: attached $(m cksm_attached_processes) backed local $(m 'cksm_pages_backed{source="local"}')" \
	"zero $(m 'cksm_pages_backed{source="zero"}') saved $(m cksm_saved_bytes) parked $(m cksm_evictions_parked)"
grep -E "ERROR|error|runtime error|AddressSanitizer|SIGBUS" "$T/agent.log" | head -20 || true
grep -c "the program removed the page" "$T/agent.log" || true
stop agent
exit $rc_all
