/*
 * access_log.c: the per-worker rings and the writer thread (access_log.h;
 * selection and the line itself are in access_line.c).
 *
 * Ring: a byte ring of a power-of-two size per worker. `head` (bytes ever
 * queued) is written by the worker alone, `tail` (bytes ever written out)
 * by the writer alone; each reads the other's with acquire and publishes
 * its own with release, so the bytes between them are whole lines the
 * writer may pass straight to writev(2). The worker keeps a cached tail
 * and reloads it only when the ring looks full.
 *
 * Waking the writer: it sleeps in poll(2) on an eventfd for at most
 * flush_interval. Before sleeping it raises each ring's `want_kick` and
 * looks at every ring once more; a worker that leaves its ring at least
 * half full (or finds it full) and sees the flag clears it and writes the
 * eventfd. Both sides put a full fence between their store and their load
 * (the flag on one side, the head on the other), so a kick cannot be
 * missed; the worker pays for the fence only when its ring is half full.
 */
#include "obs/access_log.h"

#include "core/log.h"
#include "core/prom.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- rings ---- */

#define CACHELINE 64

struct sc_access_producer {
    /* the worker's line */
    _Alignas(CACHELINE) _Atomic uint64_t head;
    uint64_t tail_cache;
    char *data;
    uint64_t cap, mask;
    sc_access_log *log;
    uint64_t rng;
    _Atomic uint64_t lines, dropped;    /* written by the worker alone (relaxed), read by anyone */
    /* the writer's line */
    _Alignas(CACHELINE) _Atomic uint64_t tail;
    _Atomic bool want_kick;
};

struct sc_access_log {
    sc_access_select sel;
    unsigned n;
    sc_access_producer *prod;
    uint64_t flush_ms;
    unsigned stop_grace_ms;
    sc_access_log_dest dest;
    char *path;                     /* file destination */
    int fd;
    bool own_fd, reopenable;
    int efd;                        /* eventfd: kicks */
    pthread_t thread;
    bool started;
    _Atomic bool stop, reopen, done;
    _Atomic uint64_t bytes_written, write_errors, reopens, wakeups;
    uint64_t dropped_reported;      /* writer: drops already in a WARN */
    uint64_t last_drop_warn_ms;
};

static inline void stat_inc(_Atomic uint64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

static void kick(sc_access_log *log)
{
    uint64_t one = 1;
    ssize_t rv = write(log->efd, &one, sizeof(one));
    (void)rv; /* EAGAIN: the counter is already non-zero, a wake-up is pending */
}

/* Worker side: wake the writer if it sleeps waiting for this ring. */
static void maybe_kick(sc_access_producer *p)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&p->want_kick, memory_order_relaxed) &&
        atomic_exchange_explicit(&p->want_kick, false, memory_order_relaxed))
        kick(p->log);
}

/* The line of len bytes written at head h is complete: publish it, and
 * wake the writer when the ring is half full. */
static void published(sc_access_producer *p, uint64_t h, size_t len)
{
    atomic_store_explicit(&p->head, h + len, memory_order_release);
    stat_inc(&p->lines);
    if (SC_UNLIKELY(h + len - p->tail_cache >= p->cap / 2)) {
        /* half full by the cached tail: look at the real one before waking
         * the writer (a stale cache would kick it for every line) */
        p->tail_cache = atomic_load_explicit(&p->tail, memory_order_acquire);
        if (h + len - p->tail_cache >= p->cap / 2)
            maybe_kick(p);
    }
}

int sc_access_producer_put(sc_access_producer *p, const char *line, size_t len)
{
    uint64_t h = atomic_load_explicit(&p->head, memory_order_relaxed);
    if (SC_UNLIKELY(p->cap - (h - p->tail_cache) < len)) {
        p->tail_cache = atomic_load_explicit(&p->tail, memory_order_acquire);
        if (p->cap - (h - p->tail_cache) < len) {
            stat_inc(&p->dropped);
            maybe_kick(p);
            return -ENOBUFS;
        }
    }
    uint64_t off = h & p->mask;
    size_t first = (size_t)SC_MIN((uint64_t)len, p->cap - off);
    memcpy(p->data + off, line, first);
    if (first < len)
        memcpy(p->data, line + first, len - first);
    published(p, h, len);
    return 1;
}

