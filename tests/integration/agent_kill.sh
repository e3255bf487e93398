# A killed agent loses nothing: served processes race eviction with their
# own writes, madvise(MADV_DONTNEED), mremap and forks (cksm-racer: each
# child checks its copy, writes, checks again) while the
# agent is killed with SIGKILL and started again, KILL_CYCLES times (20):
# at random moments, and then by its own fault points in the middle of an
# eviction (page entered, zap not sent; zap sent, answer not read) and of
# a fault (bytes read, page not filled). Meanwhile faults wait; each new
# agent takes over the pool and tables the killed one kept, the processes
# come back to it with their userfaultfds, and every page is checked as
# the processes go and at the end: none may be wrong, and a dropped page
# must read zeroes, never what it held.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
RACER=$ROOT/build/cksm-racer
CYCLES=${KILL_CYCLES:-20}
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
AGENT_ARGS=(-c "$T/cksm.conf" --role agent --set agent.pass_millisecs=50
	--set agent.sleep_millisecs=0 --set agent.evict_age=1
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000)
m() { metric "$AMET" "$1"; }
agent_up
wait_for "registration" 10 log_has agent-1 "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock

SECS=$((CYCLES * 3 + 20))
race() {
	local name=$1 rc=0
	shift
	LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 timeout $((SECS + 120)) "$RACER" --threads 3 --rate 2000 \
		--seconds "$SECS" --settle-ms 2000 "$@" >"$T/$name.json" 2>"$T/$name.err" || rc=$?
	echo "$rc" >"$T/$name.rc"
}
race writes --pages 8192 --dontneed 20 &
R1=$!
race remaps --pages 4096 --dontneed 30 --mremap-ms 400 &
R2=$!
race forks --pages 4096 --dontneed 10 --fork-ms 250 &
R3=$!
PIDS+=($R1 $R2 $R3)
wait_for "pages evicted" 20 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1 == \"cksm_pages_backed{source=\\\"local\\\"}\" { print \$2 }') -gt 100 ]]"

# Half the cycles at random moments, half by the fault points.
points=(die_before_zap=300 die_after_zap=300 die_in_fault=200)
for ((i = 1; i <= CYCLES; i++)); do
	if ((i % 2)); then
		sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 1 + r / 32768 }')"
		kill -9 "$AGENT"
	else
		kill -9 "$AGENT" 2>/dev/null || true
		wait "$AGENT" 2>/dev/null || true
		p=${points[$(((i / 2) % 3))]}
		RUN=$((RUN + 1))
		CKSM_INJECT=$p start "agent-$RUN" "${AGENT_ARGS[@]}"
		AGENT=$!
		# It kills itself at the point; or, if no eviction or fault
		# came by in 8 s, it is killed here.
		for ((k = 0; k < 80; k++)); do kill -0 "$AGENT" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$AGENT" 2>/dev/null && echo "cycle $i: $p not reached in 8 s" || echo "cycle $i: killed at $p"
	fi
	wait "$AGENT" 2>/dev/null || true
	sleep 0.3 # faults and madvise calls wait meanwhile
	agent_up
done
wait $R1 $R2 $R3

for n in writes remaps forks; do
	echo "$n (exit $(cat "$T/$n.rc")): $(head -c 400 "$T/$n.json") $(head -c 300 "$T/$n.err")"
done
took=$(cat "$T"/agent-*.log | grep -c "came back to this agent" || true)
pages=$(cat "$T"/agent-*.log | sed -n 's/.*: \([0-9]*\) backed pages taken over.*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
settled=$(cat "$T"/agent-*.log | grep -c "eviction of page .* a killed agent left" || true)
kids=$(cat "$T"/agent-*.log | grep -c "its fork child came back" || true)
echo "$RUN agents, $CYCLES killed; processes came back $took times, taking over $pages backed pages;" \
	"$kids fork children not re-attached yet came back through their parents; $settled evictions settled after a kill"
jq -s '{ops: (map(.ops) | add), bad: (map(.bad + .child_bad) | add), old: (map(.old) | add),
	forks: (map(.forks) | add)}' "$T"/writes.json "$T"/remaps.json "$T"/forks.json >"$T/total.json"
echo "total: $(cat "$T/total.json")"
jq -e '.bad == 0 and .old == 0' "$T/total.json" >/dev/null || fail "pages wrong after kills: $(cat "$T/total.json")"
for n in writes remaps forks; do
	[[ $(cat "$T/$n.rc") == 0 ]] || fail "$n exited with $(cat "$T/$n.rc")"
done
((took >= CYCLES)) || fail "the processes came back only $took times"
((pages > 0)) || fail "no backed page was taken over"
[[ $(m cksm_sigbus_total) == 0 ]] || fail "pages lost: cksm_sigbus_total $(m cksm_sigbus_total)"
# Those that exited before they came back are forgotten within a second.
wait_for "no process waiting" 5 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1 == \"cksm_processes_waiting\" { print \$2 }') == 0 ]]"
kill -TERM "$AGENT"
wait "$AGENT" || fail "the last agent exited with $? after SIGTERM"
echo ok
