# [domain.NAME] evict = 0: nothing of the domain is evicted, so no page of
# it is ever merged and no write to it can be timed against a copy that
# another process holds (operations.md, "Threat model"). A process of
# such a domain keeps all its pages; one of the default domain beside it
# is evicted as usual; both read everything right.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
EVICTEE=$ROOT/build/cksm-evictee
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
export CKSM_SOCKET=$T/agent.sock

# The tenant's process first, held until the agent knows its pid.
bash -c 'echo $$ >"$1"; while [[ ! -e $2 ]]; do sleep 0.05; done
	LD_PRELOAD=$3 exec "$4" verify --pages 256 --wait-s 10' _ \
	"$T/tenant.pid" "$T/go" "$LIB" "$EVICTEE" >"$T/tenant.json" 2>"$T/tenant.err" &
TENANT=$!
PIDS+=($TENANT)
wait_for "the tenant's pid" 5 test -s "$T/tenant.pid"
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.evict_cooldown_millisecs=0 \
	--set domain.tenant.id=7 --set domain.tenant.pids="$TENANT" --set domain.tenant.evict=0
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
touch "$T/go"
rc=0
LD_PRELOAD=$LIB "$EVICTEE" verify --pages 256 --wait-s 20 >"$T/default.json" 2>"$T/default.err" || rc=$?
trc=0
wait $TENANT || trc=$?
echo "tenant, evict = 0 (exit $trc): $(cat "$T/tenant.json") $(head -c 200 "$T/tenant.err")"
echo "default domain (exit $rc): $(cat "$T/default.json") $(head -c 200 "$T/default.err")"
jq -e '.evicted >= 230 and .bad == 0' "$T/default.json" >/dev/null || fail "the default domain's process was not evicted"
jq -e '.evicted == 0 and .bad == 0' "$T/tenant.json" >/dev/null || fail "a page of a domain with evict = 0 was evicted"
[[ $rc == 0 && $trc == 0 ]] || fail "a process exited with an error"
stop agent
echo "ok"
