/*
 * grpc_health.c: grpc.health.v1.Health on gRPC C core (see grpc_health.h;
 * the two messages are coded in grpc_health_pb.c).
 *
 * One thread drives one completion queue. Every call is an hcall with up to
 * three batches in flight, each with its own tag: RECV_CLOSE_ON_SERVER (ends
 * when the call is over: answered, cancelled or shut down), the first batch
 * (send initial metadata, receive the request) and the send batch (a
 * response, and for Check the status). An hcall is freed when its close
 * batch has ended and no batch is in flight.
 */
#include "discovery/grpc_health.h"
#include "discovery/grpc_api.h"

#include "core/log.h"
#include "discovery/app_health.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define POLL_MS 250
#define MAX_SERVICE 256

/* ---- server ---- */

enum { M_UNKNOWN = 0, M_CHECK, M_WATCH };
enum { T_NEW = 0, T_RECV, T_SEND, T_CLOSE, T_SHUTDOWN };

typedef struct hcall hcall;

typedef struct htag {
    int kind;
    hcall *call;
} htag;

struct hcall {
    sc_grpc_health *g;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_byte_buffer *recv;
    grpc_byte_buffer *send;
    grpc_slice details_text;
    bool has_details_text;
    int method;
    int cancelled;
    int in_flight;              /* batches started and not completed */
    bool closed;                /* the close batch completed */
    bool finished;              /* status sent */
    bool send_busy;
    bool watching;
    unsigned last_sent;
    char service[MAX_SERVICE];
    htag t_new, t_recv, t_send, t_close;
    hcall *wprev, *wnext;       /* g->watches */
};

struct sc_grpc_health {
    sidecar *sc;
    grpc_server *server;
    grpc_completion_queue *cq;
    pthread_t thread;
    htag t_shutdown;
    bool server_down, cq_down;
    size_t live;                /* hcalls allocated */
    hcall *watches;
    size_t n_watches;
    unsigned last_status;
};

static unsigned status_for(sc_grpc_health *g, const char *service)
{
    if (service[0] && strcmp(service, g->sc->cfg->service.name) != 0)
        return SC_HEALTH_SERVICE_UNKNOWN;
    return sc_health_ready(g->sc, NULL, 0) ? SC_HEALTH_SERVING : SC_HEALTH_NOT_SERVING;
}

static void request_call(sc_grpc_health *g);

static void watch_unlink(hcall *c)
{
    if (!c->watching)
        return;
    c->watching = false;
    if (c->wprev)
        c->wprev->wnext = c->wnext;
    else
        c->g->watches = c->wnext;
    if (c->wnext)
        c->wnext->wprev = c->wprev;
    c->g->n_watches--;
}

static void maybe_free(hcall *c)
{
    if (c->in_flight > 0 || (c->call && !c->closed))
        return;
    watch_unlink(c);
    if (c->call)
        grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->recv)
        grpc_byte_buffer_destroy(c->recv);
    if (c->send)
        grpc_byte_buffer_destroy(c->send);
    if (c->has_details_text)
        grpc_slice_unref(c->details_text);
    c->g->live--;
    free(c);
}

static bool start(hcall *c, grpc_op *ops, size_t n, htag *t)
{
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        SC_WARN("grpc health: starting a batch failed (%d)", (int)e);
        return false;
    }
    c->in_flight++;
    return true;
}

static void send_response(hcall *c, unsigned status, bool with_status_code, grpc_status_code code,
                          const char *text)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof(ops));
    size_t n = 0;
    if (status != SC_HEALTH_UNKNOWN || !with_status_code) {
        uint8_t buf[16];
        size_t len = sc_grpc_health_encode_response(status, buf);
        grpc_slice s = grpc_slice_from_copied_buffer((const char *)buf, len);
        c->send = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send;
        n++;
        c->last_sent = status;
    }
    if (with_status_code) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.trailing_metadata_count = 0;
        ops[n].data.send_status_from_server.status = code;
        if (text) {
            c->details_text = grpc_slice_from_copied_string(text);
            c->has_details_text = true;
            ops[n].data.send_status_from_server.status_details = &c->details_text;
        }
        n++;
        c->finished = true;
    }
    c->send_busy = true;
    if (!start(c, ops, n, &c->t_send))
        c->send_busy = false;
}

