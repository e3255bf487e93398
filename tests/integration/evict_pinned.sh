# Pages pinned for a device are never evicted: cksm-pinner registers part
# of a mergeable region as an io_uring fixed buffer (the kernel pins its
# pages, as RDMA registration and direct I/O do, and marks nothing
# MADV_DONTFORK), and after the agent had time to evict, the device
# writes into it (IORING_OP_READ_FIXED). The process must read what the
# device wrote, and the unpinned rest must have been evicted. The kernel
# refuses to move a pinned page (UFFDIO_MOVE, Linux 6.8); where it cannot
# move pages the test is skipped (operations.md, "Limits of eviction").
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so

cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.evict_cooldown_millisecs=0
wait_for "registration" 10 log_has agent "registered with shard 0"
need_moves agent
[[ $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0) == 0 ]] ||
	skip "io_uring is disabled here (kernel.io_uring_disabled)"
CKSM_SOCKET=$T/agent.sock LD_PRELOAD=$LIB "$ROOT/build/cksm-pinner" --pages 256 --pinned 64 \
	--wait-s 10 >"$T/p.json" || fail "pinned pages: $(cat "$T/p.json")"
echo "pinner: $(cat "$T/p.json")"
jq -e '.pinned_resident_min == 1 and .other_resident_min < 0.5' "$T/p.json" >/dev/null ||
	fail "the pinned pages were evicted, or the others were not: $(cat "$T/p.json")"
PINNED=$(metric "$AMET" cksm_evictions_refused_pinned_total)
echo "agent: evictions $(metric "$AMET" cksm_evictions_total), refused by the kernel as pinned $PINNED"
[[ $PINNED -gt 0 ]] || fail "no eviction of a pinned page was tried and refused"
echo ok
