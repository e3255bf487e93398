# Memory marked MADV_DONTFORK is evicted where pages are moved out: QEMU
# marks all guest RAM so, and a move, unlike a drop, is refused by the
# kernel for a page pinned for a device (evict_pinned.sh), so the mark
# is no longer what keeps a pinned page in place. cksm-forker dontfork
# keeps 512 marked pages and 512 unmarked, of 4 contents each; once a
# third of the marked ones were evicted it checks every page, forks, and
# the child, which has no mapping where the marked memory was, maps a
# region of its own there: once the agent registered it, it reads zeroes,
# never the parent's evicted pages. Then the parent checks again.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.evict_cooldown_millisecs=0
wait_for "registration" 10 log_has agent "registered with shard 0"
need_moves agent

mkdir -p "$T/d"
rc=0
LD_PRELOAD="$LIB" CKSM_MERGE_ALL=1 CKSM_SOCKET="$T/agent.sock" timeout 120 \
	"$ROOT/build/cksm-forker" dontfork "$T/d" >"$T/out.json" 2>"$T/err" || rc=$?
echo "cksm-forker dontfork (exit $rc): $(cat "$T/out.json") $(head -c 300 "$T/err")"
jq -e '.evicted >= 170' "$T/out.json" >/dev/null ||
	fail "MADV_DONTFORK memory was not evicted"
jq -e '.bad == 0 and .child_bad == 0' "$T/out.json" >/dev/null ||
	fail "a page read other than what was written"
jq -e '.child_old == 0' "$T/out.json" >/dev/null ||
	fail "the fork child's own mapping read its parent's evicted MADV_DONTFORK pages"
[[ $rc == 0 ]] || fail "cksm-forker exited with $rc"

# A thread marks and unmarks a region MADV_DONTFORK all along while the
# main thread forks, with the pages evicted: a child that got the region
# reads it whole (the agent reads which VMAs a fork left out while the
# marks cannot change), and no thread waits for good (a mark taken while
# its own stack page was being evicted once held the zap, which held the
# fault).
rc=0
LD_PRELOAD="$LIB" CKSM_MERGE_ALL=1 CKSM_SOCKET="$T/agent.sock" timeout 120 \
	"$ROOT/build/cksm-forker" toggle 20 >"$T/toggle.json" 2>"$T/toggle.err" || rc=$?
echo "cksm-forker toggle (exit $rc): $(cat "$T/toggle.json") $(head -c 300 "$T/toggle.err")"
jq -e '.forks >= 20 and .with_b >= 1 and .bad_children == 0 and .bad == 0' "$T/toggle.json" >/dev/null ||
	fail "a fork child read its MADV_DONTFORK-toggled region wrong (or too few forks)"
[[ $rc == 0 ]] || fail "cksm-forker toggle exited with $rc (124: it hung)"
echo ok
