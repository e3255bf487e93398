/*
 * smaps - see smaps.h. One pass over the text: a header line opens a
 * mapping, "Key: value kB" lines fill its sizes, "VmFlags:" closes it.
 */
#include "smaps.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int push(struct vma_info **v, size_t *n, size_t *cap)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct vma_info *nv = realloc(*v, c * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		*v = nv;
		*cap = c;
	}
	memset(&(*v)[*n], 0, sizeof(**v));
	(*n)++;
	return 0;
}

/* "start-end perms offset dev inode [path]" */
static int parse_header(const char *line, struct vma_info *v)
{
	char perms[8], path[256] = "";
	unsigned long long start, end, inode;
	int consumed = 0;

	if (sscanf(line, "%llx-%llx %7s %*s %*s %llu %n", &start, &end, perms, &inode, &consumed) <
	    4)
		return -EINVAL;
	sscanf(line + consumed, "%255s", path);
	v->start = start;
	v->end = end;
	if (perms[0] == 'r')
		v->flags |= VMA_READABLE;
	if (perms[3] == 's')
		v->flags |= VMA_SHARED;
	if (inode == 0 && (path[0] == '\0' || path[0] == '['))
		v->flags |= VMA_ANON;
	/* Shared anonymous memory lives on an unlinked shmem file. */
	if (!strncmp(path, "/dev/zero", 9) || !strncmp(path, "/SYSV", 5))
		v->flags |= VMA_ANON | VMA_SHARED;
	if (!strcmp(path, "[vdso]") || !strcmp(path, "[vvar]") || !strcmp(path, "[vsyscall]") ||
	    !strcmp(path, "[uprobes]"))
		v->flags |= VMA_SPECIAL;
	return 0;
}

static void parse_vmflags(const char *s, struct vma_info *v)
{
	for (; *s; s++) {
		if (s[0] == ' ' || s[0] == '\n' || !s[1])
			continue;
		if (s[0] == 's' && s[1] == 'h')
			v->flags |= VMA_SHARED;
		else if (s[0] == 'm' && s[1] == 'g')
			v->flags |= VMA_MERGEABLE;
		else if (s[0] == 'u' && s[1] == 'm')
			v->flags |= VMA_UFFD;
		else if (s[0] == 'd' && s[1] == 'c')
			v->flags |= VMA_DONTCOPY;
		else if (s[0] == 'l' && s[1] == 'o')
			v->flags |= VMA_LOCKED;
		else if (s[0] == 'h' && s[1] == 't')
			v->flags |= VMA_HUGETLB;
		else if ((s[0] == 'i' && s[1] == 'o') || (s[0] == 'p' && s[1] == 'f'))
			v->flags |= VMA_IO;
		s++; /* two-letter codes separated by spaces */
	}
}

int smaps_parse(FILE *f, struct vma_info **out, size_t *n)
{
	struct vma_info *v = NULL, *cur = NULL;
	size_t cnt = 0, cap = 0, len = 0;
	char *line = NULL;
	int rc = 0;

	while (getline(&line, &len, f) > 0) {
		unsigned long long kb;
		char key[32];

		if (sscanf(line, "%31[A-Za-z_]: %llu kB", key, &kb) == 2 && cur) {
			if (!strcmp(key, "Rss"))
				cur->rss_pages = kb / 4;
			else if (!strcmp(key, "AnonHugePages"))
				cur->anon_huge_kb = kb;
			else if (!strcmp(key, "Private_Hugetlb") || !strcmp(key, "Shared_Hugetlb"))
				cur->hugetlb_kb += kb;
		} else if (!strncmp(line, "VmFlags:", 8) && cur) {
			parse_vmflags(line + 8, cur);
		} else if (isxdigit((unsigned char)line[0]) && strchr(line, '-')) {
			rc = push(&v, &cnt, &cap);
			if (rc)
				break;
			cur = &v[cnt - 1];
			if (parse_header(line, cur)) {
				cnt--;
				cur = NULL;
			}
		}
	}
	free(line);
	if (rc) {
		free(v);
		return rc;
	}
	*out = v;
	*n = cnt;
	return 0;
}

int smaps_read(pid_t pid, struct vma_info **out, size_t *n)
{
	char path[64];
	FILE *f;
	int rc;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? -ESRCH : -errno;
	rc = smaps_parse(f, out, n);
	/* A process that exits while we read leaves an empty or short file. */
	if (!rc && *n == 0 && ferror(f))
		rc = -ESRCH;
	fclose(f);
	return rc;
}
