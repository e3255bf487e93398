#!/usr/bin/env bash
# Hot duplicates go to the kernel's KSM. A libcksm process whose backed
# pages keep coming back from the local pool (it reads its whole region
# every 20 ms): once a page returns from the pool a second time, the
# agent hands its window to KSM. The process itself marks the window
# mergeable (VmFlags "mg"), KSM merges the copies there, the agent evicts
# nothing in it any more, and the process reads its memory right
# throughout. Without KSM running nothing is handed over.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
ksm_take
echo 0 >$KSM/run

cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.evict_cooldown_millisecs=300
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

hot() { # start a hot reader; sets HOT (pid) and HADDR (region address)
	LD_PRELOAD=$LIB "$ROOT/build/cksm-evictee" hot --pages 256 --wait-s 20 >"$T/hot$1.json" &
	HOT=$!
	PIDS+=($HOT)
	wait_for "the hot reader evicted" 30 test -s "$T/hot$1.json"
	jq -e '.evicted >= 230' "$T/hot$1.json" >/dev/null || fail "not evicted: $(cat "$T/hot$1.json")"
	HADDR=$(jq -r .addr "$T/hot$1.json")
}

# KSM off: pages come back again and again, nothing is handed over.
hot 1
sleep 3
[[ $(m cksm_ksm_windows_total) == 0 ]] || fail "handed to KSM while it is off"
[[ $(m 'cksm_faults_total{source="local"}') -ge 128 ]] ||
	fail "the hot pages did not come back: $(m 'cksm_faults_total{source="local"}')"
log_has agent "KSM is not running" || fail "no word that KSM is off"
vmflags "$HOT" "$HADDR" | grep -qw mg && fail "the region went to KSM while it is off"
finish 1

# KSM on: the window is handed over.
echo 10000 >$KSM/pages_to_scan
echo 10 >$KSM/sleep_millisecs
echo 1 >$KSM/run
hot 2
wait_for "a window handed to KSM" 20 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1 == \"cksm_ksm_windows_total\" { print \$2 }') -ge 1 ]]"
wait_for "the region marked mergeable" 10 bash -c "$(declare -f vmflags); vmflags $HOT $HADDR | grep -qw mg"
wait_for "KSM merging the region" 60 bash -c "[[ \$(cat /proc/$HOT/ksm_merging_pages) -ge 100 ]]"
ev=$(m cksm_evictions_total)
sleep 2
[[ $(m cksm_evictions_total) == "$ev" ]] || fail "evicted in a window KSM owns: $ev -> $(m cksm_evictions_total)"
echo "hot: windows $(m cksm_ksm_windows_total), KSM merging $(cat /proc/$HOT/ksm_merging_pages) pages, evictions $ev"
finish 2
[[ $(m cksm_sigbus_total) == 0 ]] || fail "pages lost: cksm_sigbus_total $(m cksm_sigbus_total)"
stop agent
echo "ok"
