# A page unmapped and mapped anew by the program while the agent evicts
# it (an allocator giving a page back with munmap or brk and taking it
# again), between the agent's compare and the page's drop: what the
# program wrote into the new mapping stays. A page moved away and back
# (mremap) in that time keeps its content. libcksm-slowzap.so holds the
# zap at that moment while cksm-remapper maps the page anew and writes it
# (or waits, at most 300 ms, for its mapping calls, which libcksm's map
# guard holds while a zap runs). Runs 6-7 (--touch) also hold the moment
# between libcksm's move and its check of what it moved (DIR/after) and
# read the page all along: it never reads as zeroes.
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
for run in 1 2 3 4 5 6 7; do
	D=$T/z$run
	mkdir -p "$D"
	how=()
	((run > 3)) && how=(--back)
	((run > 5)) && how=(--touch) && echo 300 >"$D/after"
	SLOWZAP_DIR=$D LD_PRELOAD="$LIB $SLOWZAP" "$ROOT/build/cksm-remapper" "$D" "${how[@]}" >"$T/r.json" &
	RP=$!
	PIDS+=($RP)
	# Armed once attached: libcksm's own drop in its handshake is no zap.
	wait_for "run $run attached" 10 log_has agent "process $RP attached"
	touch "$D/arm"
	reap "$RP" 90 "cksm-remapper" ||
		fail "run $run: the page mapped anew during its eviction: $(cat "$T/r.json")"
	echo "run $run: $(cat "$T/r.json")"
done
echo ok
