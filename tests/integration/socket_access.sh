#!/usr/bin/env bash
# Who may attach. With socket_group the agent's socket is root:GROUP mode
# 0660: a process of another user outside the group cannot attach (and
# runs as without libcksm), one with the group can and is evicted. A
# group that does not exist is named in the log and nothing attaches.
source "$(dirname "$0")/lib.sh"

# The tools and the socket where user nobody can reach them.
chmod 755 "$T"
install -m 755 "$ROOT/build/libcksm.so" "$ROOT/build/cksm-evictee" "$T/"
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.socket_group=root
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
[[ $(stat -c '%a %U %G' "$T/agent.sock") == "660 root root" ]] ||
	fail "socket mode and owner: $(stat -c '%a %U %G' "$T/agent.sock")"
export CKSM_SOCKET=$T/agent.sock
as_nobody() { setpriv --reuid=65534 --regid=65534 "$@" env LD_PRELOAD="$T/libcksm.so" "$T/cksm-evictee" verify --pages 256 --wait-s "$WAIT"; }

# Outside the group: not attached, nothing evicted, the program runs.
WAIT=2
as_nobody --clear-groups >"$T/out.json" 2>"$T/out.err" || fail "outside the group: $(cat "$T/out.json" "$T/out.err")"
jq -e '.evicted == 0 and .bad == 0' "$T/out.json" >/dev/null || fail "outside the group: $(cat "$T/out.json")"
[[ $(metric "$AMET" cksm_attached_processes) == 0 ]] || fail "a process outside the group attached"
echo "outside the group: $(cat "$T/out.json")"

# In the group: attached and evicted.
WAIT=20
as_nobody --groups=0 >"$T/in.json" 2>"$T/in.err" || fail "in the group: $(cat "$T/in.json" "$T/in.err")"
jq -e '.evicted >= 230 and .bad == 0' "$T/in.json" >/dev/null || fail "in the group: $(cat "$T/in.json")"
echo "in the group: $(cat "$T/in.json")"
stop agent

# A group that does not exist: said so; no socket, nothing attaches.
rm -f "$T/agent.sock"
start agent2 -c "$T/cksm.conf" --role agent --set agent.socket_group=no-such-group-cksm
wait_for "the missing group named" 10 log_has agent2 "there is no group no-such-group-cksm"
[[ ! -e $T/agent.sock ]] || fail "a socket without its group"
stop agent2
echo "ok"
