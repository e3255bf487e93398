# A coordinator and an agent from the tree connect, authenticate, exchange
# heartbeats and serve /metrics that promtool accepts; systemd is told
# READY only once the listeners are bound; cksmctl sees the node; the agent
# reconnects after the coordinator restarts; a silent node is declared
# dead; SIGTERM stops both cleanly.
source "$(dirname "$0")/lib.sh"

cluster_conf "$T/cksm.conf" 1
COORD=$(conf_get "$T/cksm.conf" shard.0 address)
CMET=$(conf_get "$T/cksm.conf" shard.0 metrics)
AMET=$(conf_get "$T/cksm.conf" agent metrics)

# READY=1 must arrive only after the control port accepts connections.
socat -u UNIX-RECV:"$T/notify" OPEN:"$T/notify.out",creat,append &
PIDS+=($!)
wait_for "notify socket" 5 test -S "$T/notify"
NOTIFY_SOCKET=$T/notify start coord -c "$T/cksm.conf" --role coord --shard 0
wait_for "READY from the coordinator" 10 grep -q READY=1 "$T/notify.out"
ss -Htln "sport = :${COORD##*:}" | grep -q . || fail "READY before the control port was bound"
curl -sf "http://$CMET/metrics" >/dev/null || fail "READY before /metrics was bound"

start agent -c "$T/cksm.conf" --role agent --set agent.node_name=node-a
wait_for "agent registration" 10 log_has agent "registered with shard 0"
wait_for "heartbeats" 10 bash -c "[[ \$(curl -sf http://$CMET/metrics | awk '\$1==\"cksm_coord_heartbeats_total\"{print \$2}') -ge 5 ]]"
[[ $(metric "$AMET" cksm_agent_heartbeats_acked_total) -ge 5 ]] || fail "agent saw no heartbeat acks"
[[ $(metric "$AMET" 'cksm_agent_shard_up{shard="0"}') == 1 ]] || fail "agent does not report shard 0 up"
log_has coord "authenticated peer .* as agent node-a" || fail "coordinator did not log the agent's authentication"

for m in "$CMET" "$AMET"; do
	curl -sf "http://$m/metrics" >"$T/m.prom"
	promtool check metrics <"$T/m.prom" || fail "promtool rejects /metrics of $m"
	grep -q '^cksm_build_info{version=' "$T/m.prom" || fail "no cksm_build_info on $m"
done

# cksmctl sees the live node, in text and JSON.
"$CKSMCTL" -c "$T/cksm.conf" status >"$T/status.txt" || fail "cksmctl status failed: $(cat "$T/status.txt")"
grep -q "node-a .*live" "$T/status.txt" || fail "status does not show node-a live"
"$CKSMCTL" -c "$T/cksm.conf" -o json status >"$T/status.json"
jq -e '.shards[0].up and .shards[0].nodes[0].name == "node-a" and .shards[0].nodes[0].live' \
	"$T/status.json" >/dev/null || fail "JSON status wrong: $(cat "$T/status.json")"

# Coordinator restart: the agent reconnects and registers again.
stop coord
wait_for "agent noticing" 10 log_has agent "lost shard 0"
"$CKSMCTL" -c "$T/cksm.conf" status >"$T/down.txt" 2>&1 && fail "status exit 0 with the shard down"
grep -q "shard 0 unreachable" "$T/down.txt" || fail "status does not name the unreachable shard"
start coord -c "$T/cksm.conf" --role coord --shard 0
wait_for "re-registration" 15 log_has coord "node node-a (id [0-9]*, rack default) registered"
[[ $(metric "$AMET" cksm_agent_reconnects_total) -ge 1 ]] || fail "reconnect not counted"

# A node that goes silent is declared dead.
kill -STOP "$PID_agent"
wait_for "node death" 10 log_has coord "node node-a is dead"
"$CKSMCTL" -c "$T/cksm.conf" -o json status >"$T/dead.json" && fail "status exit 0 with a dead node"
jq -e '.shards[0].nodes[0].live == false' "$T/dead.json" >/dev/null || fail "dead node shown live"
kill -CONT "$PID_agent"
wait_for "node back" 15 bash -c "\"$CKSMCTL\" -c \"$T/cksm.conf\" status"

stop agent
stop coord
log_has agent "stopped" || fail "agent did not log its stop"
echo "ok"
