/*
 * consul.c: the Consul agent client (see consul.h). The I/O shell around
 * consul_json.c: libcurl multi on the control loop, registration, TTL
 * updates, watches, the cache file.
 *
 * libcurl integration: CURLMOPT_SOCKETFUNCTION keeps one ev_io per socket
 * curl wants watched, CURLMOPT_TIMERFUNCTION one ev_timer; both call
 * curl_multi_socket_action and then collect finished transfers. A request
 * (creq) owns its easy handle; its `done` callback runs after the handle
 * left the multi handle, and the request is freed right after it.
 */
#include "discovery/consul.h"

#include "core/log.h"
#include "core/prom.h"
#include "discovery/app_health.h"
#include "discovery/consul_json.h"
#include "tls/tls.h"
#include "tls/tls_runtime.h"

#include <arpa/inet.h>
#include "discovery/curl_api.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <ifaddrs.h>
#include <jansson.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BODY_LIMIT (64u << 20)         /* largest answer kept (1000 instances are ~2 MB) */
#define WRITE_TIMEOUT_MS 10000         /* agent writes and non-blocking reads */
#define CONNECT_TIMEOUT_MS 3000
#define BUCKET_BURST 4.0               /* watch loop: 4 queries at once ... */
#define BUCKET_PER_S 1.0               /* ... then 1 per second */
#define CACHE_WRITE_DELAY_S 2.0        /* coalesce cache file writes */

typedef struct creq creq;
typedef void (*creq_cb)(creq *r);

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

typedef struct csock {
    ev_io io;
    sc_consul *c;
    curl_socket_t fd;
    struct csock *prev, *next;  /* c->socks */
} csock;

typedef enum {
    REG_OFF = 0,
    REG_REGISTERING,
    REG_REGISTERED,
    REG_FAILED,                 /* waiting to try again */
    REG_DEREGISTERING,
    REG_DEREGISTERED,
} reg_state;

static const char *const reg_state_names[] = {"off", "registering", "registered", "failed",
                                              "deregistering", "deregistered"};

typedef struct watch {
    sc_consul *c;
    size_t route_index;
    sc_route *route;
    const char *service, *tag, *dc;
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

/* tls.source: consul: one blocking query loop each on the roots and the leaf */
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

#define LEAF_GRACE_S 2.0        /* a replacement leaf waits this long, so peers learn a new root first */
#define LEAF_ROOTS_WAIT_S 10.0  /* a leaf the roots do not vouch for waits this long for roots, then: an error */

struct sc_consul {
    sidecar *sc;
    const sc_config *cfg;
    struct ev_loop *loop;
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

    /* registration */
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

    /* watches */
    watch *watches;
    size_t n_watches;
    watch **by_route;           /* [sc->n_routes], NULL = not watched */

    /* Connect (tls.source: consul) */
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

    /* cache file */
    char *cache_doc;
    size_t cache_len;
    bool cache_dirty;
    ev_timer cache_timer;
};

static uint64_t rnd_next(sc_consul *c)
{
    uint64_t x = c->rnd;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rnd = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static uint64_t backoff(sc_consul *c, unsigned failures)
{
    return sc_consul_backoff_ms(failures, SC_CONSUL_BACKOFF_BASE_MS, SC_CONSUL_BACKOFF_CAP_MS,
                                rnd_next(c));
}

static void timer_again(sc_consul *c, ev_timer *t, uint64_t ms)
{
    ev_timer_stop(c->loop, t);
    ev_timer_set(t, (double)ms / 1000.0, 0);
    ev_timer_start(c->loop, t);
}

static unsigned addr_port(const sc_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}

static const char *check_name(int check)
{
    static const char *const names[] = {"http", "ttl", "grpc", "none"};
    return (unsigned)check < SC_ARRAY_LEN(names) ? names[check] : "?";
}

static void iso_time(int64_t unix_s, char *buf, size_t cap)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- requests ---- */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    creq *r = userdata;
    size_t n = size * nmemb;
    if (r->len + n + 1 > BODY_LIMIT) {
        r->too_big = true;
        return 0;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *nb = realloc(r->body, cap);
        if (!nb)
            return 0;
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, ptr, n);
    r->len += n;
    r->body[r->len] = 0;
    return n;
}

static bool header_is(const char *h, size_t n, const char *name, const char **val, size_t *vlen)
{
    size_t l = strlen(name);
    if (n <= l || strncasecmp(h, name, l) != 0 || h[l] != ':')
        return false;
    *val = h + l + 1;
    *vlen = n - l - 1;
    return true;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    creq *r = userdata;
    size_t n = size * nitems;
    const char *v;
    size_t vl;
    if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        /* a new header block (after 100 Continue, say): forget the last one */
        r->has_index = r->bad_index = false;
        r->hash[0] = 0;
    } else if (header_is(buf, n, "X-Consul-Index", &v, &vl)) {
        r->has_index = sc_consul_index_parse(v, vl, &r->index) == 0;
        r->bad_index = !r->has_index;
    } else if (header_is(buf, n, "X-Consul-ContentHash", &v, &vl)) {
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl < sizeof(r->hash)) {
            memcpy(r->hash, v, vl);
            r->hash[vl] = 0;
        }
    }
    return n;
}

static void creq_free(creq *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (r->c->reqs == r)
        r->c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->body);
    free(r);
}

/* Cancels a request in flight without calling its callback; *pp = NULL. */
static void creq_cancel(creq **pp)
{
    creq *r = *pp;
    if (!r)
        return;
    *pp = NULL;
    curl_multi_remove_handle(r->c->multi, r->easy);
    creq_free(r);
}

/*
 * Starts a request. method "GET", "PUT" or "POST"; a PUT or POST sends `body` (JSON) or
 * nothing. `scoped`: the request carries consul.namespace / consul.partition
 * (?ns=, &partition=; Consul Enterprise) when they are set, never otherwise
 * (the Community Edition answers 400 to any non-empty ns). Scoped are the
 * requests whose agent handler reads the Enterprise meta because what they
 * name lives in a namespace: the registration and deregistration of our
 * service, the TTL check updates and the agent-local GET of our service (the
 * service and its check live in our namespace: without ns they would not be
 * found), the health watches (the services we call are looked up in our
 * namespace, as the Consul CLI and Go client do with CONSUL_NAMESPACE), the
 * Connect leaf (issued for our service in our namespace) and authorize (the
 * target is our service). Not scoped: the Connect roots (one CA per cluster).
 * Returns NULL when libcurl cannot even start it (then nothing is
 * called; the caller treats it like a failed request).
 */
static creq *creq_start(sc_consul *c, const char *method, const char *path, bool scoped,
                        const char *body, uint64_t timeout_ms, creq_cb done, void *owner)
{
    creq *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    const sc_config *cfg = c->cfg;
    r->c = c;
    r->done = done;
    r->owner = owner;
    r->easy = curl_easy_init();
    size_t ul = strlen(c->target.url_base) + strlen(path) + 2 * (3 * 256 + 16) + 1;
    char *url = malloc(ul);
    if (!r->easy || !url) {
        free(url);
        if (r->easy)
            curl_easy_cleanup(r->easy);
        free(r);
        return NULL;
    }
    snprintf(url, ul, "%s%s", c->target.url_base, path);
    if (scoped)
        sc_consul_path_ent(url, ul, cfg->consul.ns, cfg->consul.partition); /* sized to fit */
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    free(url); /* libcurl keeps its own copy */
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* the agent is local: never through a proxy */
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->curl_err);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sidecar/" SC_VERSION);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 10L);
    if (c->unix_path)
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, c->unix_path);
    if (c->connect_to)
        curl_easy_setopt(e, CURLOPT_CONNECT_TO, c->connect_to);
    if (cfg->consul.ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, cfg->consul.ca_file);
    if (cfg->consul.ca_path)
        curl_easy_setopt(e, CURLOPT_CAPATH, cfg->consul.ca_path);
    if (cfg->consul.cert_file)
        curl_easy_setopt(e, CURLOPT_SSLCERT, cfg->consul.cert_file);
    if (cfg->consul.key_file)
        curl_easy_setopt(e, CURLOPT_SSLKEY, cfg->consul.key_file);
    if (!cfg->consul.ssl_verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    struct curl_slist *h = NULL;
    if (c->token) {
        size_t tl = strlen(c->token) + 32;
        char *th = malloc(tl);
        if (th) {
            snprintf(th, tl, "X-Consul-Token: %s", c->token);
            h = curl_slist_append(h, th);
            free(th);
        }
    }
    if (strcmp(method, "PUT") == 0 || strcmp(method, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)(body ? strlen(body) : 0));
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? body : "");
        h = curl_slist_append(h, body ? "Content-Type: application/json" : "Content-Type:");
        h = curl_slist_append(h, "Expect:");
    }
    r->headers = h;
    if (h)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        creq_free(r);
        return NULL;
    }
    c->requests_total++;
    return r;
}

/* A one-line description of what went wrong, "" when the request succeeded
 * with a 2xx answer. */
