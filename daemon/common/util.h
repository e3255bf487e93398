/*
 * util - small helpers every module may use.
 */
#ifndef CKSM_UTIL_H
#define CKSM_UTIL_H

#include <stddef.h>

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
