/*
 * worker.c: one event loop per thread. Owns listeners, the connection I/O
 * machinery shared by all protocol implementations (read pause/resume,
 * bounded output with EAGAIN handling, the dirty list flushed once per loop
 * iteration before polling, deferred frees), the block pool, and the drain.
 */
#include "core/log.h"
#include "proxy/codec.h"
#include "proxy/stage.h"
#include "ratelimit/ratelimit.h"
#include "sidecar.h"
#include "tls/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define OUT_CAP (64 * 1024)
#define MAX_FREE_BLOCKS 256
#define MAX_FREE_STREAMS 256
#define ACCEPT_BURST 64
#define ACCEPT_PAUSE_MS 100

/* ---- block pool ----
 *
 * Two block sizes, each with its own free list: stream pipes
 * (limits.stream_buffer) and connection I/O buffers (OUT_CAP, or
 * limits.max_header_bytes + 1 when a whole request head must fit). A buffer
 * asks for a capacity and gets a block of the smallest class that holds it
 * (its usable capacity stays what it asked for), or a malloc of its own
 * above both. The class follows from the capacity alone, so release finds
 * the list a block came from. On the per-request path every buffer comes
 * from a free list once the worker is warm: no malloc, and no 64 KiB blocks
 * handed back to the kernel and faulted in again. */

static int block_class(const sc_worker *w, uint32_t cap, uint32_t *size)
{
    uint32_t a = w->sc->cfg->limits.stream_buffer;
    uint32_t b = SC_MAX((uint32_t)OUT_CAP, w->sc->cfg->limits.max_header_bytes + 1);
    int small = a <= b ? 0 : 1; /* the class with the smaller blocks is tried first */
    uint32_t sz[2] = {a, b};
    if (cap <= sz[small]) {
        *size = sz[small];
        return small;
    }
    if (cap <= sz[!small]) {
        *size = sz[!small];
        return !small;
    }
    *size = cap;
    return -1;
}

int sc_buf_reserve(sc_worker *w, sc_buf *b, uint32_t cap)
{
    if (b->data)
        return 0;
    uint32_t size;
    int k = block_class(w, cap, &size);
    if (k >= 0 && w->free_blocks[k]) {
        b->data = w->free_blocks[k];
        w->free_blocks[k] = *(void **)b->data;
        w->n_free_blocks[k]--;
    } else {
        b->data = malloc(size);
        if (!b->data)
            return -ENOMEM;
    }
    SC_STAT_INC(w->stats->buf_blocks);
    b->cap = cap;
    b->start = b->end = 0;
    return 0;
}

void sc_buf_release(sc_worker *w, sc_buf *b)
{
    if (!b->data)
        return;
    SC_STAT_DEC(w->stats->buf_blocks);
    uint32_t size;
    int k = block_class(w, b->cap, &size);
    if (k >= 0 && w->n_free_blocks[k] < MAX_FREE_BLOCKS) {
        *(void **)b->data = w->free_blocks[k];
        w->free_blocks[k] = b->data;
        w->n_free_blocks[k]++;
    } else {
        free(b->data);
    }
    b->data = NULL;
    b->start = b->end = 0;
}

/* ---- sockets ---- */

static int set_nodelay(int fd)
{
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* SO_REUSEPORT would let a second sidecar bind the same address silently and
 * take half the connections. A probe bind without it fails with EADDRINUSE
 * when any other socket holds the address, ours included, so this runs once
 * per address before the first worker binds. */
int sc_listen_probe(const sc_addr *a, char *err, size_t errlen)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket(): %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    int rv = 0;
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
        rv = -errno;
        snprintf(err, errlen, "cannot listen on %s: %s%s", a->text, strerror(errno),
                 errno == EADDRINUSE ? " (another process, perhaps another sidecar, holds it)" : "");
    }
    close(fd);
    return rv;
}

int sc_listen_socket(const sc_addr *a, int *fd_out, char *err, size_t errlen)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket(): %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        int e = errno;
        snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(e));
        close(fd);
        return -e;
    }
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 1024) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(e));
        close(fd);
        return -e;
    }
    *fd_out = fd;
    return 0;
}

int sc_socket_connect(const struct sockaddr *sa, socklen_t len, int *fd_out)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    set_nodelay(fd);
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    *fd_out = fd;
    return 0;
}

