# cksmd scanning a large planted process stays within its CPU budget
# (cpu_percent of one core), read from /proc/PID/stat as the kernel
# accounts it. The scanner thread is held to cpu_percent; the allowance of
# 5 points above it covers the loop thread (heartbeats, reports) and the
# 10 ms granularity of the kernel's accounting.
source "$(dirname "$0")/lib.sh"

BUDGET=10
MIB=${CPU_TEST_MIB:-1024}
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
"$ROOT/build/cksm-planter" --seed 5 --mergeable --extra-mib "$MIB" >"$T/p.json" &
PIDS+=($!)
wait_for "planter" 30 test -s "$T/p.json"

start coord -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.cpu_percent=$BUDGET
wait_for "scanning" 20 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1==\"cksm_pages_scanned_total\"{print \$2}') -gt 0 ]]"

ticks() { awk '{ print $14 + $15 }' "/proc/$PID_agent/stat"; }
hz=$(getconf CLK_TCK)
t0=$(date +%s.%N)
c0=$(ticks)
sleep 8
c1=$(ticks)
t1=$(date +%s.%N)
pct=$(echo "scale=2; 100 * ($c1 - $c0) / $hz / ($t1 - $t0)" | bc)
scanned=$(metric "$AMET" cksm_pages_scanned_total)
echo "cksmd used ${pct}% of one core with cpu_percent=$BUDGET ($scanned pages scanned so far)"
(( $(echo "$pct <= $BUDGET + 5" | bc) )) || fail "CPU ${pct}% above the budget of ${BUDGET}%"
(( scanned > MIB * 256 / 4 )) || fail "scanned only $scanned pages: throttled to a standstill"
echo "ok"
