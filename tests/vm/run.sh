#!/bin/bash
# tests/vm/run.sh [TEST...]: the tests that need a real kernel, each in a
# guest of its own (vm.sh): Debian's kernel in QEMU, soft-RoCE inside.
# With no TEST, every tests/vm/*.sh but the harness's own (vm.sh, run.sh,
# rxe.sh). A TEST may be any script of the tree (bench/vm/rdma.sh). Each
# test's output is printed; exits 0 when all passed, 77 when none could
# run here (the reason is printed), else 1. The daemons inside are those
# of VM_BIN (default build/san, the sanitised build, where there is one);
# the tools and libcksm are build/'s.
set -uo pipefail
cd "$(dirname "$0")/../.."
source tests/vm/vm.sh

why=$(vm_missing)
if [[ -n $why ]]; then
	echo "$why"
	exit 77
fi
tests=("$@")
if ((${#tests[@]} == 0)); then
	for t in tests/vm/*.sh; do
		case $(basename "$t") in vm.sh | run.sh | rxe.sh) ;; *) tests+=("$t") ;; esac
	done
fi
bin=${VM_BIN:-$PWD/build/san}
[[ -x $bin/cksmd ]] || bin=$PWD/build
failed=0
for t in "${tests[@]}"; do
	job=$(mktemp -d /tmp/cksm-vm.XXXXXX)
	# The kernel's word on what went wrong, after the test.
	printf 'export CKSM_BIN=%q\ncd %q && bash %q\nrc=$?\n%s\nexit $rc\n' \
		"$bin" "$PWD" "$PWD/$t" \
		"dmesg | grep -E 'Out of memory|oom-kill|Killed process|segfault|general protection|BUG:|WARNING:' | tail -20" >"$job/script"
	start=$(date +%s)
	vm_run "$job" "${VM_TIMEOUT:-900}"
	rc=$?
	echo "--- $t (kernel $VM_KVER, TCG, $(($(date +%s) - start)) s): exit $rc"
	cat "$job/out" 2>/dev/null
	if ((rc != 0)); then
		failed=1
		[[ $rc == 124 ]] && echo "the guest did not finish in ${VM_TIMEOUT:-900} s"
		echo "--- its console, last lines:"
		tail -20 "$job/console" 2>/dev/null
	fi
	rm -rf "$job"
done
exit $failed
