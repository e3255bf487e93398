/* smaps parsing: ranges, anonymous or not, VmFlags, sizes. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent/smaps.h"
#include "unit.h"

static const char text[] =
	"55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n"
	"Size:                132 kB\n"
	"Rss:                  16 kB\n"
	"AnonHugePages:         0 kB\n"
	"Private_Hugetlb:       0 kB\n"
	"THPeligible:    0\n"
	"VmFlags: rd wr mr mw me ac sd mg\n"
	"7f0000000000-7f0000200000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)\n"
	"Rss:                2048 kB\n"
	"VmFlags: rd wr sh mr mw me ms sd\n"
	"7f0000400000-7f0000600000 rw-p 00000000 00:00 0 \n"
	"Rss:                2048 kB\n"
	"AnonHugePages:      2048 kB\n"
	"VmFlags: rd wr mr mw me dc ac sd lo hg um uw\n"
	"7f0000800000-7f0000801000 r--p 00000000 08:01 42                         /usr/lib/libc.so.6\n"
	"Rss:                   4 kB\n"
	"VmFlags: rd mr mw me sd\n"
	"7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]\n"
	"Rss:                   4 kB\n"
	"VmFlags: rd ex mr mw me de sd\n"
	"7f0000a00000-7f0000c00000 rw-p 00000000 00:0f 9                          /anon_hugepage (deleted)\n"
	"Private_Hugetlb:    2048 kB\n"
	"VmFlags: rd wr mr mw me de ht sd\n";

static void parses(void **state)
{
	struct vma_info *v;
	size_t n;
	FILE *f = fmemopen((void *)text, sizeof(text) - 1, "r");

	(void)state;
	assert_int_equal(smaps_parse(f, &v, &n), 0);
	fclose(f);
	assert_int_equal(n, 6);
	assert_int_equal(v[0].start, 0x55d0c0a00000ULL);
	assert_int_equal(v[0].end, 0x55d0c0a21000ULL);
	assert_int_equal(v[0].rss_pages, 4);
	assert_int_equal(v[0].flags, VMA_ANON | VMA_MERGEABLE | VMA_READABLE);
	assert_int_equal(v[1].flags & (VMA_ANON | VMA_SHARED), VMA_ANON | VMA_SHARED);
	assert_int_equal(v[1].rss_pages, 512);
	assert_true(v[2].flags & VMA_LOCKED);
	assert_true(v[2].flags & VMA_UFFD);
	assert_false(v[0].flags & VMA_UFFD);
	assert_true(v[2].flags & VMA_DONTCOPY);
	assert_false(v[0].flags & VMA_DONTCOPY);
	assert_int_equal(v[2].anon_huge_kb, 2048);
	assert_false(v[2].flags & VMA_MERGEABLE);
	assert_false(v[3].flags & VMA_ANON);
	assert_true(v[4].flags & VMA_SPECIAL);
	assert_true(v[5].flags & VMA_HUGETLB);
	assert_int_equal(v[5].hugetlb_kb, 2048);
	free(v);
}

static void own_process(void **state)
{
	struct vma_info *v;
	size_t n, heap = 0;
	void *p = malloc(1 << 20);

	(void)state;
	assert_int_equal(smaps_read(getpid(), &v, &n), 0);
	assert_true(n > 5);
	for (size_t i = 0; i < n; i++) {
		assert_true(v[i].start < v[i].end);
		if (i)
			assert_true(v[i - 1].end <= v[i].start);
		heap += (v[i].flags & VMA_ANON) != 0;
	}
	assert_true(heap > 0);
	free(v);
	free(p);
	assert_int_equal(smaps_read(0x7ffffff0, &v, &n), -ESRCH);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(parses),
	cmocka_unit_test(own_process),
};

UNIT_MAIN(tests)
