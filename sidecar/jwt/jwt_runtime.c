/*
 * jwt_runtime.c: keys that change, the per-request check, counters (see
 * jwt_runtime.h).
 *
 * libcurl integration (JWKS URLs): one multi handle on the control loop;
 * CURLMOPT_SOCKETFUNCTION keeps an ev_io per socket and
 * CURLMOPT_TIMERFUNCTION one ev_timer, both call curl_multi_socket_action
 * and then collect finished transfers. Each issuer has at most one
 * transfer; its easy handle is its own.
 */
#include "jwt/jwt_runtime.h"

#include "core/file_id.h"
#include "core/prom.h"
#include "discovery/curl_api.h"
#include "http/hdr.h"
#include "jwt/jwt_internal.h"
#include "proxy/stats.h"

#include <ev.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#define CONNECT_TIMEOUT_MS 3000

typedef struct wstats {
    sc_counter outcomes[SC_JWT_OUTCOMES];
    sc_counter cache_hits, cache_misses;
    sc_counter verified[SC_JWT_MAX_ISSUERS];
} __attribute__((aligned(64))) wstats;

typedef struct issuer_rt {
    sc_jwt *j;
    const sc_jwt_issuer_cfg *cfg;
    uint32_t idx;
    pthread_mutex_t mu;                 /* guards keys (a reference is taken under it) */
    sc_jwks *keys;
    _Atomic uint64_t gen;               /* bumped with each new key set; read with keys under mu */
    _Atomic uint64_t fetch_seq;         /* fetches ended */
    _Atomic bool fetching;              /* a fetch runs or was asked for */
    _Atomic bool refetch_wanted;        /* a worker asks the control thread for one */
    _Atomic uint64_t next_refetch_ms;   /* an unknown kid may ask again from then on */
    _Atomic uint64_t fetches, fetch_errors, reloads, refetches;
    _Atomic size_t n_keys;
    /* control thread only */
    sc_file_id seen;
    ev_timer timer;                     /* jwks_url: the next fetch */
    CURL *easy;
    char *body;
    size_t len, cap;
    bool too_big;
    char curl_err[CURL_ERROR_SIZE];
    unsigned failures;
    char last_error[512];
    int64_t last_ok_unix, last_attempt_unix;
} issuer_rt;

typedef struct csock {
    ev_io io;
    curl_socket_t fd;
    sc_jwt *j;
    struct csock *next, *prev;
} csock;

struct sc_jwt {
    const sc_jwt_config *cfg;
    unsigned n_workers;
    wstats *ws;
    sc_jwt_cache *cache;
    issuer_rt *iss;
    size_t n_iss;
    sc_ratelimit log_limit;
    struct ev_loop *loop;
    ev_timer watch;
    ev_async async;
    ev_timer curl_timer;
    CURLM *multi;
    csock *socks;
    void (*notify)(void *);
    void *notify_arg;
};

/* ---- keys ---- */

static sc_jwks *keys_get(issuer_rt *is, uint64_t *gen)
{
    pthread_mutex_lock(&is->mu);
    sc_jwks *k = sc_jwks_ref(is->keys);
    *gen = atomic_load_explicit(&is->gen, memory_order_relaxed);
    pthread_mutex_unlock(&is->mu);
    return k;
}

static void kid_list(const sc_jwks *k, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = 0;
    for (size_t i = 0; i < k->n && n + 8 < cap; i++) {
        char pk[48];
        const char *kid = k->keys[i].kid ? sc_jwt_printable(k->keys[i].kid, strlen(k->keys[i].kid), pk, sizeof(pk))
                                         : "(no kid)";
        n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? ", " : "", kid);
    }
}

/* Control thread: makes k the issuer's keys unless they are the same
 * document. Takes k's reference. Returns true when the keys changed. */
static bool keys_install(issuer_rt *is, sc_jwks *k, const char *source, const char *notes)
{
    pthread_mutex_lock(&is->mu);
    sc_jwks *old = is->keys;
    if (old && memcmp(old->digest, k->digest, sizeof(k->digest)) == 0) {
        pthread_mutex_unlock(&is->mu);
        sc_jwks_unref(k);
        return false;
    }
    is->keys = k;
    atomic_fetch_add_explicit(&is->gen, 1, memory_order_relaxed);
    atomic_store_explicit(&is->n_keys, k->n, memory_order_relaxed);
    pthread_mutex_unlock(&is->mu);
    sc_jwks_unref(old);
    atomic_fetch_add_explicit(&is->reloads, 1, memory_order_relaxed);
    char kids[256];
    kid_list(k, kids, sizeof(kids));
    SC_INFO("jwt: issuer %s: %s %zu key%s from %s (kid %s)%s%s", is->cfg->name, old ? "now" : "using", k->n,
            k->n == 1 ? "" : "s", source, kids, notes && *notes ? "; " : "", notes ? notes : "");
    return true;
}

