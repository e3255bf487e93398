#!/usr/bin/env bash
# Who may attach. Attaching hands a process an open /dev/userfaultfd and
# a userfaultfd with every feature, which vm.unprivileged_userfaultfd=0
# keeps from ordinary users, so:
#   - by default only root may: the socket is root's, mode 0600;
#   - with socket_group, that group's members too (root:GROUP, 0660): a
#     user outside it cannot connect, one in it attaches and is evicted;
#   - with attach_any_user the socket is 0666, but while the sysctl is 0
#     a user that is neither root nor in the group is refused at HELLO:
#     nothing is handed out (no descriptor), the refusal is logged and
#     counted, and the program runs as without libcksm;
#   - a socket_group that does not exist is named, and nothing attaches.
# tests/tools/hello_probe.py sends the HELLO a fresh process sends and
# tells what came back.
source "$(dirname "$0")/lib.sh"

PROBE=$ROOT/tests/tools/hello_probe.py
chmod 755 "$T"
install -m 755 "$ROOT/build/libcksm.so" "$ROOT/build/cksm-evictee" "$PROBE" "$T/"
uffd_sysctl_zero
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
export CKSM_SOCKET=$T/agent.sock
as_nobody() { setpriv --reuid=65534 --regid=65534 "$@"; }
evictee_as_nobody() {
	as_nobody "$@" env LD_PRELOAD="$T/libcksm.so" "$T/cksm-evictee" verify --pages 256 --wait-s "$WAIT"
}
probe() { "$@" /usr/bin/python3 "$T/hello_probe.py" "$T/agent.sock"; }
sock_mode() { stat -c '%a %U %G' "$T/agent.sock"; }

# By default: root only.
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 --set agent.evict_age=1
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
[[ $(sock_mode) == "600 root root" ]] || fail "default socket mode and owner: $(sock_mode)"
out=$(probe as_nobody --clear-groups)
echo "default, user nobody: $out"
jq -e '.connected == false and .fd == null' <<<"$out" >/dev/null || fail "nobody reached the agent by default: $out"
out=$(probe env)
echo "default, root: $out"
jq -e '.type == 2 and .status == 0 and .fd == "/dev/userfaultfd"' <<<"$out" >/dev/null ||
	fail "root got no /dev/userfaultfd: $out"
stop agent

# socket_group: its members.
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.socket_group=root
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
wait_for "registration" 10 log_has agent "registered with shard 0"
[[ $(sock_mode) == "660 root root" ]] || fail "socket mode and owner with socket_group: $(sock_mode)"
WAIT=2
evictee_as_nobody --clear-groups >"$T/out.json" 2>"$T/out.err" || fail "outside the group: $(cat "$T/out.json" "$T/out.err")"
jq -e '.evicted == 0 and .bad == 0' "$T/out.json" >/dev/null || fail "outside the group: $(cat "$T/out.json")"
[[ $(metric "$AMET" cksm_attached_processes) == 0 ]] || fail "a process outside the group attached"
echo "outside the group: $(cat "$T/out.json")"
WAIT=20
evictee_as_nobody --groups=0 >"$T/in.json" 2>"$T/in.err" || fail "in the group: $(cat "$T/in.json" "$T/in.err")"
jq -e '.evicted >= 230 and .bad == 0' "$T/in.json" >/dev/null || fail "in the group: $(cat "$T/in.json")"
echo "in the group: $(cat "$T/in.json")"
stop agent

# attach_any_user while vm.unprivileged_userfaultfd is 0: refused at HELLO.
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=100 \
	--set agent.evict_age=1 --set agent.socket_group=root --set agent.attach_any_user=1
wait_for "the agent's socket" 10 test -S "$T/agent.sock"
[[ $(sock_mode) == "666 root root" ]] || fail "socket mode with attach_any_user: $(sock_mode)"
out=$(probe as_nobody --clear-groups)
echo "attach_any_user, user nobody: $out"
jq -e '.connected and .type == 2 and .status == -13 and .fd == null' <<<"$out" >/dev/null ||
	fail "user nobody was handed something, or not told no: $out"
wait_for "the refusal logged" 10 log_has agent "may not attach: it is neither root nor in socket_group, and vm.unprivileged_userfaultfd is 0"
WAIT=2
evictee_as_nobody --clear-groups >"$T/any.json" 2>"$T/any.err" || fail "refused: $(cat "$T/any.json" "$T/any.err")"
jq -e '.evicted == 0 and .bad == 0' "$T/any.json" >/dev/null || fail "refused: $(cat "$T/any.json")"
[[ $(metric "$AMET" cksm_attach_refused_total) -ge 2 ]] ||
	fail "refusals not counted: $(metric "$AMET" cksm_attach_refused_total)"
out=$(probe as_nobody --groups=0)
echo "attach_any_user, nobody in the group: $out"
jq -e '.fd == "/dev/userfaultfd"' <<<"$out" >/dev/null || fail "a member was refused: $out"
stop agent

# A group that does not exist: said so; no socket, nothing attaches.
rm -f "$T/agent.sock"
start agent2 -c "$T/cksm.conf" --role agent --set agent.socket_group=no-such-group-cksm
wait_for "the missing group named" 10 log_has agent2 "there is no group no-such-group-cksm"
[[ ! -e $T/agent.sock ]] || fail "a socket without its group"
stop agent2
echo "ok"
