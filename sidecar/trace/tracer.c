/*
 * tracer.c: span rings and the OTLP/HTTP JSON exporter on the control
 * thread (see tracer.h).
 */
#include "trace/tracer.h"

#include "core/log.h"
#include "core/prom.h"
#include "discovery/curl_loop.h"
#include "trace/otlp.h"

#include <ev.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#define MAX_TRIES 3
#define RETRY_AFTER_MAX_S 60
#define BACKOFF_BASE_MS 500
#define RESP_MAX 8192
#define CONNECT_TIMEOUT_MS 3000

struct sc_tracer {
    sc_trace_policy pol;
    sc_trace_worker *workers;
    unsigned n_workers;
    char *endpoint, *force_header;
    char *service_name, *service_id, *service_version;
    uint32_t batch_size;
    uint64_t interval_ms, timeout_ms;

    struct ev_loop *loop;
    _Atomic bool started;
    ev_async wake;
    ev_timer tick;                  /* every batch_interval */
    ev_timer retry;                 /* waiting to send the batch again */
    sc_curl_loop *cl;
    CURL *easy;
    struct curl_slist *headers;

    /* the batch being sent (kept for retries) */
    sc_otlp_buf body;
    uint32_t body_spans;
    unsigned tries;
    bool in_flight, retry_wait;
    char resp[RESP_MAX];
    size_t resp_len;
    long retry_after_s;             /* -1 = none */
    char curl_err[CURL_ERROR_SIZE];

    int64_t offset_ns;              /* Unix time minus CLOCK_MONOTONIC */
    unsigned rr;                    /* worker the next batch starts with */
    uint64_t rnd;
    uint64_t exported, dropped_export, dropped_rejected, requests, errors;
    char last_error[256];
    sc_ratelimit rl;
};

/* ---- creation ---- */

static void wake_cb(void *arg)
{
    sc_tracer *t = arg;
    if (atomic_load_explicit(&t->started, memory_order_acquire))
        ev_async_send(t->loop, &t->wake);
}

static const char *meta_version(const sc_config *cfg)
{
    for (size_t i = 0; i < cfg->service.n_meta; i++)
        if (strcmp(cfg->service.meta[i].key, "version") == 0)
            return cfg->service.meta[i].value;
    return NULL;
}

int sc_tracer_new(const sc_config *cfg, unsigned n_workers, sc_tracer **out, char *err, size_t errlen)
{
    *out = NULL;
    if (errlen)
        err[0] = 0;
    const sc_tracing_config *tc = &cfg->tracing;
    if (!tc->enabled)
        return 0;
    sc_tracer *t = sc_xcalloc(1, sizeof(*t));
    t->endpoint = sc_xstrdup(tc->endpoint ? tc->endpoint : SC_TRACING_DEFAULT_ENDPOINT);
    t->force_header = tc->force_header ? sc_xstrdup(tc->force_header) : NULL;
    t->service_name = sc_xstrdup(cfg->service.name ? cfg->service.name : "sidecar");
    t->service_id = sc_xstrdup(cfg->service.id ? cfg->service.id : t->service_name);
    t->service_version = meta_version(cfg) ? sc_xstrdup(meta_version(cfg)) : NULL;
    t->batch_size = tc->batch_size ? tc->batch_size : 1;
    t->interval_ms = tc->batch_interval_ms;
    t->timeout_ms = tc->timeout_ms;
    t->pol.formats_in = tc->propagation_in;
    t->pol.formats_out = tc->propagation_out;
    t->pol.force_header = t->force_header;
    sc_sampler_init(&t->pol.sampler, tc->sample_ratio);
    t->retry_after_s = -1;
    t->rnd = sc_now_ns() | 1;
    t->n_workers = n_workers;
    t->workers = sc_xcalloc(n_workers ? n_workers : 1, sizeof(*t->workers));
    for (unsigned i = 0; i < n_workers; i++) {
        sc_trace_worker *tw = &t->workers[i];
        if (sc_trace_worker_init(tw, &t->pol, tc->queue_size) < 0) {
            snprintf(err, errlen, "tracing: no memory for %u span queues of %u spans", n_workers, tc->queue_size);
            t->n_workers = i + 1;
            sc_tracer_free(t);
            return -ENOMEM;
        }
        /* A ring smaller than a batch wakes the exporter when half full. */
        tw->wake_at = SC_MIN(t->batch_size, sc_span_ring_capacity(&tw->ring) / 2);
        tw->wake = wake_cb;
        tw->wake_arg = t;
    }
    *out = t;
    return 0;
}

