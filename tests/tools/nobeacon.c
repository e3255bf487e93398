/*
 * libcksm-nobeacon.so - preloaded before libcksm, makes its beacon
 * mapping fail (the read-only, MAP_NORESERVE mapping of
 * CKSM_LOCAL_MAP_PAGES pages), so that its HELLO names no beacon:
 * a process the agent cannot mark (local.h). Used by tests only.
 */
#include <dlfcn.h>
#include <errno.h>
#include <sys/mman.h>

#include "local.h"

void *mmap(void *a, size_t len, int prot, int flags, int fd, off_t off)
{
	static void *(*real)(void *, size_t, int, int, int, off_t);

	if (len == CKSM_LOCAL_MAP_PAGES * 4096 && prot == PROT_READ && (flags & MAP_NORESERVE)) {
		errno = ENOMEM;
		return MAP_FAILED;
	}
	if (!real)
		real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
	return real ? real(a, len, prot, flags, fd, off) : MAP_FAILED;
}
