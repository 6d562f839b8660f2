/*
 * app_health.c: the local app probe (see app_health.h).
 */
#include "discovery/app_health.h"

#include "core/log.h"
#include "core/prom.h"
#include "jwt/jwt_runtime.h"
#include "tls/tls_runtime.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_SUBS 4
#define FALL 2          /* failed probes in a row before the app counts as down */
#define RESP_CAP 512    /* bytes of an HTTP answer read: the status line is enough */

enum { ST_UNKNOWN = 0, ST_UP, ST_DOWN };

struct sc_app_health {
    struct ev_loop *loop;
    const sc_config *cfg;
    ev_timer interval;          /* next probe */
    ev_timer timeout;           /* the probe in flight */
    ev_io io;
    int fd;
    bool sent;                  /* http: request written */
    char req[1200];
    size_t req_len, req_off;
    char resp[RESP_CAP];
    size_t resp_len;
    _Atomic int state;
    unsigned fails;             /* failed probes in a row */
    char reason[320];
    uint64_t probes, failures;
    struct { sc_app_health_cb cb; void *arg; } subs[MAX_SUBS];
    size_t n_subs;
};

static void close_probe(sc_app_health *h)
{
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timeout);
    if (h->fd >= 0) {
        close(h->fd);
        h->fd = -1;
    }
}

static void set_state(sc_app_health *h, int st)
{
    int old = atomic_exchange(&h->state, st);
    if (old == st)
        return;
    if (st == ST_UP)
        SC_INFO("app health: %s%s", old == ST_DOWN ? "app is up again: " : "", h->reason);
    else
        SC_WARN("app health: app is down: %s", h->reason);
    for (size_t i = 0; i < h->n_subs; i++)
        h->subs[i].cb(h->subs[i].arg, st == ST_UP);
}

/* Ends the probe in flight. ok=false with a reason (printf style). */
static void finish(sc_app_health *h, bool ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void finish(sc_app_health *h, bool ok, const char *fmt, ...)
{
    close_probe(h);
    va_list ap;
    va_start(ap, fmt);
    char msg[200];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(h->reason, sizeof(h->reason), "app %s%s%s", h->cfg->inbound.app.text,
             msg[0] == ':' || msg[0] == ' ' ? "" : " ", msg);
    h->probes++;
    if (ok) {
        h->fails = 0;
        set_state(h, ST_UP);
    } else {
        h->failures++;
        h->fails++;
        int st = atomic_load(&h->state);
        if (st == ST_UNKNOWN || h->fails >= FALL)
            set_state(h, ST_DOWN);
        else
            SC_DEBUG("app health: probe failed (%u in a row): %s", h->fails, h->reason);
    }
}

static void check_http_answer(sc_app_health *h, bool eof)
{
    char *nl = memchr(h->resp, '\n', h->resp_len);
    if (!nl) {
        if (eof || h->resp_len == sizeof(h->resp))
            finish(h, false, "answered GET %s with no HTTP status line", h->cfg->health.app_path);
        return;
    }
    unsigned code = 0;
    if (h->resp_len >= 12 && memcmp(h->resp, "HTTP/1.", 7) == 0 && h->resp[8] == ' ' &&
        h->resp[9] >= '1' && h->resp[9] <= '5' && h->resp[10] >= '0' && h->resp[10] <= '9' &&
        h->resp[11] >= '0' && h->resp[11] <= '9')
        code = (unsigned)(h->resp[9] - '0') * 100 + (unsigned)(h->resp[10] - '0') * 10 +
               (unsigned)(h->resp[11] - '0');
    if (!code)
        finish(h, false, "answered GET %s with no HTTP status line", h->cfg->health.app_path);
    else if (code >= 200 && code < 300)
        finish(h, true, "answered GET %s with %u", h->cfg->health.app_path, code);
    else
        finish(h, false, "answered GET %s with %u", h->cfg->health.app_path, code);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    sc_app_health *h = SC_CONTAINER_OF(w, sc_app_health, io);
    if (!h->sent) {
        /* connect finished (or failed) */
        if (h->req_off == 0) {
            int err = 0;
            socklen_t len = sizeof(err);
            if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
            if (err) {
                finish(h, false, ": connect: %s", strerror(err));
                return;
            }
            if (h->cfg->health.app_probe == SC_APP_PROBE_TCP) {
                finish(h, true, "accepts TCP connections");
                return;
            }
        }
        ssize_t n = send(h->fd, h->req + h->req_off, h->req_len - h->req_off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            finish(h, false, ": sending GET %s: %s", h->cfg->health.app_path, strerror(errno));
            return;
        }
        h->req_off += (size_t)n;
        if (h->req_off < h->req_len)
            return;
        h->sent = true;
        ev_io_stop(h->loop, &h->io);
        ev_io_set(&h->io, h->fd, EV_READ);
        ev_io_start(h->loop, &h->io);
        return;
    }
    ssize_t n = recv(h->fd, h->resp + h->resp_len, sizeof(h->resp) - h->resp_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {
        finish(h, false, ": reading the answer to GET %s: %s", h->cfg->health.app_path,
               strerror(errno));
        return;
    }
    h->resp_len += (size_t)n;
    check_http_answer(h, n == 0);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_app_health *h = SC_CONTAINER_OF(t, sc_app_health, timeout);
    char d[32];
    sc_duration_format(h->cfg->health.timeout_ms, d, sizeof(d));
    if (h->cfg->health.app_probe == SC_APP_PROBE_HTTP && h->sent)
        finish(h, false, "did not answer GET %s within %s", h->cfg->health.app_path, d);
    else
        finish(h, false, ": connect: no answer within %s", d);
}

static void start_probe(sc_app_health *h)
{
    close_probe(h);
    h->sent = false;
    h->req_off = 0;
    h->resp_len = 0;
    const sc_addr *a = &h->cfg->inbound.app;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        finish(h, false, ": socket: %s", strerror(errno));
        return;
    }
    h->fd = fd;
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) < 0 && errno != EINPROGRESS) {
        finish(h, false, ": connect: %s", strerror(errno));
        return;
    }
    ev_io_set(&h->io, fd, EV_WRITE);
    ev_io_start(h->loop, &h->io);
    ev_timer_set(&h->timeout, (double)h->cfg->health.timeout_ms / 1000.0, 0);
    ev_timer_start(h->loop, &h->timeout);
}

