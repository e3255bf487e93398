# rxe.sh - soft-RoCE inside a guest (tests/vm/vm.sh), sourced there.
#
#   rxe_up    the modules, a veth pair v0/v1, rxe0 on v0 with RXE_IP
#
# rxe in Linux 6.1 runs only in the first network namespace, so the nodes
# of a test share rxe0 and are told apart by their ports: a READ between
# two of them still goes through rxe's requester and responder.
RXE_IP=192.0.2.1

rxe_up() {
	modprobe crc32_generic && modprobe veth && modprobe rdma_rxe && modprobe rdma_ucm ||
		{ echo "the guest cannot load the soft-RoCE modules" >&2; return 1; }
	ip link set lo up
	ip link add v0 type veth peer name v1
	ip addr add $RXE_IP/24 dev v0
	ip link set v0 up
	ip link set v1 up
	rdma link add rxe0 type rxe netdev v0 || { echo "no rxe device on v0" >&2; return 1; }
}
