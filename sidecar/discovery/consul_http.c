/*
 * consul_http.c: the HTTP layer of the Consul agent client (see consul.h and
 * consul_internal.h): libcurl multi on the control loop, one request with
 * its answer, headers and error text, the agent address (TLS, unix socket,
 * consul.tls_server_name), the ACL token (read again on SIGHUP) and the
 * backoff every retry loop of the client uses.
 *
 * libcurl integration: CURLMOPT_SOCKETFUNCTION keeps one ev_io per socket
 * curl wants watched, CURLMOPT_TIMERFUNCTION one ev_timer; both call
 * curl_multi_socket_action and then collect finished transfers. A request
 * (creq) owns its easy handle; its `done` callback runs after the handle
 * left the multi handle, and the request is freed right after it.
 */
#include "discovery/consul_internal.h"

#include "core/log.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 3000

struct csock {
    ev_io io;
    sc_consul *c;
    curl_socket_t fd;
    struct csock *prev, *next;  /* c->socks */
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

uint64_t sc_consul_backoff(sc_consul *c, unsigned failures)
{
    return sc_consul_backoff_ms(failures, SC_CONSUL_BACKOFF_BASE_MS, SC_CONSUL_BACKOFF_CAP_MS,
                                rnd_next(c));
}

void sc_consul_timer_again(sc_consul *c, ev_timer *t, uint64_t ms)
{
    ev_timer_stop(c->loop, t);
    ev_timer_set(t, (double)ms / 1000.0, 0);
    ev_timer_start(c->loop, t);
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
void sc_consul_req_cancel(creq **pp)
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
creq *sc_consul_req_start(sc_consul *c, const char *method, const char *path, bool scoped,
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
void sc_consul_req_error(const creq *r, char *buf, size_t cap)
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

bool sc_consul_req_body_has(const creq *r, const char *needle)
{
    return r->body && strstr(r->body, needle);
}

/* Advice appended to errors a person can fix. */
const char *sc_consul_req_hint(const creq *r)
{
    if (r->result != CURLE_OK)
        return "";
    if (r->status == 403 && sc_consul_req_body_has(r, "ACL not found"))
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
    sc_consul_retry_now(c);
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

int sc_consul_http_global_init(void)
{
    return init_curl_once();
}

int sc_consul_http_init(sc_consul *c)
{
    const sc_config *cfg = c->cfg;
    if (getrandom(&c->rnd, sizeof(c->rnd), GRND_NONBLOCK) != sizeof(c->rnd))
        c->rnd = sc_now_ns() ^ ((uint64_t)getpid() << 32);
    c->rnd |= 1;
    c->multi = curl_multi_init();
    if (!c->multi)
        return -EIO;
    if (cfg->consul.token) {
        c->token = strdup(cfg->consul.token);
        if (!c->token) {
            curl_multi_cleanup(c->multi);
            c->multi = NULL;
            return -ENOMEM;
        }
    }
    int trc = make_target(c);
    if (trc < 0) {
        curl_slist_free_all(c->connect_to);
        free(c->token);
        curl_multi_cleanup(c->multi);
        c->connect_to = NULL;
        c->token = NULL;
        c->multi = NULL;
        return trc == -ENOMEM ? -ENOMEM : -EINVAL;
    }
    ev_signal_init(&c->sighup, sighup_cb, SIGHUP);
    c->sighup.data = c;
    ev_signal_start(c->loop, &c->sighup);
    ev_init(&c->curl_timer, curl_timer_ev);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    return 0;
}

void sc_consul_http_max_connects(sc_consul *c, long n)
{
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, n);
}

void sc_consul_http_stop(sc_consul *c)
{
    ev_signal_stop(c->loop, &c->sighup);
    ev_timer_stop(c->loop, &c->curl_timer);
    while (c->reqs) {
        creq *r = c->reqs;
        curl_multi_remove_handle(c->multi, r->easy);
        creq_free(r);
    }
    /* sockets still in the connection cache are closed here; sock_cb frees their watchers */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    while (c->socks)
        csock_free(c, c->socks);
    curl_slist_free_all(c->connect_to);
    c->connect_to = NULL;
    free(c->token);
    c->token = NULL;
}
