# Pages the kernel already shares or backs with huge pages are skipped and
# counted: a THP-backed range (with scan_thp=0), and pages that the
# kernel's own KSM has merged (KSM is started for the test and stopped,
# and its merges undone, afterwards).
source "$(dirname "$0")/lib.sh"

PLANTER=$ROOT/build/cksm-planter
SCAN=$BIN/cksm-scan
"$CKSMD" --gen-key "$T/key"

region_count() { # PLANT REGION FIELD
	local st
	st=$(jq ".regions.$2.start" "$T/$1.json")
	jq --argjson st "$st" ".vmas[] | select(.start == \$st) | .counts.$3" "$T/scan.json"
}

# --- THP ---------------------------------------------------------------
"$PLANTER" --seed 6 --thp >"$T/h.json" &
PIDS+=($!)
wait_for "planter" 5 test -s "$T/h.json"
PH=$(jq .pid "$T/h.json")
if [[ $(jq .thp_backed "$T/h.json") != 1 ]]; then
	fail "the kernel gave no THP for a 2 MiB aligned MADV_HUGEPAGE region (transparent_hugepage=$(cat /sys/kernel/mm/transparent_hugepage/enabled))"
fi
"$SCAN" -k "$T/key" --passes 2 --interval-ms 20 --no-thp "$PH" >"$T/scan.json" || fail "scan"
[[ $(region_count h thp skipped.thp) == 512 ]] || fail "THP pages skipped: $(region_count h thp skipped.thp)"
[[ $(region_count h thp scanned) == 0 ]] || fail "THP pages were scanned with scan_thp=0"
"$SCAN" -k "$T/key" --passes 2 --interval-ms 20 --thp "$PH" >"$T/scan.json" || fail "scan --thp"
[[ $(region_count h thp scanned) == 512 ]] || fail "scan_thp=1 scanned $(region_count h thp scanned) of 512"
[[ $(region_count h thp stable) == 512 ]] || fail "THP pages not stable with scan_thp=1"

# --- KSM ---------------------------------------------------------------
ksm_take
"$PLANTER" --seed 7 --mergeable >"$T/k.json" &
PIDS+=($!)
wait_for "planter" 5 test -s "$T/k.json"
PK=$(jq .pid "$T/k.json")
echo 10000 >$KSM/pages_to_scan
echo 0 >$KSM/sleep_millisecs
echo 1 >$KSM/run
# KSM needs two passes to merge; the dup region's 32 pages become one KSM page.
wait_for "KSM to merge the dup region" 60 bash -c "[[ \$(cat $KSM/pages_sharing) -ge 31 ]]"
"$SCAN" -k "$T/key" --passes 2 --interval-ms 20 "$PK" >"$T/scan.json" || fail "scan"
[[ $(region_count k dup skipped.ksm) == 32 ]] || fail "KSM pages skipped: $(region_count k dup skipped.ksm) of 32"
[[ $(region_count k dup scanned) == 0 ]] || fail "KSM pages were scanned"
# The unique region has nothing to merge with and stays ours.
[[ $(region_count k unique scanned) == 32 ]] || fail "unique pages: $(region_count k unique scanned)"
echo "ok"
