/*
 * redis.c: the per-worker Redis client of global rate limits (redis.h).
 *
 * One connection per client. Commands are pipelined: each one written is
 * remembered in a ring of slots, oldest first, and Redis answers in order,
 * so the next reply belongs to the oldest slot. A decision whose budget
 * ran out (or that was cancelled) leaves its slot with no call: the reply
 * still arrives and is dropped.
 */
#include "ratelimit/redis.h"
#include "core/common.h"
#include "core/prom.h"
#include "tls/tls.h"

#include <hiredis/hiredis.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * GCRA in Redis (bucket.h has the math). KEYS[1]: the bucket. ARGV[1]: the
 * emission interval, ARGV[2]: the tolerance (burst x interval), both in
 * microseconds with decimals. Time is Redis' own (TIME), shifted to keep
 * doubles exact to well below a microsecond; the bucket is one number, the
 * TAT, kept until it is in the past (then the bucket is full and the key
 * may go). A TAT further ahead than the tolerance can only come from
 * Redis' clock stepping back; it is clamped so such a step refuses for at
 * most one tolerance. Answer: {admitted 1/0, remaining, microseconds until
 * one more is admitted, microseconds until full}.
 */
const char sc_rl_redis_script[] =
    "local t = redis.call('TIME')\n"
    "local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])\n"
    "local i = tonumber(ARGV[1])\n"
    "local tol = tonumber(ARGV[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0\n"
    "if tat > now + tol then tat = now + tol end\n"
    "local base = math.max(tat, now)\n"
    "local d = base + i - now\n"
    "if d > tol then\n"
    "  return {0, 0, math.ceil(d - tol), math.ceil(base - now)}\n"
    "end\n"
    "redis.call('SET', KEYS[1], string.format('%.3f', base + i), 'PX', math.ceil(d / 1000) + 1)\n"
    "local rem = math.floor((tol - d) / i)\n"
    "return {1, rem, math.ceil(d - tol + (rem + 1) * i), math.ceil(d)}\n";

static char script_sha[41];
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void compute_sha(void)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    if (EVP_Digest(sc_rl_redis_script, strlen(sc_rl_redis_script), md, &n, EVP_sha1(), NULL) != 1 ||
        n != 20) {
        /* Cannot happen with a working libcrypto; NOSCRIPT answers then
         * fail every decision, which on_error covers. */
        memset(script_sha, '0', 40);
        return;
    }
    for (unsigned i = 0; i < 20; i++)
        snprintf(script_sha + 2 * i, 3, "%02x", md[i]);
}

const char *sc_rl_redis_script_sha(void)
{
    pthread_once(&sha_once, compute_sha);
    return script_sha;
}

static const char *const err_names[SC_RL_REDIS_N_ERR] = {"timeout", "down", "overloaded", "error",
                                                         "bad_reply"};

const char *sc_rl_redis_err_name(sc_rl_redis_err e)
{
    return (unsigned)e < SC_RL_REDIS_N_ERR ? err_names[e] : "?";
}

/* ---- the client ---- */

enum { K_AUTH = 1, K_SELECT, K_LOAD, K_DECIDE };
enum { ST_IDLE = 0, ST_CONNECTING, ST_HANDSHAKE, ST_READY };

#define OUT_MAX (4u << 20)          /* bytes waiting to be written */
#define READ_CHUNK 16384
#define READER_MAX (1u << 20)       /* unparsed reply bytes: more is not a GCRA answer */
#define KEY_MAX 2048

typedef struct slot {
    uint8_t kind;
    uint64_t seq;
    uint64_t sent_ns;
    sc_rl_redis_call *call;         /* K_DECIDE, NULL once timed out or cancelled */
} slot;

struct sc_rl_redis {
    struct ev_loop *loop;
    sc_rl_redis_stats *st;
    sc_addr addr;
    char *user, *password, *sni;
    uint32_t db;
    sc_tls_ctx *tls;
    uint64_t connect_timeout_ms, backoff_min_ms, backoff_max_ms, stall_ms;
    uint32_t max_in_flight;

