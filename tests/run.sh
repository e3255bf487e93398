#!/bin/bash
# Run every cksm test, each in its own process with a timeout, and end with
# one line: "N passed, N failed[, N skipped]".
#
#   tests/run.sh [PATTERN]     only tests whose name contains PATTERN
#
# Unit tests run from the normal build (build/) and the ASan+UBSan build
# (build/san/); integration tests run the sanitized daemons, and so do
# the VM tests (tests/vm/: Debian's kernel in QEMU, soft-RoCE inside);
# the fuzz targets run for FUZZ_SECONDS each (default 20).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PATTERN=${1:-}
LOGDIR=$ROOT/build/test-logs
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"
export CKSM_BIN=${CKSM_BIN:-$ROOT/build/san}
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}

passed=0 failed=0 skipped=0
failures=()

# run NAME TIMEOUT CMD...: exit 0 pass, 77 skip (last line says why), else fail
run() {
	local name=$1 limit=$2 log rc
	shift 2
	[[ -n $PATTERN && $name != *"$PATTERN"* ]] && return
	log=$LOGDIR/${name//\//_}.log
	timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 </dev/null
	rc=$?
	if [[ $rc -eq 0 ]]; then
		passed=$((passed + 1))
		echo "PASS $name"
	elif [[ $rc -eq 77 ]]; then
		skipped=$((skipped + 1))
		echo "SKIP $name: $(tail -n 1 "$log")"
	else
		failed=$((failed + 1))
		failures+=("$name")
		[[ $rc -eq 124 ]] && echo "timed out after ${limit}s" >>"$log"
		echo "FAIL $name (exit $rc)"
		tail -n 80 "$log" | sed 's/^/    | /'
	fi
}

for build in build build/san; do
	tag=unit
	[[ $build == build/san ]] && tag=unit-san
	for bin in "$build"/tests/test_*; do
		[[ -x $bin ]] || continue
		for t in $("$bin" --list); do
			run "$tag/$(basename "$bin"):$t" 120 "$bin" "$t"
		done
	done
done

for script in tests/integration/*.sh; do
	[[ $(basename "$script") == lib.sh || $(basename "$script") == guest.sh ]] && continue
	run "integration/$(basename "$script" .sh)" 600 bash "$script"
done

# The tests that need a real kernel: each boots Debian's kernel in QEMU
# (tests/vm/vm.sh) and runs the optimised build inside.
for script in tests/vm/*.sh; do
	case $(basename "$script") in vm.sh | run.sh | rxe.sh) continue ;; esac
	run "vm/$(basename "$script" .sh)" 1200 tests/vm/run.sh "$script"
done

for f in build/fuzz/fuzz_*; do
	[[ -x $f ]] || continue
	n=$(basename "$f")
	mkdir -p "build/corpus/$n"
	run "fuzz/$n" $((FUZZ_SECONDS + 120)) "$f" -max_total_time="$FUZZ_SECONDS" \
		-timeout=10 -rss_limit_mb=2048 "build/corpus/$n" "tests/fuzz/corpus/$n"
done

if ((${#failures[@]})); then
	echo
	echo "failed: ${failures[*]} (logs in $LOGDIR)"
fi
echo
if ((skipped)); then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
((failed == 0))