int sc_access_log_emit(sc_access_producer *p, const sc_access_record *r)
{
    if (!p || !sc_access_select_match(&p->log->sel, r, &p->rng))
        return 0;
    /* Straight into the ring when a longest line fits there without
     * wrapping (by the cached tail: the free room can only have grown);
     * else on the stack and copied in two pieces. */
    uint64_t h = atomic_load_explicit(&p->head, memory_order_relaxed);
    uint64_t off = h & p->mask;
    if (p->cap - off >= SC_ACCESS_LINE_MAX && p->cap - (h - p->tail_cache) >= SC_ACCESS_LINE_MAX) {
        size_t n = sc_access_format(r, p->data + off, SC_ACCESS_LINE_MAX);
        if (SC_UNLIKELY(!n)) {
            stat_inc(&p->dropped);
            return -ENOBUFS;
        }
        published(p, h, n);
        return 1;
    }
    char line[SC_ACCESS_LINE_MAX];
    size_t n = sc_access_format(r, line, sizeof(line));
    if (SC_UNLIKELY(!n)) {
        stat_inc(&p->dropped);
        return -ENOBUFS;
    }
    return sc_access_producer_put(p, line, n);
}

sc_access_producer *sc_access_log_producer(sc_access_log *log, unsigned i)
{
    return log && i < log->n ? &log->prod[i] : NULL;
}

/* ---- the writer ---- */

static sc_ratelimit write_rl;

static bool past(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* Writes what ring p holds. Whole lines: a short write is continued before
 * another ring is looked at, so lines of different workers never mix. */
static void drain_one(sc_access_log *log, sc_access_producer *p)
{
    uint64_t h = atomic_load_explicit(&p->head, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&p->tail, memory_order_relaxed);
    while (t < h) {
        uint64_t off = t & p->mask;
        size_t n = (size_t)(h - t);
        size_t first = (size_t)SC_MIN((uint64_t)n, p->cap - off);
        struct iovec iov[2] = {{p->data + off, first}, {p->data, n - first}};
        int old;
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old);
        ssize_t w = writev(log->fd, iov, first < n ? 2 : 1);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                /* a non-blocking stdout we inherited: wait for room */
                struct pollfd pf = {.fd = log->fd, .events = POLLOUT};
                pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old);
                poll(&pf, 1, 100);
                pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
                continue;
            }
            int e = errno;
            atomic_fetch_add_explicit(&log->write_errors, 1, memory_order_relaxed);
            SC_WARN_LIMITED(&write_rl, "access log: cannot write to %s: %s; %llu bytes of log lines lost",
                            log->path ? log->path : log->dest == SC_ACCESS_LOG_STDERR ? "stderr" : "stdout",
                            strerror(e), (unsigned long long)(h - t));
            t = h;
        } else {
            t += (uint64_t)w;
            atomic_fetch_add_explicit(&log->bytes_written, (uint64_t)w, memory_order_relaxed);
        }
        atomic_store_explicit(&p->tail, t, memory_order_release);
    }
}

static void drain_all(sc_access_log *log)
{
    for (unsigned i = 0; i < log->n; i++)
        drain_one(log, &log->prod[i]);
}

static int open_file(const char *path)
{
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0640);
}

static void do_reopen(sc_access_log *log)
{
    if (!log->reopenable)
        return;
    int fd = open_file(log->path);
    if (fd < 0) {
        SC_WARN("access log: cannot reopen %s: %s; still writing to the file opened before", log->path,
                strerror(errno));
        return;
    }
    close(log->fd);
    log->fd = fd;
    atomic_fetch_add_explicit(&log->reopens, 1, memory_order_relaxed);
    SC_INFO("access log: reopened %s", log->path);
}

static uint64_t dropped_sum(const sc_access_log *log)
{
    uint64_t d = 0;
    for (unsigned i = 0; i < log->n; i++)
        d += atomic_load_explicit(&log->prod[i].dropped, memory_order_relaxed);
    return d;
}

/* At most one WARN per 10 s about lines lost to full rings. */
static void report_drops(sc_access_log *log, bool final)
{
    uint64_t d = dropped_sum(log), now = sc_now_ms();
    if (d == log->dropped_reported || (!final && now - log->last_drop_warn_ms < 10000))
        return;
    SC_WARN("access log: %llu lines dropped since %s: the buffers (access_log.buffer per worker) were full, "
            "the destination takes lines slower than requests end; sidecar_access_log_dropped_total counts them",
            (unsigned long long)(d - log->dropped_reported), log->dropped_reported ? "the last report" : "start");
    log->dropped_reported = d;
    log->last_drop_warn_ms = now;
}

static bool any_half_full(const sc_access_log *log)
{
    for (unsigned i = 0; i < log->n; i++) {
        const sc_access_producer *p = &log->prod[i];
        uint64_t used = atomic_load_explicit(&p->head, memory_order_relaxed) -
                        atomic_load_explicit(&p->tail, memory_order_relaxed);
        if (used >= p->cap / 2)
            return true;
    }
    return false;
}