static void creq_error(const creq *r, char *buf, size_t cap)
{
    buf[0] = 0;
    if (r->too_big) {
        snprintf(buf, cap, "the answer is larger than %u MiB", BODY_LIMIT >> 20);
    } else if (r->result != CURLE_OK) {
        snprintf(buf, cap, "%s", r->curl_err[0] ? r->curl_err : curl_easy_strerror(r->result));
    } else if (r->status < 200 || r->status > 299) {
        char text[200];
        size_t n = 0;
        for (size_t i = 0; r->body && i < r->len && n < sizeof(text) - 1; i++) {
            char ch = r->body[i];
            if (ch == '\n' || ch == '\r') {
                if (n && text[n - 1] != ' ')
                    text[n++] = ' ';
                continue;
            }
            text[n++] = (ch >= 0x20 && ch < 0x7f) ? ch : '?';
        }
        while (n && text[n - 1] == ' ')
            n--;
        text[n] = 0;
        snprintf(buf, cap, "HTTP %ld%s%s", r->status, n ? ": " : "", text);
    }
}

static bool body_has(const creq *r, const char *needle)
{
    return r->body && strstr(r->body, needle);
}

/* Advice appended to errors a person can fix. */
static const char *hint(const creq *r)
{
    if (r->result != CURLE_OK)
        return "";
    if (r->status == 403 && body_has(r, "ACL not found"))
        return " (the ACL token is not known to the agent: check consul.token, consul.token_file, "
               "$CONSUL_HTTP_TOKEN or $CONSUL_HTTP_TOKEN_FILE)";
    if (r->status == 403)
        return " (the ACL token lacks a permission: see the agent's message)";
    return "";
}

static void check_done(sc_consul *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        creq *r = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
        r->result = m->data.result;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
        curl_multi_remove_handle(c->multi, e);
        if (r->result != CURLE_OK || r->status < 200 || r->status > 299)
            c->request_errors_total++;
        r->done(r);
        creq_free(r);
    }
}

static void sock_ev_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    csock *cs = SC_CONTAINER_OF(w, csock, io);
    sc_consul *c = cs->c;
    int flags = ((revents & EV_READ) ? CURL_CSELECT_IN : 0) |
                ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(c->multi, cs->fd, flags, &running); /* may free cs */
    check_done(c);
}

static void csock_free(sc_consul *c, csock *cs)
{
    ev_io_stop(c->loop, &cs->io);
    if (cs->prev)
        cs->prev->next = cs->next;
    else
        c->socks = cs->next;
    if (cs->next)
        cs->next->prev = cs->prev;
    free(cs);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)e;
    sc_consul *c = userp;
    csock *cs = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (cs)
            csock_free(c, cs);
        return 0;
    }
    if (!cs) {
        cs = calloc(1, sizeof(*cs));
        if (!cs)
            return -1;
        cs->c = c;
        cs->fd = s;
        cs->next = c->socks;
        if (c->socks)
            c->socks->prev = cs;
        c->socks = cs;
        ev_init(&cs->io, sock_ev_cb);
        curl_multi_assign(c->multi, s, cs);
    } else {
        ev_io_stop(c->loop, &cs->io);
    }
    int ev = ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    ev_io_set(&cs->io, s, ev);
    ev_io_start(c->loop, &cs->io);
    return 0;
}

static void curl_timer_ev(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_consul *c = SC_CONTAINER_OF(t, sc_consul, curl_timer);
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    sc_consul *c = userp;
    ev_timer_stop(c->loop, &c->curl_timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&c->curl_timer, (double)timeout_ms / 1000.0, 0);
        ev_timer_start(c->loop, &c->curl_timer);
    }
    return 0;
}

/* ---- registration ---- */

static void reg_start(sc_consul *c);
static void ttl_send(sc_consul *c);
static void svc_start(sc_consul *c);

static void set_reg_error(sc_consul *c, const char *msg)
{
    snprintf(c->reg_error, sizeof(c->reg_error), "%s", msg);
    c->reg_error_unix = (int64_t)time(NULL);
}

static void reg_retry(sc_consul *c)
{
    c->reg = REG_FAILED;
    uint64_t ms = backoff(c, ++c->reg_failures);
    timer_again(c, &c->reg_timer, ms);
}

static void reg_done(creq *r)
{
    sc_consul *c = r->c;
    c->reg_req = NULL;
    char err[300];
    creq_error(r, err, sizeof(err));
    if (err[0]) {
        c->reg_failures_total++;
        bool first = c->reg_failures == 0 || strcmp(err, c->reg_error) != 0;
        set_reg_error(c, err);
        reg_retry(c);
        if (first)
            SC_ERROR("consul: registering service '%s' (id %s) failed: %s%s; retrying with backoff",
                     c->cfg->service.name, c->cfg->service.id, err, hint(r));
        else
            SC_DEBUG("consul: registering service '%s' failed again (%u in a row): %s",
                     c->cfg->service.name, c->reg_failures, err);
        return;
    }
    c->reg = REG_REGISTERED;
    c->reg_failures = 0;
    c->registrations_total++;
    c->registered_unix = (int64_t)time(NULL);
    SC_INFO("consul: registered service '%s' (id %s%s%s, port %u) with check %s (%s%s%s)",
            c->cfg->service.name, c->cfg->service.id, c->address[0] ? ", address " : "",
            c->address, c->cfg->inbound.enabled ? addr_port(&c->cfg->inbound.listen) : 0u,
            c->check_id, check_name(c->cfg->consul.check),
            c->check_target[0] ? " " : "", c->check_target);
    if (c->cfg->consul.check == SC_CHECK_TTL) {
        c->ttl_failures = 0;
        ttl_send(c);
    }
    c->svc_hash[0] = 0;
    c->svc_failures = 0;
    svc_start(c);
}

static void reg_start(sc_consul *c)
{
    if (c->reg == REG_DEREGISTERING || c->reg == REG_DEREGISTERED)
        return;
    ev_timer_stop(c->loop, &c->reg_timer);
    ev_timer_stop(c->loop, &c->ttl_timer);
    ev_timer_stop(c->loop, &c->svc_timer);
    creq_cancel(&c->reg_req);
    creq_cancel(&c->ttl_req);
    creq_cancel(&c->svc_req);
    c->reg = REG_REGISTERING;
    c->reg_req = creq_start(c, "PUT", "/v1/agent/service/register", true, c->reg_body, WRITE_TIMEOUT_MS,
                            reg_done, NULL);
    if (!c->reg_req) {
        set_reg_error(c, "cannot start a request (out of memory?)");
        reg_retry(c);
    }
}

static void reg_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    reg_start(SC_CONTAINER_OF(t, sc_consul, reg_timer));
}

/* The agent lost our registration: register again (at once). */
static void reg_lost(sc_consul *c, const char *why)
{
    SC_WARN("consul: the agent lost the registration of '%s' (%s); registering again",
            c->cfg->service.id, why);
    set_reg_error(c, why);
    reg_start(c);
}

/* ---- TTL check ---- */

static uint64_t ttl_period_ms(const sc_consul *c)
{
    uint64_t p = c->cfg->consul.check_ttl_ms / 2;
    return p < 250 ? 250 : p;
}

static void ttl_done(creq *r)
{
    sc_consul *c = r->c;
    c->ttl_req = NULL;
    char err[300];
    creq_error(r, err, sizeof(err));
    if (!err[0]) {
        c->ttl_failures = 0;
        c->ttl_sent = true;
        if (c->ttl_resend) {
            ttl_send(c);
            return;
        }
        timer_again(c, &c->ttl_timer, ttl_period_ms(c));
        return;
    }
    c->ttl_failures_total++;
    if (r->result == CURLE_OK &&
        (r->status == 404 || (r->status == 500 && body_has(r, "does not have associated TTL")))) {
        reg_lost(c, err);
        return;
    }
    if (c->ttl_failures++ == 0)
        SC_WARN("consul: updating TTL check %s failed: %s%s; retrying", c->check_id, err,
                hint(r));
    uint64_t ms = backoff(c, c->ttl_failures);
    timer_again(c, &c->ttl_timer, SC_MIN(ms, ttl_period_ms(c)));
}

static void ttl_send(sc_consul *c)
{
    if (c->reg != REG_REGISTERED || c->cfg->consul.check != SC_CHECK_TTL)
        return;
    if (c->ttl_req) {
        c->ttl_resend = true;
        return;
    }
    c->ttl_resend = false;
    ev_timer_stop(c->loop, &c->ttl_timer);
    char why[240];
    bool ok = sc_health_ready(c->sc, why, sizeof(why));
    if (ok) {
        if (c->sc->app_health)
            snprintf(c->ttl_note, sizeof(c->ttl_note), "ready: %s",
                     sc_app_health_reason(c->sc->app_health));
        else
            snprintf(c->ttl_note, sizeof(c->ttl_note), "ready");
    } else {
        snprintf(c->ttl_note, sizeof(c->ttl_note), "not ready: %s", why);
    }
    if (ok != c->ttl_passing || !c->ttl_sent)
        SC_INFO("consul: TTL check %s -> %s (%s)", c->check_id, ok ? "passing" : "critical",
                c->ttl_note);
    c->ttl_passing = ok;
    char id[3 * 300 + 1], note[3 * 256 + 1], path[2200];
    sc_consul_escape(c->check_id, id, sizeof(id));
    sc_consul_escape(c->ttl_note, note, sizeof(note));
    snprintf(path, sizeof(path), "/v1/agent/check/%s/%s?note=%s", ok ? "pass" : "fail", id, note);
    c->ttl_updates_total++;
    c->ttl_req = creq_start(c, "PUT", path, true, NULL, WRITE_TIMEOUT_MS, ttl_done, NULL);
    if (!c->ttl_req)
        timer_again(c, &c->ttl_timer, 1000);
}

