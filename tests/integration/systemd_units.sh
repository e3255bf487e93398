# The units in deploy/ pass systemd-analyze verify, point at the installed
# binaries, and the example configuration they use validates.
source "$(dirname "$0")/lib.sh"

command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (make deps installs it)"; exit 1; }
mkdir -p "$T/root/usr/local/sbin" "$T/units"
cp "$ROOT/deploy/cksm-agent.service" "$ROOT/deploy/cksm-coord@.service" "$T/units/"
# systemd-analyze checks that ExecStart binaries exist: point them at the build.
sed -i "s|/usr/local/sbin/cksmd|$CKSMD|g" "$T/units/"*.service
cp "$T/units/cksm-coord@.service" "$T/units/cksm-coord@0.service"
systemd-analyze verify --man=no "$T/units/cksm-agent.service" "$T/units/cksm-coord@0.service" \
	>"$T/verify.log" 2>&1 || fail "systemd-analyze verify: $(cat "$T/verify.log")"
grep -v "Failed to .*bus\|ConfigurationDirectory" "$T/verify.log" | grep -qi "error\|unknown" &&
	fail "systemd-analyze warnings: $(cat "$T/verify.log")"
grep -q '^Type=notify' "$ROOT/deploy/cksm-agent.service" || fail "agent unit is not Type=notify"

# The example configuration is valid once its key file exists.
"$CKSMD" --gen-key "$T/cluster.key"
sed "s|^key_file = .*|key_file = $T/cluster.key|" "$ROOT/deploy/cksm.conf" >"$T/cksm.conf"
"$CKSMD" -c "$T/cksm.conf" --check-config --role coord --shard 0 || fail "example config invalid"
# The alerting rules shipped beside them load in Prometheus.
promtool check rules "$ROOT/deploy/cksm-alerts.yml" || fail "promtool rejects deploy/cksm-alerts.yml"
echo "ok"
