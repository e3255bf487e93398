# An attached process that runs exec while keeping its connection, with a
# sibling (clone(CLONE_VM)) that keeps the served address space and its
# userfaultfd alive: the agent must never read the new image as the
# memory it serves. Its pid is the same, so without a check the agent
# would write-protect through the old registration, read and compare the
# new image's pages, and send ZAPs telling which of them hold a content
# (and drop the sibling's pages). The agent checks the mark it put in
# the old address space (local.h) in every read that can lead to a zap:
# no ZAP reaches the new image, the agent says what happened and lets
# the connection go. cksm-execer prints what the new image received.
# A process the agent cannot mark (no beacon) is never evicted.
source "$(dirname "$0")/lib.sh"

cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 \
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=100
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"

rc=0
CKSM_SOCKET=$T/agent.sock CKSM_MERGE_ALL=1 LD_PRELOAD=$ROOT/build/libcksm.so timeout 90 \
	"$ROOT/build/cksm-execer" --pages 1024 >"$T/execer.json" 2>"$T/execer.err" || rc=$?
echo "execer (exit $rc): $(cat "$T/execer.json") $(head -c 300 "$T/execer.err")"
[[ $rc == 0 ]] || fail "cksm-execer failed"
jq -e '.evicted_before > 0' "$T/execer.json" >/dev/null || fail "nothing was evicted before the exec"
jq -e ".zaps_after == 0 and .let_go" "$T/execer.json" >/dev/null ||
	fail "the agent sent ZAPs for the new image's pages: it read them as the memory it serves"
log_has agent "its memory is not its userfaultfd's" || fail "the agent did not see the exec"
wait_for "the connection let go" 10 log_has agent "not the address space of its userfaultfd any more"
echo "agent: $(grep -m1 "its memory is not its userfaultfd's" "$T/agent.log" | cut -c1-200)"

# A process without a beacon (its mapping failed, or a HELLO naming none)
# cannot be marked: served, but never evicted, so never read by pid.
rc=0
CKSM_SOCKET=$T/agent.sock LD_PRELOAD="$ROOT/build/libcksm-nobeacon.so $ROOT/build/libcksm.so" \
	"$ROOT/build/cksm-evictee" verify --pages 256 --wait-s 5 >"$T/nobeacon.json" 2>"$T/nobeacon.err" || rc=$?
echo "without a beacon (exit $rc): $(cat "$T/nobeacon.json") $(head -c 200 "$T/nobeacon.err")"
jq -e '.evicted == 0 and .bad == 0' "$T/nobeacon.json" >/dev/null ||
	fail "a process without a beacon (unmarked) was evicted: its memory read by pid alone"
log_has agent "has no beacon (local.h): it is served, but nothing of it is evicted" ||
	fail "the unmarked process was not named"
stop agent
echo "ok"
