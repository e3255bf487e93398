# Adversarial: a hostile client on the agent's local socket (cksm-sockfuzz)
# and a hostile reader of its data port after the handshake
# (cksm-datafuzz). Not part of `make test`: run by hand, as root,
#   CKSM_BIN=build/san bash tests/integration/adv_fuzz.sh
# after building the two clients (not in the Makefile), with build/ made:
#   gcc -D_GNU_SOURCE -O2 -g -Wall -Idaemon/common -o build/cksm-sockfuzz \
#       tests/tools/sockfuzz.c daemon/common/local.c
#   gcc -D_GNU_SOURCE -O2 -g -Wall -Idaemon/common -Ibuild/proto -o build/cksm-datafuzz \
#       tests/tools/datafuzz.c build/libcksmcommon.a $(pkg-config --libs libuv \
#       libprotobuf-c libsodium inih libmicrohttpd libsystemd libxxhash) -pthread -lm
source "$(dirname "$0")/lib.sh"

FUZZ=${FUZZ:-$ROOT/build}
cluster_conf "$T/cksm.conf" 1
DPORT=$(free_port)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.data_listen=127.0.0.1:$DPORT \
	--set agent.data_address=127.0.0.1:$DPORT
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
rc=0
"$FUZZ/cksm-sockfuzz" "$T/agent.sock" "$PID_agent" || rc=1
"$FUZZ/cksm-datafuzz" "127.0.0.1:$DPORT" "$T/cluster.key" "$PID_agent" || rc=1
grep -E "runtime error|AddressSanitizer|LeakSanitizer" "$T/agent.log" | head || true
grep -oE "(warn|error) [a-z_]+\.c: .*" "$T/agent.log" | sed -E 's/process [0-9]+/process P/; s/from [^ ]+ closed/from X closed/' | sort | uniq -c | sort -rn | head -30
stop agent
exit $rc