static void *writer_main(void *arg)
{
    sc_access_log *log = arg;
    int old;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    sc_log_set_thread_name("access-log");
    pthread_setname_np(pthread_self(), "sc-access-log"); /* top -H, perf */
    for (;;) {
        bool stopping = atomic_load(&log->stop);
        if (atomic_exchange(&log->reopen, false)) {
            drain_all(log); /* what was queued before the signal goes to the old file */
            do_reopen(log);
        }
        drain_all(log);
        report_drops(log, stopping);
        if (stopping)
            break;
        for (unsigned i = 0; i < log->n; i++)
            atomic_store_explicit(&log->prod[i].want_kick, true, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        if (any_half_full(log))
            continue;
        struct pollfd pf = {.fd = log->efd, .events = POLLIN};
        if (poll(&pf, 1, (int)log->flush_ms) > 0) {
            uint64_t v;
            ssize_t rv = read(log->efd, &v, sizeof(v));
            (void)rv;
        }
        atomic_fetch_add_explicit(&log->wakeups, 1, memory_order_relaxed);
    }
    atomic_store(&log->done, true);
    return NULL;
}

/* ---- lifecycle ---- */

static uint64_t pow2_at_least(uint64_t v)
{
    uint64_t c = 1;
    while (c < v)
        c <<= 1;
    return c;
}

static int make_log(const sc_access_log_config *cfg, unsigned n, sc_access_log **out)
{
    *out = NULL;
    if (n == 0)
        return -EINVAL;
    sc_access_log *log = calloc(1, sizeof(*log));
    if (!log)
        return -ENOMEM;
    log->fd = -1;
    log->efd = -1;
    sc_access_select_init(&log->sel, cfg);
    log->flush_ms = cfg->flush_interval_ms ? cfg->flush_interval_ms : 100;
    log->stop_grace_ms = 5000;
    log->dest = cfg->destination;
    log->n = n;
    log->prod = aligned_alloc(CACHELINE, sizeof(sc_access_producer) * n);
    log->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!log->prod || log->efd < 0) {
        int e = log->efd < 0 ? -errno : -ENOMEM;
        sc_access_log_free(log);
        return e;
    }
    memset(log->prod, 0, sizeof(sc_access_producer) * n);
    uint64_t cap = pow2_at_least(cfg->buffer_bytes ? cfg->buffer_bytes : 1u << 20);
    if (cap < 2 * SC_ACCESS_LINE_MAX)
        cap = 2 * SC_ACCESS_LINE_MAX;
    uint64_t seed = sc_now_ns() ^ (uint64_t)(uintptr_t)log;
    for (unsigned i = 0; i < n; i++) {
        sc_access_producer *p = &log->prod[i];
        p->log = log;
        p->cap = cap;
        p->mask = cap - 1;
        p->data = malloc(cap);
        p->rng = (seed + 0x9e3779b97f4a7c15ull * (i + 1)) | 1;
        if (!p->data) {
            sc_access_log_free(log);
            return -ENOMEM;
        }
    }
    *out = log;
    return 0;
}

int sc_access_log_new(const sc_access_log_config *cfg, unsigned n_producers, sc_access_log **out, char *err,
                      size_t errlen)
{
    sc_access_log *log;
    int rv = make_log(cfg, n_producers, &log);
    if (rv < 0) {
        snprintf(err, errlen, "access log: cannot set up its buffers: %s", strerror(-rv));
        *out = NULL;
        return rv;
    }
    switch (cfg->destination) {
    case SC_ACCESS_LOG_STDOUT: log->fd = STDOUT_FILENO; break;
    case SC_ACCESS_LOG_STDERR: log->fd = STDERR_FILENO; break;
    case SC_ACCESS_LOG_FILE:
        log->path = cfg->path ? strdup(cfg->path) : NULL;
        log->fd = log->path ? open_file(log->path) : -1;
        if (log->fd < 0) {
            rv = log->path ? -errno : -EINVAL;
            snprintf(err, errlen, "access log: cannot open %s: %s", cfg->path ? cfg->path : "(no path)",
                     strerror(-rv));
            sc_access_log_free(log);
            *out = NULL;
            return rv;
        }
        log->own_fd = log->reopenable = true;
        break;
    }
    *out = log;
    return 0;
}

int sc_access_log_new_fd(const sc_access_log_config *cfg, unsigned n_producers, int fd, sc_access_log **out)
{
    int rv = make_log(cfg, n_producers, out);
    if (rv < 0) {
        close(fd);
        return rv;
    }
    (*out)->fd = fd;
    (*out)->own_fd = true;
    return 0;
}