sc_trace_worker *sc_tracer_worker(sc_tracer *t, unsigned i)
{
    return t && i < t->n_workers ? &t->workers[i] : NULL;
}

/* ---- batches ---- */

static int64_t ts_ns(const struct timespec *ts) { return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec; }

/* Unix time minus CLOCK_MONOTONIC, kept unless it moved by more than 1 ms
 * (a clock step), so spans of neighbouring batches stay comparable. */
static void update_offset(sc_tracer *t)
{
    struct timespec m1, r, m2;
    clock_gettime(CLOCK_MONOTONIC, &m1);
    clock_gettime(CLOCK_REALTIME, &r);
    clock_gettime(CLOCK_MONOTONIC, &m2);
    int64_t off = ts_ns(&r) - (ts_ns(&m1) + ts_ns(&m2)) / 2;
    int64_t d = off - t->offset_ns;
    if (t->offset_ns == 0 || d > 1000000 || d < -1000000)
        t->offset_ns = off;
}

static uint64_t pending(sc_tracer *t)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < t->n_workers; i++)
        n += sc_span_ring_pending(&t->workers[i].ring);
    return n;
}

/* Takes up to batch_size waiting spans into t->body, releasing their slots.
 * Returns the number taken (0: nothing waits, or no memory: then they are
 * counted as dropped). */
static uint32_t build_batch(sc_tracer *t)
{
    sc_otlp_buf_reset(&t->body);
    update_offset(t);
    sc_otlp_resource res = {.service_name = t->service_name, .service_instance_id = t->service_id,
                            .service_version = t->service_version, .sdk_version = SC_VERSION};
    sc_otlp_begin(&t->body, &res);
    uint32_t taken = 0;
    for (unsigned k = 0; k < t->n_workers && taken < t->batch_size; k++) {
        sc_span_ring *r = &t->workers[(t->rr + k) % t->n_workers].ring;
        uint32_t n = SC_MIN(sc_span_ring_pending(r), t->batch_size - taken);
        for (uint32_t i = 0; i < n; i++) {
            if (i + 1 < n)
                sc_span_prefetch(sc_span_ring_peek(r, i + 1), false);
            sc_otlp_span(&t->body, sc_span_ring_peek(r, i), t->offset_ns, taken + i == 0);
        }
        sc_span_ring_release(r, n);
        taken += n;
    }
    t->rr++;
    sc_otlp_end(&t->body);
    if (t->body.oom) {
        t->dropped_export += taken;
        SC_WARN_LIMITED(&t->rl, "tracing: no memory for a batch of %u spans; dropped them", taken);
        return 0;
    }
    return taken;
}

/* ---- sending ---- */

static size_t write_cb(char *p, size_t size, size_t n, void *ud)
{
    sc_tracer *t = ud;
    size_t len = size * n, room = sizeof(t->resp) - 1 - t->resp_len;
    size_t k = SC_MIN(len, room);
    memcpy(t->resp + t->resp_len, p, k);
    t->resp_len += k;
    t->resp[t->resp_len] = 0;
    return len;
}

static size_t header_cb(char *p, size_t size, size_t n, void *ud)
{
    sc_tracer *t = ud;
    size_t len = size * n;
    if (len > 12 && strncasecmp(p, "retry-after:", 12) == 0) {
        const char *v = p + 12;
        while (v < p + len && (*v == ' ' || *v == '\t'))
            v++;
        long s = 0;
        bool digits = false;
        while (v < p + len && *v >= '0' && *v <= '9' && s < 1000000) {
            s = s * 10 + (*v++ - '0');
            digits = true;
        }
        if (digits)
            t->retry_after_s = s; /* an HTTP-date: the backoff decides */
    }
    return len;
}

