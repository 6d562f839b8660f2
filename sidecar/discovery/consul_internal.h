/*
 * consul_internal.h: what the files of the Consul agent client share and
 * nobody else should use (the public API is consul.h). The client is one
 * struct sc_consul; each file owns a part of it:
 *   consul.c           start, stop, SIGHUP retries, the admin JSON and stats;
 *   consul_http.c      libcurl multi on the control loop, requests and their
 *                      errors, the agent address, the ACL token, backoff;
 *   consul_register.c  registration, the TTL check, the re-registration
 *                      watch, deregistration at drain;
 *   consul_watch.c     the health watches of upstreams and the cache file;
 *   consul_connect.c   Connect leaf and roots (tls.source: consul) and
 *                      authorize (tls.authorize: consul).
 * Everything runs on the control thread.
 */
#ifndef SC_CONSUL_INTERNAL_H
#define SC_CONSUL_INTERNAL_H

#include "discovery/consul.h"

#include "discovery/consul_json.h"
#include "discovery/curl_api.h"

#include <arpa/inet.h>
#include <jansson.h>

#define BODY_LIMIT (64u << 20)         /* largest answer kept (1000 instances are ~2 MB) */
#define WRITE_TIMEOUT_MS 10000         /* agent writes and non-blocking reads */
#define BUCKET_BURST 4.0               /* watch loop: 4 queries at once ... */
#define BUCKET_PER_S 1.0               /* ... then 1 per second */

typedef struct creq creq;
typedef void (*creq_cb)(creq *r);

/* One request to the agent (consul_http.c). */
struct creq {
    CURL *easy;
    sc_consul *c;
    creq_cb done;
    void *owner;
    creq *prev, *next;          /* c->reqs */
    struct curl_slist *headers;
    char *body;                 /* the answer, NUL terminated */
    size_t len, cap;
    bool too_big;
    bool has_index, bad_index;
    uint64_t index;
    char hash[96];
    CURLcode result;
    long status;
    char curl_err[CURL_ERROR_SIZE];
    sc_consul_authorize_cb user_done; /* sc_consul_authorize: the caller's callback */
    void *user_arg;
};

typedef struct csock csock;     /* a socket libcurl asked us to watch (consul_http.c) */

typedef enum {
    REG_OFF = 0,
    REG_REGISTERING,
    REG_REGISTERED,
    REG_FAILED,                 /* waiting to try again */
    REG_DEREGISTERING,
    REG_DEREGISTERED,
} reg_state;

/* The health watch of one upstream (consul_watch.c). */
typedef struct watch {
    sc_consul *c;
    size_t route_index;
    sc_route *route;
    const char *service, *tag, *dc;
    char *owned[3];             /* copies of service, tag, dc for a route a reload added (its policy may go) */
    creq *req;
    ev_timer timer;
    sc_consul_bucket bucket;
    uint64_t index;             /* to send; 0 = a non-blocking fetch */
    uint64_t last_index;        /* last X-Consul-Index seen */
    uint64_t sent_index;
    unsigned failures;          /* in a row */
    bool have_data, from_cache;
    char last_error[320];
    int64_t last_error_unix, last_change_unix, last_success_unix, saved_unix;
    uint64_t errors_total, changes_total, answers_total;
    size_t skipped;
    char skip_reason[192];
} watch;

/* tls.source: consul: one blocking query loop each on the roots and the leaf
 * (consul_connect.c) */
typedef struct cwatch {
    sc_consul *c;
    const char *what;           /* "roots", "leaf" */
    creq *req;
    ev_timer timer;
    sc_consul_bucket bucket;
    uint64_t index, sent_index, last_index;
    unsigned failures;
    char last_error[320];
    char note[800];             /* "<what>: <last_error><hint>", for /certs and /ready while failing */
    uint64_t answers_total, errors_total;
} cwatch;

struct sc_consul {
    sidecar *sc;
    const sc_config *cfg;
    struct ev_loop *loop;

    /* HTTP to the agent (consul_http.c) */
    CURLM *multi;
    ev_timer curl_timer;
    creq *reqs;                 /* in flight */
    csock *socks;               /* sockets libcurl asked us to watch */
    sc_consul_target target;    /* where requests go (consul_json.h) */
    const char *base;           /* target.display: scheme://host:port, no trailing slash */
    const char *unix_path;
    struct curl_slist *connect_to; /* CURLOPT_CONNECT_TO with consul.tls_server_name, else NULL */
    char *token;                /* ACL token in use (NULL = none); token_file is read again on SIGHUP */
    ev_signal sighup;
    uint64_t token_reloads_total;   /* SIGHUP brought a new token */
    uint64_t rnd;
    uint64_t requests_total, request_errors_total;

    /* registration (consul_register.c) */
    reg_state reg;
    char *reg_body;
    char check_id[300];
    char address[INET6_ADDRSTRLEN];
    char check_target[600];     /* HTTP check URL (consul.check_http, else the admin /ready) or gRPC host:port */
    creq *reg_req, *ttl_req, *svc_req, *dereg_req;
    ev_timer reg_timer, ttl_timer, svc_timer, dereg_timer;
    unsigned reg_failures, ttl_failures, svc_failures;
    sc_consul_bucket svc_bucket;
    char svc_hash[96];
    bool ttl_resend;
    bool ttl_passing;           /* last status sent */
    bool ttl_sent;
    char ttl_note[256];
    char reg_error[320];
    int64_t reg_error_unix, registered_unix;
    uint64_t registrations_total, reg_failures_total, ttl_updates_total, ttl_failures_total;
    void (*dereg_done)(void *);
    void *dereg_arg;

