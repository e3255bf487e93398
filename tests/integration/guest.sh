# guest.sh - a QEMU guest image for tests and benchmarks: the host's
# kernel from /boot and a busybox initramfs holding 24 MiB of data. The
# guest's init checks the data's md5 every 15 s ("cksm-guest check N
# MD5") and says it is alive every second ("cksm-guest alive N") on its
# serial console. Sourced; needs qemu-system-x86_64, busybox, cpio.

GUEST_QEMU=$(command -v qemu-system-x86_64 || true)
GUEST_KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V | tail -1)
GUEST_BUSYBOX=$(command -v busybox || true)

# guest_ready: empty, or why guests cannot run here
guest_missing() {
	[[ -n $GUEST_QEMU && -n $GUEST_KERNEL && -n $GUEST_BUSYBOX ]] ||
		echo "needs qemu-system-x86_64, a kernel in /boot and busybox (make deps installs them)"
}

# guest_image DIR: DIR/initrd, and GUEST_WANT the md5 its checks must say
guest_image() {
	local d=$1 r=$1/root

	mkdir -p "$r/bin" "$r/proc"
	cp "$GUEST_BUSYBOX" "$r/bin/busybox"
	head -c $((24 << 20)) /dev/urandom >"$r/data"
	GUEST_WANT=$(md5sum "$r/data" | cut -d' ' -f1)
	cat >"$r/init" <<'INIT'
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
	chmod +x "$r/init"
	(cd "$r" && find . | cpio -o -H newc --quiet >"$d/initrd")
}

# guest_start DIR N [ENV=VALUE...]: guest N of DIR's image (256 MiB, TCG),
# its console in DIR/gN.out; GUEST_PID its QEMU
guest_start() {
	local d=$1 n=$2
	shift 2
	env "$@" "$GUEST_QEMU" -accel tcg -m 256 -smp 1 -nographic -monitor none -no-reboot \
		-nic none -kernel "$GUEST_KERNEL" -initrd "$d/initrd" \
		-append "console=ttyS0 quiet panic=-1" -serial "file:$d/g$n.out" \
		>"$d/qemu$n.log" 2>&1 &
	GUEST_PID=$!
}

# guest_alive DIR N: the guest's last alive count (the console ends its
# lines with CR LF)
guest_alive() {
	grep -a 'cksm-guest alive' "$1/g$2.out" 2>/dev/null | tr -d '\r' | tail -1 | awk '{ print $3 }'
}

# guest_checks DIR N: the md5s its checks said, one a line (whole lines
# only: a guest stopped while it printed leaves a part of one)
guest_checks() {
	grep -a 'cksm-guest check' "$1/g$2.out" 2>/dev/null | tr -d '\r' |
		awk 'length($4) == 32 { print $4 }'
}