/* Options for one request of the current body. */
static void prepare(sc_tracer *t, uint64_t timeout_ms)
{
    CURL *e = t->easy;
    t->resp_len = 0;
    t->resp[0] = 0;
    t->curl_err[0] = 0;
    t->retry_after_s = -1;
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->body.p);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)t->body.len);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)SC_MIN(timeout_ms, (uint64_t)CONNECT_TIMEOUT_MS));
}

static int easy_setup(sc_tracer *t)
{
    t->easy = curl_easy_init();
    if (!t->easy)
        return -EIO;
    CURL *e = t->easy;
    t->headers = curl_slist_append(NULL, "Content-Type: application/json");
    t->headers = curl_slist_append(t->headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, t->endpoint);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* the app's proxy settings are not the collector's */
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sidecar/" SC_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->curl_err);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    return 0;
}

/* The answer's first line of text, printable, for a log line. */
static void resp_text(const sc_tracer *t, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < t->resp_len && n + 1 < cap && n < 160; i++) {
        char c = t->resp[i];
        out[n++] = (c >= 0x20 && c < 0x7f) ? c : ' ';
    }
    out[n] = 0;
}

typedef enum { SENT_OK, SENT_RETRY, SENT_FAILED } sent_verdict;

/* Judges a finished request of body_spans spans; counts what it means. */
static sent_verdict judge(sc_tracer *t, CURLcode rc, long status)
{
    if (rc == CURLE_OK && status >= 200 && status <= 299) {
        uint64_t rej = 0;
        char msg[200];
        if (sc_otlp_parse_response(t->resp, t->resp_len, &rej, msg, sizeof(msg)) < 0)
            rej = 0; /* a 2xx is a success whatever its body */
        rej = SC_MIN(rej, (uint64_t)t->body_spans);
        t->exported += t->body_spans - rej;
        t->dropped_rejected += rej;
        if (rej) {
            snprintf(t->last_error, sizeof(t->last_error), "collector rejected %llu of %u spans: %s",
                     (unsigned long long)rej, t->body_spans, msg[0] ? msg : "(no message)");
            SC_WARN_LIMITED(&t->rl, "tracing: %s", t->last_error);
        }
        return SENT_OK;
    }
    t->errors++;
    char body[200];
    resp_text(t, body, sizeof(body));
    if (rc != CURLE_OK)
        snprintf(t->last_error, sizeof(t->last_error), "%s", t->curl_err[0] ? t->curl_err : curl_easy_strerror(rc));
    else
        snprintf(t->last_error, sizeof(t->last_error), "HTTP %ld%s%s", status, body[0] ? ": " : "", body);
    bool retryable = rc != CURLE_OK || status == 429 || status == 502 || status == 503 || status == 504;
    if (retryable && t->retry_after_s > RETRY_AFTER_MAX_S)
        retryable = false;
    return retryable && t->tries < MAX_TRIES ? SENT_RETRY : SENT_FAILED;
}

static void try_export(sc_tracer *t, bool due);

static void send_body(sc_tracer *t)
{
    prepare(t, t->timeout_ms);
    t->tries++;
    t->requests++;
    if (sc_curl_loop_add(t->cl, t->easy) < 0) {
        t->errors++;
        t->dropped_export += t->body_spans;
        snprintf(t->last_error, sizeof(t->last_error), "libcurl refused the request");
        SC_WARN_LIMITED(&t->rl, "tracing: %s; dropped %u spans", t->last_error, t->body_spans);
        t->body_spans = 0;
        return;
    }
    t->in_flight = true;
}

static uint64_t backoff_ms(sc_tracer *t)
{
    if (t->retry_after_s >= 0)
        return (uint64_t)t->retry_after_s * 1000;
    uint64_t base = (uint64_t)BACKOFF_BASE_MS << (t->tries - 1);
    t->rnd ^= t->rnd << 13;
    t->rnd ^= t->rnd >> 7;
    t->rnd ^= t->rnd << 17;
    return base / 2 + t->rnd % (base / 2 + 1);
}

