/*
 * trace_export_driver.c: runs the tracer (sidecar/trace/tracer.h) as the
 * sidecar does, without the proxy: worker threads record the spans of
 * requests that retry once (a request span, a failed first attempt with a
 * backoff and a pushback event, a second attempt that succeeds), and the
 * control loop exports them over real HTTP to the endpoint given, e.g. the
 * collector emulator (tests/otlp/otlp_collector_emulator.py). Used by
 * tests/integration/test_tracing.py.
 *
 *   sc_trace_driver --endpoint URL [--workers 2] [--requests 10]
 *       [--traceparent TP] [--batch-size 512] [--interval 5s]
 *       [--queue 2048] [--timeout 10s] [--ratio 1] [--wait-ms 10000]
 *       [--no-flush] [--service web] [--instance web-1] [--pace-us 0]
 *
 * It waits until every recorded span is exported or dropped, or --wait-ms
 * passed, then (unless --no-flush) flushes what is left, and prints one
 * JSON object: the tracer's counters, the producers' time and the trace
 * IDs of the first requests.
 */
#include "config/config.h"
#include "core/log.h"
#include "trace/tracer.h"

#include <ev.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    sc_trace_worker *tw;
    unsigned requests;
    const char *traceparent;
    long pace_us;
    uint64_t busy_ns;           /* time spent in the tracing calls */
    char first_trace[33];
} producer;

static void one_request(producer *p, unsigned i)
{
    uint64_t t0 = sc_now_ns();
    sc_trace_in in;
    sc_trace_in_init(&in, p->tw->pol->force_header);
    if (p->traceparent)
        sc_trace_in_header(&in, "traceparent", 11, p->traceparent, strlen(p->traceparent));
    sc_trace_req rq;
    sc_trace_out out;
    uint64_t t = sc_now_ns();
    sc_trace_req_start(p->tw, &rq, &in, SC_SPAN_KIND_SERVER, t);
    /* attempt 1: 503 with pushback, then a backoff */
    sc_trace_attempt_start(p->tw, &rq, 1, t + 1000, &out);
    sc_trace_attempt_event(&rq, SC_EV_FIRST_BYTE, t + 2000, 503);
    sc_trace_attempt_event(&rq, SC_EV_PUSHBACK, t + 2100, 5);
    sc_span *s = sc_trace_attempt_end(p->tw, &rq, "GET", 3, t + 3000);
    sc_span_cstr(s, SC_ATTR_SERVER_ADDRESS, "127.0.0.1");
    sc_span_int(s, SC_ATTR_SERVER_PORT, 9001);
    sc_span_int(s, SC_ATTR_HTTP_STATUS, 503);
    sc_span_cstr(s, SC_ATTR_OUTCOME, "retried");
    sc_span_set_status(s, SC_SPAN_STATUS_ERROR, "upstream answered 503");
    sc_trace_commit(p->tw, s);
    sc_trace_req_event(&rq, SC_EV_BACKOFF, t + 3100, 25);
    /* attempt 2: 200 */
    sc_trace_attempt_start(p->tw, &rq, 2, t + 4000, &out);
    s = sc_trace_attempt_end(p->tw, &rq, "GET", 3, t + 6000);
    sc_span_cstr(s, SC_ATTR_SERVER_ADDRESS, "127.0.0.1");
    sc_span_int(s, SC_ATTR_SERVER_PORT, 9002);
    sc_span_int(s, SC_ATTR_HTTP_STATUS, 200);
    sc_span_cstr(s, SC_ATTR_OUTCOME, "ok");
    sc_trace_commit(p->tw, s);
    s = sc_trace_req_end(p->tw, &rq, "GET", 3, t + 7000);
    sc_span_cstr(s, SC_ATTR_HTTP_METHOD, "GET");
    sc_span_cstr(s, SC_ATTR_URL_PATH, "/items/42");
    sc_span_int(s, SC_ATTR_HTTP_STATUS, 200);
    sc_span_cstr(s, SC_ATTR_UPSTREAM, "items");
    sc_span_cstr(s, SC_ATTR_DIRECTION, "inbound");
    sc_trace_commit(p->tw, s);
    p->busy_ns += sc_now_ns() - t0;
    if (i == 0) {
        char sh[17];
        sc_trace_req_ids(&rq, p->first_trace, sh);
    }
}

static void *produce(void *arg)
{
    producer *p = arg;
    for (unsigned i = 0; i < p->requests; i++) {
        one_request(p, i);
        if (p->pace_us)
            usleep((useconds_t)p->pace_us);
    }
    return NULL;
}

typedef struct {
    sc_tracer *t;
    uint64_t deadline_ms;
    _Atomic bool producers_done;
    ev_timer check;
} waiter;

static void check_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    waiter *wt = SC_CONTAINER_OF(w, waiter, check);
    sc_tracer_stats s;
    sc_tracer_stats_get(wt->t, &s);
    bool settled = atomic_load(&wt->producers_done) &&
                   s.spans_exported + s.dropped_export + s.dropped_rejected >= s.spans_recorded;
    if (settled || sc_now_ms() >= wt->deadline_ms)
        ev_break(loop, EVBREAK_ALL);
}