static void ttl_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    ttl_send(SC_CONTAINER_OF(t, sc_consul, ttl_timer));
}

static void on_app_health(void *arg, bool up)
{
    (void)up;
    ttl_send(arg);
}

/* ---- re-registration check: blocking GET /v1/agent/service/<id> ---- */

static void svc_done(creq *r)
{
    sc_consul *c = r->c;
    c->svc_req = NULL;
    if (c->reg != REG_REGISTERED)
        return;
    char err[300];
    creq_error(r, err, sizeof(err));
    if (!err[0]) {
        c->svc_failures = 0;
        snprintf(c->svc_hash, sizeof(c->svc_hash), "%s", r->hash);
        uint64_t wait = sc_consul_bucket_take(&c->svc_bucket, sc_now_ms());
        timer_again(c, &c->svc_timer, wait);
        return;
    }
    if (r->result == CURLE_OK && r->status == 404) {
        reg_lost(c, err);
        return;
    }
    c->svc_failures++;
    SC_DEBUG("consul: checking the registration of %s failed: %s", c->cfg->service.id, err);
    timer_again(c, &c->svc_timer, backoff(c, c->svc_failures));
}

static void svc_start(sc_consul *c)
{
    if (c->reg != REG_REGISTERED || c->svc_req)
        return;
    char id[3 * 128 + 1], path[1200], w[32];
    sc_consul_escape(c->cfg->service.id, id, sizeof(id));
    sc_duration_format(c->cfg->consul.wait_ms, w, sizeof(w));
    uint64_t timeout = WRITE_TIMEOUT_MS;
    if (c->svc_hash[0]) {
        char h[3 * 96 + 1];
        sc_consul_escape(c->svc_hash, h, sizeof(h));
        snprintf(path, sizeof(path), "/v1/agent/service/%s?hash=%s&wait=%s", id, h, w);
        timeout = sc_consul_read_timeout_ms(c->cfg->consul.wait_ms);
    } else {
        snprintf(path, sizeof(path), "/v1/agent/service/%s", id);
    }
    c->svc_req = creq_start(c, "GET", path, true, NULL, timeout, svc_done, NULL);
    if (!c->svc_req)
        timer_again(c, &c->svc_timer, 1000);
}

static void svc_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    svc_start(SC_CONTAINER_OF(t, sc_consul, svc_timer));
}

/* ---- deregistration ---- */

static void dereg_finish(sc_consul *c)
{
    ev_timer_stop(c->loop, &c->dereg_timer);
    void (*done)(void *) = c->dereg_done;
    c->dereg_done = NULL;
    if (done)
        done(c->dereg_arg);
}

static void dereg_done(creq *r)
{
    sc_consul *c = r->c;
    c->dereg_req = NULL;
    char err[300];
    creq_error(r, err, sizeof(err));
    c->reg = REG_DEREGISTERED;
    if (!err[0])
        SC_INFO("consul: deregistered service '%s' (id %s)", c->cfg->service.name,
                c->cfg->service.id);
    else if (r->result == CURLE_OK && r->status == 404)
        SC_INFO("consul: service id %s was not registered (404); nothing to deregister",
                c->cfg->service.id);
    else {
        set_reg_error(c, err);
        SC_WARN("consul: deregistering service id %s failed: %s%s; draining anyway (the agent's "
                "check will fail once the sidecar is gone)", c->cfg->service.id, err, hint(r));
    }
    dereg_finish(c);
}

static void dereg_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_consul *c = SC_CONTAINER_OF(t, sc_consul, dereg_timer);
    SC_WARN("consul: the agent did not confirm the deregistration of %s within %dms; draining "
            "anyway", c->cfg->service.id, SC_CONSUL_DEREGISTER_TIMEOUT_MS);
    creq_cancel(&c->dereg_req);
    c->reg = REG_DEREGISTERED;
    dereg_finish(c);
}

int sc_consul_deregister(sc_consul *c, void (*done)(void *arg), void *arg)
{
    if (!c || c->reg == REG_OFF || c->reg == REG_DEREGISTERING || c->reg == REG_DEREGISTERED)
        return -EALREADY;
    ev_timer_stop(c->loop, &c->reg_timer);
    ev_timer_stop(c->loop, &c->ttl_timer);
    ev_timer_stop(c->loop, &c->svc_timer);
    creq_cancel(&c->reg_req);
    creq_cancel(&c->ttl_req);
    creq_cancel(&c->svc_req);
    c->reg = REG_DEREGISTERING;
    char id[3 * 128 + 1], path[600];
    sc_consul_escape(c->cfg->service.id, id, sizeof(id));
    snprintf(path, sizeof(path), "/v1/agent/service/deregister/%s", id);
    SC_INFO("consul: deregistering service '%s' (id %s) before draining", c->cfg->service.name,
            c->cfg->service.id);
    c->dereg_req = creq_start(c, "PUT", path, true, NULL, SC_CONSUL_DEREGISTER_TIMEOUT_MS, dereg_done,
                              NULL);
    if (!c->dereg_req) {
        c->reg = REG_DEREGISTERED;
        return -EALREADY;
    }
    c->dereg_done = done;
    c->dereg_arg = arg;
    timer_again(c, &c->dereg_timer, SC_CONSUL_DEREGISTER_TIMEOUT_MS + 250);
    return 0;
}

/* ---- cache file ---- */

/* fsync of the directory holding path, so the rename survives a crash;
 * best effort (some file systems refuse it). */
static void sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[PATH_MAX];
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else if ((size_t)(slash - path) < sizeof(dir))
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    else
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

int sc_consul_cache_save(const char *path, const char *doc, size_t len, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        snprintf(err, errlen, "%s: the path is too long", path);
        return -ENAMETOOLONG;
    }
    struct stat st;
    if (lstat(tmp, &st) == 0) {
        if (S_ISLNK(st.st_mode)) {
            snprintf(err, errlen,
                     "%s is a symbolic link, which would redirect the write elsewhere; not "
                     "writing (remove it if it is meant to be there)",
                     tmp);
            return -ELOOP;
        }
        if (!S_ISREG(st.st_mode)) {
            snprintf(err, errlen, "%s exists and is not a regular file; not writing", tmp);
            return -EEXIST;
        }
        /* Left by an interrupted write: remove it, then create anew below. */
        if (unlink(tmp) < 0 && errno != ENOENT) {
            int e = errno;
            snprintf(err, errlen, "cannot remove the stale %s: %s", tmp, strerror(e));
            return -e;
        }
    } else if (errno != ENOENT) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", tmp, strerror(e));
        return -e;
    }
    /* O_EXCL: a file or symlink that appears at tmp in the meantime makes
     * this fail instead of being written through (O_NOFOLLOW as well). */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot create %s: %s%s", tmp, strerror(e),
                 e == EEXIST ? " (it appeared while the stale one was removed: another writer?)" : "");
        return -e;
    }
    size_t off = 0;
    int e = 0;
    while (off < len) {
        ssize_t n = write(fd, doc + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            e = n < 0 ? errno : EIO;
            break;
        }
        off += (size_t)n;
    }
    if (!e && fsync(fd) < 0)
        e = errno;
    if (close(fd) < 0 && !e)
        e = errno;
    if (!e && rename(tmp, path) < 0)
        e = errno;
    if (e) {
        unlink(tmp);
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    sync_parent_dir(path);
    return 0;
}

static void cache_write(sc_consul *c)
{
    const char *path = c->cfg->consul.cache_file;
    if (!path || !c->cache_dirty)
        return;
    c->cache_dirty = false;
    sc_consul_cache_entry *ents = calloc(c->n_watches ? c->n_watches : 1, sizeof(*ents));
    if (!ents)
        return;
    size_t n = 0;
    for (size_t i = 0; i < c->n_watches; i++) {
        watch *w = &c->watches[i];
        if (!w->have_data)
            continue;
        ents[n++] = (sc_consul_cache_entry){
            .upstream = w->route->name, .service = w->service, .tag = w->tag, .dc = w->dc,
            .endpoints = sc_endpoints_current(&w->route->endpoints),
            .saved_unix = w->from_cache ? w->saved_unix : w->last_success_unix};
    }
    char *doc = sc_consul_cache_dump(ents, n);
    free(ents);
    if (!doc)
        return;
    char why[600];
    if (sc_consul_cache_save(path, doc, strlen(doc), why, sizeof(why)) == 0)
        SC_DEBUG("consul: saved the last known instances to %s", path);
    else
        SC_WARN("consul: cannot write the cache file: %s", why);
    free(doc);
}

static void cache_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    cache_write(SC_CONTAINER_OF(t, sc_consul, cache_timer));
}

static void cache_touch(sc_consul *c)
{
    if (!c->cfg->consul.cache_file)
        return;
    c->cache_dirty = true;
    if (!ev_is_active(&c->cache_timer)) {
        ev_timer_set(&c->cache_timer, CACHE_WRITE_DELAY_S, 0);
        ev_timer_start(c->loop, &c->cache_timer);
    }
}

static void cache_load(sc_consul *c)
{
    const char *path = c->cfg->consul.cache_file;
    if (!path)
        return;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno != ENOENT)
            SC_WARN("consul: cannot read the cache file %s: %s", path, strerror(errno));
        return;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            if (cap >= BODY_LIMIT)
                break;
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                break;
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    fclose(f);
    if (!buf)
        return;
    buf[len] = 0;
    c->cache_doc = buf;
    c->cache_len = len;
}

/* ---- watches ---- */