static void interval_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_app_health *h = SC_CONTAINER_OF(t, sc_app_health, interval);
    if (h->fd >= 0)
        return; /* the last probe is still running; its timeout ends it */
    start_probe(h);
}

int sc_app_health_start(struct ev_loop *loop, const sc_config *cfg, sc_app_health **out)
{
    *out = NULL;
    if (!cfg->inbound.enabled || cfg->health.app_probe == SC_APP_PROBE_NONE)
        return -ENOENT;
    sc_app_health *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->loop = loop;
    h->cfg = cfg;
    h->fd = -1;
    atomic_init(&h->state, ST_UNKNOWN);
    snprintf(h->reason, sizeof(h->reason), "app %s: not probed yet", cfg->inbound.app.text);
    if (cfg->health.app_probe == SC_APP_PROBE_HTTP) {
        int n = snprintf(h->req, sizeof(h->req),
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sidecar-health/%s\r\n"
                         "Accept: */*\r\nConnection: close\r\n\r\n",
                         cfg->health.app_path, cfg->inbound.app.text, SC_VERSION);
        if (n < 0 || (size_t)n >= sizeof(h->req)) {
            free(h);
            return -EINVAL;
        }
        h->req_len = (size_t)n;
    }
    ev_init(&h->io, io_cb);
    ev_init(&h->timeout, timeout_cb);
    double iv = (double)cfg->health.interval_ms / 1000.0;
    ev_timer_init(&h->interval, interval_cb, iv, iv);
    ev_timer_start(loop, &h->interval);
    *out = h;
    SC_INFO("app health: probing %s every %llums (%s%s)", cfg->inbound.app.text,
            (unsigned long long)cfg->health.interval_ms,
            cfg->health.app_probe == SC_APP_PROBE_HTTP ? "GET " : "TCP connect",
            cfg->health.app_probe == SC_APP_PROBE_HTTP ? cfg->health.app_path : "");
    start_probe(h);
    return 0;
}

void sc_app_health_stop(sc_app_health *h)
{
    if (!h)
        return;
    close_probe(h);
    ev_timer_stop(h->loop, &h->interval);
    free(h);
}

void sc_app_health_subscribe(sc_app_health *h, sc_app_health_cb cb, void *arg)
{
    if (h && h->n_subs < MAX_SUBS) {
        h->subs[h->n_subs].cb = cb;
        h->subs[h->n_subs].arg = arg;
        h->n_subs++;
    }
}

bool sc_app_health_is_up(const sc_app_health *h)
{
    return !h || atomic_load(&((sc_app_health *)h)->state) == ST_UP;
}

const char *sc_app_health_reason(const sc_app_health *h)
{
    return h ? h->reason : "the app is not probed";
}

void sc_app_health_render_stats(const sc_app_health *h, FILE *f)
{
    if (!h)
        return;
    sc_prom_i64(f, "sidecar_app_healthy", "gauge",
                "1 when the last probes of the local app succeeded.", sc_app_health_is_up(h));
    sc_prom_u64(f, "sidecar_app_probes_total", "counter", "Probes of the local app.", h->probes);
    sc_prom_u64(f, "sidecar_app_probe_failures_total", "counter", "Failed probes of the local app.", h->failures);
}

bool sc_health_ready(const sidecar *sc, char *why, size_t cap)
{
    const char *r = NULL;
    bool app_down = false;
    if (atomic_load(&((sidecar *)sc)->draining))
        r = "draining";
    else if (!atomic_load(&((sidecar *)sc)->ready))
        r = "starting";
    else if (!sc_app_health_is_up(sc->app_health))
        app_down = true;
    else if (!sc_tls_runtime_cert_ok(sc, why, cap))
        return false; /* expired or not yet valid certificate: why says so */
    else if (sc->jwt && !sc_jwt_ready(sc->jwt, why, cap))
        return false; /* inbound.jwt: an issuer's jwks_url never answered: every token would be refused */
    if (!r && !app_down)
        return true;
    if (why && cap) {
        if (r)
            snprintf(why, cap, "%s", r);
        else
            snprintf(why, cap, "app down: %s", sc_app_health_reason(sc->app_health));
    }
    return false;
}
