/*
 * util - see util.h.
 */
#include "util.h"

#include <ctype.h>
#include <string.h>

uint32_t node_id_of(const char *name)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (; *name; name++)
		h = (h ^ (uint8_t)*name) * 16777619u;
	h &= 0x7fffffff;
	return h ? h : 1;
}

int name_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > NAME_MAX_LEN)
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("._-", *s))
			return 0;
	return 1;
}