static void on_new(sc_grpc_health *g, hcall *c, bool ok)
{
    if (!ok) {
        /* the server is shutting down: no call came */
        maybe_free(c);
        return;
    }
    if (!g->server_down)
        request_call(g);
    if (grpc_slice_str_cmp(c->details.method, "/grpc.health.v1.Health/Check") == 0)
        c->method = M_CHECK;
    else if (grpc_slice_str_cmp(c->details.method, "/grpc.health.v1.Health/Watch") == 0)
        c->method = M_WATCH;
    grpc_op close_op;
    memset(&close_op, 0, sizeof(close_op));
    close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    close_op.data.recv_close_on_server.cancelled = &c->cancelled;
    if (!start(c, &close_op, 1, &c->t_close)) {
        c->closed = true;
        maybe_free(c);
        return;
    }
    grpc_op ops[2];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = 0;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &c->recv;
    start(c, ops, 2, &c->t_recv);
}

static void on_recv(sc_grpc_health *g, hcall *c, bool ok)
{
    if (!ok || c->closed)
        return;
    if (c->method == M_UNKNOWN) {
        send_response(c, 0, true, GRPC_STATUS_UNIMPLEMENTED,
                      "only grpc.health.v1.Health/Check and /Watch are served here");
        return;
    }
    int rc = 0;
    if (c->recv) {
        grpc_byte_buffer_reader rd;
        if (grpc_byte_buffer_reader_init(&rd, c->recv)) {
            grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
            rc = sc_grpc_health_decode_request(GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s),
                                               c->service, sizeof(c->service));
            grpc_slice_unref(s);
            grpc_byte_buffer_reader_destroy(&rd);
        } else {
            rc = -EPROTO;
        }
        grpc_byte_buffer_destroy(c->recv);
        c->recv = NULL;
    }
    if (rc < 0) {
        send_response(c, 0, true, GRPC_STATUS_INVALID_ARGUMENT,
                      rc == -ENOSPC ? "service name too long" : "malformed HealthCheckRequest");
        return;
    }
    unsigned st = status_for(g, c->service);
    if (c->method == M_CHECK) {
        if (st == SC_HEALTH_SERVICE_UNKNOWN)
            send_response(c, 0, true, GRPC_STATUS_NOT_FOUND, "unknown service");
        else
            send_response(c, st, true, GRPC_STATUS_OK, NULL);
        return;
    }
    c->watching = true;
    c->wprev = NULL;
    c->wnext = g->watches;
    if (g->watches)
        g->watches->wprev = c;
    g->watches = c;
    g->n_watches++;
    send_response(c, st, false, GRPC_STATUS_OK, NULL);
}

static void on_send(sc_grpc_health *g, hcall *c, bool ok)
{
    (void)g;
    c->send_busy = false;
    if (c->send) {
        grpc_byte_buffer_destroy(c->send);
        c->send = NULL;
    }
    if (!ok)
        watch_unlink(c);
}

static void poll_watches(sc_grpc_health *g)
{
    for (hcall *c = g->watches; c; c = c->wnext) {
        if (c->send_busy || c->closed)
            continue;
        unsigned st = status_for(g, c->service);
        if (st != c->last_sent)
            send_response(c, st, false, GRPC_STATUS_OK, NULL);
    }
}

static void request_call(sc_grpc_health *g)
{
    hcall *c = calloc(1, sizeof(*c));
    if (!c) {
        SC_ERROR("grpc health: out of memory; no more calls accepted");
        return;
    }
    c->g = g;
    c->t_new = (htag){T_NEW, c};
    c->t_recv = (htag){T_RECV, c};
    c->t_send = (htag){T_SEND, c};
    c->t_close = (htag){T_CLOSE, c};
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    g->live++;
    grpc_call_error e = grpc_server_request_call(g->server, &c->call, &c->details, &c->md, g->cq,
                                                 g->cq, &c->t_new);
    if (e != GRPC_CALL_OK) {
        SC_ERROR("grpc health: cannot wait for calls (%d)", (int)e);
        c->call = NULL;
        maybe_free(c);
        return;
    }
    c->in_flight = 1;
}