static void watch_start(watch *w);

static void publish(watch *w, sc_endpoints *snap)
{
    /* Through the route: instances get their shared state (outlier ejection,
     * in-flight counts for least_request) and leavers give back their slot. */
    sc_route_publish(w->route, snap);
}

static void watch_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    watch_start(SC_CONTAINER_OF(t, watch, timer));
}

static void watch_fail(watch *w, const creq *r, const char *err)
{
    sc_consul *c = w->c;
    w->errors_total++;
    w->failures++;
    /* the next answer must come at once (no index: no blocking) so that the
     * stale flag clears as soon as the agent is back */
    w->index = 0;
    bool same = strcmp(err, w->last_error) == 0;
    snprintf(w->last_error, sizeof(w->last_error), "%s", err);
    w->last_error_unix = (int64_t)time(NULL);
    const sc_endpoints *cur = sc_endpoints_current(&w->route->endpoints);
    const char *what = "keeping";
    if (w->have_data) {
        if (cur && !cur->stale) {
            sc_endpoints *s = sc_consul_endpoints_copy(cur, true);
            if (s)
                publish(w, s);
        }
    } else if (c->cache_doc) {
        sc_endpoints *s = NULL;
        int64_t saved = 0;
        if (sc_consul_cache_find(c->cache_doc, c->cache_len, w->route->name, w->service, w->tag,
                                 w->dc, &s, &saved) == 0) {
            char t[32];
            iso_time(saved, t, sizeof(t));
            SC_WARN("upstream %s: Consul is unreachable; using %zu instance(s) from the cache file "
                    "%s (saved %s)", w->route->name, s->n, c->cfg->consul.cache_file, t);
            publish(w, s);
            w->have_data = w->from_cache = true;
            w->saved_unix = saved;
            what = "using";
        }
    }
    cur = sc_endpoints_current(&w->route->endpoints);
    uint64_t ms = backoff(c, w->failures);
    if ((w->failures == 1 || !same) && !w->have_data)
        SC_WARN("upstream %s: watching Consul service '%s' failed: %s%s; no instances known yet "
                "(requests get 'no healthy instance'), retrying in %llums", w->route->name,
                w->service, err, r ? hint(r) : "", (unsigned long long)ms);
    else if (w->failures == 1 || !same)
        SC_WARN("upstream %s: watching Consul service '%s' failed: %s%s; %s %zu last known "
                "instance(s) (stale), retrying in %llums", w->route->name, w->service, err,
                r ? hint(r) : "", what, cur ? cur->n : 0, (unsigned long long)ms);
    else
        SC_DEBUG("upstream %s: watch failed again (%u in a row): %s", w->route->name, w->failures,
                 err);
    timer_again(c, &w->timer, ms);
}

static void log_change(const watch *w, const sc_endpoints *old, const sc_endpoints *nw)
{
    size_t added = 0, removed = 0;
    for (size_t i = 0; i < nw->n; i++) {
        bool found = false;
        for (size_t k = 0; old && k < old->n && !found; k++)
            found = strcmp(nw->inst[i].addr.text, old->inst[k].addr.text) == 0;
        added += !found;
    }
    for (size_t k = 0; old && k < old->n; k++) {
        bool found = false;
        for (size_t i = 0; i < nw->n && !found; i++)
            found = strcmp(nw->inst[i].addr.text, old->inst[k].addr.text) == 0;
        removed += !found;
    }
    SC_INFO("upstream %s: Consul service '%s' has %zu healthy instance(s) (+%zu -%zu, index %llu)",
            w->route->name, w->service, nw->n, added, removed,
            (unsigned long long)w->last_index);
}

static void watch_done(creq *r)
{
    watch *w = r->owner;
    sc_consul *c = w->c;
    w->req = NULL;
    char err[300];
    creq_error(r, err, sizeof(err));
    if (!err[0] && !r->has_index)
        snprintf(err, sizeof(err), "the answer has %s X-Consul-Index header",
                 r->bad_index ? "an invalid" : "no");
    sc_endpoints *snap = NULL;
    sc_consul_parse_stats st;
    if (!err[0]) {
        char perr[200];
        int rc = sc_consul_parse_health(r->body, r->len, NULL, &snap, &st, perr, sizeof(perr));
        if (rc < 0)
            snprintf(err, sizeof(err), "%s", rc == -ENOMEM ? "out of memory" : perr);
    }
    if (err[0]) {
        watch_fail(w, r, err);
        return;
    }
    w->answers_total++;
    if (w->failures)
        SC_INFO("upstream %s: the Consul watch works again after %u failure(s)", w->route->name,
                w->failures);
    w->failures = 0;
    w->last_index = r->index;
    w->index = sc_consul_index_next(w->sent_index, r->index);
    if (w->index == 0)
        SC_INFO("upstream %s: the Consul index went backwards (%llu after %llu): fetching again",
                w->route->name, (unsigned long long)r->index, (unsigned long long)w->sent_index);
    w->last_success_unix = (int64_t)time(NULL);
    if (st.skipped && (st.skipped != w->skipped || strcmp(st.first_skip, w->skip_reason) != 0))
        SC_WARN("upstream %s: %zu of %zu Consul entries unusable; first: %s", w->route->name,
                st.skipped, st.entries, st.first_skip);
    w->skipped = st.skipped;
    snprintf(w->skip_reason, sizeof(w->skip_reason), "%s", st.first_skip);
    const sc_endpoints *cur = sc_endpoints_current(&w->route->endpoints);
    bool changed = !w->have_data || w->from_cache || !cur || !sc_consul_endpoints_same(cur, snap);
    if (changed || (cur && cur->stale)) {
        if (changed) {
            log_change(w, w->have_data ? cur : NULL, snap);
            w->changes_total++;
            w->last_change_unix = w->last_success_unix;
        }
        publish(w, snap);
    } else {
        free(snap);
    }
    w->have_data = true;
    w->from_cache = false;
    cache_touch(c);
    uint64_t wait = sc_consul_bucket_take(&w->bucket, sc_now_ms());
    if (wait)
        timer_again(c, &w->timer, wait);
    else
        watch_start(w);
}

static void watch_start(watch *w)
{
    sc_consul *c = w->c;
    if (w->req)
        return;
    char path[2600];
    w->sent_index = w->index;
    int n = sc_consul_health_path(path, sizeof(path), w->service, w->tag, w->dc, w->index,
                                  c->cfg->consul.wait_ms);
    if (n < 0) {
        watch_fail(w, NULL, "the query is too long");
        return;
    }
    uint64_t timeout = w->index ? sc_consul_read_timeout_ms(c->cfg->consul.wait_ms)
                                : WRITE_TIMEOUT_MS;
    w->req = creq_start(c, "GET", path, true, NULL, timeout, watch_done, w);
    if (!w->req)
        watch_fail(w, NULL, "cannot start a request (out of memory?)");
}

/* ---- Connect certificates (tls.source: consul) ---- */

static void cwatch_start(cwatch *w);

/* Hands the state to tls_runtime (/certs, /ready). err NULL means no error, except
 * that a query still failing keeps its error shown. */
static void connect_note(sc_consul *c, const char *err)
{
    const cwatch *ws[] = {&c->leaf_w, &c->roots_w};
    for (size_t i = 0; !err && i < SC_ARRAY_LEN(ws); i++)
        if (ws[i]->failures)
            err = ws[i]->note;
    sc_tls_runtime_connect_note(c->leaf_serial, c->n_roots, c->leaf_w.last_index, c->roots_w.last_index, err);
}

static void cwatch_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    cwatch_start(SC_CONTAINER_OF(t, cwatch, timer));
}

/* Advice for a refused Connect query, "" when none: the leaf needs service:write on our
 * service (roots need no permission). buf holds the text when it is built here. */
static const char *connect_hint(const cwatch *w, const creq *r, char *buf, size_t cap)
{
    if (!r)
        return "";
    if (w == &w->c->leaf_w && r->result == CURLE_OK && r->status == 403 && !body_has(r, "ACL not found")) {
        snprintf(buf, cap, " (the ACL token lacks service:write on '%s', which Consul requires to hand out "
                 "the service's Connect leaf certificate)", w->c->cfg->service.name);
        return buf;
    }
    return hint(r);
}

static void cwatch_fail(cwatch *w, const creq *r, const char *err)
{
    sc_consul *c = w->c;
    w->errors_total++;
    w->failures++;
    w->index = 0;
    bool same = strcmp(err, w->last_error) == 0;
    snprintf(w->last_error, sizeof(w->last_error), "%s", err);
    uint64_t ms = backoff(c, w->failures);
    char hb[320];
    const char *h = connect_hint(w, r, hb, sizeof(hb));
    if (w->failures == 1 || !same)
        SC_WARN("tls: fetching the Connect %s from Consul failed: %s%s; %s, retrying in %llums", w->what, err, h,
                c->cert_pem ? "the current certificate material stays in use"
                            : "no certificate yet (inbound TLS refused, not ready)",
                (unsigned long long)ms);
    else
        SC_DEBUG("tls: Connect %s fetch failed again (%u in a row): %s", w->what, w->failures, err);
    snprintf(w->note, sizeof(w->note), "%s: %s%s", w->what, err, h);
    connect_note(c, w->note);
    timer_again(c, &w->timer, ms);
}

