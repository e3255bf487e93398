# Hostile local clients. On the agent's socket (cksm-sockfuzz), each case
# on a connection of its own: messages out of order or twice, descriptors
# attached to every message, huge and overflowing ranges, ZAPPED with
# tokens nobody asked for, a userfaultfd that is not one, connections
# held in the handshake beyond the limit, re-attach slots taken and let
# go. On its data port after the handshake (cksm-datafuzz): a request a
# byte at a time, valid requests then a bad one, flags, half a request,
# requests pipelined and never read, more connections than are served.
# After each case the agent is alive, has kept no descriptor, and serves
# a valid client; at the end it exits cleanly, with no sanitizer report.
source "$(dirname "$0")/lib.sh"

cluster_conf "$T/cksm.conf" 1
DPORT=$(free_port)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.data_listen=127.0.0.1:$DPORT \
	--set agent.data_address=127.0.0.1:$DPORT
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
rc=0
"$BIN/cksm-sockfuzz" "$T/agent.sock" "$PID_agent" || rc=1
"$BIN/cksm-datafuzz" "127.0.0.1:$DPORT" "$T/cluster.key" "$PID_agent" || rc=1
[[ $rc -eq 0 ]] || fail "a hostile client's case failed (FAIL lines above)"
! grep -E "runtime error|AddressSanitizer|LeakSanitizer" "$T/agent.log" || fail "a sanitizer report"
stop agent
echo "ok"