/* ---- jwks_file ---- */

static int file_load(issuer_rt *is, char *err, size_t errlen)
{
    sc_jwks *k = NULL;
    char notes[512];
    sc_file_id_of(is->cfg->jwks_file, &is->seen);
    int rc = sc_jwks_load_file(is->cfg->jwks_file, true, &k, notes, sizeof(notes), err, errlen);
    if (rc < 0)
        return rc;
    keys_install(is, k, is->cfg->jwks_file, notes);
    return 0;
}

static void file_check(issuer_rt *is, bool force)
{
    sc_file_id now;
    sc_file_id_of(is->cfg->jwks_file, &now);
    if (!force && sc_file_id_eq(&now, &is->seen))
        return;
    char err[512];
    if (file_load(is, err, sizeof(err)) < 0) {
        snprintf(is->last_error, sizeof(is->last_error), "%s", err);
        SC_WARN("jwt: issuer %s: %s; keeping the %zu key%s in use", is->cfg->name, err,
                atomic_load(&is->n_keys), atomic_load(&is->n_keys) == 1 ? "" : "s");
    } else {
        is->last_error[0] = 0;
        is->last_ok_unix = (int64_t)time(NULL);
    }
}

static void watch_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_jwt *j = t->data;
    for (size_t i = 0; i < j->n_iss; i++)
        if (j->iss[i].cfg->jwks_file)
            file_check(&j->iss[i], false);
}

/* ---- jwks_url ---- */

static void fetch_start(issuer_rt *is);

static void fetch_schedule(issuer_rt *is, uint64_t ms)
{
    ev_timer_stop(is->j->loop, &is->timer);
    ev_timer_set(&is->timer, (double)ms / 1000.0, 0);
    ev_timer_start(is->j->loop, &is->timer);
}

static void fetch_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    fetch_start(t->data);
}

static size_t write_cb(char *p, size_t size, size_t n, void *ud)
{
    issuer_rt *is = ud;
    size_t len = size * n;
    if (is->len + len > SC_JWKS_MAX_BYTES) {
        is->too_big = true;
        return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
    }
    if (is->len + len + 1 > is->cap) {
        size_t cap = SC_MAX(is->cap * 2, is->len + len + 1);
        cap = SC_MIN(cap, (size_t)SC_JWKS_MAX_BYTES + 1);
        char *nb = realloc(is->body, cap);
        if (!nb)
            return 0;
        is->body = nb;
        is->cap = cap;
    }
    memcpy(is->body + is->len, p, len);
    is->len += len;
    return len;
}

/* The end of a fetch: new keys, or an error that keeps the keys in use. */
static void fetch_done(issuer_rt *is, CURLcode res, long status)
{
    sc_jwt *j = is->j;
    const sc_jwt_issuer_cfg *c = is->cfg;
    char err[448];
    err[0] = 0;
    if (is->too_big || res == CURLE_FILESIZE_EXCEEDED)
        snprintf(err, sizeof(err), "the JWKS is larger than %u bytes", SC_JWKS_MAX_BYTES);
    else if (res != CURLE_OK)
        snprintf(err, sizeof(err), "%s", is->curl_err[0] ? is->curl_err : curl_easy_strerror(res));
    else if (status != 200)
        snprintf(err, sizeof(err), "HTTP status %ld", status);
    if (!err[0]) {
        sc_jwks *k = NULL;
        char notes[512], why[384];
        if (sc_jwks_parse(is->body ? is->body : "", is->len, false, &k, notes, sizeof(notes), why, sizeof(why)) < 0)
            snprintf(err, sizeof(err), "%s", why);
        else
            keys_install(is, k, c->jwks_url, notes);
    }
    free(is->body);
    is->body = NULL;
    is->len = is->cap = 0;
    is->too_big = false;
    if (err[0]) {
        atomic_fetch_add_explicit(&is->fetch_errors, 1, memory_order_relaxed);
        uint64_t retry = SC_MIN((uint64_t)1000u << SC_MIN(is->failures, 6u), (uint64_t)SC_JWT_RETRY_MAX_MS);
        retry = SC_MIN(retry, c->refresh_ms);
        is->failures++;
        if (is->failures == 1 || strcmp(err, is->last_error) != 0)
            SC_WARN("jwt: issuer %s: fetching %s failed: %s; %s, retrying in %llums", c->name, c->jwks_url, err,
                    atomic_load(&is->n_keys) ? "keeping the keys in use" : "no keys yet", (unsigned long long)retry);
        snprintf(is->last_error, sizeof(is->last_error), "%s", err);
        fetch_schedule(is, retry);
    } else {
        if (is->failures)
            SC_INFO("jwt: issuer %s: %s fetched again after %u failure%s", c->name, c->jwks_url, is->failures,
                    is->failures == 1 ? "" : "s");
        is->failures = 0;
        is->last_error[0] = 0;
        is->last_ok_unix = (int64_t)time(NULL);
        fetch_schedule(is, c->refresh_ms);
    }
    atomic_fetch_add_explicit(&is->fetch_seq, 1, memory_order_release);
    atomic_store_explicit(&is->fetching, false, memory_order_release);
    if (j->notify)
        j->notify(j->notify_arg);
}