    /* watches (consul_watch.c) */
    watch *watches;             /* [watches_cap]: a watch never moves (by_route points at it) */
    size_t n_watches, watches_cap;
    watch **by_route;           /* [sc->routes_cap], NULL = not watched */

    /* Connect (tls.source: consul; consul_connect.c) */
    bool connect;
    cwatch roots_w, leaf_w;
    char *ca_pem;               /* roots in use (or waiting for the first leaf) */
    size_t n_roots;
    char *cert_pem, *key_pem;   /* leaf in use */
    char *new_cert, *new_key;   /* leaf received, applied after LEAF_GRACE_S */
    char leaf_serial[128], new_serial[128];
    bool new_unverified;        /* new_cert does not verify against ca_pem: waiting for roots that vouch for it */
    int64_t leaf_not_after, new_not_after;  /* unix seconds; 0 = none */
    ev_timer leaf_timer;        /* the grace period, or the wait for roots (new_unverified) */
    uint64_t leaf_updates_total, roots_updates_total;   /* put in use */

    /* cache file (consul_watch.c) */
    char *cache_doc;
    size_t cache_len;
    bool cache_dirty;
    ev_timer cache_timer;
};

/*
 * Each part has an init (called by sc_consul_start in the order below), a
 * start where it has requests to begin, a retry_now (SIGHUP brought a new
 * token: failing loops go at once instead of waiting for their backoff) and
 * a stop that ends its timers and frees what it owns. A stop is fine on a
 * part that was never initialized (its watchers are zero, from calloc).
 */

/* ---- consul.c ---- */

/* Failing loops of every part retry now (consul_http.c, after a token change). */
void sc_consul_retry_now(sc_consul *c);
/* "2024-01-02T03:04:05Z" */
void sc_consul_iso_time(int64_t unix_s, char *buf, size_t cap);
/* Admin JSON: a time (null for 0), a string (null for NULL or ""). */
json_t *sc_consul_jtime(int64_t t);
json_t *sc_consul_jstr(const char *s);

/* ---- consul_http.c ---- */

/* Loads libcurl (once per process) and initializes it: 0, or -ENOENT / -EIO (logged). */
int sc_consul_http_global_init(void);
/* The multi handle on c->loop, the agent address, the ACL token, SIGHUP:
 * 0, or -ENOMEM, -EIO, -EINVAL with nothing left to free. */
int sc_consul_http_init(sc_consul *c);
/* CURLMOPT_MAXCONNECTS */
void sc_consul_http_max_connects(sc_consul *c, long n);
/* Frees every request (no callback runs), the multi handle and its sockets,
 * the token; stops the SIGHUP watcher. */
void sc_consul_http_stop(sc_consul *c);

/* Exponential backoff with full jitter for the n-th failure in a row. */
uint64_t sc_consul_backoff(sc_consul *c, unsigned failures);
/* (Re)arms a one-shot timer for ms from now. */
void sc_consul_timer_again(sc_consul *c, ev_timer *t, uint64_t ms);

/*
 * Starts a request. method "GET", "PUT" or "POST"; a PUT or POST sends `body`
 * (JSON) or nothing. `scoped`: the request carries consul.namespace /
 * consul.partition (see consul_http.c for which requests are). done(r) runs
 * on the control loop when the request ended, r is freed right after.
 * Returns NULL when libcurl cannot even start it (then nothing is called;
 * the caller treats it like a failed request).
 */
creq *sc_consul_req_start(sc_consul *c, const char *method, const char *path, bool scoped,
                          const char *body, uint64_t timeout_ms, creq_cb done, void *owner);
/* Cancels a request in flight without calling its callback; *pp = NULL. */
void sc_consul_req_cancel(creq **pp);
/* A one-line description of what went wrong, "" when the request succeeded
 * with a 2xx answer. */
void sc_consul_req_error(const creq *r, char *buf, size_t cap);
bool sc_consul_req_body_has(const creq *r, const char *needle);
/* Advice appended to errors a person can fix ("" when none). */
const char *sc_consul_req_hint(const creq *r);

/* ---- consul_register.c ---- */

/* Timers; with consul.register_service the address, the check and the
 * registration body, and the TTL check's readiness subscription. 0 or -ENOMEM. */
int sc_consul_reg_init(sc_consul *c);
/* PUT /v1/agent/service/register (again), unless deregistering. */
void sc_consul_reg_start(sc_consul *c);
void sc_consul_reg_retry_now(sc_consul *c);
void sc_consul_reg_stop(sc_consul *c);
/* Admin: the "registration" object of sc_consul_json, and its metrics. */
json_t *sc_consul_reg_json(const sc_consul *c);
void sc_consul_reg_render_stats(const sc_consul *c, FILE *f);

/* ---- consul_watch.c ---- */

/* One watch per route with `discovery: consul`, the cache file read. 0 or -ENOMEM. */
int sc_consul_watch_init(sc_consul *c);
void sc_consul_watch_start_all(sc_consul *c);
void sc_consul_watch_retry_now(sc_consul *c);
/* Also writes the cache file when it changed. */
void sc_consul_watch_stop(sc_consul *c);
void sc_consul_watch_render_stats(const sc_consul *c, FILE *f);

/* ---- consul_connect.c ---- */

void sc_consul_connect_init(sc_consul *c);
void sc_consul_connect_start(sc_consul *c);
void sc_consul_connect_retry_now(sc_consul *c);
void sc_consul_connect_stop(sc_consul *c);
void sc_consul_connect_render_stats(const sc_consul *c, FILE *f);

#endif
