# Bad configuration is reported as file:line with what was expected, a key
# file others can read stops the daemon before it starts, and
# --check-config validates without starting anything.
source "$(dirname "$0")/lib.sh"

cluster_conf "$T/cksm.conf" 1
"$CKSMD" -c "$T/cksm.conf" --check-config >"$T/ok.out" || fail "valid config refused: $(cat "$T/ok.out")"
grep -q "configuration OK" "$T/ok.out" || fail "no OK message"
# --print-config round-trips through the parser.
"$CKSMD" -c "$T/cksm.conf" --print-config >"$T/printed.conf"
sed -i "s|^key_file = .*|key_file = $T/cluster.key|" "$T/printed.conf"
"$CKSMD" -c "$T/printed.conf" --check-config >/dev/null || fail "printed config does not load"

printf '[cluster]\nkey_file = %s\nbuckets = 3\nheartbeat_ms = soon\n[agent]\nmetrics = nowhere\n[mystery]\na = b\n' \
	"$T/cluster.key" >"$T/bad.conf"
rc=0
"$CKSMD" -c "$T/bad.conf" --check-config 2>"$T/bad.err" || rc=$?
[[ $rc -eq 2 ]] || fail "bad config: exit $rc, expected 2"
grep -q "bad.conf:3: \[cluster\] buckets: expected a power of two" "$T/bad.err" || fail "buckets error: $(cat "$T/bad.err")"
grep -q "bad.conf:4: \[cluster\] heartbeat_ms: expected milliseconds.*got 'soon'" "$T/bad.err" || fail "heartbeat error"
grep -q "bad.conf:6: \[agent\] metrics: expected a numeric host:port" "$T/bad.err" || fail "metrics error"
grep -q "bad.conf:8: unknown section \[mystery\]" "$T/bad.err" || fail "section error"

# Flag overrides are checked the same way.
rc=0
"$CKSMD" -c "$T/cksm.conf" --set cluster.dead_after_ms=x --check-config 2>"$T/set.err" || rc=$?
[[ $rc -eq 2 ]] && grep -q "\-\-set: \[cluster\] dead_after_ms: expected milliseconds" "$T/set.err" ||
	fail "bad --set not reported: $(cat "$T/set.err")"

# The key file must not be readable by others: refuse to start.
chmod 0644 "$T/cluster.key"
rc=0
"$CKSMD" -c "$T/cksm.conf" --role coord --shard 0 2>"$T/key.err" || rc=$?
[[ $rc -ne 0 ]] || fail "started with a world-readable key"
grep -q "is accessible by group or others (mode 0644); run: chmod 600" "$T/key.err" || fail "key message: $(cat "$T/key.err")"
chmod 0600 "$T/cluster.key"

# Usage errors.
rc=0; "$CKSMD" -c "$T/cksm.conf" --role coord 2>/dev/null || rc=$?
[[ $rc -eq 2 ]] || fail "coord without --shard: exit $rc"
rc=0; "$CKSMD" -c "$T/cksm.conf" --role coord --shard 5 2>/dev/null || rc=$?
[[ $rc -eq 2 ]] || fail "unknown shard: exit $rc"
rc=0; "$CKSMD" -c "$T/missing.conf" --check-config 2>"$T/miss.err" || rc=$?
[[ $rc -eq 2 ]] && grep -q "missing.conf: cannot open" "$T/miss.err" || fail "missing config"
rc=0; "$CKSMCTL" -c "$T/cksm.conf" bogus 2>/dev/null || rc=$?
[[ $rc -eq 2 ]] || fail "cksmctl unknown command: exit $rc"

# A metrics port already in use is a clear startup error.
CMET=$(conf_get "$T/cksm.conf" shard.0 metrics)
start holder -c "$T/cksm.conf" --role coord --shard 0
wait_for "first coordinator" 10 log_has holder "ready"
rc=0
"$CKSMD" -c "$T/cksm.conf" --role coord --shard 0 2>"$T/dup.err" || rc=$?
[[ $rc -eq 1 ]] && grep -q "cannot serve metrics on $CMET" "$T/dup.err" || fail "port clash: $(cat "$T/dup.err")"
echo "ok"