static const char *arg_of(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

static bool flag(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    const char *endpoint = arg_of(argc, argv, "--endpoint", NULL);
    if (!endpoint) {
        fprintf(stderr, "usage: %s --endpoint URL [options] (see the file's comment)\n", argv[0]);
        return 2;
    }
    unsigned workers = (unsigned)atoi(arg_of(argc, argv, "--workers", "2"));
    unsigned requests = (unsigned)atoi(arg_of(argc, argv, "--requests", "10"));
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "service: {name: '%s', id: '%s'}\n"
             "tracing:\n"
             "  endpoint: '%s'\n"
             "  sample_ratio: %s\n"
             "  batch_size: %s\n"
             "  batch_interval: %s\n"
             "  queue_size: %s\n"
             "  timeout: %s\n"
             "  propagation: {in: [w3c, b3, b3multi], out: [w3c, b3]}\n",
             arg_of(argc, argv, "--service", "web"), arg_of(argc, argv, "--instance", "web-1"), endpoint,
             arg_of(argc, argv, "--ratio", "1"), arg_of(argc, argv, "--batch-size", "512"),
             arg_of(argc, argv, "--interval", "5s"), arg_of(argc, argv, "--queue", "2048"),
             arg_of(argc, argv, "--timeout", "10s"));
    sc_config *cfg = NULL;
    sc_diags d = {0};
    if (sc_config_load_string(yaml, strlen(yaml), "driver.yaml", ".", &cfg, &d) < 0) {
        sc_diags_print(&d, stderr);
        return 2;
    }
    sc_diags_free(&d);
    sc_log_set_thread_name("driver");
    char err[256];
    sc_tracer *t = NULL;
    if (sc_tracer_new(cfg, workers, &t, err, sizeof(err)) < 0 || !t) {
        fprintf(stderr, "tracer: %s\n", err);
        return 1;
    }
    struct ev_loop *loop = ev_default_loop(0);
    if (sc_tracer_start(t, loop, err, sizeof(err)) < 0) {
        fprintf(stderr, "tracer start: %s\n", err);
        return 1;
    }
    producer *ps = calloc(workers, sizeof(*ps));
    pthread_t *th = calloc(workers, sizeof(*th));
    for (unsigned i = 0; i < workers; i++) {
        ps[i] = (producer){.tw = sc_tracer_worker(t, i), .requests = requests,
                           .traceparent = arg_of(argc, argv, "--traceparent", NULL),
                           .pace_us = atol(arg_of(argc, argv, "--pace-us", "0"))};
        pthread_create(&th[i], NULL, produce, &ps[i]);
    }
    waiter wt = {.t = t, .deadline_ms = sc_now_ms() + (uint64_t)atol(arg_of(argc, argv, "--wait-ms", "10000"))};
    ev_timer_init(&wt.check, check_cb, 0.01, 0.01);
    ev_timer_start(loop, &wt.check);
    /* the producers finish while the loop runs: joined from a helper thread */
    for (unsigned i = 0; i < workers; i++) {
        while (pthread_tryjoin_np(th[i], NULL) != 0)
            ev_run(loop, EVRUN_ONCE);
    }
    atomic_store(&wt.producers_done, true);
    ev_run(loop, 0);
    ev_timer_stop(loop, &wt.check);
    if (!flag(argc, argv, "--no-flush"))
        sc_tracer_flush(t, 5000);
    sc_tracer_stats s;
    sc_tracer_stats_get(t, &s);
    uint64_t busy = 0;
    json_t *traces = json_array();
    for (unsigned i = 0; i < workers; i++) {
        busy += ps[i].busy_ns;
        json_array_append_new(traces, json_string(ps[i].first_trace));
    }
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:I, s:o}", "recorded",
                          (json_int_t)s.spans_recorded, "exported", (json_int_t)s.spans_exported,
                          "dropped_queue_full", (json_int_t)s.dropped_queue_full, "dropped_export",
                          (json_int_t)s.dropped_export, "dropped_rejected", (json_int_t)s.dropped_rejected,
                          "requests", (json_int_t)s.export_requests, "errors", (json_int_t)s.export_errors,
                          "queued", (json_int_t)s.queued, "last_error", s.last_error, "producer_busy_us",
                          (json_int_t)(busy / 1000), "first_traces", traces);
    char *out = json_dumps(o, JSON_COMPACT);
    printf("%s\n", out);
    fflush(stdout);
    char *prom = NULL;
    size_t plen = 0;
    FILE *pf = open_memstream(&prom, &plen);
    sc_tracer_prom(t, pf);
    fclose(pf);
    fprintf(stderr, "%s", prom);
    free(prom);
    free(out);
    json_decref(o);
    sc_tracer_free(t);
    free(ps);
    free(th);
    sc_config_free(cfg);
    ev_loop_destroy(loop);
    return 0;
}
