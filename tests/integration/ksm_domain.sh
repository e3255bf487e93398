#!/usr/bin/env bash
# The KSM hand-over keeps to the default domain. KSM merges a mergeable
# page with any equal page of the node, whatever its cksm domain, so a
# hot reader in [domain.tenant] keeps its hot duplicates with cksm: no
# window is handed over, its region is never marked mergeable, its pages
# keep coming back from the pool, and the agent says why. With
# [domain.tenant] ksm = 1 the operator lets them go: the window is
# handed over as in the default domain.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
ksm_take
echo 10000 >$KSM/pages_to_scan
echo 10 >$KSM/sleep_millisecs
echo 1 >$KSM/run

cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
export CKSM_SOCKET=$T/agent.sock
m() { metric "$AMET" "$1"; }

# tenant_hot N [--set ...]: a hot reader in [domain.tenant], and an agent
# (agentN) that knows its pid; sets HOT and HADDR.
tenant_hot() {
	local n=$1
	shift
	rm -f "$T/go$n"
	bash -c 'echo $$ >"$1"; while [[ ! -e $2 ]]; do sleep 0.05; done
		LD_PRELOAD=$3 exec "$4" hot --pages 256 --wait-s 20' _ \
		"$T/hot$n.pid" "$T/go$n" "$LIB" "$ROOT/build/cksm-evictee" >"$T/hot$n.json" &
	HOT=$!
	PIDS+=($HOT)
	wait_for "the reader's pid" 5 test -s "$T/hot$n.pid"
	start "agent$n" -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
		--set agent.evict_age=1 --set agent.evict_cooldown_millisecs=300 \
		--set domain.tenant.id=7 --set domain.tenant.pids="$HOT" "$@"
	wait_for "the agent's socket" 10 test -S "$T/agent.sock"
	wait_for "registration" 10 log_has "agent$n" "registered with shard 0"
	touch "$T/go$n"
	wait_for "the hot reader evicted" 30 test -s "$T/hot$n.json"
	jq -e '.evicted >= 230' "$T/hot$n.json" >/dev/null || fail "not evicted: $(cat "$T/hot$n.json")"
	HADDR=$(jq -r .addr "$T/hot$n.json")
}

# [domain.tenant] as configured by default: nothing is handed over.
tenant_hot 1
sleep 4
[[ $(m 'cksm_faults_total{source="local"}') -ge 128 ]] ||
	fail "the hot pages did not come back: $(m 'cksm_faults_total{source="local"}')"
[[ $(m cksm_ksm_windows_total) == 0 ]] ||
	fail "a tenant's hot duplicates handed to KSM: $(m cksm_ksm_windows_total) windows"
vmflags "$HOT" "$HADDR" | grep -qw mg && fail "the tenant's region was marked mergeable"
log_has agent1 "domain tenant: hot duplicates stay with cksm" || fail "no word of why nothing is handed over"
echo "tenant, ksm = 0: windows $(m cksm_ksm_windows_total), faults from the pool $(m 'cksm_faults_total{source="local"}')"
finish 1
[[ $(m cksm_sigbus_total) == 0 ]] || fail "pages lost: cksm_sigbus_total $(m cksm_sigbus_total)"
stop agent1

# [domain.tenant] ksm = 1: the operator lets the tenant's hot pages go.
tenant_hot 2 --set domain.tenant.ksm=1
wait_for "a window handed to KSM" 20 bash -c "[[ \$(curl -sf http://$AMET/metrics | awk '\$1 == \"cksm_ksm_windows_total\" { print \$2 }') -ge 1 ]]"
wait_for "the region marked mergeable" 10 bash -c "$(declare -f vmflags); vmflags $HOT $HADDR | grep -qw mg"
echo "tenant, ksm = 1: windows $(m cksm_ksm_windows_total)"
finish 2
stop agent2
echo "ok"
