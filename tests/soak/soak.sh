# The soak: three nodes and two shards (replicas = 2) under a mixed
# workload while everything that can go wrong does, at random, for
# SOAK_SECONDS (600; `make soak`). Each node runs cksm-racer processes
# whose threads write, check and drop (MADV_DONTNEED) pages, mremap and
# fork (each child checks its copy) against eviction; the same contents
# on every node make pages backed by other nodes' dups, read over TCP.
# Every few seconds one of:
#   kill -9 an agent (half the time by a fault point: mid-eviction, mid
#     fault, mid fork, copies refused, replica reads failing), started again;
#   SIGSTOP an agent (a holder others read from) for 3 s;
#   SIGTERM an agent and start it again (a clean restart);
#   restart a shard.
# At the end every racer checks every page against its shadow. Prints
# pages backed (most seen at once), faults served, restarts, errors, and
# `lost = N`: pages wrong, dropped pages that read old content, children's
# wrong pages and SIGBUS together. Exit 0 only with lost = 0 and no error.
source "$(dirname "$0")/../integration/lib.sh"

LIB=$ROOT/build/libcksm.so
RACER=$ROOT/build/cksm-racer
SECS=${SOAK_SECONDS:-600}
SEED=${SOAK_SEED:-$RANDOM}
RANDOM=$SEED
cluster_conf "$T/cksm.conf" 2
sed -i 's/^\[cluster\]$/[cluster]\nreplicas = 2\ndup_idle_millisecs = 5000/' "$T/cksm.conf"
start c0 -c "$T/cksm.conf" --role coord --shard 0
start c1 -c "$T/cksm.conf" --role coord --shard 1
NODES=(a b c)
declare -A MET
for n in "${NODES[@]}"; do
	start_node "$n" --set agent.wset=1 --set agent.evict_rate=1000000 --set agent.sleep_millisecs=0 \
		--set agent.pass_millisecs=200 --set agent.data_timeout_ms=500
done
START=$SECONDS
echo "soak: ${SECS} s, seed $SEED, nodes ${NODES[*]}, 2 shards, replicas 2"

# The racers: two per node, for the whole soak.
R=()
for n in "${NODES[@]}"; do
	for k in 1 2; do
		args=(--pages 4096 --threads 3 --rate 1000 --dontneed 15)
		((k == 1)) && args+=(--mremap-ms 700) || args+=(--fork-ms 1500)
		(
			rc=0
			CKSM_SOCKET=$T/$n.sock LD_PRELOAD=$LIB CKSM_MERGE_ALL=1 timeout $((SECS + 300)) \
				"$RACER" "${args[@]}" --seconds "$SECS" --settle-ms 2000 \
				>"$T/race-$n$k.json" 2>"$T/race-$n$k.err" || rc=$?
			echo "$rc" >"$T/race-$n$k.rc"
		) &
		R+=($!)
		PIDS+=($!)
	done
done

