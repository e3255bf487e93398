# The scanner's counts equal what cksm-planter planted, VMA by VMA, in real
# processes: identical pages within and across processes get one id, zero
# pages are counted apart and never reported, a page rewritten between
# passes is never reported stable, mlocked/shared/zero-page mappings are
# skipped and counted by reason, and a process in another dedup domain
# never yields an id equal to the same bytes in the default domain.
source "$(dirname "$0")/lib.sh"

SCAN=$BIN/cksm-scan
# The planter runs without sanitizers: ASan turns mlock() into a no-op.
PLANTER=$ROOT/build/cksm-planter
[[ $(cat /sys/kernel/mm/ksm/run 2>/dev/null || echo 0) == 1 ]] &&
	echo "note: the kernel's ksmd is running; planted pages are not madvised, so it leaves them alone"
"$CKSMD" --gen-key "$T/key"

plant() { # NAME ARGS...
	local name=$1
	shift
	"$PLANTER" "$@" >"$T/$name.json" 2>"$T/$name.log" &
	PIDS+=($!)
	wait_for "planter $name" 5 test -s "$T/$name.json"
}
plant a --seed 1
plant b --seed 1
plant c --seed 1
PA=$(jq .pid "$T/a.json")
PB=$(jq .pid "$T/b.json")
PC=$(jq .pid "$T/c.json")

"$SCAN" -k "$T/key" --passes 4 --interval-ms 50 "$PA" "$PB" --domain tenant:7:"$PC" >"$T/scan.json" ||
	fail "cksm-scan failed"

# region NAME PLANT FIELD: the last pass's count in that region's VMA
region() {
	local st
	st=$(jq ".regions.$1.start" "$T/$2.json")
	jq --argjson st "$st" ".vmas[] | select(.start == \$st) | .counts.$3" "$T/scan.json"
}
expect() { # REGION PLANT FIELD VALUE
	local got
	got=$(region "$1" "$2" "$3")
	[[ $got == "$4" ]] || fail "$2/$1 $3: expected $4, got '${got}'"
}
for p in a b c; do
	expect unique $p scanned 32
	expect unique $p stable 32
	expect dup $p stable 32
	expect zero $p zero 16
	expect zero $p stable 0
	expect volatile $p volatile 8
	expect volatile $p stable 0
	expect mlocked $p scanned 0
	expect mlocked $p skipped.mlocked 8
	expect shared $p skipped.shared 8
	expect kzero $p skipped.zero_page 8
	expect kzero $p scanned 0
done

# digests_in PLANT REGION: ids reported from that region, one per line
digests_in() {
	local st n
	st=$(jq ".regions.$2.start" "$T/$1.json")
	n=$(jq ".regions.$2.pages" "$T/$1.json")
	jq -r --argjson st "$st" --argjson lim $((st + n * 4096)) \
		'.digests[] | select(.addr >= $st and .addr < $lim) | .id' "$T/scan.json"
}
[[ $(digests_in a unique | sort -u | wc -l) == 32 ]] || fail "32 distinct ids expected for a/unique"
# Each page is reported once; with no shard to answer, a page stays
# marked unique and is reported again now and then, as such (again).
addrs_in() { # PLANT REGION [AGAIN]: addresses reported from that region
	local st n
	st=$(jq ".regions.$2.start" "$T/$1.json")
	n=$(jq ".regions.$2.pages" "$T/$1.json")
	jq -r --argjson st "$st" --argjson lim $((st + n * 4096)) --argjson ag "${3:-false}" \
		'.digests[] | select(.addr >= $st and .addr < $lim and .again == $ag) | .addr' "$T/scan.json"
}
[[ $(addrs_in a dup | wc -l) == 32 && $(addrs_in a dup | sort -u | wc -l) == 32 ]] ||
	fail "every dup page reported once (as new): $(addrs_in a dup | wc -l) reports"
[[ -z $(comm -13 <(addrs_in a dup | sort) <(addrs_in a dup true | sort -u)) ]] ||
	fail "a page reported again that was never reported"
[[ $(digests_in a dup | sort -u | wc -l) == 1 ]] || fail "identical pages got different ids"
[[ -z $(digests_in a zero) ]] || fail "zero pages were reported"
[[ -z $(digests_in a volatile)$(digests_in b volatile) ]] || fail "a volatile page was reported stable"
[[ -z $(digests_in a mlocked)$(digests_in a shared)$(digests_in a kzero) ]] || fail "a skipped page was reported"
# Across processes of one domain: the same bytes, the same ids.
diff <(digests_in a unique | sort -u) <(digests_in b unique | sort -u) >/dev/null ||
	fail "the same pages in two processes of one domain got different ids"
# Another domain: never the same id for the same bytes; its tag is 7.
[[ -z $(comm -12 <(digests_in a unique | sort) <(digests_in c unique | sort)) ]] ||
	fail "domain tenant produced ids equal to the default domain's"
[[ $(digests_in c unique | cut -c1-2 | sort -u) == 07 ]] || fail "tenant ids do not carry domain 7"
[[ $(digests_in a unique | cut -c1-2 | sort -u) == 00 ]] || fail "default ids do not carry domain 0"

# Only KSM's opt-in: planted regions of a --mergeable process are scanned,
# its heap and stack are not.
plant m --seed 2 --mergeable
PM=$(jq .pid "$T/m.json")
"$SCAN" -k "$T/key" --passes 2 --interval-ms 50 --mergeable >"$T/scan.json" || fail "mergeable scan"
expect unique m stable 32
expect zero m zero 16
expect mlocked m skipped.mlocked 8
n=$(jq --argjson p "$PM" '[.vmas[] | select(.pid == $p)] | length' "$T/scan.json")
[[ $n == 6 ]] || fail "mergeable scan saw $n VMAs of the planter, expected its 6 private regions"
echo "ok"
