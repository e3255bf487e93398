/*
 * log - see log.h. Output is one line per message; under systemd the
 * journal gets structured fields instead of a formatted prefix.
 */
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

enum log_level log_threshold = LOG_LVL_INFO;

static int use_journal;
static const char *log_ident = "cksm";

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const int level_syslog[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

bool log_quota_take(struct log_quota *q, uint64_t now_ms, uint64_t *held)
{
	*held = 0;
	if (!q->window_ms || now_ms - q->window_ms >= LOG_QUOTA_MS) {
		*held = q->held;
		q->window_ms = now_ms ? now_ms : 1;
		q->logged = 0;
		q->held = 0;
	}
	if (q->logged < LOG_QUOTA_LINES) {
		q->logged++;
		return true;
	}
	q->held++;
	return false;
}

int log_level_parse(const char *s, enum log_level *out)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* stderr is the journal when JOURNAL_STREAM names its device and inode. */
static int stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
		return 0;
	if (fstat(STDERR_FILENO, &st) < 0)
		return 0;
	return st.st_dev == dev && st.st_ino == ino;
}

void log_init(const char *ident)
{
	log_ident = ident;
	use_journal = stderr_is_journal();
}

void log_emit(enum log_level lvl, const char *prefix, const char *file, int line, const char *fmt,
	      ...)
{
	char msg[1024];
	va_list ap;
	int saved = errno;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	if (use_journal) {
		char code_line[16];

		snprintf(code_line, sizeof(code_line), "%d", line);
		sd_journal_send("MESSAGE=%s: %s", prefix, msg, "PRIORITY=%d", level_syslog[lvl],
				"SYSLOG_IDENTIFIER=%s", log_ident, "CODE_FILE=%s", file,
				"CODE_LINE=%s", code_line, NULL);
	} else {
		struct timespec ts;
		struct tm tm;
		char when[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
		if (lvl == LOG_LVL_ERROR)
			fprintf(stderr, "%s.%03ldZ %s[%d] %s %s: %s (%s:%d)\n", when,
				ts.tv_nsec / 1000000, log_ident, getpid(), level_names[lvl], prefix,
				msg, file, line);
		else
			fprintf(stderr, "%s.%03ldZ %s[%d] %s %s: %s\n", when, ts.tv_nsec / 1000000,
				log_ident, getpid(), level_names[lvl], prefix, msg);
	}
	errno = saved;
}
