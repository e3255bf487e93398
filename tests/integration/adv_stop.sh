# Adversarial: the agent is stopped (SIGTERM) while a racing process
# (cksm-racer: writes, mremap, fork) has pages evicted; the agent must
# bring every backed page back first, and the process read only what it
# wrote. Not part of `make test`: run by hand, as root,
#   CKSM_BIN=build/san bash tests/integration/adv_stop.sh
# (build/cksm-racer as adv_race.sh says).
source "$(dirname "$0")/lib.sh"

LIB=${CKSM_LIB:-$ROOT/build/libcksm.so}
RACER=${RACER:-$ROOT/build/cksm-racer}
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=50 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 "$RACER" --pages 4096 --threads 4 --seconds 10 --rate 300 \
	--mremap-ms ${REMAP_MS:-500} --fork-ms ${FORK_MS:-1500} >"$T/r.json" 2>"$T/r.err" &
R=$!
sleep ${STOP_AFTER:-5}
stop agent
rc=0
wait $R || rc=$?
echo "racer rc $rc: $(cat "$T/r.json") $(head -c 300 "$T/r.err")"
grep -E "brought back|runtime error|AddressSanitizer|could not" "$T/agent.log" | head
exit $rc
