/*
 * stage.h: what happens to a request between its head and its first
 * attempt, and who hears how it ended, as one list per route:
 *
 *   admission stages  run in order once the request head is complete
 *                     (allow list, Consul intentions, circuit breaker, retry
 *                     budget, bulkhead, ...); each says GO (next stage, then
 *                     the first attempt), PARK (it keeps the stream and
 *                     resumes it later) or DENY (the sidecar answers with a
 *                     failure kind of fail.h);
 *   observers         hear about the response head, each attempt's end and
 *                     the exchange's end; they never change the outcome.
 *
 * A route's list is built once at start-up (sc_route_build_pipeline, from
 * the registry in admit.c: each entry's configure() says whether the route
 * uses it and with what conf) and never changes while a stream uses it: a
 * stream keeps the pipeline it was admitted through (s->pipe) to its end, so
 * a pipeline that replaces a route's (policy reload) must outlive the
 * streams of the one it replaced.
 *
 * Adding a stage: one file (proxy/stage_<name>.c, or a module's own
 * directory) defining a `const sc_stage sc_stage_<name>`, and one line in
 * the registry of admit.c (its place there is its place on every route).
 * Same for an observer.
 *
 * Threads: every call below runs on the stream's worker thread, except
 * configure (control thread, start-up). conf is shared by all workers
 * (read-only, or atomics).
 *
 * Lifecycle of one stream through a stage (word: the stage's own 64 bits
 * of per-stream state, s->stage_word[i], zero when the stream starts):
 *
 *   admit(s, conf, word, &fail)  once, when the stages before it said GO.
 *       GO    the stage has passed; it may now hold something of the
 *             stream's (a slot, a probe): settle and release follow.
 *       DENY  set *fail (and, for a text of its own, sc_stream_fail_msg);
 *             nothing is held; the engine fails the stream and the sidecar
 *             answers from the failure table (fail.h).
 *       PARK  only after sc_stage_park(s, list, timeout_ms): the stream
 *             waits on the stage's own list (s->park_link), in phase
 *             PARKED, with s->wait_timer bounding the wait. Exactly one of
 *             these then happens:
 *               - the stage calls sc_admit_resume(s, GO or DENY, fail),
 *                 from a later callback on the worker (never from inside
 *                 admit); it may move park_link between lists it owns
 *                 before that. Resuming runs the next stages and the first
 *                 attempt at once: the stream may be gone when it returns;
 *               - the wait timer ends it: timeout() accounts for it and
 *                 returns the failure to answer with;
 *               - the stream ends first (caller gone, request deadline):
 *                 cancel() forgets it.
 *             park_link is taken off its list by the engine in all three.
 *       admit never fails or frees the stream itself, and reads only what
 *       is listed below.
 *   settle(s, conf, word, o)     once, if it passed, when the upstream side
 *             is settled: the response arrived whole, the request failed for
 *             good, or the caller left first (o->abandoned). This runs
 *             before the end of the response is written to the caller; the
 *             circuit breaker records its outcome here, so the caller's next
 *             request already meets the new state.
 *   release(s, conf, word)       once, if it passed, when the stream ends
 *             (in reverse stage order, after settle): give back what admit
 *             took (a resumed waiter may be admitted synchronously).
 *
 * Observers, once a stream counts as a request (started, or refused by its
 * codec): on_response_head once, for the first final head handed to the
 * caller's codec (the upstream's after the retry check, or the sidecar's
 * own answer); it may add headers to s->resp. on_attempt_end after each
 * attempt an instance was picked for (failed, retried, finished, or cut
 * because the caller left). on_complete once, when the stream ends, after
 * the stages' release. Outcome structs live for the call only.
 *
 * What a stage or observer may read: s->req (the request head: method,
 * authority, path, headers, is_grpc), s->route, s->w (worker, its stats),
 * sc_stream_caller(s) (the caller's identity, TLS verdicts and peer via
 * s->down->peer_text; NULL once the caller is gone), s->start_ns,
 * s->deadline_ns. A stage's admit may add request headers (sc_msg_add on
 * s->req): they go to the instance.
 *
 * Cost: a route without stages or observers of a kind pays a bit test per
 * hook (settle and release go only to the stages that have them); the
 * pipeline is a fixed array, a stream stores nothing per stage but its word.
 */
#ifndef SC_STAGE_H
#define SC_STAGE_H

#include "proxy/stream.h"

struct sidecar;

typedef enum { SC_STAGE_GO = 0, SC_STAGE_PARK, SC_STAGE_DENY } sc_stage_verdict;

