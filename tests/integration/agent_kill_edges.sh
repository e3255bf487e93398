# The edges of a killed or stopped agent, each of which once lost pages or
# the agent itself (cksm-victim: every page checked, one line per case):
#  a. a fork child that never attaches again (forked without the atfork
#     handlers) outlives a killed agent: the next one loads its kept
#     table, and its parent hands it the child's userfaultfd;
#  b. an empty mm-KEY file in the state directory (a killed agent made it
#     and never sized it) is passed over: the next agent starts;
#  c. a kept table cut short, and one overwritten with garbage: the next
#     agent says the table is damaged, and a page it lost gives SIGBUS,
#     never zeroes;
#  d. a process that closes every descriptor (libcksm's too) while served:
#     its pages are brought home at once, so a killed agent costs it
#     nothing; libcksm neither spins on its closed descriptors nor closes
#     the files the program opened again under the same numbers;
#  e. a clean stop while a zap is held between libcksm's check and its
#     madvise (libcksm-slowzap.so): the page is kept for the next agent,
#     which settles it, and it reads right.
# Cases a to d share one agent killed with SIGKILL and its successor; e
# stops that successor with SIGTERM.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
VICTIM=$ROOT/build/cksm-victim
SLOWZAP=$ROOT/build/libcksm-slowzap.so
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
STATE=$T/state
start c0 -c "$T/cksm.conf" --role coord --shard 0
# Only the victims are scanned (not every mergeable VMA on the machine).
AGENT_ARGS=(-c "$T/cksm.conf" --role agent --set agent.pass_millisecs=50
	--set agent.sleep_millisecs=0 --set agent.evict_age=1 --set agent.scan_mergeable=0
	--set agent.evict_cooldown_millisecs=0 --set agent.evict_rate=1000000)
evicted=
agent_kill() {
	kill -9 "$AGENT"
	wait "$AGENT" 2>/dev/null || true
}
export CKSM_SOCKET=$T/agent.sock

# victim NAME SCENARIO [ARGS]: cksm-victim in the background, its files in
# $T/NAME/; VPID[NAME] its pid. PRELOAD and the environment are its. Each
# has contents of its own (--seed): its pages go as soon as it is scanned.
declare -A VPID
PRELOAD=$LIB
SEED=0
victim() {
	local name=$1 sc=$2
	shift 2
	mkdir -p "$T/$name"
	SEED=$((SEED + 1))
	LD_PRELOAD=$PRELOAD CKSM_MERGE_ALL=1 "$VICTIM" "$sc" "$T/$name" --seed "$SEED" "$@" \
		>"$T/$name.out" 2>"$T/$name.err" &
	PIDS+=($!)
	VPID[$name]=$!
}
# A rawfork child is no child of this shell: ended by its pid too.
edges_cleanup() {
	local p c
	for p in "${VPID[@]}"; do
		for c in $(pgrep -P "$p" || true); do kill -9 "$c" 2>/dev/null || true; done
	done
	cleanup
}
trap edges_cleanup EXIT