/* Makes cert + key + roots current. false when refused (logged). */
static bool connect_apply(sc_consul *c, const char *cert, const char *key, const char *ca, const char *what)
{
    char err[600];
    int rv = sc_tls_runtime_connect_set(c->sc, cert, key, ca, err, sizeof(err));
    if (rv < 0) {
        SC_ERROR("tls: the new Connect %s from Consul is refused, the old material stays in use: %s", what, err);
        connect_note(c, err);
        return false;
    }
    connect_note(c, NULL);
    return true;
}

/* Forgets the leaf waiting to be used. */
static void drop_new_leaf(sc_consul *c)
{
    ev_timer_stop(c->loop, &c->leaf_timer);
    free(c->new_cert);
    free(c->new_key);
    c->new_cert = c->new_key = NULL;
    c->new_unverified = false;
}

/* Asks for the roots now (a query that does not block) rather than when the blocking one returns. */
static void roots_refetch(sc_consul *c)
{
    cwatch *w = &c->roots_w;
    if (w->failures)
        return;     /* retrying with backoff, and that query does not block */
    creq_cancel(&w->req);
    ev_timer_stop(c->loop, &w->timer);
    w->index = 0;
    cwatch_start(w);
}

static void take_new_leaf(sc_consul *c);

/*
 * When to use the leaf waiting in new_cert. Only once the roots in use vouch
 * for it (leaf + its intermediates verify against them): after a CA rotation
 * the new leaf can come before the roots that list the new CA, and peers
 * holding the same roots would refuse it. Such a leaf waits for new roots
 * (asked for at once, unless they just came) and is logged as an error after
 * LEAF_ROOTS_WAIT_S; it stays parked, so roots that vouch for it later still
 * bring it in. A leaf that verifies: the first at once, a replacement after
 * LEAF_GRACE_S (peers learn a new root first).
 */
static void leaf_schedule(sc_consul *c, bool roots_just_came)
{
    if (!c->new_cert || !c->ca_pem)
        return;     /* no roots yet: their first answer brings the leaf in */
    char verr[400];
    if (sc_tls_chain_verify_pem(c->new_cert, c->ca_pem, 0, verr, sizeof(verr)) < 0) {
        char note[800];
        snprintf(note, sizeof(note), "the new Connect leaf certificate (serial %s) does not verify against the %zu "
                 "trusted root(s): %s", c->new_serial, c->n_roots, verr);
        connect_note(c, note);
        if (c->new_unverified) {
            SC_DEBUG("tls: the waiting Connect leaf certificate (serial %s) still does not verify: %s", c->new_serial,
                     verr);
            return;
        }
        c->new_unverified = true;
        /* INFO: during a CA rotation the leaf often comes a moment before the roots */
        SC_INFO("tls: %s; not using it before roots that vouch for it arrive (%s; waiting up to %.0fs); %s", note,
                roots_just_came      ? "these roots just came"
                : c->roots_w.failures ? "the roots query is failing and retries with backoff"
                                      : "asking Consul for the roots now",
                LEAF_ROOTS_WAIT_S,
                c->cert_pem ? "the current certificate stays in use" : "no certificate yet (not ready)");
        timer_again(c, &c->leaf_timer, (uint64_t)(LEAF_ROOTS_WAIT_S * 1000));
        if (!roots_just_came)
            roots_refetch(c);
        return;
    }
    bool waited = c->new_unverified;
    c->new_unverified = false;
    ev_timer_stop(c->loop, &c->leaf_timer);
    if (!c->cert_pem) {
        if (waited)
            SC_INFO("tls: the Connect leaf certificate (serial %s) verifies against the new roots", c->new_serial);
        take_new_leaf(c);
        return;
    }
    SC_INFO("tls: the new Connect leaf certificate (serial %s) verifies against the %zu trusted root(s)%s; in use in "
            "%.0fs (peers learn a new root first)", c->new_serial, c->n_roots, waited ? " (new roots)" : "",
            LEAF_GRACE_S);
    timer_again(c, &c->leaf_timer, (uint64_t)(LEAF_GRACE_S * 1000));
}

static void take_new_leaf(sc_consul *c)
{
    if (!c->new_cert || !c->ca_pem)
        return;
    char verr[400];
    if (sc_tls_chain_verify_pem(c->new_cert, c->ca_pem, 0, verr, sizeof(verr)) < 0) {
        if (!c->new_unverified) {   /* the roots changed under the grace period */
            leaf_schedule(c, false);
            return;
        }
        /* LEAF_ROOTS_WAIT_S is over: an error, but the leaf stays parked for roots that may still come */
        char note[800];
        snprintf(note, sizeof(note), "the new Connect leaf certificate (serial %s) does not verify against the %zu "
                 "trusted root(s) after waiting %.0fs for new roots: %s", c->new_serial, c->n_roots,
                 LEAF_ROOTS_WAIT_S, verr);
        c->leaf_w.errors_total++;
        SC_ERROR("tls: %s; it is not used (%s) until roots that vouch for it arrive", note,
                 c->cert_pem ? "the old material stays in use" : "no certificate yet: not ready");
        connect_note(c, note);
        return;
    }
    if (connect_apply(c, c->new_cert, c->new_key, c->ca_pem, "leaf certificate")) {
        free(c->cert_pem);
        free(c->key_pem);
        c->cert_pem = c->new_cert;
        c->key_pem = c->new_key;
        snprintf(c->leaf_serial, sizeof(c->leaf_serial), "%s", c->new_serial);
        c->leaf_not_after = c->new_not_after;
        c->leaf_updates_total++;
        connect_note(c, NULL);
    } else {
        c->leaf_w.errors_total++;
        free(c->new_cert);
        free(c->new_key);
    }
    c->new_cert = c->new_key = NULL;
    c->new_unverified = false;
    ev_timer_stop(c->loop, &c->leaf_timer);
}

static void leaf_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    take_new_leaf(SC_CONTAINER_OF(t, sc_consul, leaf_timer));
}

/* An answer of either query; false when it cannot be used. */
static bool cwatch_answer(cwatch *w, creq *r, char *err, size_t errlen)
{
    sc_consul *c = w->c;
    if (w == &c->roots_w) {
        char *ca = NULL, active[128];
        size_t n = 0;
        if (sc_consul_parse_roots(r->body, r->len, &ca, &n, active, sizeof(active), err, errlen) < 0)
            return false;
        if (c->ca_pem && strcmp(ca, c->ca_pem) == 0) {
            free(ca);
            return true;
        }
        SC_INFO("tls: Consul Connect roots: %zu root(s), active %s (index %llu)", n, active[0] ? active : "?",
                (unsigned long long)r->index);
        if (c->cert_pem && !connect_apply(c, c->cert_pem, c->key_pem, ca, "roots")) {
            w->errors_total++;
            free(ca);
            return true;    /* refused and logged; not a transport error */
        }
        char verr[400];
        if (c->cert_pem && sc_tls_chain_verify_pem(c->cert_pem, ca, 0, verr, sizeof(verr)) < 0)
            SC_WARN("tls: the new Connect roots do not vouch for our leaf certificate in use (serial %s): %s; peers "
                    "that trust only these roots refuse it until Consul hands out a new leaf", c->leaf_serial, verr);
        free(c->ca_pem);
        c->ca_pem = ca;
        c->n_roots = n;
        c->roots_updates_total++;
        connect_note(c, NULL);
        if (c->new_cert && (!c->cert_pem || c->new_unverified))
            leaf_schedule(c, true);     /* a leaf that came before these roots */
        return true;
    }
    char *cert = NULL, *key = NULL, serial[128], uri[512];
    if (sc_consul_parse_leaf(r->body, r->len, &cert, &key, serial, sizeof(serial), uri, sizeof(uri), err,
                             errlen) < 0)
        return false;
    if (c->cert_pem && strcmp(cert, c->cert_pem) == 0 && strcmp(key, c->key_pem) == 0) {
        /* the agent's latest answer is the leaf in use: forget one still waiting */
        if (c->new_cert)
            drop_new_leaf(c);
        free(cert);
        free(key);
        return true;
    }
    if (c->new_cert && strcmp(cert, c->new_cert) == 0 && strcmp(key, c->new_key) == 0) {
        free(cert);
        free(key);
        return true;
    }
    /* checked now (PEM, key matches, dates), so a bad answer is refused at once and
     * the leaf waiting for LEAF_GRACE_S is a good one */
    char verr[512];
    sc_tls_ctx_opts vo = {.role = SC_TLS_ROLE_SERVER, .cert_pem = cert, .key_pem = key};
    sc_tls_ctx *vc = sc_tls_ctx_new(&vo, verr, sizeof(verr));
    const sc_tls_cert_info *ci = vc ? sc_tls_ctx_cert(vc) : NULL;
    sc_tls_cert_state vst = ci ? sc_tls_cert_check(ci, (int64_t)time(NULL), 0) : SC_TLS_CERT_VALID;
    if (vc && vst != SC_TLS_CERT_VALID)
        snprintf(verr, sizeof(verr), "the certificate (serial %s) is %s (valid %s to %s)", ci->serial,
                 sc_tls_cert_state_name(vst), ci->not_before_iso, ci->not_after_iso);
    bool valid = vc && vst == SC_TLS_CERT_VALID;
    int64_t not_after = ci ? ci->not_after : 0;
    sc_tls_ctx_unref(vc);
    if (!valid) {
        SC_ERROR("tls: the new Connect leaf certificate from Consul (serial %s, index %llu) is refused, the "
                 "old material stays in use: %s", serial[0] ? serial : "?", (unsigned long long)r->index, verr);
        w->errors_total++;
        connect_note(c, verr);
        free(cert);
        free(key);
        return true;    /* refused and logged; the query loop goes on */
    }
    drop_new_leaf(c);
    c->new_cert = cert;
    c->new_key = key;
    c->new_not_after = not_after;
    snprintf(c->new_serial, sizeof(c->new_serial), "%s", serial);
    SC_INFO("tls: %sConsul Connect leaf certificate for %s (serial %s, index %llu)", c->cert_pem ? "new " : "", uri,
            serial, (unsigned long long)r->index);
    leaf_schedule(c, false);    /* the first at once, a replacement after LEAF_GRACE_S; both once the roots vouch */
    return true;
}

