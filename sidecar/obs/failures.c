/*
 * failures.c: the per-worker rings of failed requests and GET /failures
 * (failures.h).
 */
#include "obs/failures.h"
#include "obs/jsonw.h"

#include "core/prom.h"

#include <stdio.h>
#include <stdlib.h>

sc_failures *sc_failures_new(unsigned n_workers)
{
    sc_failures *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->n = n_workers;
    if (n_workers) {
        f->rings = aligned_alloc(64, sizeof(sc_failure_ring) * n_workers);
        if (!f->rings) {
            free(f);
            return NULL;
        }
        memset(f->rings, 0, sizeof(sc_failure_ring) * n_workers);
        for (unsigned i = 0; i < n_workers; i++)
            f->rings[i].worker = i;
    }
    return f;
}

void sc_failures_free(sc_failures *f)
{
    if (!f)
        return;
    free(f->rings);
    free(f);
}

sc_failure_ring *sc_failures_ring(sc_failures *f, unsigned worker)
{
    return f && worker < f->n ? &f->rings[worker] : NULL;
}

typedef union {
    sc_failure e;
    uint64_t w[SC_FAILURE_WORDS];
} failure_words;

void sc_failure_ring_push(sc_failure_ring *ring, sc_failure *e)
{
    uint64_t c = atomic_load_explicit(&ring->count, memory_order_relaxed);
    e->serial = c + 1;
    e->worker = ring->worker;
    failure_words u;
    memset(&u, 0, sizeof(u));
    u.e = *e;
    sc_failure_slot *s = &ring->slot[c % SC_FAILURES_PER_WORKER];
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
    atomic_store_explicit(&s->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (size_t i = 0; i < SC_FAILURE_WORDS; i++)
        atomic_store_explicit(&s->w[i], u.w[i], memory_order_relaxed);
    atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
    atomic_store_explicit(&ring->count, c + 1, memory_order_release);
}

/* Copies src[0..len) into dst (cap bytes, NUL terminated); a cut string
 * ends in "...". */
static void copy_cut(char *dst, size_t cap, const char *src, size_t len)
{
    if (!src)
        len = 0;
    if (len < cap) {
        if (len)
            memcpy(dst, src, len);
        dst[len] = 0;
        return;
    }
    memcpy(dst, src, cap - 4);
    memcpy(dst + cap - 4, "...", 4);
}

#define COPY(dst, s) copy_cut((dst), sizeof(dst), (s).p, (s).len)

bool sc_failures_record(sc_failure_ring *ring, const sc_access_record *r)
{
    if (!ring || !sc_access_is_error(r))
        return false;
    sc_failure e;
    memset(&e, 0, sizeof(e));
    e.time_unix_ns = sc_access_wall_ns(r);
    e.duration_ns = r->duration_ns;
    e.status = r->status;
    e.grpc_status = r->grpc_status;
    e.attempts = r->attempts;
    e.direction = r->direction;
    COPY(e.upstream, r->upstream);
    if (!r->instance.p && r->instance_addr) {
        char a[80];
        size_t n = sc_obs_sockaddr_text(r->instance_addr, a);
        copy_cut(e.instance, sizeof(e.instance), a, n);
    } else {
        COPY(e.instance, r->instance);
    }
    copy_cut(e.reason, sizeof(e.reason), r->reason, r->reason ? strlen(r->reason) : 0);
    COPY(e.method, r->method);
    COPY(e.path, r->path);
    COPY(e.request_id, r->request_id);
    COPY(e.trace_id, r->trace_id);
    sc_failure_ring_push(ring, &e);
    return true;
}

uint64_t sc_failures_total(const sc_failures *f)
{
    uint64_t t = 0;
    for (unsigned i = 0; f && i < f->n; i++)
        t += atomic_load_explicit(&f->rings[i].count, memory_order_relaxed);
    return t;
}

void sc_failures_render_stats(const sc_failures *f, FILE *out)
{
    sc_prom_u64(out, "sidecar_failures_recorded_total", "counter",
                "Failed requests recorded in the rings of recent failures (GET /failures).", sc_failures_total(f));
}

/* A consistent copy of the entry with `serial`, or false (being written
 * over and over, or already replaced by a newer one). */
static bool read_slot(const sc_failure_ring *ring, uint64_t serial, sc_failure *out)
{
    const sc_failure_slot *s = &ring->slot[(serial - 1) % SC_FAILURES_PER_WORKER];
    for (int tries = 0; tries < 8; tries++) {
        uint32_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (s1 & 1)
            continue;
        failure_words u;
        for (size_t i = 0; i < SC_FAILURE_WORDS; i++)
            u.w[i] = atomic_load_explicit(&s->w[i], memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, memory_order_relaxed) != s1)
            continue;
        if (u.e.serial != serial)
            return false;
        *out = u.e;
        return true;
    }
    return false;
}

static int newest_first(const void *a, const void *b)
{
    const sc_failure *x = a, *y = b;
    if (x->time_unix_ns != y->time_unix_ns)
        return x->time_unix_ns > y->time_unix_ns ? -1 : 1;
    if (x->worker != y->worker)
        return x->worker < y->worker ? -1 : 1;
    return x->serial > y->serial ? -1 : x->serial < y->serial;
}

