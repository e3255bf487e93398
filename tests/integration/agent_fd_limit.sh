# The agent at its descriptor limit: a served shell forks and execs 120
# sleeps, each attaching (a socket and a userfaultfd each), against an
# agent whose RLIMIT_NOFILE was lowered to 128. A fork whose event cannot
# be read (EMFILE) waits until descriptors are free, and a connection
# cannot be accepted: both are to be tried again later, and meanwhile an
# agent that waits must not spin (per thread CPU over 5 s, printed).
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=1000
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
A=$PID_agent
prlimit --pid "$A" --nofile=128:128 || skip "prlimit"
ticks() { for t in /proc/$A/task/*; do awk '{print $1, $14 + $15}' "$t/stat"; done | sort; }
LD_PRELOAD=$LIB bash -c 'for i in $(seq 120); do sleep 40 & done; echo forked-all >&2; wait' \
	2>"$T/forker.err" &
FP=$!
wait_for "the agent at its limit" 20 bash -c "(( \$(ls /proc/$A/fd | wc -l) >= 127 ))"
sleep 1
ticks >"$T/t0"
sleep 5
ticks >"$T/t1"
hot=$(join "$T/t0" "$T/t1" | awk -v hz="$(getconf CLK_TCK)" '{ p = ($3 - $2) / hz / 5 * 100;
	printf "thread %s %.0f%%\n", $1, p }' | tee "$T/cpu" | awk '{ sub("%", "", $3); if ($3 + 0 > 20) n++ } END { print n + 0 }')
echo "per-thread CPU at the limit: $(tr '\n' ' ' <"$T/cpu")"
echo "forker: $(tr '\n' ' ' <"$T/forker.err") sleeps running: $(pgrep -c -P $FP sleep)"
pkill -P $FP sleep
wait $FP
[[ $hot == 0 ]] || fail "$hot agent threads spin (over 20% of a CPU) while at the descriptor limit"
stop agent
echo "ok"