void sc_sockaddr_text(const struct sockaddr *sa, char *out, size_t cap)
{
    char host[64] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(out, cap, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(out, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(out, cap, "?");
    }
}

/* ---- connection I/O ---- */

ssize_t sc_conn_recv(sc_conn *c, void *buf, size_t len)
{
    if (!c->ssl)
        return recv(c->fd, buf, len, 0);
    sc_tls_want want = SC_TLS_WANT_NONE;
    ssize_t n = sc_tls_read(c->ssl, buf, len, &want);
    if (n >= 0)
        return n;
    errno = (int)-n;
    return -1;
}

ssize_t sc_conn_send(sc_conn *c, const void *buf, size_t len)
{
    if (!c->ssl)
        return send(c->fd, buf, len, MSG_NOSIGNAL);
    sc_tls_want want = SC_TLS_WANT_NONE;
    ssize_t n = sc_tls_write(c->ssl, buf, len, &want);
    if (n >= 0)
        return n;
    errno = (int)-n;
    return -1;
}

static void conn_update_events(sc_conn *c);

/* Bytes already decrypted inside OpenSSL: epoll will not report them. */
static bool tls_pending(const sc_conn *c)
{
    return c->ssl && !(c->flags & SC_CONN_F_TLS_HS) && sc_tls_pending(c->ssl);
}

bool sc_conn_pending(const sc_conn *c)
{
    return tls_pending(c);
}

static void conn_update_events(sc_conn *c)
{
    if (c->flags & SC_CONN_F_CLOSED)
        return;
    int ev = 0;
    if (!(c->flags & (SC_CONN_F_READ_PAUSED | SC_CONN_F_EOF)))
        ev |= EV_READ;
    if (c->flags & SC_CONN_F_TLS_HS)
        ev = (c->flags & SC_CONN_F_TLS_HS_WRITE) ? EV_WRITE : EV_READ;
    else if (c->flags & (SC_CONN_F_WANT_WRITE | SC_CONN_F_CONNECTING))
        ev |= EV_WRITE;
    if (ev == (c->io.events & (EV_READ | EV_WRITE)) && ev_is_active(&c->io))
        return;
    ev_io_stop(c->w->loop, &c->io);
    ev_io_set(&c->io, c->fd, ev);
    if (ev)
        ev_io_start(c->w->loop, &c->io);
}

void sc_conn_pause_read(sc_conn *c)
{
    if (c->flags & SC_CONN_F_READ_PAUSED)
        return;
    c->flags |= SC_CONN_F_READ_PAUSED;
    conn_update_events(c);
}

void sc_conn_resume_read(sc_conn *c)
{
    if (!(c->flags & SC_CONN_F_READ_PAUSED))
        return;
    c->flags &= ~SC_CONN_F_READ_PAUSED;
    conn_update_events(c);
    /* Bytes may already wait in c->in (pipelined HTTP/1) or inside TLS: let the codec look. */
    if ((sc_buf_len(&c->in) || tls_pending(c)) && !(c->flags & SC_CONN_F_CLOSED))
        sc_conn_mark_dirty(c);
}

void sc_conn_mark_dirty(sc_conn *c)
{
    if (c->flags & (SC_CONN_F_DIRTY | SC_CONN_F_CLOSED))
        return;
    c->flags |= SC_CONN_F_DIRTY;
    sc_list_push(&c->w->dirty, &c->dirty_link);
}

int sc_conn_write(sc_conn *c, const void *p, size_t n)
{
    if (sc_buf_reserve(c->w, &c->out, OUT_CAP) < 0)
        return -ENOMEM;
    if (sc_buf_space(&c->out) < n)
        return -ENOBUFS;
    memcpy(sc_buf_tail(&c->out), p, n);
    c->out.end += (uint32_t)n;
    return 0;
}

int sc_h2_produce(sc_conn *c, nghttp2_session *session)
{
    if (sc_buf_reserve(c->w, &c->out, OUT_CAP) < 0)
        return -ENOMEM;
    for (;;) {
        if (c->pend_len) {
            size_t space = sc_buf_space(&c->out);
            size_t n = SC_MIN(space, c->pend_len);
            memcpy(sc_buf_tail(&c->out), c->pend, n);
            c->out.end += (uint32_t)n;
            c->pend += n;
            c->pend_len -= n;
            if (c->pend_len)
                return 0; /* full: the socket must take some first */
        }
        if (sc_buf_space(&c->out) < 1024)
            return 0;
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(session, &data);
        if (n < 0)
            return -EPROTO;
        if (n == 0)
            return 0;
        c->pend = data;
        c->pend_len = (size_t)n;
    }
}

int sc_h2_feed(sc_conn *c, nghttp2_session *session, int eof_err)
{
    uint8_t buf[16384];
    for (int i = 0; i < 8; i++) {
        ssize_t n = sc_conn_recv(c, buf, sizeof(buf));
        if (n > 0) {
            ssize_t rv = nghttp2_session_mem_recv(session, buf, (size_t)n);
            if (rv < 0)
                return (int)rv;
            sc_conn_mark_dirty(c);
            if ((size_t)n < sizeof(buf))
                return 0;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        sc_conn_close(c, n < 0 ? -errno : eof_err);
        return 1;
    }
    return 0;
}

/* Writes what c->out holds, asking the protocol for more while the socket
 * takes it. Returns 0, or -1 when the connection was closed. */
static int conn_flush(sc_conn *c)
{
    int rounds;
    for (rounds = 0; rounds < 64; rounds++) {
        if (c->flags & SC_CONN_F_CLOSED)
            return -1;
        if (!(c->flags & SC_CONN_F_CONNECTING) && c->ops->produce) {
            int rv = c->ops->produce(c);
            if (rv < 0) {
                sc_conn_close(c, rv);
                return -1;
            }
            if (c->flags & SC_CONN_F_CLOSED)
                return -1;
        }
        size_t len = sc_buf_len(&c->out);
        if (len == 0)
            break;
        ssize_t n = sc_conn_send(c, sc_buf_head(&c->out), len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->flags |= SC_CONN_F_WANT_WRITE;
                conn_update_events(c);
                return 0;
            }
            if (errno == EINTR)
                continue;
            sc_conn_close(c, -errno);
            return -1;
        }
        sc_buf_consume(&c->out, (size_t)n);
        if ((size_t)n < len) {
            c->flags |= SC_CONN_F_WANT_WRITE;
            conn_update_events(c);
            return 0;
        }
    }
    if (rounds == 64 && !(c->flags & SC_CONN_F_WANT_WRITE)) {
        /* Out of rounds while the socket still takes bytes: the codec may have
         * more (nghttp2 output in c->pend) even if `out` is empty now. */
        sc_conn_mark_dirty(c);
        return 0;
    }
    if (sc_buf_len(&c->out) == 0 && !c->pend_len) {
        if (c->flags & SC_CONN_F_WANT_WRITE) {
            c->flags &= ~SC_CONN_F_WANT_WRITE;
            conn_update_events(c);
        }
        sc_buf_release(c->w, &c->out);
        if (c->flags & SC_CONN_F_CLOSING) {
            sc_conn_close(c, 0);
            return -1;
        }
        if (c->ops->on_drained)
            c->ops->on_drained(c);
    } else if (!(c->flags & SC_CONN_F_WANT_WRITE)) {
        /* Output left that the socket did not refuse: come back next iteration. */
        sc_conn_mark_dirty(c);
    }
    return 0;
}

/* Log lines anyone who can reach a listener causes one per connection
 * (failed inbound handshakes, connections refused at the limit, accept(2)
 * out of descriptors): at most one a second each across all workers, the
 * next one says how many were suppressed; the counters keep every event. */
static sc_ratelimit inbound_tls_log_limit, max_conns_log_limit, fd_log_limit;

/* One step of the TLS handshake; on completion the protocol takes over. */
static void tls_step(sc_conn *c)
{
    sc_tls_want want = SC_TLS_WANT_NONE;
    int rv = sc_tls_handshake(c->ssl, &want);
    if (rv == -EAGAIN) {
        if (want == SC_TLS_WANT_WRITE)
            c->flags |= SC_CONN_F_TLS_HS_WRITE;
        else
            c->flags &= ~SC_CONN_F_TLS_HS_WRITE;
        conn_update_events(c);
        return;
    }
    sc_worker_stats *ws = c->w->stats;
    if (rv < 0) {
        if (rv == -EACCES)
            SC_STAT_INC(ws->tls_refused);
        else
            SC_STAT_INC(ws->tls_failed);
        bool inbound = !(c->ops->flags & SC_CONN_OPS_UPSTREAM);
        SC_WARN_LIMITED(inbound ? &inbound_tls_log_limit : &c->route->log_limit,
                        "%s %s: TLS handshake with %s failed: %s", inbound ? "listener" : "upstream", c->route->name,
                        c->peer_text, sc_tls_conn_error(c->ssl));
        sc_conn_close(c, rv == -EACCES ? -EACCES : -EPROTO);
        return;
    }
    SC_STAT_INC(ws->tls_handshakes);
    if (sc_tls_session_reused(c->ssl))
        SC_STAT_INC(ws->tls_resumed);
    bool connecting = (c->flags & SC_CONN_F_CONNECTING) != 0;
    c->flags &= ~(SC_CONN_F_TLS_HS | SC_CONN_F_TLS_HS_WRITE | SC_CONN_F_CONNECTING);
    if (c->ops->flags & SC_CONN_OPS_UPSTREAM)
        ev_timer_stop(c->w->loop, &c->timer); /* the connect timeout covered the handshake */
    conn_update_events(c);
    if (c->ops->on_handshake)
        c->ops->on_handshake(c);
    if (connecting && c->ops->on_connected && !(c->flags & SC_CONN_F_CLOSED))
        c->ops->on_connected(c);
    if (!(c->flags & SC_CONN_F_CLOSED))
        sc_conn_mark_dirty(c);
}

void sc_conn_start_tls(sc_conn *c, SSL *ssl)
{
    c->ssl = ssl;
    if (!(c->flags & SC_CONN_F_CONNECTING)) {
        c->flags |= SC_CONN_F_TLS_HS; /* accepted: the caller speaks first */
        conn_update_events(c);
    }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    sc_conn *c = SC_CONTAINER_OF(io, sc_conn, io);
    sc_worker_tick(c->w);
    if (c->flags & SC_CONN_F_TLS_HS) {
        tls_step(c);
        return;
    }
    if (revents & EV_WRITE) {
        if (c->flags & SC_CONN_F_CONNECTING) {
            int err = 0;
            socklen_t l = sizeof(err);
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            if (err) {
                sc_conn_close(c, -err);
                return;
            }
            if (c->ssl) {
                /* TCP is up: the handshake runs under the same connect timer. */
                c->flags |= SC_CONN_F_TLS_HS;
                tls_step(c);
                return;
            }
            c->flags &= ~SC_CONN_F_CONNECTING;
            ev_timer_stop(c->w->loop, &c->timer);
            conn_update_events(c);
            if (c->ops->on_connected)
                c->ops->on_connected(c);
        } else {
            c->flags &= ~SC_CONN_F_WANT_WRITE;
            conn_update_events(c);
        }
        if (conn_flush(c) < 0)
            return;
    }
    if ((revents & EV_READ) && !(c->flags & SC_CONN_F_CLOSED))
        c->ops->on_readable(c);
}

void sc_conn_init(sc_conn *c, sc_worker *w, int fd, const sc_conn_ops *ops, sc_route *route)
{
    memset(c, 0, sizeof(*c));
    c->w = w;
    c->fd = fd;
    c->ops = ops;
    c->route = route;
    ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
    ev_init(&c->timer, NULL);
}

void sc_conn_deadline(sc_conn *c, uint64_t ms)
{
    if (!ms) {
        c->deadline_ns = 0;
        return;
    }
    uint64_t now = sc_worker_now_ns(c->w);
    c->deadline_ns = now + ms * 1000000u;
    sc_deadline_timer(c->w->loop, &c->timer, &c->timer_at_ns, now, c->deadline_ns);
}

bool sc_conn_deadline_due(sc_conn *c)
{
    c->timer_at_ns = 0; /* it fired */
    if (!c->deadline_ns)
        return false;
    uint64_t now = sc_worker_now_ns(c->w);
    if (!sc_deadline_passed(c->deadline_ns, now)) {
        sc_deadline_timer(c->w->loop, &c->timer, &c->timer_at_ns, now, c->deadline_ns);
        return false;
    }
    c->deadline_ns = 0;
    return true;
}

static sc_link *graveyard_of(sc_worker *w);

void sc_conn_close(sc_conn *c, int err)
{
    if (c->flags & SC_CONN_F_CLOSED)
        return;
    c->flags |= SC_CONN_F_CLOSED;
    ev_io_stop(c->w->loop, &c->io);
    ev_timer_stop(c->w->loop, &c->timer);
    if (c->flags & SC_CONN_F_DIRTY) {
        sc_list_remove(&c->dirty_link);
        c->flags &= ~SC_CONN_F_DIRTY;
    }
    c->ops->on_close(c, err);
    sc_list_remove(&c->link);
    if (c->ssl) {
        if (!(c->flags & SC_CONN_F_TLS_HS) && err >= 0) {
            sc_tls_want want;
            sc_tls_shutdown(c->ssl, &want); /* one non-blocking close_notify */
        }
        sc_tls_ssl_free(c->ssl);
        c->ssl = NULL;
    }
    close(c->fd);
    c->fd = -1;
    sc_buf_release(c->w, &c->out);
    sc_buf_release(c->w, &c->in);
    /* Freed before the next poll: callbacks up the stack may still look at it. */
    sc_list_push(graveyard_of(c->w), &c->dirty_link);
}

void sc_conn_close_after_flush(sc_conn *c)
{
    c->flags |= SC_CONN_F_CLOSING;
    sc_conn_pause_read(c);
    sc_conn_mark_dirty(c);
}

/* ---- worker loop ---- */

typedef struct worker_priv {
    sc_link graveyard;
} worker_priv;

static _Thread_local worker_priv *t_priv;
/* For a worker loop run on a thread that is not its own (sc_worker_loop_begin:
 * the test driver), and for connections closed outside any worker thread. */
static worker_priv g_main_priv = {{&g_main_priv.graveyard, &g_main_priv.graveyard}};

static sc_link *graveyard_of(sc_worker *w)
{
    (void)w;
    return t_priv ? &t_priv->graveyard : &g_main_priv.graveyard;
}

static void bury(sc_link *g)
{
    while (!sc_list_empty(g)) {
        sc_link *l = g->next;
        sc_list_remove(l);
        free(SC_CONTAINER_OF(l, sc_conn, dirty_link));
    }
}

static void flush_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)loop;
    (void)revents;
    sc_worker *w = SC_CONTAINER_OF(p, sc_worker, flush);
    /* Connections made dirty during a flush are handled in the same pass, up
     * to a bound so that two connections feeding each other cannot starve
     * the rest of the loop; what is left keeps the loop from sleeping (idle
     * watcher below), since nothing else would wake it for this work. */
    for (int guard = 0; guard < 256 && !sc_list_empty(&w->dirty); guard++) {
        sc_link *l = w->dirty.next;
        sc_list_remove(l);
        sc_conn *c = SC_CONTAINER_OF(l, sc_conn, dirty_link);
        c->flags &= ~SC_CONN_F_DIRTY;
        if (c->flags & SC_CONN_F_WANT_WRITE) {
            /* Output is stuck; the codec may still have parsing to do. */
            if (sc_buf_len(&c->in) && !(c->flags & SC_CONN_F_READ_PAUSED))
                c->ops->on_readable(c);
            continue;
        }
        /* HTTP/1 bytes that arrived while the reader was paused are parsed now:
         * the socket will not signal them again. */
        if (!(c->flags & (SC_CONN_F_READ_PAUSED | SC_CONN_F_CLOSING | SC_CONN_F_TLS_HS)) &&
            ((sc_buf_len(&c->in) && (c->ops->flags & SC_CONN_OPS_BUFFERS_INPUT)) ||
             tls_pending(c)))
            c->ops->on_readable(c);
        if (!(c->flags & SC_CONN_F_CLOSED))
            conn_flush(c);
    }
    bury(graveyard_of(w));
    if (!sc_list_empty(&w->dirty)) {
        if (!ev_is_active(&w->more))
            ev_idle_start(w->loop, &w->more);
    } else if (ev_is_active(&w->more)) {
        ev_idle_stop(w->loop, &w->more);
    }
    if (w->draining && w->n_down_conns == 0)
        ev_break(w->loop, EVBREAK_ALL);
    sc_epoch_leave(&w->epoch);
}

