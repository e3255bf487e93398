# Floods on the agent's local socket must not keep others from being
# served: an attached process naming ranges without end (madvise in a
# loop from two threads, with a long /proc/PID/maps), and a user that may
# connect but not attach (attach_any_user = 1, vm.unprivileged_userfaultfd
# = 0) keeping 70 silent connections open. Meanwhile a root process
# attaches and is evicted, heartbeats keep the node alive at the shard,
# and the log stays short (connections that give way are summed up).
source "$(dirname "$0")/lib.sh"

chmod 755 "$T"
install -m 755 "$ROOT/tests/tools/holdslots.py" "$T/"
uffd_sysctl_zero
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 --set agent.evict_cooldown_millisecs=0 \
	--set agent.attach_any_user=1
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock

CKSM_MERGE_ALL=1 LD_PRELOAD=$ROOT/build/libcksm.so "$ROOT/build/cksm-rangeflood" 10000 2 25 \
	>"$T/ranges.json" 2>&1 &
RF=$!
setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 "$T/holdslots.py" \
	"$T/agent.sock" 25 >"$T/slots.json" 2>&1 &
HS=$!
PIDS+=($RF $HS)
sleep 3
rc=0
LD_PRELOAD=$ROOT/build/libcksm.so "$ROOT/build/cksm-evictee" verify --pages 256 --wait-s 20 \
	>"$T/root.json" 2>"$T/root.err" || rc=$?
wait $RF $HS || true
echo "range flood: $(cat "$T/ranges.json"); silent connections: $(cat "$T/slots.json")"
echo "root beside them (exit $rc): $(cat "$T/root.json") $(head -c 200 "$T/root.err")"
lines=$(wc -l <"$T/agent.log")
echo "agent: $lines log lines, $(metric "$AMET" cksm_local_handshakes_displaced_total) handshakes gave way"
jq -e '.evicted >= 230 and .bad == 0' "$T/root.json" >/dev/null ||
	fail "a root process beside the floods was not attached and evicted"
[[ $rc == 0 ]] || fail "the root process exited with $rc"
! log_has c0 "is dead" || fail "the shard declared the node dead during the floods (its loop was held)"
((lines < 5000)) || fail "the floods wrote $lines log lines"
stop agent
echo "ok"
