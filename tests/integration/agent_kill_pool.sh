# A killed agent's successor leaves nothing in the pool that the shard
# does not know. An agent killed between making a dup and telling the
# shard, or around a release, leaves slots held in the pool it kept; a new
# agent back before its node is declared dead (the shard never saw it go)
# must still resync, so that the shard learns those slots and releases
# them once idle. Two processes (one content in 2,048 copies, and a racer
# writing, dropping and checking 2,048 pages of 5 contents) run while the
# agent is killed 4 times, twice by its fault points; when they are gone,
# the pool must empty and no reference update be refused any more.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
MPS=4
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.max_page_sharing=$MPS \
	--set cluster.dup_idle_millisecs=3000 --set cluster.prune_millisecs=200
AGENT_ARGS=(-c "$T/cksm.conf" --role agent --set cluster.max_page_sharing=$MPS
	--set agent.pass_millisecs=100 --set agent.sleep_millisecs=0 --set agent.evict_age=1
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000)
agent_up
wait_for "registration" 15 log_has agent-1 "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
SECS=36
LD_PRELOAD=$LIB timeout $((SECS + 120)) "$ROOT/build/cksm-ksmwork" --mb 8 --contents 1 \
	--seconds $SECS --mode cold --mergeable --out "$T/w.out" &
W=$!
LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 timeout $((SECS + 120)) "$ROOT/build/cksm-racer" --pages 2048 \
	--threads 2 --rate 300 --seconds $SECS --settle-ms 3000 --dontneed 20 >"$T/r.json" 2>"$T/r.err" &
R=$!
PIDS+=($W $R)
sleep 8
points=(die_before_zap=50 die_in_fault=50)
for i in 1 2 3 4; do
	kill -9 "$AGENT"
	wait "$AGENT" 2>/dev/null || true
	if ((i % 2)); then
		agent_up
		sleep 3
	else
		RUN=$((RUN + 1))
		CKSM_INJECT=${points[i / 2 - 1]} start "agent-$RUN" "${AGENT_ARGS[@]}"
		AGENT=$!
		for ((k = 0; k < 50; k++)); do
			kill -0 "$AGENT" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$AGENT" 2>/dev/null || true
		wait "$AGENT" 2>/dev/null || true
		agent_up
		sleep 2
	fi
done
rc=0
reap "$W" $((SECS + 60)) "cksm-ksmwork" || rc=$?
echo "cksm-ksmwork (exit $rc): $(tail -1 "$T/w.out")"
[[ $rc == 0 ]] || fail "cksm-ksmwork read a page wrong"
rc=0
reap "$R" $((SECS + 60)) "cksm-racer" || rc=$?
echo "cksm-racer (exit $rc): $(head -c 300 "$T/r.json") $(head -c 300 "$T/r.err")"
[[ $rc == 0 ]] || fail "cksm-racer found a page wrong"
refused() { cat "$T"/agent-*.log | grep -c "reference update refused" || true; }
empty() { [[ $(metric "$AMET" cksm_pool_dups) == 0 ]]; }
ok=0
for ((i = 0; i < 200 && !ok; i++)); do
	empty && ok=1 || sleep 0.1
done
# A count that crosses a release in flight is refused once; a slot the
# shard does not know is refused again at every resend (once a second).
r0=$(refused)
sleep 3
r1=$(refused)
echo "after the processes: dups $(metric "$AMET" cksm_pool_dups)," \
	"reference updates refused $r0 during the run, $((r1 - r0)) in the 3 s after"
((ok)) || fail "the pool kept $(metric "$AMET" cksm_pool_dups) dups the shard does not know"
((r1 == r0)) || fail "reference updates still refused: the shard did not learn the kept slots"
echo ok
