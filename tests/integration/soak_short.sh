# The soak (tests/soak/soak.sh, `make soak`) for two minutes: three nodes,
# two shards, agents killed, stopped and restarted, shards restarted and
# fault points, under racing workloads; lost = 0.
exec env SOAK_SECONDS="${SOAK_SECONDS:-120}" bash "$(dirname "$0")/../soak/soak.sh"