/* Exists to make the next poll return at once while dirty work is left. */
static void more_cb(struct ev_loop *loop, ev_idle *i, int revents)
{
    (void)loop;
    (void)i;
    (void)revents;
}

static void check_cb(struct ev_loop *loop, ev_check *c, int revents)
{
    (void)loop;
    (void)revents;
    sc_worker *w = SC_CONTAINER_OF(c, sc_worker, check);
    sc_worker_tick(w); /* a new iteration: timers and wake-ups read the clock afresh */
    sc_epoch_enter(&w->epoch);
}

/* Out of descriptors, the pending connection stays in the backlog and the
 * listener stays readable: accepting again at once would spin. Every
 * listener of the worker rests for ACCEPT_PAUSE_MS instead, while
 * connections that close give descriptors back. */
static void pause_listeners(sc_worker *w)
{
    for (size_t i = 0; i < w->sc->n_routes; i++)
        ev_io_stop(w->loop, &w->listeners[i]);
    ev_timer_set(&w->accept_pause, ACCEPT_PAUSE_MS / 1000.0, 0);
    ev_timer_start(w->loop, &w->accept_pause);
}

static void accept_pause_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    sc_worker *w = SC_CONTAINER_OF(t, sc_worker, accept_pause);
    for (size_t i = 0; i < w->sc->n_routes && !w->draining; i++)
        if (w->listeners[i].fd >= 0)
            ev_io_start(loop, &w->listeners[i]);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    sc_worker *w = io->data;
    unsigned idx = (unsigned)(io - w->listeners);
    sc_route *route = &w->sc->routes[idx];
    for (int i = 0; i < ACCEPT_BURST; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                SC_WARN_LIMITED(&fd_log_limit, "listener %s: out of file descriptors (%s); raise the limit (ulimit -n); "
                                "not accepting for %dms", route->name, strerror(errno), ACCEPT_PAUSE_MS);
                pause_listeners(w);
            }
            return;
        }
        if (w->n_down_conns >= w->sc->cfg->limits.max_connections) {
            SC_STAT_INC(w->stats->down_conns_refused);
            SC_WARN_LIMITED(&max_conns_log_limit,
                            "listener %s: refusing connection: %u connections open on this worker "
                            "(limits.max_connections)", route->name, w->n_down_conns);
            close(fd);
            continue;
        }
        set_nodelay(fd);
        sc_down_accept(w, route, fd, (struct sockaddr *)&ss, len);
    }
}