    int state;
    int fd;
    SSL *ssl;
    ev_io io;
    int io_events;
    ev_timer timer;                 /* connect timeout, or the wait before reconnecting */
    redisReader *reader;
    char *out;
    size_t out_len, out_off, out_cap;
    slot *ring;
    size_t ring_cap, head, n;
    uint64_t seq;
    uint64_t last_load_seq;         /* seq of the newest SCRIPT LOAD written */
    uint64_t backoff_ms;
    uint64_t rng;
    bool proven;                    /* this connection got a good answer (AUTH worked) */
    bool down_logged;               /* the outage was logged; log the recovery */
    char down_why[96];              /* ... and why, to log a change of reason */
    bool closing;                   /* sc_rl_redis_free */
};

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void conn_start(sc_rl_redis *r);

static uint64_t rnd(sc_rl_redis *r)
{
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return r->rng;
}

sc_rl_redis *sc_rl_redis_new(struct ev_loop *loop, const sc_rl_redis_opts *o,
                             sc_rl_redis_stats *stats)
{
    sc_rl_redis *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->loop = loop;
    r->st = stats;
    r->addr = *o->address;
    r->db = o->db;
    r->user = o->user ? strdup(o->user) : NULL;
    r->password = o->password ? strdup(o->password) : NULL;
    r->sni = o->tls_server_name ? strdup(o->tls_server_name) : NULL;
    r->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 1000;
    r->backoff_min_ms = o->backoff_min_ms ? o->backoff_min_ms : 100;
    r->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : 5000;
    r->stall_ms = o->stall_ms ? o->stall_ms : 2000;
    r->max_in_flight = o->max_in_flight ? o->max_in_flight : 10000;
    r->ring_cap = (size_t)r->max_in_flight + 8;  /* + AUTH, SELECT and script loads */
    r->ring = calloc(r->ring_cap, sizeof(slot));
    r->backoff_ms = r->backoff_min_ms;
    r->rng = sc_now_ns() ^ (uint64_t)(uintptr_t)r ^ 0x9e3779b97f4a7c15ull;
    r->fd = -1;
    if (!r->ring || (o->user && !r->user) || (o->password && !r->password) ||
        (o->tls_server_name && !r->sni)) {
        sc_rl_redis_free(r);
        return NULL;
    }
    if (o->tls)
        r->tls = sc_tls_ctx_ref(o->tls);
    sc_rl_redis_script_sha();
    ev_init(&r->io, on_io);
    r->io.data = r;
    ev_init(&r->timer, on_timer);
    r->timer.data = r;
    conn_start(r);
    return r;
}

bool sc_rl_redis_connected(const sc_rl_redis *r)
{
    return r && r->state == ST_READY;
}

/* ---- output ---- */

static bool out_reserve(sc_rl_redis *r, size_t more)
{
    if (r->out_off == r->out_len)
        r->out_off = r->out_len = 0;
    if (r->out_len + more <= r->out_cap)
        return true;
    if (r->out_len + more > OUT_MAX)
        return false;
    size_t cap = r->out_cap ? r->out_cap : 4096;
    while (cap < r->out_len + more)
        cap *= 2;
    char *n = realloc(r->out, cap);
    if (!n)
        return false;
    r->out = n;
    r->out_cap = cap;
    return true;
}

static void put(sc_rl_redis *r, const void *p, size_t n)
{
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
}

static void put_u64(sc_rl_redis *r, uint64_t v)
{
    r->out_len += sc_fmt_u64(r->out + r->out_len, v);
}

/* "*<n>\r\n" */
static void put_head(sc_rl_redis *r, unsigned n)
{
    put(r, "*", 1);
    put_u64(r, n);
    put(r, "\r\n", 2);
}

/* "$<len>\r\n<a><b>\r\n": one bulk string made of two pieces. */
static void put_arg2(sc_rl_redis *r, const void *a, size_t an, const void *b, size_t bn)
{
    put(r, "$", 1);
    put_u64(r, an + bn);
    put(r, "\r\n", 2);
    if (an)
        put(r, a, an);
    if (bn)
        put(r, b, bn);
    put(r, "\r\n", 2);
}