int sc_access_log_start(sc_access_log *log)
{
    if (log->started)
        return 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rv = pthread_create(&log->thread, NULL, writer_main, log);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rv != 0)
        return -rv;
    log->started = true;
    return 0;
}

void sc_access_log_reopen(sc_access_log *log)
{
    if (!log || !log->reopenable)
        return;
    atomic_store(&log->reopen, true);
    kick(log);
}

void sc_access_log_stop(sc_access_log *log)
{
    if (!log || !log->started)
        return;
    atomic_store(&log->stop, true);
    kick(log);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += log->stop_grace_ms / 1000;
    deadline.tv_nsec += (long)(log->stop_grace_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    while (!atomic_load(&log->done) && !past(&deadline)) {
        struct timespec ms = {0, 1000000L};
        nanosleep(&ms, NULL);
    }
    if (!atomic_load(&log->done)) {
        pthread_cancel(log->thread); /* blocked in write: cancellation is enabled only there */
        uint64_t lost = 0;
        for (unsigned i = 0; i < log->n; i++)
            lost += atomic_load(&log->prod[i].head) - atomic_load(&log->prod[i].tail);
        SC_WARN("access log: the destination accepted nothing for %ums at shutdown; up to %llu bytes of "
                "log lines lost", log->stop_grace_ms, (unsigned long long)lost);
    }
    pthread_join(log->thread, NULL);
    log->started = false;
}

void sc_access_log_free(sc_access_log *log)
{
    if (!log)
        return;
    sc_access_log_stop(log);
    if (log->prod)
        for (unsigned i = 0; i < log->n; i++)
            free(log->prod[i].data);
    free(log->prod);
    if (log->own_fd && log->fd >= 0)
        close(log->fd);
    if (log->efd >= 0)
        close(log->efd);
    free(log->path);
    free(log);
}

void sc_access_log_get_stats(const sc_access_log *log, sc_access_log_stats *st)
{
    memset(st, 0, sizeof(*st));
    if (!log)
        return;
    for (unsigned i = 0; i < log->n; i++) {
        st->lines += atomic_load_explicit(&log->prod[i].lines, memory_order_relaxed);
        st->dropped += atomic_load_explicit(&log->prod[i].dropped, memory_order_relaxed);
    }
    st->bytes_written = atomic_load_explicit(&log->bytes_written, memory_order_relaxed);
    st->write_errors = atomic_load_explicit(&log->write_errors, memory_order_relaxed);
    st->reopens = atomic_load_explicit(&log->reopens, memory_order_relaxed);
    st->wakeups = atomic_load_explicit(&log->wakeups, memory_order_relaxed);
}

void sc_access_log_render_stats(const sc_access_log *log, FILE *f)
{
    sc_access_log_stats st;
    sc_access_log_get_stats(log, &st);
    sc_prom_u64(f, "sidecar_access_log_lines_total", "counter", "Access log lines queued for writing.", st.lines);
    sc_prom_u64(f, "sidecar_access_log_dropped_total", "counter",
                "Access log lines dropped because the worker's buffer was full (the writer fell behind).",
                st.dropped);
    sc_prom_u64(f, "sidecar_access_log_written_bytes_total", "counter", "Access log bytes written.",
                st.bytes_written);
    sc_prom_u64(f, "sidecar_access_log_write_errors_total", "counter",
                "Failed writes to the access log destination (their lines are lost).", st.write_errors);
    sc_prom_u64(f, "sidecar_access_log_reopens_total", "counter", "Access log files reopened (SIGHUP).",
                st.reopens);
    sc_prom_u64(f, "sidecar_access_log_writer_wakeups_total", "counter",
                "Times the access log writer thread woke (its flush timer, or a worker's buffer half full).",
                st.wakeups);
}

int sc_access_log_wait_drained(sc_access_log *log, unsigned timeout_ms)
{
    uint64_t until = sc_now_ms() + timeout_ms;
    for (;;) {
        bool empty = true;
        for (unsigned i = 0; i < log->n; i++)
            if (atomic_load(&log->prod[i].head) != atomic_load(&log->prod[i].tail))
                empty = false;
        if (empty)
            return 0;
        if (sc_now_ms() >= until)
            return -ETIMEDOUT;
        kick(log);
        struct timespec ms = {0, 1000000L};
        nanosleep(&ms, NULL);
    }
}

void sc_access_log_set_stop_grace(sc_access_log *log, unsigned ms)
{
    log->stop_grace_ms = ms;
}