# res NAME TAG [FIELD]: the victim's check (or one field of it)
res() {
	local f=$T/$1/result-$2
	[[ -e $f ]] || { echo "(no result-$2)"; return; }
	if (($# > 2)); then jq -r ".$3" "$f"; else cat "$f"; fi
}
# state_of PID: the key of the mm-KEY file kept for PID ("" if none);
# state_of 0 PARENT: a fork child's that has not attached again
state_of() {
	local f
	for f in "$STATE"/mm-*; do
		[[ -s $f ]] || continue
		[[ $(od -An -t d4 -j 16 -N 4 "$f" | tr -d ' ') == "$1" ]] || continue
		[[ -z ${2:-} || $(od -An -t d4 -j 20 -N 4 "$f" | tr -d ' ') == "$2" ]] || continue
		basename "$f" | cut -c4-
		return
	done
}
# ticks PID: its CPU time so far, in clock ticks
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
logs() { grep -c -- "$2" "$T/$1.log" || true; }

agent_up
wait_for "registration" 10 log_has agent-1 "registered with shard 0"
victim a rawfork --pages 1024
victim b check --pages 512
victim c1 check --pages 512
victim c2 check --pages 512
victim d1 closeall --pages 512 --reopen 16
victim d2 closeall --pages 512 --reopen 3
PRELOAD="$LIB $SLOWZAP" SLOWZAP_DIR=$T/e victim e rewrite --pages 512
for v in a b c1 c2 d1 d2 e; do
	wait_for "$v evicted" 40 test -e "$T/$v/evicted"
	read -r _ out _ all <"$T/$v/evicted"
	((out * 2 >= all)) || fail "victim $v: only $out of its $all pages evicted"
	evicted+=" $v $out/$all"
done
echo "evicted:$evicted"

# a: the child is forked (its table kept, its userfaultfd with its parent).
wait_for "the fork child" 10 test -e "$T/a/forked"
child_kept() { [[ -n $(state_of 0 "${VPID[a]}") ]]; }
wait_for "the fork child's kept table" 10 child_kept
sleep 0.5 # the CHILD message on its way to the parent's libcksm
# d: both closed every descriptor; their pages come home.
for v in d1 d2; do
	wait_for "$v closed" 10 test -e "$T/$v/closed"
	wait_for "$v brought home" 10 log_has agent-1 "process ${VPID[$v]}: .* brought home, 0 poisoned, 0 left"
done
t0=$(($(ticks "${VPID[d1]}") + $(ticks "${VPID[d2]}")))
sleep 2
d_up=$(($(ticks "${VPID[d1]}") + $(ticks "${VPID[d2]}") - t0))

# Killed: then the state directory as a killed agent can leave it, and worse.
key1=$(state_of "${VPID[c1]}")
key2=$(state_of "${VPID[c2]}")
[[ -n $key1 && -n $key2 ]] || fail "no kept state for c1 ($key1) or c2 ($key2)"
agent_kill
tab1=$STATE/tab-$key1 tab2=$STATE/tab-$key2
size1=$(stat -c %s "$tab1") size2=$(stat -c %s "$tab2")
truncate -s 100 "$tab1"
dd if=/dev/urandom of="$tab2" bs=1 seek=64 count=$((size2 - 64)) conv=notrunc status=none
: >"$STATE/mm-00000000000000aa"
agent_up
wait_for "registration again" 10 log_has agent-2 "registered with shard 0"
wait_for "a's fork child back" 10 log_has agent-2 "process ${VPID[a]}: its fork child came back"
two_damaged() { (($(logs agent-2 'its kept table is damaged') >= 2)); }
wait_for "damaged tables" 10 two_damaged
t0=$(($(ticks "${VPID[d1]}") + $(ticks "${VPID[d2]}")))
sleep 2
d_after=$(($(ticks "${VPID[d1]}") + $(ticks "${VPID[d2]}") - t0))
for v in a b c1 c2 d1 d2; do touch "$T/$v/go"; done
for v in a:child a:main b:main c1:main c2:main d1:main d2:main d1:fds d2:fds; do
	wait_for "victim ${v%:*}'s check ${v#*:}" 20 test -e "$T/${v%:*}/result-${v#*:}"
done
kill -0 "$AGENT" 2>/dev/null || fail "agent-2 died"

echo "a. rawfork: child $(res a child), parent $(res a main);" \
	"$(logs agent-2 'its fork child came back') fork child came back to agent-2"
[[ $(res a child bad) == 0 && $(res a main bad) == 0 ]] ||
	fail "a fork child that never attached again lost pages to a killed agent"

echo "b. empty mm-00000000000000aa: agent-2 started and lives (the file" \
	"$([[ -e $STATE/mm-00000000000000aa ]] && echo left || echo removed)); $(res b main)"
[[ $(res b main bad) == 0 && $(res b main sigbus) == 0 ]] || fail "b's pages wrong after agent-2 started"

sigbus=$(metric "$AMET" cksm_sigbus_total)
echo "c. tables damaged: truncated (was $size1 bytes) $(res c1 main); garbage ($size2 bytes)" \
	"$(res c2 main); $(logs agent-2 'its kept table is damaged') said damaged; cksm_sigbus_total $sigbus"
for v in c1 c2; do
	[[ $(res $v main zero) == 0 && $(res $v main bad) == 0 ]] ||
		fail "victim $v read pages its damaged table lost: $(res $v main)"
	(($(res $v main sigbus) > 0)) || fail "victim $v: no SIGBUS for the pages its damaged table lost"
done
((sigbus > 0)) || fail "cksm_sigbus_total is $sigbus"

echo "d. closeall: $(res d1 main), $(res d1 fds); $(res d2 main), $(res d2 fds);" \
	"$(logs agent-1 'closed its connection while alive') said closed while alive;" \
	"CPU of both while idle: $d_up ticks in 2 s with agent-1, $d_after after its kill and agent-2"
(($(logs agent-1 'closed its connection while alive') == 2)) ||
	fail "agent-1 did not see both processes close their connections"
for v in d1 d2; do
	[[ $(res $v main bad) == 0 && $(res $v main sigbus) == 0 ]] ||
		fail "victim $v read pages wrong after an agent kill: $(res $v main)"
	[[ $(res $v fds closed_under_us) == 0 ]] || fail "libcksm closed files of $v's: $(res $v fds)"
done
((d_up < 20 && d_after < 20)) || fail "libcksm spins on closed descriptors: $d_up, $d_after ticks in 2 s"

# e: its pages evicted again by agent-2; the first zap held; a clean stop.
touch "$T/e/arm" "$T/e/rewrite"
wait_for "a zap held in libcksm-slowzap" 30 test -e "$T/e/inzap"
kill -TERM "$AGENT"
rc=0
wait "$AGENT" || rc=$?
((rc == 0)) || fail "agent-2 exited with $rc after SIGTERM"
waiting=$(grep -o '[0-9]* backed pages whose .* wait for the next agent' "$T/agent-2.log" | head -n 1 || true)
touch "$T/e/zapgo"
agent_up
touch "$T/e/go"
wait_for "victim e's check" 20 test -e "$T/e/result-main"
echo "e. stopped with the zap of $(cat "$T/e/inzap") held: agent-2: \"${waiting:-nothing waits}\";" \
	"after agent-3: $(res e main)"
[[ -n $waiting ]] || fail "agent-2 did not keep the page of the held zap for the next agent"
[[ $(res e main bad) == 0 && $(res e main sigbus) == 0 ]] ||
	fail "a page whose zap was held at a clean stop is wrong: $(res e main)"

kill -TERM "$AGENT"
wait "$AGENT" || fail "agent-3 exited with $? after SIGTERM"
echo ok
