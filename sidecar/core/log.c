#include "core/log.h"
#include "core/common.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_level = SC_LOG_INFO;
static _Thread_local char t_name[16] = "main";

static const char *const names[] = {"debug", "info", "warn", "error"};

void sc_log_set_level(sc_log_level level) { atomic_store_explicit(&g_level, (int)level, memory_order_relaxed); }
sc_log_level sc_log_get_level(void) { return (sc_log_level)atomic_load_explicit(&g_level, memory_order_relaxed); }
const char *sc_log_level_name(sc_log_level level) { return (unsigned)level < 4 ? names[level] : "?"; }

int sc_log_level_parse(const char *s, sc_log_level *out)
{
    for (unsigned i = 0; i < SC_ARRAY_LEN(names); i++)
        if (strcasecmp(s, names[i]) == 0) {
            *out = (sc_log_level)i;
            return 0;
        }
    if (strcasecmp(s, "warning") == 0) {
        *out = SC_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

void sc_log_set_thread_name(const char *name)
{
    snprintf(t_name, sizeof(t_name), "%s", name);
}

void sc_log(sc_log_level level, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&g_level, memory_order_relaxed))
        return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, sc_log_level_name(level), t_name);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : SC_MIN((size_t)m, sizeof(line) - (size_t)n - 2));
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void sc_log_limited(sc_ratelimit *rl, sc_log_level level, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&g_level, memory_order_relaxed))
        return;
    unsigned long long now = sc_now_ms(), last = atomic_load(&rl->last_ms);
    if ((last && now - last < 1000) || !atomic_compare_exchange_strong(&rl->last_ms, &last, now ? now : 1)) {
        atomic_fetch_add(&rl->suppressed, 1);
        return;
    }
    char msg[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    unsigned long long n = atomic_exchange(&rl->suppressed, 0);
    if (n)
        sc_log(level, "%s (%llu more like it suppressed since the last such line)", msg, n);
    else
        sc_log(level, "%s", msg);
}
