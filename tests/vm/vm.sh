# vm.sh - a real kernel for the tests that need one: Debian's stock kernel
# booted in QEMU (TCG), the host's root shared read-only over 9p, and a
# job directory shared read-write. Sourced.
#
#   vm_missing            empty, or why no guest can boot here
#   vm_run JOB TIMEOUT    boot, run JOB/script as root inside (bash), power
#                         off; its output in JOB/out, its exit status in
#                         JOB/rc (absent if the guest died first), the
#                         console in JOB/console. Returns the script's
#                         status, or 124 when TIMEOUT seconds passed.
#
# Inside, the host's root is / (read-only), with tmpfs on /tmp, /run,
# /var/tmp and /dev/shm; JOB is at /tmp/job, and this tree (read-only) at
# its own path, wherever it is (a clone under /tmp too). Modules load from the
# host's /lib/modules (modprobe works), so the kernel booted is the
# newest one there that has a vmlinuz in /boot.

VM_QEMU=$(command -v qemu-system-x86_64 || true)
VM_TREE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_BUSYBOX=$(command -v busybox || true)
VM_KVER=
for _k in $(ls /lib/modules 2>/dev/null | sort -V); do
	[[ -r /boot/vmlinuz-$_k ]] && VM_KVER=$_k
done
unset _k

vm_missing() {
	[[ -n $VM_QEMU ]] || { echo "needs qemu-system-x86_64 (make deps installs it)"; return; }
	[[ -n $VM_BUSYBOX ]] || { echo "needs busybox (make deps installs it)"; return; }
	[[ -n $VM_KVER ]] || echo "needs a kernel in /boot with its modules (make deps installs linux-image-amd64)"
}

# vm_initrd DIR: DIR/initrd, a busybox initramfs with the 9p modules
vm_initrd() {
	local d=$1 r=$1/initroot m=/lib/modules/$VM_KVER/kernel
	local mods="drivers/virtio/virtio_ring drivers/virtio/virtio
		drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev
		drivers/virtio/virtio_pci fs/netfs/netfs fs/fscache/fscache net/9p/9pnet
		net/9p/9pnet_virtio fs/9p/9p"

	rm -rf "$r"
	mkdir -p "$r/bin" "$r/mod" "$r/proc" "$r/sys" "$r/dev" "$r/root"
	cp "$VM_BUSYBOX" "$r/bin/busybox"
	for k in $mods; do
		[[ -r $m/$k.ko ]] && cp "$m/$k.ko" "$r/mod/"
	done
	cat >"$r/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ln -s /proc/self/fd /dev/fd
for f in 0:stdin 1:stdout 2:stderr; do ln -s /proc/self/fd/${f%%:*} /dev/${f#*:}; done
for k in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
	netfs fscache 9pnet 9pnet_virtio 9p; do
	[ -r /mod/$k.ko ] && insmod /mod/$k.ko
done
o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o ro,$o hostroot /root || { echo "vm: no host root"; poweroff -f; }
mount --rbind /dev /root/dev
mount -t proc proc /root/proc
mount -t sysfs sys /root/sys
mkdir -p /root/dev/shm
for t in tmp run var/tmp dev/shm; do mount -t tmpfs -o mode=1777 tmpfs /root/$t; done
mkdir -p /root/tmp/job
mount -t 9p -o $o job /root/tmp/job || { echo "vm: no job dir"; poweroff -f; }
tree=$(sed -n 's/.*cksm_tree=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p "/root$tree" 2>/dev/null
mount -t 9p -o ro,$o tree "/root$tree" || { echo "vm: no tree at $tree"; poweroff -f; }
mount -t configfs configfs /root/sys/kernel/config 2>/dev/null
echo "vm: up"
chroot /root /bin/bash -c 'cd /tmp/job && exec bash ./script' >/root/tmp/job/out 2>&1
echo $? >/root/tmp/job/rc
sync
echo "vm: done"
poweroff -f
INIT
	chmod +x "$r/init"
	(cd "$r" && find . | cpio -o -H newc --quiet >"$d/initrd")
}

vm_run() {
	local job=$1 timeout=$2 qpid rc

	rm -f "$job/rc" "$job/out"
	vm_initrd "$job"
	"$VM_QEMU" -accel tcg -m "${VM_MEM:-2048}" -smp "${VM_CPUS:-2}" -nographic \
		-monitor none -no-reboot -nic none \
		-kernel "/boot/vmlinuz-$VM_KVER" -initrd "$job/initrd" \
		-append "console=ttyS0 panic=-1 quiet cksm_tree=$VM_TREE" \
		-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
		-virtfs "local,path=$job,mount_tag=job,security_model=none,multidevs=remap" \
		-virtfs "local,path=$VM_TREE,mount_tag=tree,security_model=none,readonly=on,multidevs=remap" \
		-serial "file:$job/console" >"$job/qemu.log" 2>&1 &
	qpid=$!
	for ((i = 0; i < timeout; i++)); do
		kill -0 "$qpid" 2>/dev/null || break
		sleep 1
	done
	if kill -0 "$qpid" 2>/dev/null; then
		kill -9 "$qpid" 2>/dev/null
		wait "$qpid" 2>/dev/null
		return 124
	fi
	wait "$qpid" 2>/dev/null
	[[ -r $job/rc ]] || return 125
	rc=$(cat "$job/rc")
	return "$rc"
}