# What the agents counted, summed over their lives: each life's last sample.
declare -A LAST
FAULTS=0 RFAULTS=0 MAXBACKED=0 SIGBUS=0
sample() { # sample N: node-N's counters now
	local n=$1 out f b s r
	out=$(curl -sf --max-time 2 "http://${MET[$n]}/metrics" || true)
	[[ -n $out ]] || return 0
	f=$(awk '$1 ~ /^cksm_faults_total\{source="(local|remote|zero)"\}/ { s += $2 } END { print s + 0 }' <<<"$out")
	r=$(awk '$1 == "cksm_faults_total{source=\"remote\"}" { print $2 + 0 }' <<<"$out")
	b=$(awk '$1 ~ /^cksm_pages_backed\{/ { s += $2 } END { print s + 0 }' <<<"$out")
	s=$(awk '$1 == "cksm_sigbus_total" { print $2 + 0 }' <<<"$out")
	LAST[$n]="$f $s ${r:-0}"
	BACKED[$n]=$b
}
declare -A BACKED
retire() { # retire N: node-N's life ends, its last counts are kept
	local f s r
	read -r f s r <<<"${LAST[$1]:-0 0 0}"
	FAULTS=$((FAULTS + f))
	SIGBUS=$((SIGBUS + s))
	RFAULTS=$((RFAULTS + r))
	LAST[$1]="0 0 0"
}
agent_back() { # agent_back [-n] N [VAR=VALUE...]
	node_again "$@"
}
points=(die_before_zap=200 die_after_zap=200 die_in_fault=100 die_in_fork=5 copy_eagain=3 replica_read_fails=2)
KILLS=0 STOPS=0 RESTARTS=0 SHARDS=0 POINTS=0
until=$((SECONDS + SECS - 10))
while ((SECONDS < until)); do
	sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.1f", 2 + 3 * r / 32768 }')"
	total=0
	for n in "${NODES[@]}"; do
		sample "$n"
		total=$((total + ${BACKED[$n]:-0}))
	done
	((total > MAXBACKED)) && MAXBACKED=$total
	n=${NODES[$((RANDOM % 3))]}
	var="PID_node_$n"
	case $((RANDOM % 8)) in
	0 | 1 | 2) # kill -9, back at once
		kill -9 "${!var}" 2>/dev/null || true
		reap "${!var}" 10 "node-$n, killed" >>"$T/hang" || true
		retire "$n"
		sleep 0.3
		agent_back "$n"
		KILLS=$((KILLS + 1))
		;;
	3 | 4) # a life with a fault point, killed if it outlives 6 s
		kill -9 "${!var}" 2>/dev/null || true
		reap "${!var}" 10 "node-$n, killed" >>"$T/hang" || true
		retire "$n"
		p=${points[$((RANDOM % ${#points[@]}))]}
		agent_back -n "$n" CKSM_INJECT="$p"
		for ((k = 0; k < 60; k++)); do kill -0 "${!var}" 2>/dev/null || break; sleep 0.1; sample "$n"; done
		kill -9 "${!var}" 2>/dev/null || true
		reap "${!var}" 10 "node-$n, killed" >>"$T/hang" || true
		retire "$n"
		agent_back "$n"
		POINTS=$((POINTS + 1))
		;;
	5) # a holder stopped for 3 s
		kill -STOP "${!var}"
		sleep 3
		kill -CONT "${!var}"
		STOPS=$((STOPS + 1))
		;;
	6) # a clean restart
		sample "$n"
		kill -TERM "${!var}"
		reap "${!var}" 60 "node-$n, told to stop" >>"$T/hang" ||
			echo "node-$n exited with $? at its stop" >>"$T/errors"
		retire "$n"
		agent_back "$n"
		RESTARTS=$((RESTARTS + 1))
		;;
	7) # a shard restarts
		s=$((RANDOM % 2))
		stop "c$s" >>"$T/hang"
		start "c$s" -c "$T/cksm.conf" --role coord --shard "$s"
		SHARDS=$((SHARDS + 1))
		;;
	esac
done
# The racers end SECS after their start, and check their pages then.
left=$((SECS + 120 - SECONDS + START))
for r in "${R[@]}"; do
	reap "$r" $((left > 10 ? left : 10)) "a racer" >>"$T/hang" || true
	left=$((SECS + 120 - SECONDS + START))
done
for n in "${NODES[@]}"; do
	sample "$n"
	retire "$n"
done

bad=0 old=0 child=0 ops=0 checks=0 forks=0 exits=0
for f in "$T"/race-*.json; do
	name=$(basename "$f" .json)
	rc=$(cat "$T/$name.rc" 2>/dev/null || echo none)
	if ! jq -e . "$f" >/dev/null 2>&1; then
		echo "$name: no result (exit $rc): $(head -c 300 "$T/$name.err")" >>"$T/errors"
		continue
	fi
	read -r b o c p k fk < <(jq -r '"\(.bad) \(.old) \(.child_bad) \(.ops) \(.checks) \(.forks)"' "$f")
	bad=$((bad + b)) old=$((old + o)) child=$((child + c)) ops=$((ops + p)) checks=$((checks + k)) forks=$((forks + fk))
	[[ $rc == 0 ]] || { exits=$((exits + 1)); echo "$name exited with $rc: $(head -c 300 "$f")" >>"$T/errors"; }
done
san=$(cat "$T"/*.log | grep -c 'ERROR: AddressSanitizer\|runtime error:\|LeakSanitizer' || true)
((san)) && echo "$san sanitizer reports in the daemons' logs" >>"$T/errors"
touch "$T/errors"
hangs=$(grep -c '^HANG' "$T/hang" 2>/dev/null || true)
((hangs)) && grep '^HANG' "$T/hang" >>"$T/errors"
errors=$(wc -l <"$T/errors")
lost=$((bad + old + child + SIGBUS))
summary() {
	echo "workload: 6 processes, $ops ops, $checks checks, $forks forks"
	echo "pages backed: up to $MAXBACKED at once; faults served: $FAULTS ($RFAULTS from other nodes' dups)"
	echo "restarts: $KILLS agents killed, $POINTS killed at fault points, $RESTARTS restarted cleanly, $STOPS holders stopped for 3 s, $SHARDS shards restarted"
	echo "errors: $errors"
	[[ -s $T/errors ]] && sed 's/^/  /' "$T/errors"
	echo "lost = $lost (pages wrong $bad, dropped pages with old content $old, children's wrong pages $child, SIGBUS $SIGBUS)"
}
if ((lost == 0 && errors == 0)); then
	summary
	echo ok
	exit 0
fi
# The logs stay for a look; what failed comes last, where a runner that
# shows a log's tail sees it.
mkdir -p "$ROOT/build/test-logs"
rm -rf "$ROOT/build/test-logs/soak-$SEED"
cp -r "$T" "$ROOT/build/test-logs/soak-$SEED"
echo "logs kept in build/test-logs/soak-$SEED"
show_logs 20 2>&1
((hangs)) && cat "$T/hang"
summary
echo "FAIL: the soak lost pages or met errors (seed $SEED)"
exit 1