static void put_arg(sc_rl_redis *r, const char *s)
{
    put_arg2(r, s, strlen(s), NULL, 0);
}

/* A decimal "<int>.<3 digits>" of ns / 1000: microseconds, exact to the ns. */
static size_t fmt_us(char *o, uint64_t ns)
{
    size_t n = sc_fmt_u64(o, ns / 1000);
    uint64_t frac = ns % 1000;
    o[n++] = '.';
    o[n++] = (char)('0' + frac / 100);
    o[n++] = (char)('0' + frac / 10 % 10);
    o[n++] = (char)('0' + frac % 10);
    return n;
}

static slot *push_slot(sc_rl_redis *r, uint8_t kind, sc_rl_redis_call *call, size_t *idx)
{
    size_t i = (r->head + r->n) % r->ring_cap;
    r->n++;
    r->ring[i] = (slot){.kind = kind, .seq = ++r->seq, .sent_ns = sc_now_ns(), .call = call};
    if (idx)
        *idx = i;
    return &r->ring[i];
}

/* Room for one more command of about `bytes`: in the ring and the buffer. */
static bool room(sc_rl_redis *r, size_t bytes)
{
    return r->n < r->ring_cap && out_reserve(r, bytes);
}

static bool write_load(sc_rl_redis *r)
{
    size_t len = sizeof(sc_rl_redis_script) + 64;
    if (!room(r, len))
        return false;
    put_head(r, 3);
    put_arg(r, "SCRIPT");
    put_arg(r, "LOAD");
    put_arg2(r, sc_rl_redis_script, sizeof(sc_rl_redis_script) - 1, NULL, 0);
    r->last_load_seq = push_slot(r, K_LOAD, NULL, NULL)->seq;
    return true;
}

static bool write_decide(sc_rl_redis *r, sc_rl_redis_call *c)
{
    size_t len = c->prefix_len + c->klen + 160;
    if (!room(r, len))
        return false;
    char iv[32], tv[32];
    size_t ivn = fmt_us(iv, c->interval_ns), tvn = fmt_us(tv, c->tolerance_ns);
    put_head(r, 6);
    put_arg(r, "EVALSHA");
    put_arg2(r, script_sha, 40, NULL, 0);
    put_arg(r, "1");
    put_arg2(r, c->prefix, c->prefix_len, c->key, c->klen);
    put_arg2(r, iv, ivn, NULL, 0);
    put_arg2(r, tv, tvn, NULL, 0);
    slot *s = push_slot(r, K_DECIDE, c, &c->slot);
    c->seq = s->seq;
    return true;
}

/* ---- connection ---- */

static void update_io(sc_rl_redis *r, int events)
{
    if (r->fd < 0)
        return;
    if (events == r->io_events && ev_is_active(&r->io))
        return;
    ev_io_stop(r->loop, &r->io);
    r->io_events = events;
    if (events) {
        ev_io_set(&r->io, r->fd, events);
        ev_io_start(r->loop, &r->io);
    }
}

/* What the socket should be watched for in READY. */
static void want_ready(sc_rl_redis *r)
{
    update_io(r, EV_READ | (r->out_off < r->out_len ? EV_WRITE : 0));
}

/* One line when Redis becomes unusable and one when the reason changes
 * (say from "connection refused" to "AUTH refused"); each retry that fails
 * the same way is a debug line only. */
static void log_down(sc_rl_redis *r, const char *why)
{
    if (r->closing)
        return;
    if (!r->down_logged || strncmp(r->down_why, why, sizeof(r->down_why) - 1)) {
        SC_WARN("redis %s: %s; global rate limits follow their on_error until it is back "
                "(reconnecting with backoff)",
                r->addr.text, why);
        r->down_logged = true;
        snprintf(r->down_why, sizeof(r->down_why), "%s", why);
    } else {
        SC_DEBUG("redis %s: %s", r->addr.text, why);
    }
}