static void cwatch_done(creq *r)
{
    cwatch *w = r->owner;
    sc_consul *c = w->c;
    w->req = NULL;
    char err[400];
    creq_error(r, err, sizeof(err));
    if (!err[0] && !r->has_index)
        snprintf(err, sizeof(err), "the answer has %s X-Consul-Index header", r->bad_index ? "an invalid" : "no");
    /* while the answer is handled this query is not failing (what it notes replaces its error);
     * an unusable answer continues the backoff where it was */
    unsigned failures = w->failures;
    if (!err[0]) {
        w->failures = 0;
        if (failures)
            connect_note(c, NULL);
        cwatch_answer(w, r, err, sizeof(err));
    }
    if (err[0]) {
        w->failures = failures;
        cwatch_fail(w, r, err);
        return;
    }
    w->answers_total++;
    if (failures)
        SC_INFO("tls: fetching the Connect %s works again after %u failure(s)", w->what, failures);
    w->last_error[0] = 0;
    w->last_index = r->index;
    w->index = sc_consul_index_next(w->sent_index, r->index);
    uint64_t wait = sc_consul_bucket_take(&w->bucket, sc_now_ms());
    if (wait)
        timer_again(c, &w->timer, wait);
    else
        cwatch_start(w);
}

static void cwatch_start(cwatch *w)
{
    sc_consul *c = w->c;
    if (w->req)
        return;
    char path[700], ix[128] = "", wt[32];
    w->sent_index = w->index;
    if (w->index) {
        sc_duration_format(c->cfg->consul.wait_ms, wt, sizeof(wt));
        snprintf(ix, sizeof(ix), "?index=%llu&wait=%s", (unsigned long long)w->index, wt);
    }
    if (w == &c->roots_w) {
        snprintf(path, sizeof(path), "/v1/agent/connect/ca/roots%s", ix);
    } else {
        char es[400];
        if (sc_consul_escape(c->cfg->service.name, es, sizeof(es)) < 0) {
            cwatch_fail(w, NULL, "the service name is too long");
            return;
        }
        snprintf(path, sizeof(path), "/v1/agent/connect/ca/leaf/%s%s", es, ix);
    }
    uint64_t timeout = w->index ? sc_consul_read_timeout_ms(c->cfg->consul.wait_ms) : WRITE_TIMEOUT_MS;
    w->req = creq_start(c, "GET", path, w == &c->leaf_w, NULL, timeout, cwatch_done, w);
    if (!w->req)
        cwatch_fail(w, NULL, "cannot start a request (out of memory?)");
}

static void connect_init(sc_consul *c)
{
    cwatch *ws[] = {&c->roots_w, &c->leaf_w};
    const char *names[] = {"roots", "leaf certificate"};
    for (int i = 0; i < 2; i++) {
        ws[i]->c = c;
        ws[i]->what = names[i];
        sc_consul_bucket_init(&ws[i]->bucket, BUCKET_BURST, BUCKET_PER_S, sc_now_ms());
        ev_init(&ws[i]->timer, cwatch_timer_cb);
    }
    ev_init(&c->leaf_timer, leaf_timer_cb);
    c->connect = c->cfg->tls.source == SC_TLS_SOURCE_CONSUL && c->cfg->service.name;
}

/* /stats: the Connect certificate source. Plain fields, read where they are
 * written: the admin endpoint runs on the control loop, like this client. */
static void connect_render_stats(const sc_consul *c, FILE *f)
{
    if (!c->connect)
        return;
    sc_prom_i64(f, "sidecar_connect_ready", "gauge",
                "1 once a Connect leaf certificate is in use.", c->cert_pem != NULL);
    sc_prom_u64(f, "sidecar_connect_leaf_updates_total", "counter",
                "Connect leaf certificates put in use.", c->leaf_updates_total);
    sc_prom_u64(f, "sidecar_connect_roots_updates_total", "counter",
                "Connect root sets put in use.", c->roots_updates_total);
    sc_prom_head(f, "sidecar_connect_errors_total", "counter", "Connect queries that failed and answers refused.");
    fprintf(f, "sidecar_connect_errors_total{what=\"leaf\"} %llu\nsidecar_connect_errors_total{what=\"roots\"} %llu\n",
            (unsigned long long)c->leaf_w.errors_total, (unsigned long long)c->roots_w.errors_total);
    sc_prom_u64(f, "sidecar_connect_roots", "gauge", "Trusted Connect roots.", c->n_roots);
    sc_prom_i64(f, "sidecar_connect_leaf_pending", "gauge",
                "1 while a new leaf certificate waits (grace period, or roots that vouch for it).",
                c->new_cert != NULL);
    if (c->cert_pem)
        sc_prom_i64(f, "sidecar_connect_leaf_expiry_seconds", "gauge",
                    "Seconds until the Connect leaf certificate in use expires (negative once expired).",
                    (long long)(c->leaf_not_after - (int64_t)time(NULL)));
}

/* ---- start, stop ---- */

/* The address to register: service.address, else the inbound listener's
 * when it is a specific non-loopback IP, else the host's first non-loopback
 * address (IPv4 first); "" lets the agent use the node's address. */
static void pick_address(const sc_config *cfg, char *buf, size_t cap)
{
    buf[0] = 0;
    if (cfg->service.address) {
        snprintf(buf, cap, "%s", cfg->service.address);
        return;
    }
    if (cfg->inbound.enabled) {
        const struct sockaddr_storage *ss = &cfg->inbound.listen.ss;
        if (ss->ss_family == AF_INET) {
            const struct in_addr *a = &((const struct sockaddr_in *)ss)->sin_addr;
            uint32_t h = ntohl(a->s_addr);
            if (h != INADDR_ANY && (h >> 24) != 127 && inet_ntop(AF_INET, a, buf, (socklen_t)cap))
                return;
        } else if (ss->ss_family == AF_INET6) {
            const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
            if (!IN6_IS_ADDR_UNSPECIFIED(a) && !IN6_IS_ADDR_LOOPBACK(a) &&
                inet_ntop(AF_INET6, a, buf, (socklen_t)cap))
                return;
        }
        buf[0] = 0;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0)
        return;
    for (int pass = 0; pass < 2 && !buf[0]; pass++) {
        for (struct ifaddrs *i = ifs; i && !buf[0]; i = i->ifa_next) {
            if (!i->ifa_addr || !(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK))
                continue;
            if (pass == 0 && i->ifa_addr->sa_family == AF_INET) {
                inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf,
                          (socklen_t)cap);
            } else if (pass == 1 && i->ifa_addr->sa_family == AF_INET6) {
                const struct in6_addr *a = &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
                if (!IN6_IS_ADDR_LINKLOCAL(a) && !IN6_IS_ADDR_LOOPBACK(a))
                    inet_ntop(AF_INET6, a, buf, (socklen_t)cap);
            }
        }
    }
    freeifaddrs(ifs);
}