static void done_cb(CURL *easy, CURLcode rc, void *priv, void *arg)
{
    (void)priv;
    sc_tracer *t = arg;
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    t->in_flight = false;
    switch (judge(t, rc, status)) {
    case SENT_OK:
        t->body_spans = 0;
        try_export(t, false);
        return;
    case SENT_RETRY: {
        uint64_t ms = backoff_ms(t);
        SC_WARN_LIMITED(&t->rl, "tracing: exporting %u spans to %s failed: %s; trying again in %llu ms",
                        t->body_spans, t->endpoint, t->last_error, (unsigned long long)ms);
        t->retry_wait = true;
        ev_timer_set(&t->retry, (double)ms / 1000.0, 0);
        ev_timer_start(t->loop, &t->retry);
        return;
    }
    case SENT_FAILED:
        SC_WARN_LIMITED(&t->rl, "tracing: exporting %u spans to %s failed: %s; dropped them", t->body_spans,
                        t->endpoint, t->last_error);
        t->dropped_export += t->body_spans;
        t->body_spans = 0;
        return;
    }
}

/* Sends a batch when none is on its way and enough waits (or `due`: the
 * interval passed). */
static void try_export(sc_tracer *t, bool due)
{
    if (t->in_flight || t->retry_wait || !t->cl)
        return;
    uint64_t n = pending(t);
    if (n == 0 || (!due && n < t->batch_size))
        return;
    t->body_spans = build_batch(t);
    if (!t->body_spans)
        return;
    t->tries = 0;
    send_body(t);
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sc_tracer *t = SC_CONTAINER_OF(w, sc_tracer, retry);
    t->retry_wait = false;
    send_body(t);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    try_export(SC_CONTAINER_OF(w, sc_tracer, tick), true);
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    try_export(SC_CONTAINER_OF(w, sc_tracer, wake), false);
}

/* ---- life ---- */

static int curl_once(char *err, size_t errlen)
{
    static int rc = 1;
    if (rc == 1) {
        if (sc_curl_api_load(err, errlen) < 0)
            return -ENOENT; /* not cached: the message is wanted again */
        rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
        if (rc < 0)
            snprintf(err, errlen, "curl_global_init failed");
    }
    return rc;
}

int sc_tracer_start(sc_tracer *t, struct ev_loop *loop, char *err, size_t errlen)
{
    if (!t)
        return 0;
    t->loop = loop;
    int rc = curl_once(err, errlen);
    if (rc == 0 && easy_setup(t) < 0) {
        snprintf(err, errlen, "libcurl cannot create a handle");
        rc = -EIO;
    }
    if (rc == 0 && !(t->cl = sc_curl_loop_new(loop, done_cb, t))) {
        snprintf(err, errlen, "libcurl cannot create a multi handle");
        rc = -EIO;
    }
    if (rc < 0) {
        sc_sampler_init(&t->pol.sampler, 0); /* nothing recorded that could not be sent */
        t->pol.force_header = NULL;
        return rc;
    }
    ev_async_init(&t->wake, async_cb);
    ev_async_start(loop, &t->wake);
    ev_init(&t->retry, retry_cb);
    double iv = (double)t->interval_ms / 1000.0;
    ev_timer_init(&t->tick, tick_cb, iv, iv);
    ev_timer_start(loop, &t->tick);
    ev_unref(loop); /* the exporter alone does not keep the loop running */
    ev_unref(loop);
    atomic_store_explicit(&t->started, true, memory_order_release);
    return 0;
}

void sc_tracer_stop(sc_tracer *t)
{
    if (!t || !atomic_load(&t->started))
        return;
    atomic_store_explicit(&t->started, false, memory_order_release);
    ev_ref(t->loop);
    ev_ref(t->loop);
    ev_async_stop(t->loop, &t->wake);
    ev_timer_stop(t->loop, &t->tick);
    ev_timer_stop(t->loop, &t->retry);
    t->retry_wait = false;
    if (t->in_flight) {
        sc_curl_loop_remove(t->cl, t->easy);
        t->in_flight = false;
    }
}

/* One blocking request of the current body; true when it was accepted. */
static bool send_sync(sc_tracer *t, uint64_t timeout_ms)
{
    prepare(t, timeout_ms);
    t->tries = MAX_TRIES; /* no retries here */
    t->requests++;
    CURLcode rc = curl_easy_perform(t->easy);
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    if (judge(t, rc, status) == SENT_OK)
        return true;
    SC_WARN("tracing: exporting %u spans to %s at exit failed: %s; dropped them", t->body_spans, t->endpoint,
            t->last_error);
    t->dropped_export += t->body_spans;
    return false;
}

