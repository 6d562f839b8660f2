/*
 * log.h: one line per event on stderr, with time, level, thread and a
 * message that says what happened and why, so an operator can act on it.
 * Thread-safe: each line is formatted into a local buffer and written with a
 * single write(2). The level can be changed at run time (admin endpoint).
 */
#ifndef SC_LOG_H
#define SC_LOG_H

#include <stdarg.h>

typedef enum { SC_LOG_DEBUG = 0, SC_LOG_INFO, SC_LOG_WARN, SC_LOG_ERROR } sc_log_level;

void sc_log_set_level(sc_log_level level);
sc_log_level sc_log_get_level(void);
/* Parses "debug", "info", "warn", "error"; returns 0 or -EINVAL. */
int sc_log_level_parse(const char *s, sc_log_level *out);
const char *sc_log_level_name(sc_log_level level);
/* Names the calling thread in log lines ("main", "worker-0", ...). */
void sc_log_set_thread_name(const char *name);

void sc_log(sc_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* At most one line per second per limiter (any thread); the next line that
 * passes says how many were suppressed. Use for events a failing peer can
 * produce per request. */
typedef struct sc_ratelimit {
    _Atomic unsigned long long last_ms;
    _Atomic unsigned long long suppressed;
} sc_ratelimit;
void sc_log_limited(sc_ratelimit *rl, sc_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#define SC_WARN_LIMITED(rl, ...) sc_log_limited((rl), SC_LOG_WARN, __VA_ARGS__)

#define SC_DEBUG(...) do { if (sc_log_get_level() <= SC_LOG_DEBUG) sc_log(SC_LOG_DEBUG, __VA_ARGS__); } while (0)
#define SC_INFO(...) sc_log(SC_LOG_INFO, __VA_ARGS__)
#define SC_WARN(...) sc_log(SC_LOG_WARN, __VA_ARGS__)
#define SC_ERROR(...) sc_log(SC_LOG_ERROR, __VA_ARGS__)

#endif