static void stop_listeners(sc_worker *w)
{
    ev_timer_stop(w->loop, &w->accept_pause);
    for (size_t i = 0; i < w->sc->n_routes; i++) {
        if (w->listeners[i].fd >= 0) {
            ev_io_stop(w->loop, &w->listeners[i]);
            close(w->listeners[i].fd);
            w->listeners[i].fd = -1;
        }
    }
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    sc_worker *w = SC_CONTAINER_OF(t, sc_worker, drain_timer);
    SC_WARN("drain timeout: closing %u connections with requests still in flight", w->n_down_conns);
    ev_break(loop, EVBREAK_ALL);
}

/* Bulkhead slots are process-wide, queues are per worker: a slot freed on
 * another worker is picked up here within a few milliseconds. */
static void promote_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    sc_worker *w = SC_CONTAINER_OF(t, sc_worker, promote);
    if (!sc_stage_bulkhead_promote(w))
        ev_timer_stop(loop, t);
}

/* Connections of `rt` still open drain_timeout after the route was removed
 * are closed, as at shutdown. */
static void close_route_conns(sc_worker *w, const sc_route *rt)
{
    unsigned n = 0;
    sc_link *k = w->down_conns.next;
    while (k != &w->down_conns) {
        sc_conn *c = SC_CONTAINER_OF(k, sc_conn, link);
        k = k->next;
        if (c->route == rt) {
            sc_conn_close(c, -ECANCELED);
            n++;
        }
    }
    if (n)
        SC_WARN("upstream %s removed: drain timeout: closed %u connections with requests still in flight", rt->name,
                n);
}