static void deliver(sc_rl_redis *r, sc_rl_redis_call *c, const sc_rl_redis_answer *a)
{
    ev_timer_stop(r->loop, &c->timer);
    c->active = false;
    if (!a->ok) {
        atomic_fetch_add_explicit(&r->st->errors[a->err], 1, memory_order_relaxed);
        sc_log_limited(&r->st->log_limit, SC_LOG_WARN,
                       "redis %s: a global rate-limit decision failed (%s: %s); its on_error "
                       "decided",
                       r->addr.text, sc_rl_redis_err_name(a->err), a->detail ? a->detail : "");
    }
    c->cb(c, a, c->arg);
}

/* Closes the connection: every call in flight gets SC_RL_REDIS_DOWN, and a
 * reconnect is scheduled after the backoff. */
static void conn_close(sc_rl_redis *r, const char *why)
{
    bool was_ready = r->state == ST_READY;
    ev_io_stop(r->loop, &r->io);
    r->io_events = 0;
    ev_timer_stop(r->loop, &r->timer);
    if (r->ssl) {
        sc_tls_ssl_free(r->ssl);
        r->ssl = NULL;
    }
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    if (r->reader) {
        redisReaderFree(r->reader);
        r->reader = NULL;
    }
    r->out_len = r->out_off = 0;
    r->state = ST_IDLE;
    if (was_ready) {
        atomic_fetch_add_explicit(&r->st->connected, -1, memory_order_relaxed);
        atomic_fetch_add_explicit(&r->st->disconnects, 1, memory_order_relaxed);
    }
    if (!r->proven)
        atomic_fetch_add_explicit(&r->st->connect_failures, 1, memory_order_relaxed);
    log_down(r, why);
    /* Calls in flight end now; a callback may cancel others (their slots
     * lose the call) or ask again (refused: ST_IDLE). */
    while (r->n) {
        slot s = r->ring[r->head];
        r->ring[r->head].call = NULL;
        r->head = (r->head + 1) % r->ring_cap;
        r->n--;
        if (s.call) {
            sc_rl_redis_answer a = {.ok = false, .err = SC_RL_REDIS_DOWN, .detail = why};
            deliver(r, s.call, &a);
        }
    }
    r->head = 0;
    if (r->closing)
        return;
    /* Full jitter over the upper half: [b/2, b]. */
    uint64_t b = r->backoff_ms;
    uint64_t wait = b / 2 + rnd(r) % (b / 2 + 1);
    r->backoff_ms = SC_MIN(r->backoff_ms * 2, r->backoff_max_ms);
    ev_timer_set(&r->timer, (double)wait / 1000.0, 0.);
    ev_timer_start(r->loop, &r->timer);
}

