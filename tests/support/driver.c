/*
 * driver.c: see driver.h. The loop of one iteration: the caller's pending
 * bytes go out and its answers are collected, the fake upstream accepts,
 * reads, recognises complete requests and writes its answers, then the
 * worker's loop runs once without waiting.
 */
#include "driver.h"

#include "core/log.h"
#include "http/h1.h"
#include "proxy/codec.h"
#include "proxy/conns.h"
#include "sidecar.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RECV_KEEP (256 * 1024)
#define MAX_PEERS 8
#define PEER_IN 65536
#define PEER_OUT 16384
#define IDLE_ROUNDS 16

typedef enum { PROTO_UNKNOWN = 0, PROTO_H1, PROTO_H2 } peer_proto;

/* One connection accepted by the fake upstream. Scalars first: a new
 * connection clears everything before `in`. */
typedef struct peer {
    int fd;                         /* -1: slot free */
    peer_proto proto;
    bool shut;                      /* close_after done */
    size_t in_len;
    size_t skip;                    /* h2: payload bytes of the current frame still to drop */
    bool in_body;                   /* h1: head parsed, body being decoded */
    sc_h1_body body;
    size_t out_len, out_off;        /* canned answers */
    bool ext_queued;                /* the given bytes (d->up_bytes) are due */
    size_t ext_off;                 /* of them, written */
    uint8_t in[PEER_IN];
    uint8_t out[PEER_OUT];
    char trailers[4096];
} peer;

struct sc_drv {
    sidecar *sc;
    sc_worker *w;
    bool running;                   /* sc_worker_loop_begin ran */
    int listen_fd;                  /* fake upstream */
    int caller_fd;                  /* the driver's end of the caller socketpair */
    /* caller output */
    uint8_t *send_buf;
    size_t send_len, send_off, chunk;
    bool shut_pending;
    /* caller input */
    uint8_t *recv_buf;
    size_t recv_len, recv_total;
    bool caller_eof;
    /* fake upstream */
    sc_drv_up_mode up_mode;
    uint8_t *up_bytes;
    size_t up_len;
    bool up_close;
    unsigned accepted, requests;
    peer peers[MAX_PEERS];
};

/* ---- HTTP/2 helpers ---- */

size_t sc_drv_h2_frame(uint8_t *out, size_t cap, uint8_t type, uint8_t flags, uint32_t sid, const void *payload,
                       size_t len)
{
    if (len > 0xffffff || cap < 9 + len)
        return 0;
    out[0] = (uint8_t)(len >> 16);
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)len;
    out[3] = type;
    out[4] = flags;
    out[5] = (uint8_t)((sid >> 24) & 0x7f);
    out[6] = (uint8_t)(sid >> 16);
    out[7] = (uint8_t)(sid >> 8);
    out[8] = (uint8_t)sid;
    if (len)
        memcpy(out + 9, payload, len);
    return 9 + len;
}

/* HPACK integer (RFC 7541 5.1) with a 7-bit prefix and the H bit clear. */
static size_t hpack_int7(uint8_t *out, size_t cap, size_t v)
{
    size_t k = 0;
    if (v < 127) {
        if (cap < 1)
            return 0;
        out[k++] = (uint8_t)v;
        return k;
    }
    if (cap < 1)
        return 0;
    out[k++] = 127;
    v -= 127;
    while (v >= 128) {
        if (k >= cap)
            return 0;
        out[k++] = (uint8_t)(0x80 | (v & 0x7f));
        v >>= 7;
    }
    if (k >= cap)
        return 0;
    out[k++] = (uint8_t)v;
    return k;
}

size_t sc_drv_hpack_lit(uint8_t *out, size_t cap, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value), k = 0, n;
    if (cap < 1)
        return 0;
    out[k++] = 0x00; /* literal without indexing, new name */
    if (!(n = hpack_int7(out + k, cap - k, nl)) || cap - k - n < nl)
        return 0;
    k += n;
    memcpy(out + k, name, nl);
    k += nl;
    if (!(n = hpack_int7(out + k, cap - k, vl)) || cap - k - n < vl)
        return 0;
    k += n;
    memcpy(out + k, value, vl);
    return k + vl;
}

