# A wrong cluster key, a replayed hello, an oversized frame, garbage bytes,
# a malformed message and a half-open peer each get a clear log line and a
# closed connection, are counted in metrics, and the daemon keeps serving
# its agent and other clients throughout.
source "$(dirname "$0")/lib.sh"

cluster_conf "$T/cksm.conf" 1
COORD=$(conf_get "$T/cksm.conf" shard.0 address)
CMET=$(conf_get "$T/cksm.conf" shard.0 metrics)
"$CKSMD" --gen-key "$T/wrong.key"

start coord -c "$T/cksm.conf" --role coord --shard 0
wait_for "coordinator" 10 log_has coord "ready"
start agent -c "$T/cksm.conf" --role agent --set agent.node_name=good
wait_for "agent registration" 10 log_has agent "registered with shard 0"

# A slow-loris peer holds a connection open the whole time.
"$PEER" "$COORD" "$T/cluster.key" hold >"$T/hold.log" 2>&1 &
PIDS+=($!)

"$PEER" "$COORD" "$T/wrong.key" wrong-key || fail "wrong key"
wait_for "auth failure log" 5 log_has coord "authentication failed: bad MAC"
"$PEER" "$COORD" "$T/cluster.key" replay || fail "replay"
"$PEER" "$COORD" "$T/cluster.key" oversized || fail "oversized"
wait_for "oversized log" 5 log_has coord "oversized frame: 67108864 bytes announced"
"$PEER" "$COORD" "$T/cluster.key" garbage || fail "garbage"
wait_for "garbage log" 5 log_has coord "oversized frame: 1195725856 bytes announced, limit 4096"
"$PEER" "$COORD" "$T/cluster.key" malformed || fail "malformed"
wait_for "malformed log" 5 log_has coord "malformed frame"
"$PEER" "$COORD" "$T/cluster.key" half-open || fail "half-open"
wait_for "deadline log" 5 log_has coord "no authentication within 1000 ms"

# Each log line names the peer.
grep "closing connection from 127.0.0.1:[0-9]*" "$T/coord.log" | grep -q "authentication failed" ||
	fail "auth failure log does not name the peer"

# Counted.
[[ $(metric "$CMET" cksm_auth_failures_total) -ge 2 ]] || fail "auth failures not counted"
[[ $(metric "$CMET" 'cksm_frames_rejected_total{reason="oversized"}') -ge 2 ]] || fail "oversized not counted"
[[ $(metric "$CMET" 'cksm_frames_rejected_total{reason="malformed"}') -ge 1 ]] || fail "malformed not counted"
[[ $(metric "$CMET" cksm_auth_timeouts_total) -ge 1 ]] || fail "timeouts not counted"

# Still serving: the agent stayed registered and heartbeating, a good
# client is answered, and the daemon is alive.
log_has agent "lost shard" && fail "the agent lost its shard during the attacks"
"$PEER" "$COORD" "$T/cluster.key" status | grep -q "1 node" || fail "status after attacks"
hb1=$(metric "$CMET" cksm_coord_heartbeats_total)
sleep 0.5
hb2=$(metric "$CMET" cksm_coord_heartbeats_total)
((hb2 > hb1)) || fail "heartbeats stopped"
kill -0 "$PID_coord" || fail "coordinator died"
echo "ok"
