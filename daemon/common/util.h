/*
 * util - small helpers every module may use.
 */
#ifndef CKSM_UTIL_H
#define CKSM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define NAME_MAX_LEN 64

/*
 * Node, rack and peer names: 1 to 64 letters, digits, '.', '_' or '-'.
 * They end up in logs, tables and metrics, so nothing else is let in.
 */
int name_valid(const char *s);

/*
 * A node's id: a 31-bit hash of its name, the same on every shard and
 * after every restart (so dup references stay valid); never 0. Two names
 * with one id are refused at registration.
 */
uint32_t node_id_of(const char *name);

/*
 * /proc/PID/stat of pid read into buf; returns its fields after the
 * command (from the state on: "S 1 ..."), or NULL if it cannot be read.
 * The command may hold spaces and parentheses: the fields start after
 * the last ')'.
 */
const char *proc_stat_fields(int pid, char *buf, size_t len);

/*
 * Make room for n elements of size bytes in the array *v of *cap
 * (doubling, from 64 at least): 0, or -ENOMEM with *v and *cap as they were.
 */
int array_reserve(void **v, size_t *cap, size_t n, size_t size);

/* Nanoseconds on clock id (CLOCK_MONOTONIC, a thread's CPU clock, ...). */
uint64_t clock_ns(clockid_t id);

/* Milliseconds on the monotonic clock. */
static inline uint64_t now_ms(void)
{
	return clock_ns(CLOCK_MONOTONIC) / 1000000;
}

/*
 * The time ms milliseconds from now on clock id, as the timed waits
 * (pthread_cond_timedwait, pthread_timedjoin_np) take it.
 */
struct timespec deadline_after(clockid_t id, uint64_t ms);

/* A 64-bit mixer (MurmurHash3's finaliser): spreads a counter into a hash. */
static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	return x ^ (x >> 33);
}

#endif