static void check_done(sc_jwt *j)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(j->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode res = m->data.result;
        issuer_rt *is = NULL;
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&is);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(j->multi, e);
        curl_easy_cleanup(e);
        is->easy = NULL;
        fetch_done(is, res, status);
    }
}

static void fetch_start(issuer_rt *is)
{
    sc_jwt *j = is->j;
    if (is->easy || !j->multi)
        return;
    ev_timer_stop(j->loop, &is->timer);
    const sc_jwt_issuer_cfg *c = is->cfg;
    CURL *e = curl_easy_init();
    if (!e) {
        fetch_schedule(is, 1000);
        return;
    }
    is->curl_err[0] = 0;
    curl_easy_setopt(e, CURLOPT_URL, c->jwks_url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, is);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, is);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, is->curl_err);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->fetch_timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)SC_MIN(c->fetch_timeout_ms, (uint64_t)CONNECT_TIMEOUT_MS));
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sidecar/" SC_VERSION);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)SC_JWKS_MAX_BYTES);
    if (c->jwks_ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->jwks_ca_file);
    is->easy = e;
    atomic_store_explicit(&is->fetching, true, memory_order_release);
    atomic_fetch_add_explicit(&is->fetches, 1, memory_order_relaxed);
    is->last_attempt_unix = (int64_t)time(NULL);
    CURLMcode mc = curl_multi_add_handle(j->multi, e);
    if (mc != CURLM_OK) {
        curl_easy_cleanup(e);
        is->easy = NULL;
        snprintf(is->curl_err, sizeof(is->curl_err), "%s", curl_multi_strerror(mc));
        fetch_done(is, CURLE_FAILED_INIT, 0);
    }
}

static void sock_ev_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    csock *cs = SC_CONTAINER_OF(w, csock, io);
    sc_jwt *j = cs->j;
    int flags = ((revents & EV_READ) ? CURL_CSELECT_IN : 0) | ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(j->multi, cs->fd, flags, &running); /* may free cs */
    check_done(j);
}

static void csock_free(sc_jwt *j, csock *cs)
{
    ev_io_stop(j->loop, &cs->io);
    if (cs->prev)
        cs->prev->next = cs->next;
    else
        j->socks = cs->next;
    if (cs->next)
        cs->next->prev = cs->prev;
    free(cs);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)e;
    sc_jwt *j = userp;
    csock *cs = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (cs)
            csock_free(j, cs);
        return 0;
    }
    if (!cs) {
        if (!(cs = calloc(1, sizeof(*cs))))
            return -1;
        cs->j = j;
        cs->fd = s;
        cs->next = j->socks;
        if (j->socks)
            j->socks->prev = cs;
        j->socks = cs;
        ev_init(&cs->io, sock_ev_cb);
        curl_multi_assign(j->multi, s, cs);
    } else {
        ev_io_stop(j->loop, &cs->io);
    }
    ev_io_set(&cs->io, s, ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0));
    ev_io_start(j->loop, &cs->io);
    return 0;
}

static void curl_timer_ev(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_jwt *j = t->data;
    int running;
    curl_multi_socket_action(j->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(j);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    sc_jwt *j = userp;
    ev_timer_stop(j->loop, &j->curl_timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&j->curl_timer, (double)timeout_ms / 1000.0, 0);
        ev_timer_start(j->loop, &j->curl_timer);
    }
    return 0;
}

/* Workers asked for refetches (unknown kid). */
static void async_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    sc_jwt *j = a->data;
    for (size_t i = 0; i < j->n_iss; i++) {
        issuer_rt *is = &j->iss[i];
        if (atomic_exchange_explicit(&is->refetch_wanted, false, memory_order_acq_rel)) {
            SC_INFO("jwt: issuer %s: a token names a key not in the key set; fetching %s again", is->cfg->name,
                    is->cfg->jwks_url);
            fetch_start(is);
        }
    }
}

/* ---- life cycle ---- */