/* How the exchange ended, for settle() and on_complete(). Times are
 * sc_now_ns() values (CLOCK_MONOTONIC); 0 means "did not happen". */
typedef struct sc_outcome {
    int status;                     /* the response's HTTP status (upstream's or the sidecar's), 0: none */
    int grpc_status;                /* grpc-status received or sent, -1: none */
    sc_fail fail;                   /* why the sidecar answered itself or cut the response; SC_FAIL_NONE */
    bool grpc;                      /* the request is a gRPC call */
    bool abandoned;                 /* the caller went away before the upstream side finished */
    bool head_sent;                 /* the response head reached the caller's codec */
    uint32_t attempts;              /* attempts begun (0: refused or answered during admission) */
    uint64_t start_ns;              /* the stream began (request head arriving) */
    uint64_t upstream_start_ns;     /* the first attempt began (SC_PIPE_TIMINGS routes only) */
    uint64_t first_byte_ns;         /* the final attempt's response head arrived (same) */
    uint64_t end_ns;                /* when this outcome was taken */
    const struct sockaddr *instance; /* the last attempt's instance, NULL: none */
    socklen_t instance_len;
    uint64_t bytes_in;              /* request body bytes from the caller */
    uint64_t bytes_out;             /* response body bytes towards the caller */
} sc_outcome;

/* How one attempt ended, for on_attempt_end(). */
typedef struct sc_attempt_outcome {
    uint32_t attempt;               /* 1-based */
    const sc_instance_state *instance; /* where it went (instance->ss / len); never NULL */
    int status;                     /* response status, 0: none */
    int grpc_status;                /* -1: none */
    sc_fail fail;                   /* SC_FAIL_NONE: a response */
    bool gateway_failure;           /* counts against the instance: connect failure, reset, refused
                                     * stream, 502/503/504, gRPC UNAVAILABLE */
    bool cancelled;                 /* cut because the caller went away: says nothing of the instance */
    bool retried;                   /* failed, and another attempt follows */
    uint64_t start_ns, end_ns;      /* start: SC_PIPE_TIMINGS routes only (always, for an observer) */
} sc_attempt_outcome;

typedef struct sc_stage {
    const char *name;
    /* Start-up: whether route r uses this stage; *conf is what its calls get. */
    bool (*configure)(const sc_route *r, const struct sidecar *sc, const void **conf);
    sc_stage_verdict (*admit)(sc_stream *s, const void *conf, uint64_t *word, sc_fail *fail);
    /* Required when the stage parks: the wait timer ran out. */
    sc_fail (*timeout)(sc_stream *s, const void *conf, uint64_t *word);
    /* The rest may be NULL. */
    void (*cancel)(sc_stream *s, const void *conf, uint64_t *word);
    void (*settle)(sc_stream *s, const void *conf, uint64_t *word, const sc_outcome *o);
    void (*release)(sc_stream *s, const void *conf, uint64_t *word);
} sc_stage;

typedef struct sc_observer {
    const char *name;
    bool (*configure)(const sc_route *r, const struct sidecar *sc, const void **conf);
    /* Each may be NULL. */
    void (*on_response_head)(sc_stream *s, const void *conf);
    void (*on_attempt_end)(sc_stream *s, const sc_attempt_outcome *a, const void *conf);
    void (*on_complete)(sc_stream *s, const sc_outcome *o, const void *conf);
} sc_observer;

#define SC_PIPELINE_MAX 8

enum {
    SC_PIPE_HEAD = 1u << 0,         /* some observer has on_response_head */
    SC_PIPE_ATTEMPT_END = 1u << 1,  /* ... on_attempt_end */
    SC_PIPE_COMPLETE = 1u << 2,     /* ... on_complete */
    /* Some observer hears about attempts or the end: the stream takes the
     * timings the outcomes carry (attempt and upstream start, first byte). */
    SC_PIPE_TIMINGS = 1u << 3,
};

/* Streams holding a pipeline, per worker (id modulo the slots; a slot a
 * worker shares takes atomic adds all the same): the control thread frees a
 * retired pipeline when they sum to 0. */
#define SC_PIPE_LIVE_SLOTS 16
typedef struct sc_pipe_live {
    _Alignas(64) _Atomic int64_t n;
} sc_pipe_live;

