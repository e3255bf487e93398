# The README's first command works: the demo starts two shards and three
# nodes with workloads, shows every node live and stable pages on each,
# the shards' trees fill with the contents the nodes share, and it stops
# everything it started.
source "$(dirname "$0")/lib.sh"

CKSM_BIN=$BIN DEMO_SECONDS=12 "$ROOT/scripts/demo.sh" >"$T/demo.log" 2>&1 || fail "demo failed: $(tail -20 "$T/demo.log")"
for n in 1 2 3; do
	grep -q "node-$n .*live" "$T/demo.log" || fail "demo did not show node-$n live: $(cat "$T/demo.log")"
done
# The last table: every node found at least its 64 planted stable pages.
awk '/^NODE +SCANNED/ { t = 3; n = 0; bad = 0; next }
     t > 0 { t--; n++; if ($3 + 0 < 64) bad = 1 }
     END { exit !(n == 3 && !bad) }' "$T/demo.log" ||
	fail "a node shows fewer stable pages than planted: $(tail -n 12 "$T/demo.log")"
grep "contents seen on two nodes" "$T/demo.log" | tail -1 | awk '{ split($0, a, "shard 0 "); split(a[2], b, ","); split($0, c, "shard 1 "); exit !(b[1] + c[2] > 0) }' ||
	fail "the shards' trees stayed empty: $(grep 'contents seen' "$T/demo.log" | tail -1)"
# The census covers the planted pages and the served workloads (whose
# pages change as they run, so census.sh checks the planted truth alone):
# it is there, well formed, and counts at least the 768 KiB planted.
grep "^census:" "$T/demo.log" | tail -1 |
	grep -Eq "^census: [0-9.]+ (KiB|MiB|GiB) in stable pages and [0-9.]+ (KiB|MiB) in zero pages; node-local merging \(KSM\) could save [0-9.]+ (KiB|MiB|GiB), merging across the cluster [0-9.]+ (KiB|MiB|GiB) \([0-9.]+ (B|KiB|MiB|GiB) more, [0-9]+ (copy|copies) of each shared content kept\)$" ||
	fail "census: $(grep '^census:' "$T/demo.log" | tail -1)"
grep "^census:" "$T/demo.log" | tail -1 | grep -Eq "^census: ([0-9.]+ MiB|[0-9.]+ GiB|(7[6-9][0-9]|[89][0-9][0-9])\.[0-9] KiB) in stable" ||
	fail "census counts less than planted: $(grep '^census:' "$T/demo.log" | tail -1)"
# Real savings: every node's workload lost pages to eviction, checked its
# pages against what it wrote as it ran, and found no mismatch.
awk '/^NODE +WORKLOAD RSS/ { t = 3; n = 0; bad = 0; next }
     t > 0 { t--; n++; if ($11 + 0 == 0 || $12 != "0" || $10 + 0 == 0) bad = 1 }
     END { exit !(n == 3 && !bad) }' "$T/demo.log" ||
	fail "workloads: $(grep -A3 '^NODE *WORKLOAD RSS' "$T/demo.log" | tail -4)"
grep "^saved across the cluster" "$T/demo.log" | tail -1 | awk '{ exit !($5 + 0 > 0) }' ||
	fail "nothing saved: $(grep '^saved across' "$T/demo.log" | tail -1)"
cat "$ROOT"/build/demo/churn-*.err | grep -q . && fail "workload errors: $(cat "$ROOT"/build/demo/churn-*.err)"
# As root the nodes are network namespaces joined by veth; the shards see
# them at their own addresses.
if [[ $(id -u) == 0 ]]; then
	grep -q "in network namespaces cksmdemo-n1..3" "$T/demo.log" || fail "the demo did not use network namespaces"
	grep -q "node-1 .*live  192.0.2.6:" "$T/demo.log" || fail "node-1 not seen from its namespace's address"
fi
grep -q "stopping the demo cluster" "$T/demo.log" || fail "demo did not stop"
ip netns list 2>/dev/null | grep -q cksmdemo && fail "demo left network namespaces behind"
pgrep -f "build/demo/cksm.conf" && fail "demo left daemons running"
pgrep -f "cksm-planter --seed" >/dev/null && sleep 1
pgrep -f "cksm-churner --threads 2 --pages 4096" && fail "demo left its workloads running"
echo "ok"
