# An agent whose shard accepts connections but never speaks (a hung or
# hostile server) gives up on each attempt at the handshake deadline, says
# so, and keeps retrying with backoff; it never counts itself registered.
source "$(dirname "$0")/lib.sh"

cluster_conf "$T/cksm.conf" 1
COORD=$(conf_get "$T/cksm.conf" shard.0 address)
AMET=$(conf_get "$T/cksm.conf" agent metrics)

socat -u TCP-LISTEN:"${COORD##*:}",bind=127.0.0.1,reuseaddr,fork SYSTEM:"sleep 30" &
PIDS+=($!)
wait_for "silent server" 5 bash -c "ss -Htln 'sport = :${COORD##*:}' | grep -q ."

start agent -c "$T/cksm.conf" --role agent --set agent.node_name=patient
wait_for "handshake deadline" 10 log_has agent "closing connection to $COORD.*no authentication within 1000 ms"
wait_for "a second attempt" 10 bash -c "[[ \$(grep -c 'no authentication within' '$T/agent.log') -ge 2 ]]"
[[ $(metric "$AMET" cksm_auth_timeouts_total) -ge 2 ]] || fail "timeouts not counted"
[[ $(metric "$AMET" cksm_agent_registrations_total) -eq 0 ]] || fail "registered with a silent server"
[[ $(metric "$AMET" 'cksm_agent_shard_up{shard="0"}') -eq 0 ]] || fail "shard shown up"
stop agent
echo "ok"