static void conn_failf(sc_rl_redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_failf(sc_rl_redis *r, const char *fmt, ...)
{
    char why[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    conn_close(r, why);
}

static void conn_start(sc_rl_redis *r)
{
    r->proven = false;
    r->head = r->n = 0;
    r->out_len = r->out_off = 0;
    r->reader = redisReaderCreate();
    if (!r->reader) {
        conn_close(r, "no memory for the reply reader");
        return;
    }
    int fd = socket(r->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_failf(r, "socket: %s", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    r->fd = fd;
    if (connect(fd, (const struct sockaddr *)&r->addr.ss, r->addr.len) < 0 && errno != EINPROGRESS) {
        conn_failf(r, "connect: %s", strerror(errno));
        return;
    }
    r->state = ST_CONNECTING;
    /* What every connection says first, ahead of any decision queued while
     * it connects: AUTH, SELECT, and the script. */
    if (r->password) {
        if (!room(r, strlen(r->password) + (r->user ? strlen(r->user) : 0) + 64)) {
            conn_close(r, "no memory for the output buffer");
            return;
        }
        put_head(r, r->user ? 3 : 2);
        put_arg(r, "AUTH");
        if (r->user)
            put_arg(r, r->user);
        put_arg(r, r->password);
        push_slot(r, K_AUTH, NULL, NULL);
    }
    if (r->db) {
        if (!room(r, 64)) {
            conn_close(r, "no memory for the output buffer");
            return;
        }
        char db[24];
        db[sc_fmt_u64(db, r->db)] = 0;
        put_head(r, 2);
        put_arg(r, "SELECT");
        put_arg(r, db);
        push_slot(r, K_SELECT, NULL, NULL);
    }
    if (!write_load(r)) {
        conn_close(r, "no memory for the output buffer");
        return;
    }
    update_io(r, EV_WRITE);
    ev_timer_set(&r->timer, (double)r->connect_timeout_ms / 1000.0, 0.);
    ev_timer_start(r->loop, &r->timer);
}

static void became_ready(sc_rl_redis *r)
{
    ev_timer_stop(r->loop, &r->timer);
    r->state = ST_READY;
    atomic_fetch_add_explicit(&r->st->connects, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->st->connected, 1, memory_order_relaxed);
    want_ready(r);
}

/* A good answer on this connection: AUTH worked, the outage is over. */
static void proven(sc_rl_redis *r)
{
    if (r->proven)
        return;
    r->proven = true;
    r->backoff_ms = r->backoff_min_ms;
    if (r->down_logged) {
        SC_INFO("redis %s: connected again; global rate limits are decided by Redis", r->addr.text);
        r->down_logged = false;
    }
}

static void handshake(sc_rl_redis *r)
{
    sc_tls_want want;
    int rc = sc_tls_handshake(r->ssl, &want);
    if (rc == 0) {
        became_ready(r);
        return;
    }
    if (rc == -EAGAIN) {
        update_io(r, want == SC_TLS_WANT_WRITE ? EV_WRITE : EV_READ);
        return;
    }
    conn_failf(r, "TLS handshake: %s", sc_tls_conn_error(r->ssl));
}

static void connected(sc_rl_redis *r)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        conn_failf(r, "connect: %s", strerror(err));
        return;
    }
    if (!r->tls) {
        became_ready(r);
        return;
    }
    char e[256];
    sc_tls_client_opts co = {.sni = r->sni, .alpn = SC_TLS_ALPN_NONE};
    r->ssl = sc_tls_ssl_client(r->tls, r->fd, &co, e, sizeof(e));
    if (!r->ssl) {
        conn_failf(r, "TLS: %s", e);
        return;
    }
    r->state = ST_HANDSHAKE;
    handshake(r);
}

/* Writes what is buffered. False when the connection was closed. */
static bool flush(sc_rl_redis *r)
{
    while (r->out_off < r->out_len) {
        ssize_t n;
        size_t len = r->out_len - r->out_off;
        if (r->ssl) {
            sc_tls_want want;
            n = sc_tls_write(r->ssl, r->out + r->out_off, len, &want);
            if (n == -EAGAIN) {
                update_io(r, EV_READ | (want == SC_TLS_WANT_WRITE ? EV_WRITE : 0));
                return true;
            }
            if (n < 0) {
                conn_failf(r, "%s", sc_tls_conn_error(r->ssl));
                return false;
            }
        } else {
            n = send(r->fd, r->out + r->out_off, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                conn_failf(r, "write: %s", strerror(errno));
                return false;
            }
        }
        r->out_off += (size_t)n;
    }
    if (r->out_off == r->out_len)
        r->out_off = r->out_len = 0;
    want_ready(r);
    return true;
}

/* ---- replies ---- */

static bool is_ok(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_STATUS && rep->len == 2 && !memcmp(rep->str, "OK", 2);
}

static bool decode_decision(const redisReply *rep, sc_rl_outcome *o)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 4)
        return false;
    long long v[4];
    for (int i = 0; i < 4; i++) {
        if (rep->element[i]->type != REDIS_REPLY_INTEGER || rep->element[i]->integer < 0)
            return false;
        v[i] = rep->element[i]->integer;
    }
    o->allowed = v[0] == 1;
    o->remaining = (uint64_t)v[1];
    o->next_ns = (uint64_t)v[2] * 1000;
    o->full_ns = (uint64_t)v[3] * 1000;
    return true;
}

