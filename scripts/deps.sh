#!/bin/sh
# Install every Debian package cksm needs to build, test and demo.
# Non-interactive and idempotent: packages already present are skipped.
set -eu

PKGS="build-essential pkg-config clang llvm libclang-rt-14-dev
protobuf-c-compiler libprotobuf-c-dev libuv1-dev libsodium-dev libinih-dev
libmicrohttpd-dev libjansson-dev libsmartcols-dev libsystemd-dev libxxhash-dev
libcmocka-dev prometheus curl iproute2 procps psmisc cppcheck clang-format
systemd git jq socat bc stressapptest gdb python3
qemu-system-x86 busybox-static cpio kmod linux-image-amd64
libibverbs-dev librdmacm-dev ibverbs-providers rdma-core rdmacm-utils perftest"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing packages:$missing; run as root (make deps)" >&2
	exit 1
fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
