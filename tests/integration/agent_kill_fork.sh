# An agent killed while it holds a fork child's userfaultfd, between the
# fork event's read and the answer that hands a copy to the parent
# (fault point die_in_fork): that descriptor dies with the agent, and the
# child's evicted pages would read as zeroes. libcksm's fork() holds the
# child back until the answer comes; with none before the connection
# ends, the child is killed before it ran and the fork is done again.
# Agents alternate: one that dies at its first fork event, then one that
# serves (and evicts) for a while and is killed. cksm-racer forks all
# along, each child checking its copy of every page.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
SECS=${FORK_KILL_SECONDS:-24}
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
ARGS=(-c "$T/cksm.conf" --role agent --set agent.pass_millisecs=50 --set agent.sleep_millisecs=0
	--set agent.evict_age=1 --set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000)
lives=0
life() { # life [VAR=VALUE]: the next agent, as agentN
	lives=$((lives + 1))
	env "$@" "$CKSMD" "${ARGS[@]}" >"$T/agent$lives.log" 2>&1 &
	PIDS+=($!)
	AGENT=$!
}
life
wait_for "registration" 10 log_has agent1 "registered with shard 0"

timeout $((SECS + 60)) env LD_PRELOAD="$LIB" CKSM_MERGE_ALL=1 CKSM_SOCKET="$T/agent.sock" \
	"$ROOT/build/cksm-racer" --pages 2048 --threads 2 --rate 500 --fork-ms 100 \
	--settle-ms 2000 --seconds "$SECS" >"$T/racer.json" 2>"$T/racer.err" &
RACER=$!
sleep 2
end=$((SECONDS + SECS - 4))
while ((SECONDS < end)); do
	kill -9 "$AGENT" 2>/dev/null || true
	reap "$AGENT" 10 "agent$lives, killed" || true
	life CKSM_INJECT=die_in_fork=1
	reap "$AGENT" 20 "agent$lives, which dies at its first fork event" || true
	life
	sleep 1.5
done
rc=0
reap "$RACER" 120 "cksm-racer" || rc=$?
died=$(cat "$T"/agent*.log | grep -c 'forked as the agent was killed' || true)
echo "racer (exit $rc): $(head -c 600 "$T/racer.json")"
[[ -s $T/racer.err ]] && echo "racer's children: $(head -c 1500 "$T/racer.err")"
echo "agents: $lives lives; $died forks whose child's userfaultfd died with an agent"
((died >= 2)) || fail "fewer than 2 agents died holding a fork child's userfaultfd"
jq -e '.forks > 20 and .min_resident < 1' "$T/racer.json" >/dev/null ||
	fail "nothing raced: too few forks, or nothing evicted"
jq -e '.bad == 0 and .child_bad == 0' "$T/racer.json" >/dev/null ||
	fail "a fork child read a page other than its parent held at the fork"
[[ $rc == 0 ]] || fail "cksm-racer exited with $rc"

# _Fork(), daemon() and clone() (without CLONE_VM) make their children
# outside fork(): libcksm holds them back the same way. The agent that
# reads the fork's event dies there (die_in_fork); the next one answers
# the fork done again, and the child reads every page right. "twice": a
# child that forks at once, before it attached again; the agent dies at
# that second fork's event (die_in_child_fork): the child's fork waited
# for its own attach, so it is answered on its connection and done again.
# "orphan": daemon() again, the agent killed right after it handed the
# child's userfaultfd to the parent (die_after_child), and the next agent
# started only once the parent exited: the child holds a copy of its own
# (its parent handed it over at the fork) and comes back by its key.
for v in _Fork daemon clone twice orphan; do
	point=die_in_fork
	[[ $v == twice ]] && point=die_in_child_fork
	[[ $v == orphan ]] && point=die_after_child
	prog=$v
	[[ $v == orphan ]] && prog=daemon
	kill -9 "$AGENT" 2>/dev/null || true
	reap "$AGENT" 10 "agent$lives, killed" || true
	life
	wait_for "agent$lives registered" 10 log_has "agent$lives" "registered with shard 0"
	D=$T/$v
	mkdir -p "$D"
	LD_PRELOAD="$LIB" CKSM_MERGE_ALL=1 CKSM_SOCKET="$T/agent.sock" timeout 150 \
		"$ROOT/build/cksm-forker" "$prog" "$D" >"$T/$v.json" 2>"$T/$v.err" &
	FP=$!
	PIDS+=($FP)
	wait_for "$v: its pages evicted" 40 test -e "$D/evicted"
	kill -9 "$AGENT"
	reap "$AGENT" 10 "agent$lives, killed" || true
	life CKSM_INJECT=$point=1
	wait_for "$v: back with agent$lives" 20 log_has "agent$lives" "came back to this agent"
	touch "$D/go"
	reap "$AGENT" 20 "agent$lives, which dies at the $v's fork event" || true
	rc=0
	if [[ $v == orphan ]]; then
		reap "$FP" 60 "cksm-forker $v" || rc=$?
		# The child waits, on pages no agent serves, for the next one.
		sleep 1
		[[ -s $D/daemon.json ]] &&
			fail "orphan: the child checked its pages with no agent: $(cat "$D/daemon.json")"
	fi
	life
	[[ $v == orphan ]] || reap "$FP" 120 "cksm-forker $v" || rc=$?
	if [[ $prog == daemon ]]; then
		wait_for "the daemon's check" 30 test -s "$D/daemon.json"
		out=$(cat "$D/daemon.json")
		bad=$(jq .bad_pages "$D/daemon.json")
	else
		out=$(cat "$T/$v.json")
		bad=$(jq .bad_children "$T/$v.json" 2>/dev/null || echo "?")
	fi
	echo "$v: exit $rc, $out $(head -c 300 "$T/$v.err")"
	[[ $rc == 0 && $bad == 0 ]] || fail "a $v child read pages other than its parent held"
	if [[ $v == orphan ]]; then
		grep -q "came back by its key to its kept table" "$T/agent$lives.log" ||
			fail "orphan: the child did not come back by its key"
		continue
	fi
	now=$(cat "$T"/agent*.log | grep -c 'forked as the agent was killed' || true)
	((now > died)) || fail "$v: no agent died holding the child's userfaultfd ($point)"
	died=$now
done
echo "ok"