/* host:port the agent can reach a local listener at (wildcards -> loopback). */
static void local_target(const sc_addr *a, char *buf, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "127.0.0.1";
    unsigned port = addr_port(a);
    if (a->ss.ss_family == AF_INET6) {
        const struct in6_addr *ia = &((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
        if (IN6_IS_ADDR_UNSPECIFIED(ia))
            snprintf(host, sizeof(host), "::1");
        else
            inet_ntop(AF_INET6, ia, host, sizeof(host));
        snprintf(buf, cap, "[%s]:%u", host, port);
        return;
    }
    const struct in_addr *ia = &((const struct sockaddr_in *)&a->ss)->sin_addr;
    if (ia->s_addr != htonl(INADDR_ANY))
        inet_ntop(AF_INET, ia, host, sizeof(host));
    snprintf(buf, cap, "%s:%u", host, port);
}

static int make_target(sc_consul *c)
{
    const sc_config *cfg = c->cfg;
    int rc = sc_consul_target_make(cfg->consul.address, cfg->consul.ssl, cfg->consul.tls_server_name,
                                   &c->target);
    if (rc < 0) {
        SC_ERROR("consul: cannot use the agent address '%s'%s%s: %s",
                 cfg->consul.address ? cfg->consul.address : "",
                 cfg->consul.tls_server_name ? " with TLS server name " : "",
                 cfg->consul.tls_server_name ? cfg->consul.tls_server_name : "", strerror(-rc));
        return rc;
    }
    c->base = c->target.display;
    c->unix_path = c->target.unix_path;
    if (c->target.connect_to[0]) {
        c->connect_to = curl_slist_append(NULL, c->target.connect_to);
        if (!c->connect_to)
            return -ENOMEM;
    }
    return 0;
}

/* ---- ACL token: consul.token, or consul.token_file read again on SIGHUP ---- */

#define TOKEN_FILE_MAX 65536

/* Reads and trims the token file: 0 and *out (caller frees), or -errno with
 * *why set (a static description). */
static int read_token(const char *path, char **out, const char **why)
{
    *out = NULL;
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        *why = strerror(e);
        return -e;
    }
    char *buf = malloc(TOKEN_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, TOKEN_FILE_MAX + 1, f) : 0;
    bool rd_err = buf && ferror(f);
    fclose(f);
    if (!buf) {
        *why = "out of memory";
        return -ENOMEM;
    }
    if (rd_err || n > TOKEN_FILE_MAX) {
        free(buf);
        *why = rd_err ? "read error" : "larger than 64 KiB";
        return rd_err ? -EIO : -EFBIG;
    }
    const char *t;
    size_t tl;
    int rc = sc_consul_token_trim(buf, n, &t, &tl);
    if (rc == 0) {
        *out = strndup(t, tl);
        if (!*out)
            rc = -ENOMEM;
    }
    free(buf);
    if (rc == -ENODATA)
        *why = "the file is empty";
    else if (rc == -EINVAL)
        *why = "the file holds more than one line";
    else if (rc == -ENOMEM)
        *why = "out of memory";
    return rc;
}

/* Failing loops wait for their backoff; after a token change they go at once. */
static void retry_now(sc_consul *c)
{
    if (c->reg == REG_FAILED && !c->reg_req) {
        ev_timer_stop(c->loop, &c->reg_timer);
        reg_start(c);
    }
    if (c->reg == REG_REGISTERED && c->ttl_failures && !c->ttl_req)
        timer_again(c, &c->ttl_timer, 0);
    for (size_t i = 0; i < c->n_watches; i++) {
        watch *w = &c->watches[i];
        if (w->failures && !w->req)
            timer_again(c, &w->timer, 0);
    }
    cwatch *cw[] = {&c->roots_w, &c->leaf_w};
    for (size_t i = 0; c->connect && i < SC_ARRAY_LEN(cw); i++)
        if (cw[i]->failures && !cw[i]->req)
            timer_again(c, &cw[i]->timer, 0);
}

/* SIGHUP (besides the TLS reload in tls_runtime.c): read consul.token_file
 * again. A new token is used by every request started from now on (requests
 * in flight keep the old one); an unreadable or empty file keeps the token
 * in use. */
static void sighup_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop;
    (void)revents;
    sc_consul *c = s->data;
    const char *path = c->cfg->consul.token_file;
    if (!path)
        return;
    char *tok;
    const char *why = "";
    if (read_token(path, &tok, &why) < 0) {
        SC_WARN("consul: SIGHUP: cannot use the token file %s (%s); keeping the ACL token in use", path, why);
        return;
    }
    if (c->token && strcmp(tok, c->token) == 0) {
        SC_INFO("consul: SIGHUP: the ACL token in %s is unchanged", path);
        free(tok);
        return;
    }
    free(c->token);
    c->token = tok;
    c->token_reloads_total++;
    SC_INFO("consul: SIGHUP: new ACL token from %s; every request from now on uses it", path);
    retry_now(c);
}

static int init_curl_once(void)
{
    static int done = 0;
    static CURLcode rc = CURLE_OK;
    if (!done) {
        char err[256];
        /* libcurl is loaded only now: a sidecar without Consul never maps it. */
        if (sc_curl_api_load(err, sizeof(err)) < 0) {
            SC_ERROR("consul: %s (install libcurl4)", err);
            return -ENOENT;
        }
        rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        done = 1;
    }
    return rc == CURLE_OK ? 0 : -EIO;
}

int sc_consul_start(sidecar *sc, sc_consul **out)
{
    *out = NULL;
    const sc_config *cfg = sc->cfg;
    if (!cfg->consul.enabled)
        return -ENOENT;
    if (init_curl_once() < 0)
        return -EIO;
    sc_consul *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->sc = sc;
    c->cfg = cfg;
    c->loop = sc->loop;
    if (getrandom(&c->rnd, sizeof(c->rnd), GRND_NONBLOCK) != sizeof(c->rnd))
        c->rnd = sc_now_ns() ^ ((uint64_t)getpid() << 32);
    c->rnd |= 1;
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        return -EIO;
    }
    if (cfg->consul.token) {
        c->token = strdup(cfg->consul.token);
        if (!c->token) {
            curl_multi_cleanup(c->multi);
            free(c);
            return -ENOMEM;
        }
    }
    int trc = make_target(c);
    if (trc < 0) {
        curl_slist_free_all(c->connect_to);
        free(c->token);
        curl_multi_cleanup(c->multi);
        free(c);
        return trc == -ENOMEM ? -ENOMEM : -EINVAL;
    }
    ev_signal_init(&c->sighup, sighup_cb, SIGHUP);
    c->sighup.data = c;
    ev_signal_start(c->loop, &c->sighup);
    ev_init(&c->curl_timer, curl_timer_ev);
    ev_init(&c->reg_timer, reg_timer_cb);
    ev_init(&c->ttl_timer, ttl_timer_cb);
    ev_init(&c->svc_timer, svc_timer_cb);
    ev_init(&c->dereg_timer, dereg_timer_cb);
    ev_init(&c->cache_timer, cache_timer_cb);
    connect_init(c);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    sc_consul_bucket_init(&c->svc_bucket, BUCKET_BURST, BUCKET_PER_S, sc_now_ms());

    /* watches */
    c->by_route = calloc(sc->n_routes ? sc->n_routes : 1, sizeof(*c->by_route));
    size_t nw = 0;
    for (size_t r = 0; r < sc->n_routes; r++)
        if (sc->routes[r].policy && sc->routes[r].policy->discovery == SC_DISCOVERY_CONSUL)
            nw++;
    c->watches = calloc(nw ? nw : 1, sizeof(*c->watches));
    if (!c->by_route || !c->watches) {
        ev_signal_stop(c->loop, &c->sighup);
        curl_slist_free_all(c->connect_to);
        free(c->token);
        curl_multi_cleanup(c->multi);
        free(c->by_route);
        free(c->watches);
        free(c);
        return -ENOMEM;
    }
    /* one connection per blocking query, plus a few for writes */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)(nw + 10));
    cache_load(c);
    for (size_t r = 0; r < sc->n_routes; r++) {
        const sc_policy *p = sc->routes[r].policy;
        if (!p || p->discovery != SC_DISCOVERY_CONSUL)
            continue;
        watch *w = &c->watches[c->n_watches++];
        w->c = c;
        w->route_index = r;
        w->route = &sc->routes[r];
        w->service = p->consul.service ? p->consul.service : p->name;
        w->tag = p->consul.tag;
        w->dc = p->consul.dc ? p->consul.dc : cfg->consul.datacenter;
        sc_consul_bucket_init(&w->bucket, BUCKET_BURST, BUCKET_PER_S, sc_now_ms());
        ev_init(&w->timer, watch_timer_cb);
        c->by_route[r] = w;
    }

    /* registration */
    if (cfg->consul.register_service) {
        pick_address(cfg, c->address, sizeof(c->address));
        sc_consul_check_id(cfg->service.id, c->check_id, sizeof(c->check_id));
        if (cfg->consul.check == SC_CHECK_HTTP) {
            char t[160];
            local_target(&cfg->admin.listen, t, sizeof(t));
            if (cfg->consul.check_http)
                snprintf(c->check_target, sizeof(c->check_target), "%s", cfg->consul.check_http);
            else
                snprintf(c->check_target, sizeof(c->check_target), "http://%s/ready", t);
        } else if (cfg->consul.check == SC_CHECK_GRPC) {
            local_target(&cfg->health.grpc_listen, c->check_target, sizeof(c->check_target));
        }
        uint64_t interval = cfg->consul.check_interval_ms;
        sc_consul_reg reg = {
            .id = cfg->service.id,
            .name = cfg->service.name,
            .address = c->address,
            .port = cfg->inbound.enabled ? addr_port(&cfg->inbound.listen) : 0,
            .tags = cfg->service.tags,
            .n_tags = cfg->service.n_tags,
            .meta = cfg->service.meta,
            .n_meta = cfg->service.n_meta,
            .version = SC_VERSION,
            .check = cfg->consul.check,
            .check_target = c->check_target,
            .interval_ms = interval,
            .timeout_ms = interval < 5000 ? interval : 5000,
            .ttl_ms = cfg->consul.check_ttl_ms,
            .deregister_after_ms = cfg->consul.deregister_after_ms,
        };
        c->reg_body = sc_consul_registration_body(&reg);
        if (!c->reg_body) {
            sc_consul_stop(c);
            return -ENOMEM;
        }
        if (cfg->consul.check == SC_CHECK_TTL)
            sc_app_health_subscribe(sc->app_health, on_app_health, c);
    }
    SC_INFO("consul: agent %s%s%s%s; %s; watching %zu service(s)%s%s", c->base,
            c->unix_path ? " via " : "", c->unix_path ? c->unix_path : "",
            c->token ? " (ACL token set)" : "",
            cfg->consul.register_service ? "registering the local service" : "not registering",
            c->n_watches, cfg->consul.cache_file ? ", cache file " : "",
            cfg->consul.cache_file ? cfg->consul.cache_file : "");
    *out = c;
    if (cfg->consul.register_service)
        reg_start(c);
    for (size_t i = 0; i < c->n_watches; i++)
        watch_start(&c->watches[i]);
    if (c->connect) {
        cwatch_start(&c->roots_w);
        cwatch_start(&c->leaf_w);
    }
    return 0;
}

