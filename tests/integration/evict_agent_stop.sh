# The agent is stopped (SIGTERM) while a racing process (cksm-racer:
# writes, mremap, fork) has pages evicted: the agent brings every backed
# page back before it exits, and the process, which goes on without it,
# reads only what it wrote.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=50 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 timeout 60 "$ROOT/build/cksm-racer" --pages 4096 --threads 4 \
	--seconds 10 --rate 300 --mremap-ms 500 --fork-ms 1500 >"$T/r.json" 2>"$T/r.err" &
R=$!
PIDS+=($R)
sleep 5
stop agent
rc=0
wait $R || rc=$?
echo "racer (exit $rc): $(cat "$T/r.json") $(head -c 300 "$T/r.err")"
grep -o "brought back .*" "$T/agent.log" || fail "the agent did not say what it brought back"
log_has agent "brought back [1-9][0-9]* backed pages" || fail "nothing was backed when the agent stopped"
! log_has agent "could not be" || fail "backed pages not brought back"
jq -e '.bad == 0 and .child_bad == 0' "$T/r.json" >/dev/null || fail "pages wrong after the stop: $(cat "$T/r.json")"
[[ $rc -eq 0 ]] || fail "cksm-racer exited with $rc"
echo "ok"