/* One reply for the oldest slot. False when the connection was closed. */
static bool on_reply(sc_rl_redis *r, redisReply *rep)
{
    if (r->n == 0) {
        conn_close(r, "an answer to no command (the connection is out of step)");
        return false;
    }
    slot s = r->ring[r->head];
    r->ring[r->head].call = NULL;
    r->head = (r->head + 1) % r->ring_cap;
    r->n--;
    char why[200];
    switch (s.kind) {
    case K_AUTH:
    case K_SELECT:
        if (!is_ok(rep)) {
            snprintf(why, sizeof(why), "%s refused: %.*s", s.kind == K_AUTH ? "AUTH" : "SELECT",
                     rep->type == REDIS_REPLY_ERROR ? (int)SC_MIN(rep->len, 160) : 10,
                     rep->type == REDIS_REPLY_ERROR ? rep->str : "not OK");
            conn_close(r, why);
            return false;
        }
        return true;
    case K_LOAD:
        if (rep->type != REDIS_REPLY_STRING || rep->len != 40 || memcmp(rep->str, script_sha, 40)) {
            snprintf(why, sizeof(why), "SCRIPT LOAD failed: %.*s",
                     rep->type == REDIS_REPLY_ERROR ? (int)SC_MIN(rep->len, 160) : 26,
                     rep->type == REDIS_REPLY_ERROR ? rep->str : "an unexpected script hash");
            conn_close(r, why);
            return false;
        }
        proven(r);
        return true;
    default:
        break;
    }
    sc_rl_redis_call *c = s.call;
    if (rep->type == REDIS_REPLY_ERROR && rep->len >= 8 && !memcmp(rep->str, "NOSCRIPT", 8)) {
        /* The script is gone (SCRIPT FLUSH, a failover): load it again,
         * unless a load is already on its way behind this command, and ask
         * again on the same connection. */
        bool ok = true;
        if (r->last_load_seq < s.seq) {
            atomic_fetch_add_explicit(&r->st->script_loads, 1, memory_order_relaxed);
            ok = write_load(r);
        }
        if (c && ok && write_decide(r, c))
            return flush(r);
        if (c) {
            sc_rl_redis_answer a = {.ok = false, .err = SC_RL_REDIS_OVERLOADED,
                                    .detail = "NOSCRIPT, and no room to load the script again"};
            deliver(r, c, &a);
        }
        return true;
    }
    if (!c)
        return true;                    /* timed out or cancelled: dropped */
    proven(r);
    sc_rl_redis_answer a = {.ok = false};
    if (rep->type == REDIS_REPLY_ERROR) {
        a.err = SC_RL_REDIS_ERROR;
        snprintf(why, sizeof(why), "%.*s", (int)SC_MIN(rep->len, 160), rep->str);
        a.detail = why;
    } else if (!decode_decision(rep, &a.out)) {
        a.err = SC_RL_REDIS_BAD_REPLY;
        a.detail = "the answer is not the script's";
    } else {
        a.ok = true;
        uint64_t rtt = sc_now_ns() - c->sent_ns;
        atomic_fetch_add_explicit(&r->st->decisions, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&r->st->rtt_us_sum, rtt / 1000, memory_order_relaxed);
        atomic_fetch_add_explicit(&r->st->rtt_count, 1, memory_order_relaxed);
    }
    deliver(r, c, &a);
    return true;
}

/* Reads what the socket has and handles every whole reply. False when the
 * connection was closed. */
