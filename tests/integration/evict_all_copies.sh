# Every copy of a duplicate goes, the first one reported too. Three
# processes hold the same 16 MiB table (cksm-ksmwork, cold): the shard
# sees each content first as unique (its first copy), keeps it at the
# second and orders a dup; the first copy's node learns that its page may
# go too only when it reports the page again (once in 8 passes, as a page
# reported unique). All three tables must go, the pool holding one copy:
# memory saved net of the pool is two tables' worth.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
MB=16
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0
start agent -c "$T/cksm.conf" --role agent --set agent.pass_millisecs=200 \
	--set agent.sleep_millisecs=0 --set agent.evict_age=2 --set agent.evict_rate=1000000
wait_for "registration" 10 log_has agent "registered with shard 0"

W=()
for w in 0 1 2; do
	LD_PRELOAD=$LIB CKSM_SOCKET=$T/agent.sock "$ROOT/build/cksm-ksmwork" --mb $MB \
		--seconds 60 --mode cold --mergeable --out "$T/w$w.out" &
	W+=($!)
	PIDS+=($!)
done
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
all_filled() {
	local p
	for p in "${W[@]}"; do (($(rss "$p") > MB * 1024)) || return 1; done
}
wait_for "the tables filled" 20 all_filled
all_gone() {
	local p
	for p in "${W[@]}"; do (($(rss "$p") < MB * 1024 / 4)) || return 1; done
}
ok=0
for ((i = 0; i < 500 && !ok; i++)); do
	all_gone && ok=1 || sleep 0.1
done
echo "resident KiB: $(for p in "${W[@]}"; do printf '%s ' "$(rss "$p")"; done)" \
	"evictions $(metric "$AMET" cksm_evictions_total)," \
	"dups $(metric "$AMET" cksm_pool_dups), net saved $(metric "$AMET" cksm_net_saved_bytes) B"
((ok)) || fail "a copy of the table stayed resident"
net=$(metric "$AMET" cksm_net_saved_bytes)
((net >= 2 * MB * 1024 * 1024 * 8 / 10)) || fail "net saved $net B, less than two tables"
for p in "${W[@]}"; do kill "$p"; done
echo ok
