# Two QEMU guests booted from one image (kernel and initramfs), under
# libcksm as a user would run them: QEMU marks its guest RAM mergeable
# (libcksm names it to the agent) and MADV_DONTFORK. Each guest keeps
# 24 MiB of the same data in its root file system (RAM), checks its md5
# every 15 s and says it is alive every second on its serial console
# (guest.sh). The node saves memory across the two (net of the pool),
# and both guests stay healthy: every check right, and still alive at
# the end.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/guest.sh"

why=$(guest_missing)
[[ -z $why ]] || skip "$why"
LIB=$ROOT/build/libcksm.so
guest_image "$T"

cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=500 \
	--set agent.wset=1
wait_for "registration" 10 log_has agent "registered with shard 0"
need_moves agent
AMET=$(conf_get "$T/cksm.conf" agent metrics)
m() { curl -sf "http://$AMET/metrics" | awk -v n="$1" '$1 == n { print int($2) }'; }

for g in 1 2; do
	guest_start "$T" "$g" LD_PRELOAD="$LIB" CKSM_SOCKET="$T/agent.sock"
	PIDS+=("$GUEST_PID")
done
for g in 1 2; do
	wait_for "guest $g booted" 120 bash -c "grep -aq 'cksm-guest alive' $T/g$g.out"
done
log_has agent "attached" || fail "QEMU did not attach"
echo "both guests up; waiting for the node to save memory across them"
saved=0
for ((i = 0; i < 120; i++)); do
	saved=$(m cksm_net_saved_bytes)
	((${saved:-0} >= 16 << 20)) && break
	sleep 1
done
echo "net saved $((saved >> 20)) MiB (saved $(($(m cksm_saved_bytes) >> 20)) MiB, pool dups $(m cksm_pool_dups)), after ${i} s"
a1=$(guest_alive "$T" 1) a2=$(guest_alive "$T" 2)
sleep 20 # a check each, at least, with the pages evicted
for g in 1 2; do
	checks=$(guest_checks "$T" "$g")
	n=$(echo "$checks" | grep -c . || true)
	bad=$(echo "$checks" | grep -vc "^$GUEST_WANT\$" || true)
	echo "guest $g: alive $(guest_alive "$T" "$g"), $n checks, $bad wrong"
	((n >= 2 && bad == 0)) ||
		fail "guest $g read its data wrong (or never checked it): $(echo "$checks" | tr '\n' ' '), want $GUEST_WANT"
done
(($(guest_alive "$T" 1) > a1 && $(guest_alive "$T" 2) > a2)) ||
	fail "a guest stopped (alive $(guest_alive "$T" 1), $(guest_alive "$T" 2))"
((${saved:-0} >= 16 << 20)) || fail "the node saved less than 16 MiB across the two guests"
echo ok