static void route_drain_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    sc_worker *w = SC_CONTAINER_OF(t, sc_worker, route_drain);
    uint64_t now = sc_now_ms(), timeout = w->sc->cfg->drain_timeout_ms, next = 0;
    size_t n = atomic_load(&w->sc->n_routes);
    for (size_t i = 0; i < n && i < w->route_slots; i++) {
        sc_route_state *rs = &w->rstate[i];
        if (!rs->removed_ms)
            continue;
        if (sc_route_active(&w->sc->routes[i])) {
            rs->removed_ms = 0;
        } else if (now - rs->removed_ms >= timeout) {
            rs->removed_ms = 0;
            close_route_conns(w, &w->sc->routes[i]);
        } else if (!next || rs->removed_ms + timeout < next) {
            next = rs->removed_ms + timeout;
        }
    }
    if (next) {
        ev_timer_set(t, (double)(next - now) / 1000.0, 0);
        ev_timer_start(loop, t);
    }
}

/* SC_WAKE_ROUTES: listeners handed over replace the route's (the new
 * socket is open before the old one closes, so a moved listener loses no
 * connection the kernel has not queued on the old one yet); a removed
 * route's listener closes and its connections drain like at shutdown
 * (requests in flight finish, keep-alive ends with them; what is still
 * open after drain_timeout is closed by route_drain_cb). */