/* ---- set-up and tear-down ---- */

static void set_err(char *err, size_t errlen, const char *fmt, const char *a)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, a);
}

/* yaml with every "@UPSTREAM@" replaced by addr (malloc'ed). */
static char *substitute(const char *yaml, const char *addr)
{
    static const char tok[] = "@UPSTREAM@";
    size_t tl = sizeof(tok) - 1, al = strlen(addr), n = 0;
    for (const char *p = yaml; (p = strstr(p, tok)); p += tl)
        n++;
    char *out = malloc(strlen(yaml) + n * al + 1);
    if (!out)
        return NULL;
    char *o = out;
    for (const char *p = yaml;;) {
        const char *q = strstr(p, tok);
        size_t l = q ? (size_t)(q - p) : strlen(p);
        memcpy(o, p, l);
        o += l;
        if (!q)
            break;
        memcpy(o, addr, al);
        o += al;
        p = q + tl;
    }
    *o = 0;
    return out;
}

static void port_zero(sc_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&a->ss)->sin_port = 0;
    else if (a->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&a->ss)->sin6_port = 0;
}

sc_drv *sc_drv_new(const char *yaml, char *err, size_t errlen)
{
    sc_drv *d = calloc(1, sizeof(*d));
    if (!d) {
        set_err(err, errlen, "%s", "out of memory");
        return NULL;
    }
    d->caller_fd = -1;
    for (int i = 0; i < MAX_PEERS; i++)
        d->peers[i].fd = -1;
    d->recv_buf = malloc(RECV_KEEP);
    d->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sin);
    if (!d->recv_buf || d->listen_fd < 0 || bind(d->listen_fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
        listen(d->listen_fd, 16) < 0 || getsockname(d->listen_fd, (struct sockaddr *)&sin, &sl) < 0) {
        set_err(err, errlen, "fake upstream listener: %s", strerror(errno));
        sc_drv_free(d);
        return NULL;
    }
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
    char *text = substitute(yaml, addr);
    if (!text) {
        set_err(err, errlen, "%s", "out of memory");
        sc_drv_free(d);
        return NULL;
    }
    sc_addr_set_dns_enabled(false);
    sc_config *cfg = NULL;
    sc_diags diags = {0};
    int rv = sc_config_load_string(text, strlen(text), "driver.yaml", NULL, &cfg, &diags);
    free(text);
    if (rv < 0) {
        set_err(err, errlen, "configuration: %s", diags.n ? diags.v[0].msg : strerror(-rv));
        sc_diags_free(&diags);
        sc_drv_free(d);
        return NULL;
    }
    sc_diags_free(&diags);
    /* The listeners are bound (sc_worker_new does) but never used: port 0
     * keeps parallel runs and a busy machine from colliding on them. */
    if (cfg->inbound.enabled)
        port_zero(&cfg->inbound.listen);
    for (size_t i = 0; i < cfg->n_policies; i++)
        port_zero(&cfg->policies[i].listen);
    d->sc = sc_sidecar_new(cfg);
    d->sc->n_workers = 1;
    d->sc->workers = sc_xcalloc(1, sizeof(*d->sc->workers));
    d->w = d->sc->workers[0] = sc_worker_new(d->sc, 0, &rv);
    if (!d->w) {
        set_err(err, errlen, "worker: %s", strerror(-rv));
        sc_drv_free(d);
        return NULL;
    }
    sc_worker_loop_begin(d->w);
    d->running = true;
    return d;
}