static bool on_readable(sc_rl_redis *r)
{
    char buf[READ_CHUNK];
    for (;;) {
        ssize_t n;
        if (r->ssl) {
            sc_tls_want want;
            n = sc_tls_read(r->ssl, buf, sizeof(buf), &want);
            if (n == -EAGAIN) {
                if (want == SC_TLS_WANT_WRITE)
                    update_io(r, EV_READ | EV_WRITE);
                break;
            }
            if (n == 0 || n == -ECONNRESET) {
                conn_close(r, "Redis closed the connection");
                return false;
            }
            if (n < 0) {
                conn_failf(r, "%s", sc_tls_conn_error(r->ssl));
                return false;
            }
        } else {
            n = recv(r->fd, buf, sizeof(buf), 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (n == 0) {
                conn_close(r, "Redis closed the connection");
                return false;
            }
            if (n < 0) {
                conn_failf(r, "read: %s", strerror(errno));
                return false;
            }
        }
        if (redisReaderFeed(r->reader, buf, (size_t)n) != REDIS_OK) {
            conn_close(r, "no memory for a reply");
            return false;
        }
        for (;;) {
            void *rep = NULL;
            if (redisReaderGetReply(r->reader, &rep) != REDIS_OK) {
                conn_failf(r, "unreadable reply: %s", r->reader->errstr);
                return false;
            }
            if (!rep)
                break;
            bool alive = on_reply(r, rep);
            freeReplyObject(rep);
            if (!alive)
                return false;
        }
        /* A reply this large is not one of ours: the peer is not Redis. */
        if (r->reader->len - r->reader->pos > READER_MAX) {
            conn_close(r, "an answer larger than 1 MiB");
            return false;
        }
    }
    return true;
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    SC_UNUSED(loop);
    sc_rl_redis *r = w->data;
    switch (r->state) {
    case ST_CONNECTING:
        connected(r);
        return;
    case ST_HANDSHAKE:
        handshake(r);
        return;
    case ST_READY:
        if ((revents & EV_READ) && !on_readable(r))
            return;
        if (r->state == ST_READY)
            flush(r);
        return;
    default:
        return;
    }
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    SC_UNUSED(loop);
    SC_UNUSED(revents);
    sc_rl_redis *r = w->data;
    if (r->state == ST_IDLE) {
        conn_start(r);
        return;
    }
    conn_failf(r, "no connection within %llu ms", (unsigned long long)r->connect_timeout_ms);
}

/* ---- decisions ---- */

static void on_call_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    SC_UNUSED(loop);
    SC_UNUSED(revents);
    sc_rl_redis_call *c = SC_CONTAINER_OF(w, sc_rl_redis_call, timer);
    sc_rl_redis *r = c->r;
    if (r->ring[c->slot].seq == c->seq)
        r->ring[c->slot].call = NULL;
    char why[96];
    snprintf(why, sizeof(why), "no answer within %llu ms", (unsigned long long)c->budget_ms);
    sc_rl_redis_answer a = {.ok = false, .err = SC_RL_REDIS_TIMEOUT, .detail = why};
    deliver(r, c, &a);
    /* Redis that stopped answering altogether: a new connection, rather
     * than a queue of commands that will never be answered in time. */
    if (r->n && r->state != ST_IDLE &&
        sc_now_ns() - r->ring[r->head].sent_ns > r->stall_ms * 1000000ull)
        conn_failf(r, "no answer for %llu ms", (unsigned long long)r->stall_ms);
}

int sc_rl_redis_decide(sc_rl_redis *r, sc_rl_redis_call *c, const sc_rl_gcra *g,
                       const char *prefix, size_t prefix_len, const char *key, size_t klen,
                       uint64_t budget_ms, sc_rl_redis_cb cb, void *arg)
{
    c->active = false;
    if (prefix_len + klen > KEY_MAX)
        return -EMSGSIZE;
    if (r->state == ST_IDLE) {
        atomic_fetch_add_explicit(&r->st->errors[SC_RL_REDIS_DOWN], 1, memory_order_relaxed);
        return -ENOTCONN;
    }
    if (r->n >= r->max_in_flight) {
        atomic_fetch_add_explicit(&r->st->errors[SC_RL_REDIS_OVERLOADED], 1, memory_order_relaxed);
        sc_log_limited(&r->st->log_limit, SC_LOG_WARN,
                       "redis %s: %u decisions in flight on one worker; more follow their "
                       "on_error until answers come back",
                       r->addr.text, r->max_in_flight);
        return -EBUSY;
    }
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->prefix = prefix;
    c->prefix_len = prefix_len;
    c->key = key;
    c->klen = klen;
    c->interval_ns = g->interval_ns;
    c->tolerance_ns = g->tolerance_ns;
    c->sent_ns = sc_now_ns();
    if (!write_decide(r, c)) {
        atomic_fetch_add_explicit(&r->st->errors[SC_RL_REDIS_OVERLOADED], 1, memory_order_relaxed);
        return -EBUSY;
    }
    c->active = true;
    c->budget_ms = budget_ms ? budget_ms : 5;
    /* libev's epoll waits in whole milliseconds, rounded up: the timer is
     * set 1 ms short of the budget so it fires within it. */
    double t = (double)c->budget_ms / 1000.0;
    ev_timer_init(&c->timer, on_call_timeout, t >= 0.002 ? t - 0.001 : t, 0.);
    ev_timer_start(r->loop, &c->timer);
    /* Written when the socket is next writable: the decisions of one loop
     * iteration leave in one write. */
    if (r->state == ST_READY)
        update_io(r, EV_READ | EV_WRITE);
    return 0;
}