static void routes_changed(sc_worker *w)
{
    size_t n = atomic_load(&w->sc->n_routes);
    for (size_t i = 0; i < n && i < w->route_slots; i++) {
        sc_route *rt = &w->sc->routes[i];
        ev_io *l = &w->listeners[i];
        int fd = atomic_exchange(&w->handoff[i], -1);
        bool gone = !sc_route_active(rt);
        if (fd >= 0 && (gone || w->draining)) {
            close(fd);
            fd = -1;
        }
        if (fd < 0 && !(gone && l->fd >= 0))
            continue;
        if (l->fd >= 0) {
            if (fd >= 0) /* connections already queued on the old socket are taken first */
                for (int burst = 0; burst < 16 && l->fd >= 0; burst++)
                    accept_cb(w->loop, l, EV_READ);
            ev_io_stop(w->loop, l);
            close(l->fd);
        }
        ev_io_set(l, fd, EV_READ);
        if (fd >= 0 && !ev_is_active(&w->accept_pause))
            ev_io_start(w->loop, l);
        if (!gone) {
            w->rstate[i].removed_ms = 0; /* added again: a later removal drains from then */
            continue;
        }
        if (!w->rstate[i].removed_ms) {
            w->rstate[i].removed_ms = sc_now_ms();
            if (!ev_is_active(&w->route_drain)) {
                ev_timer_set(&w->route_drain, (double)w->sc->cfg->drain_timeout_ms / 1000.0, 0);
                ev_timer_start(w->loop, &w->route_drain);
            }
        }
        sc_link *k = w->down_conns.next;
        while (k != &w->down_conns) {
            sc_conn *c = SC_CONTAINER_OF(k, sc_conn, link);
            k = k->next;
            if (c->route == rt)
                c->ops->down->drain(c);
        }
    }
}

void sc_worker_wake(sc_worker *w, unsigned reasons)
{
    atomic_fetch_or_explicit(&w->wake, reasons, memory_order_release);
    ev_async_send(w->loop, &w->wakeup);
}

static void wakeup_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    sc_worker *w = SC_CONTAINER_OF(a, sc_worker, wakeup);
    unsigned why = atomic_exchange_explicit(&w->wake, 0, memory_order_acquire);
    if (why & SC_WAKE_STOP)
        w->stopping = true;
    if (w->stopping) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    if (why & SC_WAKE_AUTHZ)
        sc_stage_authz_wake(w);
    if (why & SC_WAKE_JWT)
        sc_stage_jwt_wake(w);
    if (why & SC_WAKE_ROUTES)
        routes_changed(w);
    if (!(why & SC_WAKE_DRAIN) || w->draining)
        return;
    /* Connections the kernel completed on this worker's listening sockets
     * but nobody accepted yet would be reset when the sockets close: take
     * them first (bounded), so the drain below serves their first request. */
    for (size_t i = 0; i < w->sc->n_routes; i++)
        for (int burst = 0; burst < 16 && w->listeners[i].fd >= 0; burst++)
            accept_cb(loop, &w->listeners[i], EV_READ);
    w->draining = true;
    stop_listeners(w);
    ev_timer_init(&w->drain_timer, drain_timeout_cb, (double)w->sc->cfg->drain_timeout_ms / 1000.0, 0);
    ev_timer_start(loop, &w->drain_timer);
    sc_link *l = w->down_conns.next;
    while (l != &w->down_conns) {
        sc_conn *c = SC_CONTAINER_OF(l, sc_conn, link);
        l = l->next;
        c->ops->down->drain(c);
    }
}

/* nghttp2_mem of the worker's upstream sessions: its small-block pool
 * (only the worker's thread allocates and frees through it). */
static void *pool_malloc(size_t n, void *ud) { return sc_smallpool_alloc(ud, n); }
static void pool_free(void *p, void *ud) { sc_smallpool_free(ud, p); }
static void *pool_calloc(size_t k, size_t n, void *ud) { return sc_smallpool_calloc(ud, k, n); }
static void *pool_realloc(void *p, size_t n, void *ud) { return sc_smallpool_realloc(ud, p, n); }