void sc_tracer_flush(sc_tracer *t, uint64_t budget_ms)
{
    if (!t)
        return;
    sc_tracer_stop(t);
    uint64_t deadline = sc_now_ms() + budget_ms;
    bool ok = t->easy != NULL;
    if (ok && t->body_spans) /* a batch stopped in flight or waiting for a retry */
        ok = send_sync(t, SC_MIN(t->timeout_ms, budget_ms));
    t->body_spans = 0;
    while (ok && pending(t) && sc_now_ms() < deadline) {
        t->body_spans = build_batch(t);
        if (t->body_spans)
            ok = send_sync(t, SC_MIN(t->timeout_ms, deadline - sc_now_ms() + 1));
        t->body_spans = 0;
    }
    for (unsigned i = 0; i < t->n_workers; i++) {
        sc_span_ring *r = &t->workers[i].ring;
        uint32_t n = sc_span_ring_pending(r);
        t->dropped_export += n;
        sc_span_ring_release(r, n);
    }
}

void sc_tracer_free(sc_tracer *t)
{
    if (!t)
        return;
    sc_tracer_stop(t);
    sc_curl_loop_free(t->cl);
    if (t->easy)
        curl_easy_cleanup(t->easy);
    if (t->headers)
        curl_slist_free_all(t->headers);
    for (unsigned i = 0; i < t->n_workers; i++)
        sc_trace_worker_free(&t->workers[i]);
    free(t->workers);
    sc_otlp_buf_free(&t->body);
    free(t->endpoint);
    free(t->force_header);
    free(t->service_name);
    free(t->service_id);
    free(t->service_version);
    free(t);
}

void sc_tracer_stats_get(sc_tracer *t, sc_tracer_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!t)
        return;
    for (unsigned i = 0; i < t->n_workers; i++) {
        sc_span_ring *r = &t->workers[i].ring;
        out->spans_recorded += atomic_load_explicit(&r->committed, memory_order_relaxed);
        out->dropped_queue_full += atomic_load_explicit(&r->dropped, memory_order_relaxed);
    }
    out->queued = pending(t);
    out->spans_exported = t->exported;
    out->dropped_export = t->dropped_export;
    out->dropped_rejected = t->dropped_rejected;
    out->export_requests = t->requests;
    out->export_errors = t->errors;
    snprintf(out->last_error, sizeof(out->last_error), "%s", t->last_error);
}

void sc_tracer_prom(sc_tracer *t, FILE *f)
{
    if (!t)
        return;
    sc_tracer_stats s;
    sc_tracer_stats_get(t, &s);
    sc_prom_u64(f, "sidecar_trace_spans_total", "counter", "Spans recorded (sampled requests and their attempts).",
                s.spans_recorded);
    sc_prom_u64(f, "sidecar_trace_spans_exported_total", "counter", "Spans the collector accepted.",
                s.spans_exported);
    sc_prom_head(f, "sidecar_trace_spans_dropped_total", "counter",
                 "Spans lost: a worker's queue was full, their export failed, or the collector rejected them.");
    fprintf(f, "sidecar_trace_spans_dropped_total{reason=\"queue_full\"} %llu\n",
            (unsigned long long)s.dropped_queue_full);
    fprintf(f, "sidecar_trace_spans_dropped_total{reason=\"export_failed\"} %llu\n",
            (unsigned long long)s.dropped_export);
    fprintf(f, "sidecar_trace_spans_dropped_total{reason=\"rejected\"} %llu\n",
            (unsigned long long)s.dropped_rejected);
    sc_prom_u64(f, "sidecar_trace_export_requests_total", "counter", "OTLP export requests sent (retries included).",
                s.export_requests);
    sc_prom_u64(f, "sidecar_trace_export_errors_total", "counter", "OTLP export requests that failed.",
                s.export_errors);
    sc_prom_u64(f, "sidecar_trace_queue_spans", "gauge", "Spans waiting in the workers' queues.", s.queued);
}
