/*
 * uffd_move - UFFDIO_MOVE (Linux 6.8), for builds whose kernel headers
 * are older than the kernel they run on.
 */
#ifndef CKSM_UFFD_MOVE_H
#define CKSM_UFFD_MOVE_H

#include <linux/userfaultfd.h>

#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFDIO_MOVE
struct uffdio_move {
	__u64 dst;
	__u64 src;
	__u64 len;
	__u64 mode;
	__s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#endif

#endif
