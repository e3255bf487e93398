/*
 * log - leveled logging with a per-file prefix.
 *
 * Messages go to stderr as "LEVEL prefix: text", or to the systemd journal
 * (with CODE_FILE/CODE_LINE fields) when stderr is the journal's stream.
 * The level is checked before any argument is evaluated, so a disabled
 * debug line costs one compare.
 *
 * A file may define LOG_PREFIX before including this header; by default
 * the prefix is the file's name.
 */
#ifndef CKSM_LOG_H
#define CKSM_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

enum log_level {
	LOG_LVL_ERROR = 0,
	LOG_LVL_WARN = 1,
	LOG_LVL_INFO = 2,
	LOG_LVL_DEBUG = 3,
};

/* Current threshold; written once at startup, read everywhere. */
extern enum log_level log_threshold;

#ifndef LOG_PREFIX
#define LOG_PREFIX __FILE_NAME__
#endif

#ifndef __FILE_NAME__
#define __FILE_NAME__ __FILE__
#endif

void log_emit(enum log_level lvl, const char *prefix, const char *file, int line, const char *fmt,
	      ...) __attribute__((format(printf, 5, 6)));

#define log_at(lvl, ...)                                                              \
	do {                                                                          \
		if ((lvl) <= log_threshold)                                           \
			log_emit((lvl), LOG_PREFIX, __FILE__, __LINE__, __VA_ARGS__); \
	} while (0)

#define log_error(...) log_at(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_at(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_at(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LVL_DEBUG, __VA_ARGS__)

/*
 * A bound on lines of one kind that a peer can cause (refusals, say):
 * at most LOG_QUOTA_LINES in LOG_QUOTA_MS. log_quota_take says whether
 * one more may be logged now; when a window opens after lines were held
 * back, *held says how many (to be logged once), else 0.
 */
#define LOG_QUOTA_LINES 10
#define LOG_QUOTA_MS	10000
struct log_quota {
	uint64_t window_ms; /* when the current window opened */
	unsigned logged;    /* lines logged in it */
	uint64_t held;	    /* lines held back in it */
};
bool log_quota_take(struct log_quota *q, uint64_t now_ms, uint64_t *held);

/* Parse "error", "warn", "info" or "debug"; returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

/*
 * Decide between stderr and the journal (call once at startup). ident
 * names the program in journal entries.
 */
void log_init(const char *ident);

#endif