static void *run(void *arg)
{
    sc_grpc_health *g = arg;
    sc_log_set_thread_name("grpc-health");
    for (;;) {
        gpr_timespec deadline =
            g->n_watches ? gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                        gpr_time_from_millis(POLL_MS, GPR_TIMESPAN))
                         : gpr_inf_future(GPR_CLOCK_MONOTONIC);
        grpc_event ev = grpc_completion_queue_next(g->cq, deadline, NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE) {
            htag *t = ev.tag;
            hcall *c = t->call;
            bool ok = ev.success != 0;
            if (t->kind == T_SHUTDOWN) {
                g->server_down = true;
            } else {
                c->in_flight--;
                switch (t->kind) {
                case T_NEW: on_new(g, c, ok); c = NULL; break;
                case T_RECV: on_recv(g, c, ok); break;
                case T_SEND: on_send(g, c, ok); break;
                case T_CLOSE: c->closed = true; watch_unlink(c); break;
                }
                if (c)
                    maybe_free(c);
            }
        }
        if (!g->server_down)
            poll_watches(g);
        if (g->server_down && g->live == 0 && !g->cq_down) {
            g->cq_down = true;
            grpc_completion_queue_shutdown(g->cq);
        }
    }
    return NULL;
}

int sc_grpc_health_start(sidecar *sc, sc_grpc_health **out, char *err, size_t errlen)
{
    *out = NULL;
    const sc_config *cfg = sc->cfg;
    if (!cfg->health.grpc_enabled)
        return -ENOENT;
    /* gRPC core is loaded only now: a sidecar without a gRPC health port never maps it. */
    if (sc_grpc_api_load(err, errlen) < 0)
        return -ENOENT;
    sc_grpc_health *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->sc = sc;
    g->t_shutdown.kind = T_SHUTDOWN;
    /* gRPC's threads and ours take no shutdown signals: the control loop does */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    grpc_init();
    grpc_arg a = {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0};
    grpc_channel_args args = {.num_args = 1, .args = &a};
    g->cq = grpc_completion_queue_create_for_next(NULL);
    g->server = grpc_server_create(&args, NULL);
    grpc_server_register_completion_queue(g->server, g->cq, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(g->server, cfg->health.grpc_listen.text, creds);
    grpc_server_credentials_release(creds);
    int rc = 0;
    if (port <= 0) {
        snprintf(err, errlen, "cannot listen on %s (in use, or not a local address)",
                 cfg->health.grpc_listen.text);
        rc = -EADDRINUSE;
    } else {
        grpc_server_start(g->server);
        request_call(g);
        if (pthread_create(&g->thread, NULL, run, g) != 0) {
            snprintf(err, errlen, "cannot start the gRPC health thread");
            rc = -ENOMEM;
            grpc_server_shutdown_and_notify(g->server, g->cq, &g->t_shutdown);
            grpc_server_cancel_all_calls(g->server);
            /* drain here, without the thread */
            run(g);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc < 0) {
        if (port > 0) {
            grpc_server_destroy(g->server);
        } else {
            /* never started and no listener: no shutdown needed */
            grpc_completion_queue_shutdown(g->cq);
            grpc_server_destroy(g->server);
            while (grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
                       .type != GRPC_QUEUE_SHUTDOWN)
                ;
        }
        grpc_completion_queue_destroy(g->cq);
        grpc_shutdown();
        free(g);
        return rc;
    }
    SC_INFO("grpc health: grpc.health.v1.Health on %s", cfg->health.grpc_listen.text);
    *out = g;
    return 0;
}

void sc_grpc_health_stop(sc_grpc_health *g)
{
    if (!g)
        return;
    grpc_server_shutdown_and_notify(g->server, g->cq, &g->t_shutdown);
    grpc_server_cancel_all_calls(g->server);
    pthread_join(g->thread, NULL);
    grpc_server_destroy(g->server);
    grpc_completion_queue_destroy(g->cq);
    grpc_shutdown();
    free(g);
}
