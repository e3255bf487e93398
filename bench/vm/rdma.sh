# bench/vm/rdma.sh - cksm's data transports over soft-RoCE, beside
# perftest on the same link, in one guest (make bench-vm runs it there
# through tests/vm/run.sh). TCG times are not hardware times: only the
# ratios of one run mean anything.
#  1. perftest: ib_read_lat and ib_read_bw, 4 KiB READs over rdma_cm
#     (ib_read_bw with 128 READs in flight, its default, and with 1).
#  2. bench/fault with the rdma kind, then the tcp kind: a remote fault's
#     cost end to end (a process's touch of a page backed by another
#     node's dup), and the transport's read alone.
#  3. bench/rdma: page reads of a node's pool by 1, 4 and 16 threads,
#     each kind.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/tests/vm/rxe.sh"
B=$ROOT/build
rxe_up
cd /tmp

perf() { # perf TOOL ARGS...: the server in the background, the client
	timeout 120 "$@" >/tmp/perf-srv.txt 2>&1 &
	sleep 2
	timeout 120 "$@" "$RXE_IP" >/tmp/perf-cli.txt 2>&1
	wait
}
perf ib_read_lat -R -d rxe0 -s 4096 -n 2000
LAT=$(awk '$1 == 4096 { print $5, $6, $8 }' /tmp/perf-cli.txt) # typical, avg, p99
perf ib_read_bw -R -d rxe0 -s 4096 -n 20000
BW=$(awk '$1 == 4096 { print $4 }' /tmp/perf-cli.txt)
perf ib_read_bw -R -d rxe0 -s 4096 -n 5000 -o 1
BW1=$(awk '$1 == 4096 { print $4 }' /tmp/perf-cli.txt)
read -r LAT_T LAT_AVG LAT_99 <<<"$LAT"
echo "ib_read_lat 4 KiB: typical $LAT_T us, average $LAT_AVG us, p99 $LAT_99 us"
echo "ib_read_bw 4 KiB: $BW MB/s with 128 READs in flight, $BW1 MB/s with 1"

for kind in rdma tcp; do
	echo "--- bench/fault, $kind"
	FAULT_TRANSPORT=$kind FAULT_DATA_IP=$RXE_IP FAULT_EVICT_WITH=zap "$B/bench/fault" 2048 |
		tee "/tmp/fault-$kind.txt" | grep -E 'transport alone|remote dup|read back wrong|floor in its workload'
done

# A holder with dups of 2048 contents: two planters of the same seed.
D=$(mktemp -d /dev/shm/cksm-bench-rdma.XXXXXX)
"$B/cksmd" --gen-key "$D/key"
cat >"$D/cksm.conf" <<CONF
[cluster]
key_file = $D/key
[log]
level = warn
[agent]
node_name = holder
metrics = 127.0.0.1:19580
socket = $D/a.sock
state_dir = $D/a.state
pass_millisecs = 200
evict_age = 1
evict_with = zap
transport = rdma
data_listen = $RXE_IP:19584
data_address = $RXE_IP:19584
[shard.0]
address = 127.0.0.1:19581
metrics = 127.0.0.1:19582
CONF
"$B/cksmd" -c "$D/cksm.conf" --role coord --shard 0 >"$D/coord.log" 2>&1 &
PIDS=($!)
"$B/cksmd" -c "$D/cksm.conf" --role agent >"$D/agent.log" 2>&1 &
PIDS+=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null; wait; rm -rf "$D"' EXIT
for _ in $(seq 100); do [[ -S $D/a.sock ]] && break; sleep 0.1; done
for s in 1 2; do
	CKSM_SOCKET=$D/a.sock LD_PRELOAD=$B/libcksm.so "$B/cksm-planter" --seed 7 --mergeable \
		--extra-mib 8 >/dev/null &
	PIDS+=($!)
done
dups() { curl -sf http://127.0.0.1:19580/metrics | awk '$1 == "cksm_pool_dups" { print $2 }'; }
for _ in $(seq 120); do (($(dups || echo 0) >= 1024)) && break; sleep 1; done
echo "--- bench/rdma: reads of the holder's pool ($(dups) dups)"
for kind in rdma tcp; do
	for t in 1 4 16; do
		"$B/bench/rdma" "$D/a.state" "$RXE_IP:19584" "$D/key" "$kind" "$t" 5 |
			tee -a /tmp/rdma.txt
	done
done

# The ratios, for docs/benchmarks.md.
f() { awk -v k="$2" '$0 ~ k { for (i = 1; i <= NF; i++) if ($i == "p50") { print $(i + 1); exit } }' "$1"; }
FR=$(f /tmp/fault-rdma.txt 'remote dup')
UF=$(f /tmp/fault-rdma.txt 'floor in its workload')
FT=$(f /tmp/fault-tcp.txt 'remote dup')
AR=$(f /tmp/fault-rdma.txt 'transport alone')
AT=$(f /tmp/fault-tcp.txt 'transport alone')
BR=$(awk '/^rdma threads 16/ { print $6 }' /tmp/rdma.txt)
BT=$(awk '/^tcp threads 16/ { print $6 }' /tmp/rdma.txt)
echo "--- ratios (TCG: the ratios, not the times, carry over to hardware)"
echo "remote fault over RDMA p50 $FR us = $(bc -l <<<"scale=2; $FR / $LAT_T")x ib_read_lat typical ($LAT_T us), $(bc -l <<<"scale=2; $FR / ($UF + $LAT_T)")x a bare userfaultfd round trip ($UF us) + ib_read_lat; over TCP $FT us = $(bc -l <<<"scale=2; $FT / $LAT_T")x ib_read_lat"
echo "transport read alone: rdma p50 $AR us = $(bc -l <<<"scale=2; $AR / $LAT_T")x ib_read_lat; tcp $AT us"
echo "16 reading threads: rdma $BR MB/s = $(bc -l <<<"scale=2; $BR / $BW")x ib_read_bw ($BW MB/s), $(bc -l <<<"scale=2; $BR / $BW1")x ib_read_bw -o 1 ($BW1 MB/s); tcp $BT MB/s"
