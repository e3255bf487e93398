# The README's first command works: the demo starts a coordinator and an
# agent, shows the node live in cksmctl status, and stops everything.
source "$(dirname "$0")/lib.sh"

CKSM_BIN=$BIN DEMO_SECONDS=3 "$ROOT/scripts/demo.sh" >"$T/demo.log" 2>&1 || fail "demo failed"
grep -q "demo-node-1 .*live" "$T/demo.log" || fail "demo did not show the node live: $(cat "$T/demo.log")"
grep -q "stopping the demo cluster" "$T/demo.log" || fail "demo did not stop"
pgrep -f "build/demo/cksm.conf" && fail "demo left daemons running"
echo "ok"
