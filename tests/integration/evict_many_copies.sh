# Many copies of one content on one node: more than max_page_sharing pages
# of a node hold the same bytes (a guest's pages poisoned at their free,
# say: one content repeated thousands of times). One dup serves at most
# max_page_sharing pages; when it is full the shard orders another, and
# the pages beyond the first dup's share go against the next one, as KSM
# chains its merged pages. One process, 16 MiB of one content, with
# max_page_sharing = 64: 95 % of the pages or more must go, no dup
# backing more than 64, and every page must read back right.
source "$(dirname "$0")/lib.sh"

LIB=$ROOT/build/libcksm.so
MB=16
PAGES=$((MB * 256))
MPS=64
cluster_conf "$T/cksm.conf" 1
AMET=$(conf_get "$T/cksm.conf" agent metrics)
start c0 -c "$T/cksm.conf" --role coord --shard 0 --set cluster.max_page_sharing=$MPS
start agent -c "$T/cksm.conf" --role agent --set cluster.max_page_sharing=$MPS \
	--set agent.pass_millisecs=200 --set agent.sleep_millisecs=0 --set agent.evict_age=2 \
	--set agent.evict_rate=1000000
wait_for "registration" 10 log_has agent "registered with shard 0"

LD_PRELOAD=$LIB CKSM_SOCKET=$T/agent.sock "$ROOT/build/cksm-ksmwork" --mb $MB --contents 1 \
	--seconds 40 --mode cold --mergeable --out "$T/w.out" &
W=$!
PIDS+=($W)
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
wait_for "the table filled" 20 bash -c "(($(rss $W) > MB * 1024))"
backed() { metric "$AMET" 'cksm_pages_backed{source="local"}'; }
gone() { (($(rss "$W") < MB * 1024 / 4 && $(backed) >= PAGES * 95 / 100)); }
ok=0
for ((i = 0; i < 300 && !ok; i++)); do
	gone && ok=1 || sleep 0.1
done
dups=$(metric "$AMET" cksm_pool_dups)
n=$(backed)
echo "resident $(rss "$W") KiB of $((MB * 1024)), evictions $(metric "$AMET" cksm_evictions_total)," \
	"backed $n, dups $dups"
((ok)) || fail "copies beyond the first dup's $MPS stayed resident"
((dups * MPS >= n)) || fail "$dups dups back $n pages: more than $MPS pages a dup"
rc=0
reap "$W" 60 "cksm-ksmwork" || rc=$?
echo "cksm-ksmwork (exit $rc): $(tail -1 "$T/w.out")"
[[ $rc == 0 ]] || fail "cksm-ksmwork read a page wrong (exit $rc)"
echo ok
