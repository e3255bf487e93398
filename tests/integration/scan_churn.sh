# Processes that exit, and processes that appear, while passes run are
# normal events: the scanner never fails, forgets the state of what is
# gone, and its state stays bounded by what is mapped now.
source "$(dirname "$0")/lib.sh"

"$CKSMD" --gen-key "$T/key"
pids=()
for i in $(seq 1 12); do
	"$ROOT/build/cksm-planter" --seed "$i" --lifetime-ms $((100 + RANDOM % 900)) >/dev/null &
	pids+=($!)
done
# Scan them while they die one by one (and some are killed outright).
( sleep 0.3; kill -KILL "${pids[0]}" "${pids[1]}" 2>/dev/null ) &
"$BIN/cksm-scan" -k "$T/key" --passes 30 --interval-ms 40 "${pids[@]}" >"$T/scan.json" ||
	fail "the scanner failed while processes exited"
wait
[[ $(jq .procs "$T/scan.json") == 0 ]] || fail "state kept for exited processes: $(jq .procs "$T/scan.json")"
[[ $(jq .tracked_pages "$T/scan.json") == 0 ]] || fail "pages still tracked after every process exited"
[[ $(jq '.vmas | length' "$T/scan.json") == 0 ]] || fail "VMA state kept for exited processes"
echo "ok"