int sc_jwt_new(const sc_jwt_config *cfg, unsigned n_workers, sc_jwt **out, char *err, size_t errlen)
{
    *out = NULL;
    sc_jwt *j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->cfg = cfg;
    j->n_workers = n_workers ? n_workers : 1;
    j->ws = aligned_alloc(64, sizeof(wstats) * j->n_workers);
    j->iss = calloc(cfg->n_issuers ? cfg->n_issuers : 1, sizeof(issuer_rt));
    j->cache = sc_jwt_cache_new(cfg->cache_entries);
    if (!j->ws || !j->iss || (cfg->cache_entries && !j->cache)) {
        free(j->ws);
        free(j->iss);
        sc_jwt_cache_free(j->cache);
        free(j);
        return -ENOMEM;
    }
    memset(j->ws, 0, sizeof(wstats) * j->n_workers);
    j->n_iss = cfg->n_issuers;
    for (size_t i = 0; i < j->n_iss; i++) {
        issuer_rt *is = &j->iss[i];
        is->j = j;
        is->cfg = &cfg->issuers[i];
        is->idx = (uint32_t)i;
        pthread_mutex_init(&is->mu, NULL);
        ev_init(&is->timer, fetch_timer_cb);
        is->timer.data = is;
    }
    for (size_t i = 0; i < j->n_iss; i++) {
        issuer_rt *is = &j->iss[i];
        char e[512];
        if (is->cfg->jwks_file && file_load(is, e, sizeof(e)) < 0) {
            sc_jwt_set_err(err, errlen, "issuer %s: %s", is->cfg->name, e);
            sc_jwt_free(j);
            return -EINVAL;
        }
        if (is->cfg->jwks_file)
            is->last_ok_unix = (int64_t)time(NULL);
    }
    *out = j;
    return 0;
}