int sc_drv_connect(sc_drv *d, unsigned route)
{
    if (d->caller_fd >= 0 || route >= d->sc->n_routes)
        return -EINVAL;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    d->caller_fd = sv[0];
    /* A loopback address stands for the caller in the sidecar's logs. */
    struct sockaddr_in peer_addr = {.sin_family = AF_INET, .sin_port = htons(40000),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    sc_down_accept(d->w, &d->sc->routes[route], sv[1], (struct sockaddr *)&peer_addr, sizeof(peer_addr));
    return 0;
}

int sc_drv_send(sc_drv *d, const void *p, size_t n)
{
    if (!n)
        return 0;
    uint8_t *nb = realloc(d->send_buf, d->send_len + n);
    if (!nb)
        return -ENOMEM;
    memcpy(nb + d->send_len, p, n);
    d->send_buf = nb;
    d->send_len += n;
    return 0;
}

void sc_drv_set_chunk(sc_drv *d, size_t n) { d->chunk = n; }

void sc_drv_shutdown(sc_drv *d) { d->shut_pending = true; }

int sc_drv_upstream(sc_drv *d, sc_drv_up_mode mode, const void *bytes, size_t n, bool close_after)
{
    free(d->up_bytes);
    d->up_bytes = NULL;
    d->up_len = 0;
    if (n) {
        if (!(d->up_bytes = malloc(n)))
            return -ENOMEM;
        memcpy(d->up_bytes, bytes, n);
        d->up_len = n;
    }
    d->up_mode = mode;
    d->up_close = close_after;
    return 0;
}

static void peer_close(peer *p)
{
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
}

void sc_drv_free(sc_drv *d)
{
    if (!d)
        return;
    if (d->running) {
        sc_worker_loop_end(d->w);
        sc_worker *w = d->w;
        const char *left = NULL;
        if (!sc_list_empty(&w->streams))
            left = "a stream is still alive after every connection was closed";
        else if (w->n_down_conns)
            left = "the worker still counts caller connections";
        for (size_t i = 0; !left && i < d->sc->n_routes; i++)
            if (w->rstate[i].n_conns)
                left = "the worker still counts upstream connections";
        if (left) {
            fprintf(stderr, "driver: %s\n", left);
            abort();
        }
    }
    if (d->caller_fd >= 0)
        close(d->caller_fd);
    for (int i = 0; i < MAX_PEERS; i++)
        peer_close(&d->peers[i]);
    if (d->listen_fd >= 0)
        close(d->listen_fd);
    sc_sidecar_free(d->sc); /* the worker, routes and configuration */
    free(d->send_buf);
    free(d->recv_buf);
    free(d->up_bytes);
    free(d);
}

/* ---- the caller ---- */

static bool caller_pump(sc_drv *d)
{
    bool moved = false;
    if (d->caller_fd < 0)
        return false;
    while (d->send_off < d->send_len) {
        size_t n = d->send_len - d->send_off;
        if (d->chunk && n > d->chunk)
            n = d->chunk;
        ssize_t k = send(d->caller_fd, d->send_buf + d->send_off, n, MSG_NOSIGNAL);
        if (k > 0) {
            d->send_off += (size_t)k;
            moved = true;
            if (d->chunk)
                break;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        d->send_off = d->send_len; /* the sidecar closed its end: nobody reads the rest */
    }
    if (d->shut_pending && d->send_off == d->send_len) {
        shutdown(d->caller_fd, SHUT_WR);
        d->shut_pending = false;
        moved = true;
    }
    while (!d->caller_eof) {
        uint8_t tmp[16384];
        ssize_t k = recv(d->caller_fd, tmp, sizeof(tmp), 0);
        if (k > 0) {
            size_t keep = (size_t)k;
            if (keep > RECV_KEEP - d->recv_len)
                keep = RECV_KEEP - d->recv_len;
            memcpy(d->recv_buf + d->recv_len, tmp, keep);
            d->recv_len += keep;
            d->recv_total += (size_t)k;
            moved = true;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        d->caller_eof = true; /* EOF or reset */
        moved = true;
    }
    return moved;
}

/* ---- the fake upstream ---- */

static void out_add(peer *p, const void *b, size_t n)
{
    if (p->out_off == p->out_len)
        p->out_off = p->out_len = 0;
    if (n > PEER_OUT - p->out_len)
        return; /* more answers queued than fit: the rest are dropped */
    memcpy(p->out + p->out_len, b, n);
    p->out_len += n;
}

static void canned_h2_answer(peer *p, uint32_t sid)
{
    uint8_t hb[128], f[256];
    size_t k = sc_drv_hpack_lit(hb, sizeof(hb), ":status", "200");
    k += sc_drv_hpack_lit(hb + k, sizeof(hb) - k, "content-type", "application/grpc");
    out_add(p, f, sc_drv_h2_frame(f, sizeof(f), NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, sid, hb, k));
    out_add(p, f, sc_drv_h2_frame(f, sizeof(f), NGHTTP2_DATA, 0, sid, SC_DRV_GRPC_MSG, SC_DRV_GRPC_MSG_LEN));
    k = sc_drv_hpack_lit(hb, sizeof(hb), "grpc-status", "0");
    out_add(p, f, sc_drv_h2_frame(f, sizeof(f), NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM,
                                  sid, hb, k));
}

/* A request ended on this connection (h2: on stream sid). */
static void request_done(sc_drv *d, peer *p, uint32_t sid)
{
    d->requests++;
    if (d->up_mode == SC_DRV_UP_CANNED) {
        if (p->proto == PROTO_H2) {
            canned_h2_answer(p, sid);
        } else {
            static const char head[] = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ";
            char line[160];
            int n = snprintf(line, sizeof(line), "%s%zu\r\n\r\n%s", head, sizeof(SC_DRV_H1_BODY) - 1,
                             SC_DRV_H1_BODY);
            out_add(p, line, (size_t)n);
        }
    } else if (d->up_mode == SC_DRV_UP_AFTER_REQUEST) {
        p->ext_queued = true;
    }
}

/* Consumes HTTP/1.1 requests from p->in. Returns false when the peer is closed. */
static bool parse_h1(sc_drv *d, peer *p)
{
    for (;;) {
        if (!p->in_body) {
            sc_h1_head h;
            int n = sc_h1_parse_head((const char *)p->in, p->in_len, true, false, NULL, &h, NULL);
            if (n == 0 && p->in_len < PEER_IN)
                return true;
            if (n <= 0) {
                peer_close(p);
                return false;
            }
            sc_h1_body_init(&p->body, h.body, h.content_length, p->trailers, sizeof(p->trailers));
            memmove(p->in, p->in + n, p->in_len - (size_t)n);
            p->in_len -= (size_t)n;
            p->in_body = true;
        }
        size_t used = 0, dlen = 0;
        const char *data = NULL;
        int rv = sc_h1_body_decode(&p->body, (const char *)p->in, p->in_len, &used, &data, &dlen);
        if (rv < 0) {
            peer_close(p);
            return false;
        }
        memmove(p->in, p->in + used, p->in_len - used);
        p->in_len -= used;
        if (rv == SC_H1_BODY_DONE) {
            p->in_body = false;
            request_done(d, p, 0);
            continue;
        }
        if (rv == SC_H1_BODY_NEED_MORE)
            return true;
    }
}

/* Walks h2c frames in p->in (payloads are dropped unread). */
static bool parse_h2(sc_drv *d, peer *p)
{
    size_t off = 0;
    for (;;) {
        if (p->skip) {
            size_t n = p->in_len - off < p->skip ? p->in_len - off : p->skip;
            off += n;
            p->skip -= n;
            if (p->skip)
                break;
        }
        if (p->in_len - off < 9)
            break;
        const uint8_t *h = p->in + off;
        size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
        uint8_t type = h[3], flags = h[4];
        uint32_t sid = ((uint32_t)(h[5] & 0x7f) << 24) | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8];
        off += 9;
        p->skip = len;
        if (type == NGHTTP2_SETTINGS && !(flags & NGHTTP2_FLAG_ACK) && d->up_mode == SC_DRV_UP_CANNED) {
            uint8_t f[9];
            out_add(p, f, sc_drv_h2_frame(f, sizeof(f), NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0, NULL, 0));
        }
        if ((type == NGHTTP2_HEADERS || type == NGHTTP2_DATA) && (flags & NGHTTP2_FLAG_END_STREAM))
            request_done(d, p, sid);
    }
    memmove(p->in, p->in + off, p->in_len - off);
    p->in_len -= off;
    return true;
}

static bool parse_peer(sc_drv *d, peer *p)
{
    if (p->proto == PROTO_UNKNOWN) {
        size_t n = p->in_len < SC_DRV_H2_PREFACE_LEN ? p->in_len : SC_DRV_H2_PREFACE_LEN;
        if (memcmp(p->in, SC_DRV_H2_PREFACE, n) != 0) {
            p->proto = PROTO_H1;
        } else if (n == SC_DRV_H2_PREFACE_LEN) {
            p->proto = PROTO_H2;
            memmove(p->in, p->in + n, p->in_len - n);
            p->in_len -= n;
            if (d->up_mode == SC_DRV_UP_CANNED) {
                uint8_t f[9];
                out_add(p, f, sc_drv_h2_frame(f, sizeof(f), NGHTTP2_SETTINGS, 0, 0, NULL, 0));
            }
        } else {
            return true;
        }
    }
    return p->proto == PROTO_H1 ? parse_h1(d, p) : parse_h2(d, p);
}

static bool peer_pump(sc_drv *d, peer *p)
{
    bool moved = false;
    while (p->fd >= 0 && p->in_len < PEER_IN) {
        ssize_t k = recv(p->fd, p->in + p->in_len, PEER_IN - p->in_len, 0);
        if (k > 0) {
            p->in_len += (size_t)k;
            moved = true;
            if (!parse_peer(d, p))
                return true;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        peer_close(p); /* the sidecar closed its upstream connection */
        return true;
    }
    if (p->fd < 0)
        return moved;
    if (p->in_len == PEER_IN && !parse_peer(d, p))
        return true;
    /* Canned answers first, then the given bytes. */
    while (p->out_off < p->out_len) {
        ssize_t k = send(p->fd, p->out + p->out_off, p->out_len - p->out_off, MSG_NOSIGNAL);
        if (k <= 0)
            break;
        p->out_off += (size_t)k;
        moved = true;
    }
    while (p->out_off == p->out_len && p->ext_queued && p->ext_off < d->up_len) {
        ssize_t k = send(p->fd, d->up_bytes + p->ext_off, d->up_len - p->ext_off, MSG_NOSIGNAL);
        if (k <= 0)
            break;
        p->ext_off += (size_t)k;
        moved = true;
    }
    if (d->up_close && !p->shut && p->ext_queued && p->ext_off == d->up_len) {
        shutdown(p->fd, SHUT_WR);
        p->shut = true;
        moved = true;
    }
    return moved;
}

static bool upstream_pump(sc_drv *d)
{
    bool moved = false;
    for (;;) {
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        moved = true;
        d->accepted++;
        peer *p = NULL;
        for (int i = 0; i < MAX_PEERS && !p; i++)
            if (d->peers[i].fd < 0)
                p = &d->peers[i];
        if (!p) {
            close(fd); /* more connections than a test needs */
            continue;
        }
        memset(p, 0, offsetof(peer, in));
        p->fd = fd;
        p->ext_queued = d->up_mode == SC_DRV_UP_AT_ONCE;
    }
    for (int i = 0; i < MAX_PEERS; i++)
        if (d->peers[i].fd >= 0)
            moved |= peer_pump(d, &d->peers[i]);
    return moved;
}

/* ---- the loop ---- */

unsigned sc_drv_run(sc_drv *d, unsigned max_iter)
{
    unsigned i, idle = 0;
    for (i = 0; i < max_iter && idle < IDLE_ROUNDS; i++) {
        bool moved = caller_pump(d);
        moved |= upstream_pump(d);
        ev_run(d->w->loop, EVRUN_NOWAIT);
        if (moved || !sc_list_empty(&d->w->dirty))
            idle = 0;
        else
            idle++;
    }
    return i;
}

const uint8_t *sc_drv_received(const sc_drv *d, size_t *len, size_t *total)
{
    *len = d->recv_len;
    if (total)
        *total = d->recv_total;
    return d->recv_buf;
}

bool sc_drv_caller_eof(const sc_drv *d) { return d->caller_eof; }
unsigned sc_drv_upstream_accepted(const sc_drv *d) { return d->accepted; }
unsigned sc_drv_upstream_requests(const sc_drv *d) { return d->requests; }
struct sidecar *sc_drv_sidecar(sc_drv *d) { return d->sc; }
struct sc_worker *sc_drv_worker(sc_drv *d) { return d->w; }