void sc_rl_redis_cancel(sc_rl_redis_call *c)
{
    if (!c->active)
        return;
    sc_rl_redis *r = c->r;
    ev_timer_stop(r->loop, &c->timer);
    if (r->ring[c->slot].seq == c->seq)
        r->ring[c->slot].call = NULL;
    c->active = false;
}

void sc_rl_redis_free(sc_rl_redis *r)
{
    if (!r)
        return;
    r->closing = true;
    if (r->state != ST_IDLE || r->n)
        conn_close(r, "shutting down");
    ev_timer_stop(r->loop, &r->timer);
    ev_io_stop(r->loop, &r->io);
    if (r->reader)
        redisReaderFree(r->reader);
    if (r->fd >= 0)
        close(r->fd);
    if (r->tls)
        sc_tls_ctx_unref(r->tls);
    free(r->out);
    free(r->ring);
    free(r->user);
    if (r->password) {
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
    }
    free(r->sni);
    free(r);
}

/* ---- admin ---- */

void sc_rl_redis_render_prom(FILE *f, const sc_rl_redis_stats *s)
{
    sc_prom_u64(f, "sidecar_rate_limit_redis_decisions_total", "counter",
                "Global rate-limit decisions answered by Redis",
                atomic_load(&s->decisions));
    sc_prom_head(f, "sidecar_rate_limit_redis_errors_total", "counter",
                 "Global rate-limit decisions Redis did not make, by why (their limit's "
                 "on_error decided)");
    for (int i = 0; i < SC_RL_REDIS_N_ERR; i++)
        fprintf(f, "sidecar_rate_limit_redis_errors_total{kind=\"%s\"} %llu\n", err_names[i],
                (unsigned long long)atomic_load(&s->errors[i]));
    sc_prom_u64(f, "sidecar_rate_limit_redis_connects_total", "counter",
                "Connections to Redis that were established", atomic_load(&s->connects));
    sc_prom_u64(f, "sidecar_rate_limit_redis_connect_failures_total", "counter",
                "Connection attempts that failed before Redis answered (TCP, TLS, AUTH)",
                atomic_load(&s->connect_failures));
    sc_prom_u64(f, "sidecar_rate_limit_redis_disconnects_total", "counter",
                "Established connections to Redis that were lost or closed",
                atomic_load(&s->disconnects));
    sc_prom_u64(f, "sidecar_rate_limit_redis_script_loads_total", "counter",
                "Times the script was loaded again after Redis answered NOSCRIPT",
                atomic_load(&s->script_loads));
    sc_prom_i64(f, "sidecar_rate_limit_redis_connected", "gauge",
                "Worker connections to Redis that are up", atomic_load(&s->connected));
    sc_prom_head(f, "sidecar_rate_limit_redis_round_trip_seconds", "summary",
                 "Round trips of answered decisions");
    fprintf(f, "sidecar_rate_limit_redis_round_trip_seconds_sum %.6f\n",
            (double)atomic_load(&s->rtt_us_sum) / 1e6);
    fprintf(f, "sidecar_rate_limit_redis_round_trip_seconds_count %llu\n",
            (unsigned long long)atomic_load(&s->rtt_count));
}
