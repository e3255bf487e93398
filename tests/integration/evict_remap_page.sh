# A page unmapped and mapped anew by the program while the agent evicts
# it (an allocator giving a page back with munmap or brk and taking it
# again), between the agent's compare and the page's drop: what the
# program wrote into the new mapping stays. A page moved away and back
# (mremap) in that time keeps its content. libcksm-slowzap.so holds the
# zap at that moment while cksm-remapper maps the page anew and writes it
# (or waits, at most 300 ms, for its mapping calls, which libcksm's map
# guard holds while a zap runs). Runs 6-7 (--touch) also hold the moment
# between libcksm's move and its check of what it moved (DIR/after) and
# read the page all along: it never reads as zeroes. Runs 8-9 (--raw) do
# the unmap and the mapping with system calls of their own, which no
# wrapper of libcksm's sees (as the C library's allocator makes them).
# Run 8: the move, held 300 ms, is fenced after 20 ms and fails, and the
# new mapping stays. Run 9, with an agent whose holds last until the
# answer (the fault point hold_long): the unmap waits until the move
# gave way to it.
# Where the kernel cannot move pages (before Linux 6.8), zaps drop the
# page with madvise (operations.md, "Limits of eviction"): the test says
# so and is skipped.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
SLOWZAP=$ROOT/build/libcksm-slowzap.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.evict_cooldown_millisecs=0
wait_for "registration" 10 log_has agent "registered with shard 0"
need_moves agent
export CKSM_SOCKET=$T/agent.sock

# Runs 1-3: mapped anew and written; runs 4-5 (--back): moved away and
# back with mremap, unchanged (the page keeps its protection); runs 6-7
# (--touch): mapped anew, written and read.
for run in 1 2 3 4 5 6 7 8 9; do
	D=$T/z$run
	mkdir -p "$D"
	how=()
	((run > 3)) && how=(--back)
	((run > 5)) && how=(--touch) && echo 300 >"$D/after"
	((run > 7)) && how+=(--raw)
	if ((run == 9)); then
		stop agent
		CKSM_INJECT=hold_long start agent -c "$T/cksm.conf" --role agent \
			--set agent.pass_millisecs=100 --set agent.evict_age=1 \
			--set agent.evict_cooldown_millisecs=0
		wait_for "registration" 10 log_has agent "registered with shard 0"
	fi
	SLOWZAP_DIR=$D LD_PRELOAD="$LIB $SLOWZAP" "$ROOT/build/cksm-remapper" "$D" "${how[@]}" >"$T/r.json" &
	RP=$!
	PIDS+=($RP)
	# Armed once attached: libcksm's own drop in its handshake is no zap.
	wait_for "run $run attached" 10 log_has agent "process $RP attached"
	touch "$D/arm"
	reap "$RP" 90 "cksm-remapper" ||
		fail "run $run: the page mapped anew during its eviction: $(cat "$T/r.json")"
	echo "run $run: $(cat "$T/r.json")"
	((run != 9)) || grep -q '"during_hold":false' "$T/r.json" ||
		fail "run 9: the unmap did not wait for the held move: $(cat "$T/r.json")"
done
echo ok
