# Forks that libcksm's fork() (which holds the child until the agent kept
# its userfaultfd) must leave working as without libcksm:
#  a. after the program closed every descriptor past stderr (a daemon's
#     start), libcksm's among them: no answer can come, and none is
#     waited for;
#  b. a thread cancelled (pthread_cancel) while it forks in a loop: fork()
#     is no cancellation point, so no lock of libcksm's dies with it, and
#     the main thread forks after;
#  c. a child that attached again and then ran exec (attached, detached
#     and attached again under one pid): the program it runs is evicted;
#  d. below.
# Each child checks its copy of the parent's pages.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 --set agent.evict_age=1
wait_for "registration" 10 log_has agent "registered with shard 0"

run() { # run MODE N: cksm-forker under libcksm, at most 60 s (a fork that waits for nothing waits 30 s)
	local rc=0
	LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 CKSM_SOCKET=$T/agent.sock timeout 60 \
		"$ROOT/build/cksm-forker" "$1" "$2" >"$T/$1.json" 2>"$T/$1.err" || rc=$?
	echo "$1: exit $rc, $(cat "$T/$1.json") $(head -c 300 "$T/$1.err")"
	[[ $rc == 0 ]] || fail "cksm-forker $1 exited with $rc (124: it hung)"
}
run closefds 20
run cancel 30
# d. clone() (held back as fork() is) while two threads create threads
#    and allocate all along: the child runs no thread of libcksm's, whose
#    creation could wait on a lock one of those held at the clone.
run clonethreads 15
# (the three changes reach the scanner at once only now and then: 5 runs)
for i in 1 2 3 4 5; do
	rc=0
	LD_PRELOAD=$LIB CKSM_SOCKET=$T/agent.sock timeout 60 "$ROOT/build/cksm-forker" exec \
		"$ROOT/build/cksm-evictee" verify --pages 256 --wait-s 20 >"$T/exec.json" 2>"$T/exec.err" || rc=$?
	echo "exec after a re-attach, $i: exit $rc, $(cat "$T/exec.json") $(head -c 300 "$T/exec.err")"
	jq -e '.evicted >= 230 and .bad == 0' "$T/exec.json" >/dev/null ||
		fail "the program run after a re-attach was not evicted (its attach was lost)"
done
log_has agent "re-attached" || fail "no child attached again before its exec"
stop agent
echo "ok"