typedef struct sc_pipeline {
    /* The route version it belongs to (route.h): what its streams read. */
    const sc_policy *policy;        /* NULL for inbound */
    const sc_timeouts *timeouts;
    sc_breaker *breaker;            /* the breaker stage's */
    bool owns_breaker;              /* a reload made it: freed with the pipeline */
    sc_cfg_hold *hold;              /* the configuration policy points into; NULL: the process's */
    uint64_t retire_epoch;          /* route.c: retired versions */
    struct sc_pipeline *retired_next;
    uint8_t n_stages, n_observers;
    uint8_t hooks;                  /* SC_PIPE_* */
    uint8_t settle_mask;            /* bit i: stage i has settle */
    uint8_t release_mask;           /* bit i: stage i has release */
    const sc_stage *stage[SC_PIPELINE_MAX];
    const void *stage_conf[SC_PIPELINE_MAX];
    const sc_observer *observer[SC_PIPELINE_MAX];
    const void *observer_conf[SC_PIPELINE_MAX];
    sc_pipe_live live[SC_PIPE_LIVE_SLOTS];
} sc_pipeline;

/* Route r's current version's stages and observers (configure() reads
 * r->policy and sc_route_breaker(r)); sc_pipeline_free releases it with the
 * breaker and configuration it owns. Control thread. */
sc_pipeline *sc_pipeline_build(const sc_route *r, const struct sidecar *sc);
void sc_pipeline_free(sc_pipeline *p);
/* Streams of p still running (control thread). */
int64_t sc_pipeline_live(const sc_pipeline *p);

/* The policy a stream runs under: its version's (NULL for inbound). */
static inline const sc_policy *sc_stream_policy(const sc_stream *s)
{
    return s->pipe ? s->pipe->policy : s->route->policy;
}

/* ---- for stages ---- */

/* Inside admit(), before returning SC_STAGE_PARK: the stream waits on
 * `list` (the stage's own, e.g. per worker) for at most timeout_ms. */
void sc_stage_park(sc_stream *s, sc_link *list, uint64_t timeout_ms);
/* A parked stream's verdict, exactly once (GO: the next stage runs now,
 * then the first attempt; DENY: the sidecar answers with `fail`). */
void sc_admit_resume(sc_stream *s, sc_stage_verdict v, sc_fail fail);
/* The parked stream a stage's list entry belongs to (for walking the list). */
static inline sc_stream *sc_parked_stream(sc_link *l) { return SC_CONTAINER_OF(l, sc_stream, park_link); }
/* The parked stream's word (the stage at which it waits). */
static inline uint64_t *sc_parked_word(sc_stream *s) { return &s->stage_word[s->stage_pos]; }

/* The registry (admit.c). */
extern const sc_stage sc_stage_allow, sc_stage_authz, sc_stage_jwt, sc_stage_ratelimit, sc_stage_breaker,
    sc_stage_retry_budget, sc_stage_bulkhead;
extern const sc_observer sc_observer_outlier, sc_observer_access;

/* Worker hooks of the built-in stages (worker.c calls them). */
void sc_stage_authz_wake(sc_worker *w);           /* a Consul lookup this worker waits for ended */
bool sc_stage_bulkhead_promote(sc_worker *w);     /* slots freed elsewhere: true while waiters remain */
void sc_stage_jwt_wake(sc_worker *w);             /* a JWKS fetch ended: requests waiting for keys go on */
/* A claim of the caller's verified JWT (stage_jwt.c) as text, for the
 * stages after it (a rate-limit key); NULL: no verified token on this
 * stream, or no such claim. Valid until the stream ends. */
const char *sc_stage_jwt_claim(const sc_stream *s, const char *name, size_t *len);

/* ---- for the stream (stream.c, attempt.c) ---- */

/* The stream starts: it takes its route's current version (s->pipe) for its
 * whole life; sc_admit_end gives it back. */
void sc_pipeline_acquire(sc_stream *s);
/* The request head is complete and counted: run the stages, then the first attempt. */
void sc_admit_start(sc_stream *s);
/* The wait timer of a PARKED stream ran out. */
void sc_admit_timeout(sc_stream *s);
/* The stream ends (or the request deadline passed) while PARKED. */
void sc_admit_unpark(sc_stream *s);
/* The upstream side is settled (abandoned: the caller left first); once. */
void sc_admit_settle(sc_stream *s, bool abandoned);
/* The stream ends: release, on_complete. */
void sc_admit_end(sc_stream *s);
/* Observers. */
void sc_observe_head(sc_stream *s);
void sc_observe_attempt_end(sc_stream *s, const sc_attempt_outcome *a);
/* The outcome so far (end_ns = now). */
void sc_stream_outcome(const sc_stream *s, sc_outcome *o);

#endif