static int worker_init(sc_worker *w, sidecar *sc, unsigned id)
{
    w->id = id;
    w->sc = sc;
    sc_smallpool_init(&w->h2pool, SC_H2POOL_CLASS_BYTES);
    w->h2mem = (nghttp2_mem){&w->h2pool, pool_malloc, pool_free, pool_calloc, pool_realloc};
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    if (!w->loop)
        return -ENOMEM;
    sc_list_init(&w->dirty);
    sc_list_init(&w->down_conns);
    sc_list_init(&w->streams);
    sc_list_init(&w->authz_waiters);
    sc_list_init(&w->jwt_waiters);
    sc_list_init(&w->rl_waiters);
    size_t n = sc->n_routes;
    w->route_slots = sc->routes_cap > n ? sc->routes_cap : n;
    w->rstate = sc_xcalloc(w->route_slots, sizeof(*w->rstate));
    for (size_t i = 0; i < w->route_slots; i++) {
        sc_list_init(&w->rstate[i].h2_conns);
        sc_list_init(&w->rstate[i].h1_idle);
        sc_list_init(&w->rstate[i].waiters);
        sc_stream_deadlines_init(&w->rstate[i], w->loop);
        sc_lb_ctx_init(&w->rstate[i].lb, sc_now_ns() ^ ((uint64_t)(id + 1) << 32) ^ i);
    }
    w->stats = sc_xcalloc(1, sizeof(sc_worker_stats) + w->route_slots * sizeof(sc_route_stats));
    w->stats->n_routes = w->route_slots;
    w->listeners = sc_xcalloc(w->route_slots, sizeof(ev_io));
    w->handoff = sc_xcalloc(w->route_slots, sizeof(*w->handoff));
    for (size_t i = 0; i < w->route_slots; i++) {
        atomic_init(&w->handoff[i], -1);
        ev_io_init(&w->listeners[i], accept_cb, -1, EV_READ); /* a slot a reload may fill */
        w->listeners[i].data = w;
    }
    for (size_t i = 0; i < n; i++) {
        int fd;
        char err[256];
        if (id == 0) {
            const sc_addr *pa = sc->routes[i].inbound ? &sc->cfg->inbound.listen : &sc->routes[i].policy->listen;
            if (sc_listen_probe(pa, err, sizeof(err)) < 0) {
                SC_ERROR("%s listener: %s", sc->routes[i].name, err);
                for (size_t j = 0; j < i; j++)
                    close(w->listeners[j].fd);
                return -EADDRINUSE;
            }
        }
        const sc_addr *a = sc->routes[i].inbound ? &sc->cfg->inbound.listen : &sc->routes[i].policy->listen;
        int rv = sc_listen_socket(a, &fd, err, sizeof(err));
        if (rv < 0) {
            SC_ERROR("%s listener: %s", sc->routes[i].name, err);
            for (size_t j = 0; j < i; j++)
                close(w->listeners[j].fd);
            return rv;
        }
        ev_io_init(&w->listeners[i], accept_cb, fd, EV_READ);
        w->listeners[i].data = w;
    }
    w->tls_sessions = sc_tls_session_cache_new(1024);
    /* Armed here, before the thread exists: a drain or stop requested between
     * pthread_create and the loop's first iteration (a SIGTERM right after
     * /ready turned 200) is then kept as pending. Started later, on the
     * worker's thread, ev_async_start would clear the request and the worker
     * would never drain. */
    ev_async_init(&w->wakeup, wakeup_cb);
    ev_async_start(w->loop, &w->wakeup);
    ev_init(&w->accept_pause, accept_pause_cb);
    ev_init(&w->route_drain, route_drain_cb);
    ev_init(&w->promote, promote_cb);
    w->promote.repeat = 0.005;
    const char *delay = getenv("SIDECAR_TEST_WORKER_START_DELAY_MS");
    if (delay)
        w->start_delay_ms = (unsigned)strtoul(delay, NULL, 10) % 10000u;
    ev_prepare_init(&w->flush, flush_cb);
    ev_idle_init(&w->more, more_cb);
    ev_check_init(&w->check, check_cb);
    ev_set_priority(&w->check, EV_MAXPRI);
    return 0;
}

void sc_worker_loop_begin(sc_worker *w)
{
    for (size_t i = 0; i < w->sc->n_routes; i++)
        if (w->listeners[i].fd >= 0)
            ev_io_start(w->loop, &w->listeners[i]);
    ev_prepare_start(w->loop, &w->flush);
    ev_check_start(w->loop, &w->check);
    sc_epoch_enter(&w->epoch);
    if (w->sc->ratelimit && sc_rl_runtime_has_global(w->sc->ratelimit) && !(w->rl = sc_rl_worker_new(w->sc->ratelimit, w->loop)))
        SC_ERROR("worker %u: no memory for a Redis client: global rate limits follow their on_error", w->id);
}

