# Two QEMU guests booted from one image (kernel and initramfs), under
# libcksm as a user would run them: QEMU marks its guest RAM mergeable
# (libcksm names it to the agent) and MADV_DONTFORK. Each guest keeps
# 24 MiB of the same data in its root file system (RAM), checks its md5
# every 15 s and says it is alive every second on its serial console.
# The node saves memory across the two (net of the pool), and both
# guests stay healthy: every check right, and still alive at the end.
source "$(dirname "$0")/lib.sh"

QEMU=$(command -v qemu-system-x86_64 || true)
KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V | tail -1)
BUSYBOX=$(command -v busybox || true)
[[ -n $QEMU && -n $KERNEL && -n $BUSYBOX ]] ||
	skip "needs qemu-system-x86_64, a kernel in /boot and busybox (make deps installs them)"
[[ -r $KERNEL ]] || skip "$KERNEL is not readable"
LIB=$ROOT/build/libcksm.so

# The image: busybox, the data and an init that checks it.
R=$T/root
mkdir -p "$R/bin" "$R/proc"
cp "$BUSYBOX" "$R/bin/busybox"
head -c $((24 << 20)) /dev/urandom >"$R/data"
WANT=$(md5sum "$R/data" | cut -d' ' -f1)
cat >"$R/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
n=0
while :; do
	n=$((n + 1))
	if [ $((n % 15)) -eq 1 ]; then
		echo "cksm-guest check $n $(md5sum /data | cut -d' ' -f1)"
	fi
	echo "cksm-guest alive $n"
	sleep 1
done
INIT
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet >"$T/initrd")

cluster_conf "$T/cksm.conf" 1
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=500 \
	--set agent.wset=1
wait_for "registration" 10 log_has agent "registered with shard 0"
need_moves agent
AMET=$(conf_get "$T/cksm.conf" agent metrics)
m() { curl -sf "http://$AMET/metrics" | awk -v n="$1" '$1 == n { print int($2) }'; }

guest() { # guest N
	LD_PRELOAD="$LIB" CKSM_SOCKET="$T/agent.sock" "$QEMU" -accel tcg -m 256 -smp 1 \
		-nographic -monitor none -no-reboot -nic none -kernel "$KERNEL" -initrd "$T/initrd" \
		-append "console=ttyS0 quiet panic=-1" -serial "file:$T/g$1.out" \
		>"$T/qemu$1.log" 2>&1 &
	PIDS+=("$!")
}
# The serial console ends its lines with CR LF.
alive() { grep -a 'cksm-guest alive' "$T/g$1.out" 2>/dev/null | tr -d '\r' | tail -1 | awk '{ print $3 }'; }
guest 1
guest 2
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
a1=$(alive 1) a2=$(alive 2)
sleep 20 # a check each, at least, with the pages evicted
for g in 1 2; do
	checks=$(grep -a 'cksm-guest check' "$T/g$g.out" | tr -d '\r' | awk '{ print $4 }')
	n=$(echo "$checks" | grep -c . || true)
	bad=$(echo "$checks" | grep -vc "^$WANT\$" || true)
	echo "guest $g: alive $(alive "$g"), $n checks, $bad wrong"
	((n >= 2 && bad == 0)) || fail "guest $g read its data wrong (or never checked it): $(echo "$checks" | tr '\n' ' '), want $WANT"
done
(($(alive 1) > a1 && $(alive 2) > a2)) || fail "a guest stopped (alive $(alive 1), $(alive 2))"
((${saved:-0} >= 16 << 20)) || fail "the node saved less than 16 MiB across the two guests"
echo ok
