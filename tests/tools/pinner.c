/*
 * cksm-pinner - a served process whose memory is pinned for a device:
 * part of a mergeable region is registered as an io_uring fixed buffer
 * (the kernel pins its pages, as RDMA registration or direct I/O does),
 * the rest is not. After the agent had time to evict, the device (an
 * IORING_OP_READ_FIXED from a file) writes into the pinned part, and the
 * process must read what was written: a pinned page evicted would have
 * taken the device's write with it. Used by tests/integration/evict_pinned.sh.
 *
 *   cksm-pinner [--pages N] [--pinned P] [--wait-s S]
 *
 * Prints one JSON line: the smallest resident fraction of the pinned
 * pages and of the others while waiting (mincore), whether the read was
 * seen, and the pages found wrong. Exit 0 when nothing was wrong.
 */
#include <linux/io_uring.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u

static double resident(uint8_t *p, size_t n)
{
	unsigned char v[4096];
	size_t in = 0;

	if (n > sizeof(v) || mincore(p, n * PAGE, v))
		return -1;
	for (size_t i = 0; i < n; i++)
		in += v[i] & 1;
	return (double)in / (double)n;
}

/* One IORING_OP_READ_FIXED of len bytes of fd into buf (fixed buffer 0): its result. */
static int read_fixed(int ring, const struct io_uring_params *p, int fd, void *buf, unsigned len)
{
	size_t sqsz = p->sq_off.array + p->sq_entries * sizeof(unsigned);
	size_t cqsz = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
	size_t sz = sqsz > cqsz ? sqsz : cqsz;
	uint8_t *sq = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
			   IORING_OFF_SQ_RING);
	struct io_uring_sqe *sqes =
		mmap(NULL, p->sq_entries * sizeof(*sqes), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	uint8_t *cq = sq;
	unsigned tail, idx, head;
	struct io_uring_cqe *cqe;

	if (sq == MAP_FAILED || sqes == MAP_FAILED)
		return -1;
	if (!(p->features & IORING_FEAT_SINGLE_MMAP)) {
		cq = mmap(NULL, cqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
			  IORING_OFF_CQ_RING);
		if (cq == MAP_FAILED)
			return -1;
	}
	tail = *(unsigned *)(sq + p->sq_off.tail);
	idx = tail & *(unsigned *)(sq + p->sq_off.ring_mask);
	memset(&sqes[idx], 0, sizeof(sqes[idx]));
	sqes[idx].opcode = IORING_OP_READ_FIXED;
	sqes[idx].fd = fd;
	sqes[idx].addr = (uint64_t)(uintptr_t)buf;
	sqes[idx].len = len;
	sqes[idx].buf_index = 0;
	((unsigned *)(sq + p->sq_off.array))[idx] = idx;
	__atomic_store_n((unsigned *)(sq + p->sq_off.tail), tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -1;
	head = __atomic_load_n((unsigned *)(cq + p->cq_off.head), __ATOMIC_ACQUIRE);
	cqe = (struct io_uring_cqe *)(cq + p->cq_off.cqes) +
	      (head & *(unsigned *)(cq + p->cq_off.ring_mask));
	return cqe->res;
}

int main(int argc, char **argv)
{
	size_t npages = 256, npinned = 64, bad = 0;
	unsigned wait_s = 10;
	struct io_uring_params p;
	double pin_min = 1, other_min = 1;
	char path[] = "/tmp/cksm-pinner.XXXXXX";
	uint8_t *region, *file;
	int ring, fd, got;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--pages"))
			npages = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--pinned"))
			npinned = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--wait-s"))
			wait_s = (unsigned)strtoul(argv[i + 1], NULL, 10);
	}
	if (npinned >= npages || npages > 4096) {
		fprintf(stderr, "cksm-pinner: --pinned must be below --pages (at most 4096)\n");
		return 2;
	}
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		      0);
	if (region == MAP_FAILED)
		return 1;
	memset(region, 0x5a, npages * PAGE);
	memset(&p, 0, sizeof(p));
	ring = (int)syscall(__NR_io_uring_setup, 4, &p);
	if (ring < 0 || syscall(__NR_io_uring_register, ring, IORING_REGISTER_BUFFERS,
				&(struct iovec){ region, npinned * PAGE }, 1)) {
		perror("io_uring");
		return 1;
	}
	madvise(region, npages * PAGE, MADV_MERGEABLE);
	for (unsigned t = 0; t < wait_s * 10; t++) {
		double a = resident(region, npinned),
		       b = resident(region + npinned * PAGE, npages - npinned);

		pin_min = a < pin_min ? a : pin_min;
		other_min = b < other_min ? b : other_min;
		usleep(100000);
	}
	/* The device writes into the pinned pages. */
	fd = mkstemp(path);
	file = malloc(npinned * PAGE);
	if (fd < 0 || !file)
		return 1;
	unlink(path);
	memset(file, 0x77, npinned * PAGE);
	if (write(fd, file, npinned * PAGE) != (ssize_t)(npinned * PAGE))
		return 1;
	got = read_fixed(ring, &p, fd, region, (unsigned)(npinned * PAGE));
	for (size_t i = 0; i < npages; i++) {
		uint8_t want = i < npinned ? 0x77 : 0x5a;

		for (size_t k = 0; k < PAGE; k++)
			if (region[i * PAGE + k] != want) {
				bad++;
				break;
			}
	}
	printf("{\"pinned_resident_min\":%.3f,\"other_resident_min\":%.3f,\"read\":%d,\"bad\":%zu}\n",
	       pin_min, other_min, got, bad);
	return got != (int)(npinned * PAGE) || bad;
}