void sc_consul_stop(sc_consul *c)
{
    if (!c)
        return;
    ev_signal_stop(c->loop, &c->sighup);
    ev_timer_stop(c->loop, &c->curl_timer);
    ev_timer_stop(c->loop, &c->reg_timer);
    ev_timer_stop(c->loop, &c->ttl_timer);
    ev_timer_stop(c->loop, &c->svc_timer);
    ev_timer_stop(c->loop, &c->dereg_timer);
    ev_timer_stop(c->loop, &c->cache_timer);
    for (size_t i = 0; i < c->n_watches; i++)
        ev_timer_stop(c->loop, &c->watches[i].timer);
    ev_timer_stop(c->loop, &c->roots_w.timer);
    ev_timer_stop(c->loop, &c->leaf_w.timer);
    ev_timer_stop(c->loop, &c->leaf_timer);
    while (c->reqs) {
        creq *r = c->reqs;
        curl_multi_remove_handle(c->multi, r->easy);
        creq_free(r);
    }
    cache_write(c);
    /* sockets still in the connection cache are closed here; sock_cb frees their watchers */
    curl_multi_cleanup(c->multi);
    while (c->socks)
        csock_free(c, c->socks);
    curl_slist_free_all(c->connect_to);
    free(c->token);
    free(c->reg_body);
    free(c->ca_pem);
    free(c->cert_pem);
    free(c->key_pem);
    free(c->new_cert);
    free(c->new_key);
    free(c->watches);
    free(c->by_route);
    free(c->cache_doc);
    free(c);
}

/* ---- admin ---- */

static json_t *jtime(int64_t t)
{
    if (!t)
        return json_null();
    char b[32];
    iso_time(t, b, sizeof(b));
    return json_string(b);
}

static json_t *jstr(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

json_t *sc_consul_json(const sc_consul *c)
{
    json_t *o = json_object();
    json_object_set_new(o, "address", json_string(c->base));
    if (c->unix_path)
        json_object_set_new(o, "unix_socket", json_string(c->unix_path));
    json_object_set_new(o, "token", json_boolean(c->token != NULL));
    json_object_set_new(o, "token_reloads", json_integer((json_int_t)c->token_reloads_total));
    if (c->connect_to)
        json_object_set_new(o, "tls_server_name", json_string(c->cfg->consul.tls_server_name));
    if (c->cfg->consul.ns)
        json_object_set_new(o, "namespace", json_string(c->cfg->consul.ns));
    if (c->cfg->consul.partition)
        json_object_set_new(o, "partition", json_string(c->cfg->consul.partition));
    json_t *r = json_object();
    json_object_set_new(r, "state", json_string(reg_state_names[c->reg]));
    if (c->reg != REG_OFF) {
        json_object_set_new(r, "service", json_string(c->cfg->service.name));
        json_object_set_new(r, "id", json_string(c->cfg->service.id));
        json_object_set_new(r, "address", jstr(c->address));
        json_object_set_new(r, "check", json_string(check_name(c->cfg->consul.check)));
        json_object_set_new(r, "check_id", json_string(c->check_id));
        json_object_set_new(r, "check_target", jstr(c->check_target));
        json_object_set_new(r, "registered_at", jtime(c->registered_unix));
        json_object_set_new(r, "registrations_total", json_integer((json_int_t)c->registrations_total));
        json_object_set_new(r, "failures_in_a_row", json_integer(c->reg_failures));
        json_object_set_new(r, "last_error", jstr(c->reg_error));
        json_object_set_new(r, "last_error_at", jtime(c->reg_error_unix));
        if (c->cfg->consul.check == SC_CHECK_TTL) {
            json_object_set_new(r, "ttl_status", c->ttl_sent ? json_string(c->ttl_passing ? "passing" : "critical") : json_null());
            json_object_set_new(r, "ttl_note", jstr(c->ttl_note));
        }
    }
    json_object_set_new(o, "registration", r);
    json_object_set_new(o, "requests_total", json_integer((json_int_t)c->requests_total));
    json_object_set_new(o, "request_errors_total", json_integer((json_int_t)c->request_errors_total));
    return o;
}

json_t *sc_consul_route_json(const sc_consul *c, size_t route_index)
{
    if (!c || route_index >= c->sc->n_routes || !c->by_route[route_index])
        return NULL;
    const watch *w = c->by_route[route_index];
    const sc_endpoints *cur = sc_endpoints_current(&w->route->endpoints);
    json_t *o = json_object();
    json_object_set_new(o, "service", json_string(w->service));
    json_object_set_new(o, "tag", jstr(w->tag));
    json_object_set_new(o, "dc", jstr(w->dc));
    json_object_set_new(o, "stale", json_boolean(!cur || cur->stale));
    json_object_set_new(o, "from_cache", json_boolean(w->from_cache));
    json_object_set_new(o, "last_index", json_integer((json_int_t)w->last_index));
    json_object_set_new(o, "last_error", jstr(w->last_error));
    json_object_set_new(o, "last_error_at", jtime(w->last_error_unix));
    json_object_set_new(o, "last_update", jtime(w->last_change_unix));
    json_object_set_new(o, "last_success", jtime(w->last_success_unix));
    json_object_set_new(o, "failures_in_a_row", json_integer(w->failures));
    json_object_set_new(o, "errors_total", json_integer((json_int_t)w->errors_total));
    json_object_set_new(o, "changes_total", json_integer((json_int_t)w->changes_total));
    json_object_set_new(o, "skipped_entries", json_integer((json_int_t)w->skipped));
    json_object_set_new(o, "skip_reason", jstr(w->skip_reason));
    return o;
}

void sc_consul_render_stats(const sc_consul *c, FILE *f)
{
    if (!c)
        return;
    sc_prom_i64(f, "sidecar_consul_registered", "gauge",
                "1 when the local service is registered with the agent.", c->reg == REG_REGISTERED);
    sc_prom_head(f, "sidecar_consul_registration_state", "gauge", "Registration state (1 for the current one).");
    for (size_t i = 0; i < SC_ARRAY_LEN(reg_state_names); i++)
        fprintf(f, "sidecar_consul_registration_state{state=\"%s\"} %d\n", reg_state_names[i],
                (size_t)c->reg == i);
    sc_prom_u64(f, "sidecar_consul_registrations_total", "counter",
                "Successful registrations.", c->registrations_total);
    sc_prom_u64(f, "sidecar_consul_registration_errors_total", "counter",
                "Failed registration attempts.", c->reg_failures_total);
    sc_prom_u64(f, "sidecar_consul_ttl_updates_total", "counter", "TTL check updates sent.", c->ttl_updates_total);
    sc_prom_u64(f, "sidecar_consul_ttl_errors_total", "counter",
                "TTL check updates that failed.", c->ttl_failures_total);
    sc_prom_u64(f, "sidecar_consul_requests_total", "counter", "Requests sent to the agent.", c->requests_total);
    sc_prom_u64(f, "sidecar_consul_request_errors_total", "counter",
                "Requests to the agent that failed.", c->request_errors_total);
    connect_render_stats(c, f);
    if (!c->n_watches)
        return;
    static const char *const heads[][3] = {
        {"sidecar_consul_watch_errors_total", "counter", "Failed watch queries."},
        {"sidecar_consul_watch_changes_total", "counter", "Instance set changes published."},
        {"sidecar_consul_watch_stale", "gauge", "1 when the instances are last known data (Consul unreachable or failing)."},
        {"sidecar_consul_watch_last_index", "gauge", "Last X-Consul-Index seen."},
        {"sidecar_consul_watch_last_success_timestamp_seconds", "gauge", "Unix time of the last good answer."},
    };
    for (size_t m = 0; m < SC_ARRAY_LEN(heads); m++) {
        sc_prom_head(f, heads[m][0], heads[m][1], heads[m][2]);
        for (size_t i = 0; i < c->n_watches; i++) {
            const watch *w = &c->watches[i];
            const sc_endpoints *cur = sc_endpoints_current(&w->route->endpoints);
            unsigned long long v = m == 0   ? w->errors_total
                                   : m == 1 ? w->changes_total
                                   : m == 2 ? (unsigned long long)(!cur || cur->stale)
                                   : m == 3 ? w->last_index
                                            : (unsigned long long)w->last_success_unix;
            fprintf(f, "%s{upstream=\"%s\",service=\"%s\"} %llu\n", heads[m][0], w->route->name,
                    w->service, v);
        }
    }
}

/* ---- Connect authorization (tls.authorize: consul; authz/authz.c decides what to do) ---- */

static void authorize_done(creq *r)
{
    char err[400];
    creq_error(r, err, sizeof(err));
    if (err[0]) {
        size_t n = strlen(err);
        snprintf(err + n, sizeof(err) - n, "%s", hint(r));
    }
    long status = r->result == CURLE_OK && !r->too_big ? r->status : 0;
    r->user_done(r->user_arg, status, r->body ? r->body : "", r->len, err);
}

int sc_consul_authorize(sc_consul *c, const char *body, uint64_t timeout_ms,
                        sc_consul_authorize_cb done, void *arg)
{
    if (!c || !body || !done)
        return -EINVAL;
    creq *r = creq_start(c, "POST", "/v1/agent/connect/authorize", true, body, timeout_ms, authorize_done, NULL);
    if (!r)
        return -EIO;
    r->user_done = done;
    r->user_arg = arg;
    return 0;
}