void sc_worker_loop_end(sc_worker *w)
{
    /* Whatever is still open after the drain is cut now. */
    stop_listeners(w);
    while (!sc_list_empty(&w->down_conns))
        sc_conn_close(SC_CONTAINER_OF(w->down_conns.next, sc_conn, link), -ECANCELED);
    for (size_t i = 0; i < w->sc->n_routes; i++) {
        sc_route_state *rs = &w->rstate[i];
        while (!sc_list_empty(&rs->h2_conns))
            sc_conn_close(SC_CONTAINER_OF(rs->h2_conns.next, sc_conn, link), -ECANCELED);
        while (!sc_list_empty(&rs->h1_idle))
            sc_conn_close(SC_CONTAINER_OF(rs->h1_idle.next, sc_conn, link), -ECANCELED);
    }
    bury(graveyard_of(w));
    for (size_t i = 0; i < w->route_slots; i++) { /* every stream is gone */
        sc_dq_stop(&w->rstate[i].deadlines);
        sc_dq_stop(&w->rstate[i].try_deadlines);
    }
    sc_rl_worker_free(w->rl); /* no stream waits for Redis now */
    w->rl = NULL;
    sc_epoch_leave(&w->epoch);
}

static void *worker_main(void *arg)
{
    sc_worker *w = arg;
    char name[16];
    snprintf(name, sizeof(name), "worker-%u", w->id);
    sc_log_set_thread_name(name);
    worker_priv priv;
    sc_list_init(&priv.graveyard);
    t_priv = &priv;
    if (w->start_delay_ms) /* test hook: widens the window between thread start and loop start */
        usleep((useconds_t)w->start_delay_ms * 1000u);
    sc_worker_loop_begin(w);
    ev_run(w->loop, 0);
    sc_worker_loop_end(w);
    atomic_fetch_sub(&w->sc->workers_running, 1);
    t_priv = NULL;
    return NULL;
}

int sc_worker_start(sc_worker *w)
{
    sc_epoch_register(&w->epoch);
    int rv = pthread_create(&w->thread, NULL, worker_main, w);
    return rv ? -rv : 0;
}

void sc_worker_join(sc_worker *w)
{
    pthread_join(w->thread, NULL);
}

sc_worker *sc_worker_new(sidecar *sc, unsigned id, int *err)
{
    sc_worker *w = calloc(1, sizeof(*w));
    if (!w) {
        *err = -ENOMEM;
        return NULL;
    }
    int rv = worker_init(w, sc, id);
    if (rv < 0) {
        sc_worker_free(w);
        *err = rv;
        return NULL;
    }
    return w;
}

void sc_worker_free(sc_worker *w)
{
    if (!w)
        return;
    for (int k = 0; k < 2; k++)
        while (w->free_blocks[k]) {
            void *b = w->free_blocks[k];
            w->free_blocks[k] = *(void **)b;
            free(b);
        }
    while (w->free_streams) {
        void *s = w->free_streams;
        w->free_streams = *(void **)s;
        free(s);
    }
    sc_smallpool_drain(&w->h2pool); /* every session is gone (sc_worker_loop_end) */
    sc_tls_session_cache_free(w->tls_sessions);
    if (w->loop)
        ev_loop_destroy(w->loop);
    for (size_t i = 0; w->rstate && i < w->route_slots; i++) {
        free(w->rstate[i].skip);
        free(w->rstate[i].load);
    }
    for (size_t i = 0; w->handoff && i < w->route_slots; i++)
        if (w->handoff[i] >= 0)
            close(w->handoff[i]);
    free(w->handoff);
    free(w->rstate);
    free(w->stats);
    free(w->listeners);
    free(w);
}

int sc_workers_bind(const sidecar *sc, const sc_addr *a, bool probe, int *fds, char *err, size_t errlen)
{
    int rv = probe ? sc_listen_probe(a, err, errlen) : 0;
    for (unsigned i = 0; rv == 0 && i < sc->n_workers; i++) {
        rv = sc_listen_socket(a, &fds[i], err, errlen);
        if (rv < 0)
            while (i > 0)
                close(fds[--i]);
    }
    return rv;
}

void sc_workers_hand(sidecar *sc, size_t route, int *fds)
{
    for (unsigned i = 0; i < sc->n_workers; i++) {
        sc_worker *w = sc->workers[i];
        int old = w && route < w->route_slots ? atomic_exchange(&w->handoff[route], fds[i]) : fds[i];
        if (old >= 0)
            close(old);
        fds[i] = -1;
    }
    sc_workers_wake(sc, SC_WAKE_ROUTES);
}

void sc_workers_wake(sidecar *sc, unsigned reasons)
{
    for (unsigned i = 0; i < sc->n_workers; i++)
        if (sc->workers[i])
            sc_worker_wake(sc->workers[i], reasons);
}

uint64_t sc_workers_sum(const sidecar *sc, size_t off)
{
    uint64_t t = 0;
    for (unsigned i = 0; sc->workers && i < sc->n_workers; i++)
        if (sc->workers[i])
            t += SC_STAT_GET(*(const sc_counter *)((const char *)sc->workers[i]->stats + off));
    return t;
}

uint64_t sc_workers_sum_route(const sidecar *sc, size_t route, size_t off)
{
    uint64_t t = 0;
    for (unsigned i = 0; sc->workers && i < sc->n_workers; i++)
        if (sc->workers[i] && route < sc->workers[i]->stats->n_routes)
            t += SC_STAT_GET(*(const sc_counter *)((const char *)&sc->workers[i]->stats->routes[route] + off));
    return t;
}