int sc_jwt_start(sc_jwt *j, struct ev_loop *loop, void (*notify)(void *arg), void *arg, char *err, size_t errlen)
{
    j->loop = loop;
    j->notify = notify;
    j->notify_arg = arg;
    bool urls = false, files = false;
    for (size_t i = 0; i < j->n_iss; i++) {
        urls |= j->iss[i].cfg->jwks_url != NULL;
        files |= j->iss[i].cfg->jwks_file != NULL;
    }
    if (files) {
        ev_timer_init(&j->watch, watch_cb, SC_JWT_WATCH_MS / 1000.0, SC_JWT_WATCH_MS / 1000.0);
        j->watch.data = j;
        ev_timer_start(loop, &j->watch);
    }
    if (!urls)
        return 0;
    char e[256];
    if (sc_curl_api_load(e, sizeof(e)) < 0) {
        sc_jwt_set_err(err, errlen, "a jwks_url needs libcurl: %s", e);
        return -ENOENT;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (!(j->multi = curl_multi_init())) {
        sc_jwt_set_err(err, errlen, "curl_multi_init failed");
        return -ENOMEM;
    }
    curl_multi_setopt(j->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(j->multi, CURLMOPT_SOCKETDATA, j);
    curl_multi_setopt(j->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(j->multi, CURLMOPT_TIMERDATA, j);
    ev_init(&j->curl_timer, curl_timer_ev);
    j->curl_timer.data = j;
    ev_async_init(&j->async, async_cb);
    j->async.data = j;
    ev_async_start(loop, &j->async);
    for (size_t i = 0; i < j->n_iss; i++)
        if (j->iss[i].cfg->jwks_url) {
            atomic_store(&j->iss[i].fetching, true); /* requests before the first answer wait for it */
            fetch_start(&j->iss[i]);
        }
    return 0;
}

void sc_jwt_reload(sc_jwt *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->n_iss; i++) {
        if (j->iss[i].cfg->jwks_file)
            file_check(&j->iss[i], true);
        else if (j->multi)
            fetch_start(&j->iss[i]);
    }
}

void sc_jwt_stop(sc_jwt *j)
{
    if (!j || !j->loop)
        return;
    ev_timer_stop(j->loop, &j->watch);
    for (size_t i = 0; i < j->n_iss; i++) {
        issuer_rt *is = &j->iss[i];
        ev_timer_stop(j->loop, &is->timer);
        if (is->easy) {
            curl_multi_remove_handle(j->multi, is->easy);
            curl_easy_cleanup(is->easy);
            is->easy = NULL;
        }
        free(is->body);
        is->body = NULL;
        is->len = is->cap = 0;
        atomic_store(&is->fetching, false);
    }
    if (j->multi) {
        ev_async_stop(j->loop, &j->async);
        ev_timer_stop(j->loop, &j->curl_timer);
        curl_multi_cleanup(j->multi);
        j->multi = NULL;
    }
    while (j->socks)
        csock_free(j, j->socks);
    j->loop = NULL;
}

void sc_jwt_free(sc_jwt *j)
{
    if (!j)
        return;
    sc_jwt_stop(j);
    for (size_t i = 0; i < j->n_iss; i++) {
        sc_jwks_unref(j->iss[i].keys);
        pthread_mutex_destroy(&j->iss[i].mu);
    }
    sc_jwt_cache_free(j->cache);
    free(j->iss);
    free(j->ws);
    free(j);
}

/* ---- the check ---- */

static void finish(sc_jwt *j, unsigned worker, sc_jwt_result *r, sc_jwt_outcome o)
{
    r->outcome = o;
    wstats *w = &j->ws[worker < j->n_workers ? worker : 0];
    SC_STAT_INC(w->outcomes[o]);
    if (o == SC_JWT_OK && r->claims && r->claims->issuer < SC_JWT_MAX_ISSUERS)
        SC_STAT_INC(w->verified[r->claims->issuer]);
}

static const issuer_rt *issuer_by_iss(const sc_jwt *j, const char *iss)
{
    for (size_t i = 0; iss && i < j->n_iss; i++)
        if (strcmp(j->iss[i].cfg->issuer, iss) == 0)
            return &j->iss[i];
    return NULL;
}

/* An unknown kid: wait for a fetch (running, or asked for now) or refuse. */
static sc_jwt_outcome unknown_key(sc_jwt *j, issuer_rt *is, unsigned flags, sc_jwt_result *r)
{
    if (!is->cfg->jwks_url || (flags & SC_JWT_NO_WAIT) || !j->multi)
        return SC_JWT_UNKNOWN_KEY;
    uint64_t seq = atomic_load_explicit(&is->fetch_seq, memory_order_acquire);
    if (!atomic_load_explicit(&is->fetching, memory_order_acquire)) {
        uint64_t now = sc_now_ms();
        uint64_t next = atomic_load_explicit(&is->next_refetch_ms, memory_order_relaxed);
        if (now < next || !atomic_compare_exchange_strong(&is->next_refetch_ms, &next, now + is->cfg->refetch_min_ms)) {
            size_t l = strlen(r->why);
            snprintf(r->why + l, sizeof(r->why) - l, " (key set fetched again at most every %llums)",
                     (unsigned long long)is->cfg->refetch_min_ms);
            return SC_JWT_UNKNOWN_KEY;
        }
        atomic_fetch_add_explicit(&is->refetches, 1, memory_order_relaxed);
        atomic_store_explicit(&is->fetching, true, memory_order_release);
        atomic_store_explicit(&is->refetch_wanted, true, memory_order_release);
        ev_async_send(j->loop, &j->async);
    }
    r->wait_issuer = is->idx;
    r->wait_seq = seq;
    return SC_JWT_PENDING;
}

static int64_t until_of(const sc_jwt_claims *c, const sc_jwt_issuer_cfg *is)
{
    int64_t lw = (int64_t)(is->leeway_ms / 1000u);
    return c->exp > INT64_MAX - lw ? INT64_MAX : c->exp + lw;
}

/* Every field but the 256 bytes of why, which only a refusal fills. */
static void result_init(sc_jwt_result *r, const sc_jwt_rule *rule)
{
    r->outcome = SC_JWT_OK;
    r->rule = rule;
    r->claims = NULL;
    r->issuer = NULL;
    r->cache_hit = false;
    r->wait_issuer = 0;
    r->wait_seq = 0;
    r->n_named = 0;
    r->named_at = 0;
    r->why[0] = '\0';
}

void sc_jwt_check_token(sc_jwt *j, unsigned worker, const sc_jwt_rule *rule, const char *tok, size_t len,
                        int64_t now_unix, unsigned flags, sc_jwt_result *r)
{
    result_init(r, rule);
    if (!rule || rule->mode == SC_JWT_MODE_OFF) {
        finish(j, worker, r, SC_JWT_SKIPPED);
        return;
    }
    if (!tok || !len) {
        snprintf(r->why, sizeof(r->why), "no bearer token in %s", rule->header);
        finish(j, worker, r, rule->mode == SC_JWT_MODE_OPTIONAL ? SC_JWT_ANONYMOUS : SC_JWT_MISSING);
        return;
    }
    const sc_jwt_config *cfg = j->cfg;
    if (len > cfg->max_token_bytes) {
        snprintf(r->why, sizeof(r->why), "the token is %zu bytes; at most %u are accepted (jwt.max_token_bytes)", len,
                 cfg->max_token_bytes);
        finish(j, worker, r, SC_JWT_MALFORMED);
        return;
    }
    wstats *w = &j->ws[worker < j->n_workers ? worker : 0];
    uint64_t hash = 0;
    sc_jwt_claims *c = NULL;
    if (j->cache) {
        hash = sc_jwt_cache_hash(tok, len);
        c = sc_jwt_cache_get(j->cache, tok, len, hash, now_unix);
        if (c && c->keys_gen != atomic_load_explicit(&j->iss[c->issuer].gen, memory_order_relaxed)) {
            sc_jwt_claims_unref(c); /* verified with keys since replaced: verify again */
            c = NULL;
        }
        if (c)
            SC_STAT_INC(w->cache_hits);
        else
            SC_STAT_INC(w->cache_misses);
    }
    if (c) {
        r->cache_hit = true;
    } else {
        if (sc_jwt_token_has_blank(tok, len)) { /* a cached token has none: looked for only here */
            snprintf(r->why, sizeof(r->why), "a Bearer credential without a single token");
            finish(j, worker, r, SC_JWT_MALFORMED);
            return;
        }
        sc_jwt_token t;
        sc_jwt_outcome o = sc_jwt_token_parse(tok, len, cfg->max_token_bytes, &t, r->why, sizeof(r->why));
        if (o != SC_JWT_OK) {
            finish(j, worker, r, o);
            return;
        }
        issuer_rt *is = (issuer_rt *)issuer_by_iss(j, t.iss);
        if (!is) {
            char pi[96];
            if (t.iss)
                snprintf(r->why, sizeof(r->why), "iss \"%s\" is not a configured issuer",
                         sc_jwt_printable(t.iss, strlen(t.iss), pi, sizeof(pi)));
            else
                snprintf(r->why, sizeof(r->why), "the token has no \"iss\" (issuer)");
            sc_jwt_token_clear(&t);
            finish(j, worker, r, SC_JWT_UNKNOWN_ISSUER);
            return;
        }
        if (!(rule->issuers & (1u << is->idx))) {
            sc_jwt_token_clear(&t);
            snprintf(r->why, sizeof(r->why), "tokens of issuer %s are not accepted on this path", is->cfg->name);
            finish(j, worker, r, SC_JWT_UNKNOWN_ISSUER);
            return;
        }
        o = sc_jwt_token_check_claims(&t, is->cfg, now_unix, r->why, sizeof(r->why));
        uint64_t gen = 0;
        sc_jwks *keys = o == SC_JWT_OK ? keys_get(is, &gen) : NULL;
        if (o == SC_JWT_OK)
            o = sc_jwt_token_verify(&t, keys, r->why, sizeof(r->why));
        sc_jwks_unref(keys);
        if (o == SC_JWT_UNKNOWN_KEY)
            o = unknown_key(j, is, flags, r);
        if (o == SC_JWT_OK && !(c = sc_jwt_claims_build(&t, is->idx, r->why, sizeof(r->why))))
            o = SC_JWT_MALFORMED;
        sc_jwt_token_clear(&t);
        if (o != SC_JWT_OK) {
            finish(j, worker, r, o);
            return;
        }
        c->keys_gen = gen;
        sc_jwt_cache_put(j->cache, tok, len, hash, c, until_of(c, is->cfg));
    }
    r->claims = c;
    r->issuer = j->iss[c->issuer].cfg->name;
    if (!(rule->issuers & (1u << c->issuer))) {
        snprintf(r->why, sizeof(r->why), "tokens of issuer %s are not accepted on this path", r->issuer);
        finish(j, worker, r, SC_JWT_UNKNOWN_ISSUER);
        return;
    }
    finish(j, worker, r, sc_jwt_rule_check(rule, c, r->why, sizeof(r->why)));
}

void sc_jwt_check(sc_jwt *j, unsigned worker, const char *path, size_t path_len, const nghttp2_nv *hdrs,
                  size_t n_hdrs, int64_t now_unix, unsigned flags, sc_jwt_result *r)
{
    const sc_jwt_rule *rule = sc_jwt_rule_for_path(j->cfg, path, path_len);
    if (!rule || rule->mode == SC_JWT_MODE_OFF) {
        sc_jwt_check_token(j, worker, rule, NULL, 0, now_unix, flags, r);
        return;
    }
    const char *tok = NULL;
    size_t toklen = 0, found = 0;
    uint32_t named = 0, named_at = 0;
    bool bad = false;
    for (size_t i = 0; i < n_hdrs; i++) {
        if (hdrs[i].namelen != rule->header_len || !sc_hdr_aliases((const char *)hdrs[i].name, hdrs[i].namelen, rule->header))
            continue;
        if (named++ == 0)
            named_at = (uint32_t)i;
        const char *t;
        size_t tl;
        int rc = sc_jwt_token_in_value(rule, (const char *)hdrs[i].value, hdrs[i].valuelen, &t, &tl);
        if (rc < 0)
            bad = true;
        if (rc > 0 && found++ == 0) {
            tok = t;
            toklen = tl;
        }
    }
    if (bad || found > 1) {
        result_init(r, rule);
        snprintf(r->why, sizeof(r->why), "%s", found > 1 ? "more than one bearer token in the request"
                                                         : "a Bearer credential without a single token");
        finish(j, worker, r, SC_JWT_MALFORMED);
    } else {
        sc_jwt_check_token(j, worker, rule, tok, toklen, now_unix, flags, r);
    }
    r->n_named = named;
    r->named_at = named_at;
}

bool sc_jwt_wait_over(sc_jwt *j, const sc_jwt_result *r)
{
    if (r->outcome != SC_JWT_PENDING || r->wait_issuer >= j->n_iss)
        return true;
    const issuer_rt *is = &j->iss[r->wait_issuer];
    return atomic_load_explicit(&is->fetch_seq, memory_order_acquire) != r->wait_seq ||
           !atomic_load_explicit(&is->fetching, memory_order_acquire);
}

void sc_jwt_result_clear(sc_jwt_result *r)
{
    if (!r)
        return;
    sc_jwt_claims_unref(r->claims);
    r->claims = NULL;
}

const char *sc_jwt_claim(const sc_jwt_result *r, const char *name)
{
    const sc_jwt_claim_entry *c = r ? sc_jwt_claims_find(r->claims, name) : NULL;
    return c ? c->value : NULL;
}

size_t sc_jwt_forward_headers(const sc_jwt_result *r, sc_jwt_header *out, size_t cap)
{
    size_t n = 0;
    if (!r || r->outcome != SC_JWT_OK || !r->rule)
        return 0;
    for (size_t i = 0; i < r->rule->n_forward && n < cap; i++) {
        const sc_jwt_forward *f = &r->rule->forward[i];
        const sc_jwt_claim_entry *c = sc_jwt_claims_find(r->claims, f->claim);
        if (!c || !c->header_safe)
            continue;
        out[n++] = (sc_jwt_header){.name = f->header, .name_len = f->header_len, .value = c->value,
                                   .value_len = strlen(c->value)};
    }
    return n;
}

void sc_jwt_refusal_of(const sc_jwt *j, const sc_jwt_result *r, sc_jwt_refusal *out)
{
    sc_jwt_refusal_for(r->outcome, r->why, j->cfg->realm, out);
}

sc_ratelimit *sc_jwt_log_limit(sc_jwt *j)
{
    return &j->log_limit;
}

bool sc_jwt_ready(sc_jwt *j, char *why, size_t whylen)
{
    for (size_t i = 0; j && i < j->n_iss; i++) {
        const issuer_rt *is = &j->iss[i];
        if (is->cfg->jwks_url && !atomic_load(&is->n_keys)) {
            sc_jwt_set_err(why, whylen, "jwt: no keys yet for issuer %s (%s%s%s)", is->cfg->name, is->cfg->jwks_url,
                           is->last_error[0] ? ": " : "", is->last_error);
            return false;
        }
    }
    return true;
}

/* ---- metrics ---- */

void sc_jwt_stats_get(sc_jwt *j, sc_jwt_stats *s)
{
    memset(s, 0, sizeof(*s));
    for (unsigned w = 0; w < j->n_workers; w++) {
        for (int o = 0; o < SC_JWT_OUTCOMES; o++)
            s->outcomes[o] += SC_STAT_GET(j->ws[w].outcomes[o]);
        s->cache_hits += SC_STAT_GET(j->ws[w].cache_hits);
        s->cache_misses += SC_STAT_GET(j->ws[w].cache_misses);
    }
    for (size_t i = 0; i < j->n_iss; i++) {
        s->fetches += atomic_load(&j->iss[i].fetches);
        s->fetch_errors += atomic_load(&j->iss[i].fetch_errors);
        s->reloads += atomic_load(&j->iss[i].reloads);
        s->refetches += atomic_load(&j->iss[i].refetches);
    }
}

static void per_issuer(sc_jwt *j, FILE *f, const char *name, const char *type, const char *help,
                       uint64_t (*get)(sc_jwt *, size_t))
{
    sc_prom_head(f, name, type, help);
    for (size_t i = 0; i < j->n_iss; i++)
        fprintf(f, "%s{issuer=\"%s\"} %llu\n", name, j->iss[i].cfg->name, (unsigned long long)get(j, i));
}

static uint64_t get_verified(sc_jwt *j, size_t i)
{
    uint64_t v = 0;
    for (unsigned w = 0; w < j->n_workers && i < SC_JWT_MAX_ISSUERS; w++)
        v += SC_STAT_GET(j->ws[w].verified[i]);
    return v;
}
static uint64_t get_fetches(sc_jwt *j, size_t i) { return atomic_load(&j->iss[i].fetches); }
static uint64_t get_fetch_errors(sc_jwt *j, size_t i) { return atomic_load(&j->iss[i].fetch_errors); }
static uint64_t get_reloads(sc_jwt *j, size_t i) { return atomic_load(&j->iss[i].reloads); }
static uint64_t get_refetches(sc_jwt *j, size_t i) { return atomic_load(&j->iss[i].refetches); }
static uint64_t get_keys(sc_jwt *j, size_t i) { return atomic_load(&j->iss[i].n_keys); }

void sc_jwt_render_stats(sc_jwt *j, FILE *f)
{
    if (!j)
        return;
    sc_jwt_stats s;
    sc_jwt_stats_get(j, &s);
    per_issuer(j, f, "sidecar_jwt_verified_total", "counter", "Inbound requests with a valid token, by issuer.",
               get_verified);
    sc_prom_head(f, "sidecar_jwt_refused_total", "counter", "Inbound requests refused by the JWT check, by reason.");
    for (int o = SC_JWT_MISSING; o < SC_JWT_OUTCOMES; o++)
        fprintf(f, "sidecar_jwt_refused_total{reason=\"%s\"} %llu\n", sc_jwt_outcome_name((sc_jwt_outcome)o),
                (unsigned long long)s.outcomes[o]);
    sc_prom_u64(f, "sidecar_jwt_anonymous_total", "counter",
                "Inbound requests without a token on an optional path (passed without claims).",
                s.outcomes[SC_JWT_ANONYMOUS]);
    sc_prom_u64(f, "sidecar_jwt_pending_total", "counter", "Requests that waited for an issuer's keys to be fetched.",
                s.outcomes[SC_JWT_PENDING]);
    sc_prom_u64(f, "sidecar_jwt_cache_hits_total", "counter", "Tokens found in the verified-token cache.",
                s.cache_hits);
    sc_prom_u64(f, "sidecar_jwt_cache_misses_total", "counter", "Tokens verified in full (not in the cache).",
                s.cache_misses);
    sc_jwt_cache_view v;
    sc_jwt_cache_snapshot(j->cache, &v);
    sc_prom_u64(f, "sidecar_jwt_cache_entries", "gauge", "Verified tokens in the cache.", v.entries);
    sc_prom_u64(f, "sidecar_jwt_cache_evictions_total", "counter",
                "Cached tokens replaced by newer ones (cache_entries reached).", v.evictions);
    per_issuer(j, f, "sidecar_jwt_jwks_keys", "gauge", "Keys in use, by issuer.", get_keys);
    per_issuer(j, f, "sidecar_jwt_jwks_fetches_total", "counter", "JWKS URL fetches started, by issuer.",
               get_fetches);
    per_issuer(j, f, "sidecar_jwt_jwks_fetch_errors_total", "counter",
               "JWKS URL fetches that failed (keys in use kept), by issuer.", get_fetch_errors);
    per_issuer(j, f, "sidecar_jwt_jwks_refetches_total", "counter",
               "Fetches asked for by a token with an unknown kid, by issuer.", get_refetches);
    per_issuer(j, f, "sidecar_jwt_jwks_reloads_total", "counter", "New key sets taken into use, by issuer.",
               get_reloads);
}

json_t *sc_jwt_json(sc_jwt *j)
{
    if (!j)
        return json_null();
    json_t *a = json_array();
    for (size_t i = 0; i < j->n_iss; i++) {
        issuer_rt *is = &j->iss[i];
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(is->cfg->name));
        json_object_set_new(o, "issuer", json_string(is->cfg->issuer));
        json_object_set_new(o, "source", json_string(is->cfg->jwks_file ? is->cfg->jwks_file : is->cfg->jwks_url));
        uint64_t gen;
        sc_jwks *k = keys_get(is, &gen);
        json_t *kids = json_array();
        for (size_t n = 0; k && n < k->n; n++) {
            json_t *key = json_object();
            json_object_set_new(key, "kid", k->keys[n].kid ? json_string(k->keys[n].kid) : json_null());
            json_object_set_new(key, "type", json_string(k->keys[n].type == SC_JWK_RSA  ? "RSA"
                                                         : k->keys[n].type == SC_JWK_EC ? "EC"
                                                                                        : "oct"));
            json_object_set_new(key, "bits", json_integer(k->keys[n].bits));
            json_array_append_new(kids, key);
        }
        sc_jwks_unref(k);
        json_object_set_new(o, "keys", kids);
        json_object_set_new(o, "generation", json_integer((json_int_t)gen));
        json_object_set_new(o, "last_ok_unix", is->last_ok_unix ? json_integer(is->last_ok_unix) : json_null());
        json_object_set_new(o, "last_error", is->last_error[0] ? json_string(is->last_error) : json_null());
        json_array_append_new(a, o);
    }
    return a;
}