size_t sc_failures_snapshot(const sc_failures *f, const char *upstream, sc_failure *out, size_t max)
{
    if (!f || !max)
        return 0;
    size_t cap = (size_t)f->n * SC_FAILURES_PER_WORKER, n = 0;
    sc_failure *all = malloc(sizeof(*all) * (cap ? cap : 1));
    if (!all)
        return 0;
    for (unsigned i = 0; i < f->n; i++) {
        const sc_failure_ring *ring = &f->rings[i];
        uint64_t c = atomic_load_explicit(&ring->count, memory_order_acquire);
        uint64_t k = c < SC_FAILURES_PER_WORKER ? c : SC_FAILURES_PER_WORKER;
        for (uint64_t j = 0; j < k; j++)
            if (read_slot(ring, c - j, &all[n]) && (!upstream || strcmp(all[n].upstream, upstream) == 0))
                n++;
    }
    qsort(all, n, sizeof(*all), newest_first);
    if (n > max)
        n = max;
    memcpy(out, all, n * sizeof(*all));
    free(all);
    return n;
}

/* The budget of a fixed-size field escaped at the worst (6 bytes a byte). */
#define BUDGET(field) (sizeof(field) * 6 + 2)

static void entry_json(sc_jw *w, const sc_failure *e, uint64_t now_unix_ns)
{
    SC_JW_LIT(w, "{\"time\":");
    sc_jw_time(w, e->time_unix_ns);
    SC_JW_LIT(w, ",\"age_ms\":");
    sc_jw_u64(w, now_unix_ns > e->time_unix_ns ? (now_unix_ns - e->time_unix_ns) / 1000000u : 0);
    SC_JW_LIT(w, ",\"worker\":");
    sc_jw_u64(w, e->worker);
    if (e->direction == SC_OBS_INBOUND)
        SC_JW_LIT(w, ",\"direction\":\"inbound\",\"upstream\":");
    else
        SC_JW_LIT(w, ",\"direction\":\"outbound\",\"upstream\":");
    sc_jw_str(w, e->upstream, strlen(e->upstream), BUDGET(e->upstream));
    SC_JW_LIT(w, ",\"instance\":");
    if (e->instance[0])
        sc_jw_str(w, e->instance, strlen(e->instance), BUDGET(e->instance));
    else
        SC_JW_LIT(w, "null");
    SC_JW_LIT(w, ",\"attempts\":");
    sc_jw_u64(w, e->attempts);
    SC_JW_LIT(w, ",\"status\":");
    sc_jw_u64(w, e->status > 0 ? (uint64_t)e->status : 0);
    SC_JW_LIT(w, ",\"grpc_status\":");
    if (e->grpc_status >= 0)
        sc_jw_u64(w, (uint64_t)e->grpc_status);
    else
        SC_JW_LIT(w, "null");
    SC_JW_LIT(w, ",\"reason\":");
    if (e->reason[0])
        sc_jw_str(w, e->reason, strlen(e->reason), BUDGET(e->reason));
    else
        SC_JW_LIT(w, "null");
    SC_JW_LIT(w, ",\"method\":");
    sc_jw_str(w, e->method, strlen(e->method), BUDGET(e->method));
    SC_JW_LIT(w, ",\"path\":");
    sc_jw_str(w, e->path, strlen(e->path), BUDGET(e->path));
    SC_JW_LIT(w, ",\"duration_ms\":");
    sc_jw_ms(w, e->duration_ns);
    SC_JW_LIT(w, ",\"request_id\":");
    if (e->request_id[0])
        sc_jw_str(w, e->request_id, strlen(e->request_id), BUDGET(e->request_id));
    else
        SC_JW_LIT(w, "null");
    SC_JW_LIT(w, ",\"trace_id\":");
    if (e->trace_id[0])
        sc_jw_str(w, e->trace_id, strlen(e->trace_id), BUDGET(e->trace_id));
    else
        SC_JW_LIT(w, "null");
    SC_JW_LIT(w, "}");
}

/* One entry's JSON never exceeds this (every string at its worst). */
#define ENTRY_MAX 4096
_Static_assert(BUDGET(((sc_failure *)0)->upstream) + BUDGET(((sc_failure *)0)->instance) +
                       BUDGET(((sc_failure *)0)->reason) + BUDGET(((sc_failure *)0)->method) +
                       BUDGET(((sc_failure *)0)->path) + BUDGET(((sc_failure *)0)->request_id) +
                       BUDGET(((sc_failure *)0)->trace_id) + 512 < ENTRY_MAX,
               "a /failures entry fits ENTRY_MAX");

char *sc_failures_render_json(const sc_failures *f, const char *upstream, size_t limit, uint64_t now_unix_ns)
{
    if (limit < 1)
        limit = 1;
    if (limit > SC_FAILURES_LIMIT_MAX)
        limit = SC_FAILURES_LIMIT_MAX;
    sc_failure *v = malloc(sizeof(*v) * limit);
    if (!v)
        return NULL;
    size_t n = sc_failures_snapshot(f, upstream, v, limit);
    size_t cap = n * (ENTRY_MAX + 2) + 256;
    char *out = malloc(cap);
    if (!out) {
        free(v);
        return NULL;
    }
    sc_jw w;
    sc_jw_init(&w, out, cap - 1);
    SC_JW_LIT(&w, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            SC_JW_LIT(&w, ",");
        SC_JW_LIT(&w, "\n");
        entry_json(&w, &v[i], now_unix_ns);
    }
    SC_JW_LIT(&w, "]\n");
    free(v);
    if (w.overflow) { /* cannot happen with the bounds above */
        free(out);
        return NULL;
    }
    *w.p = 0;
    return out;
}
