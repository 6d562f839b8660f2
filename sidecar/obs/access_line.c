/*
 * access_line.c: the pure half of the access log (access_log.h): which
 * requests get a line (selection), the JSON line itself, and the record's
 * wall-clock time. No I/O, no threads: the rings and the writer are in
 * access_log.c.
 */
#include "obs/access_log.h"
#include "obs/digits.h"
#include "obs/jsonw.h"

#include <arpa/inet.h>
#include <endian.h>
#include <netinet/in.h>
#include <time.h>

/* ---- selection ---- */

void sc_access_select_init(sc_access_select *s, const sc_access_log_config *c)
{
    memset(s, 0, sizeof(*s));
    s->bits = c->select ? c->select : SC_ACCESS_SELECT_ALL;
    s->slow_ns = c->slow_ms * 1000000u;
    if (c->sample_ratio >= 1.0)
        s->sample_all = true;
    else if (c->sample_ratio > 0)
        s->sample_below = (uint64_t)(c->sample_ratio * 18446744073709551616.0); /* 2^64 */
}

uint64_t sc_access_sample_key(const char *id, size_t len)
{
    /* 8 bytes a step (little-endian on every host, so sidecars on other
     * architectures agree), then a full-avalanche finalizer: the key is a
     * fair coin in every bit. Kept stable across versions: sidecars of
     * different versions on one path must choose alike. */
    uint64_t h = 0x9e3779b97f4a7c15ull ^ len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, id + i, 8);
        h = (h ^ le64toh(w)) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    for (size_t k = 0; i + k < len; k++)
        w |= (uint64_t)(unsigned char)id[i + k] << (8 * k);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static inline uint64_t xorshift64s(uint64_t *x)
{
    uint64_t v = *x;
    v ^= v >> 12;
    v ^= v << 25;
    v ^= v >> 27;
    *x = v;
    return v * 0x2545f4914f6cdd1dull;
}

bool sc_access_select_match(const sc_access_select *s, const sc_access_record *r, uint64_t *rng)
{
    uint32_t b = s->bits;
    if (b & SC_ACCESS_SELECT_ALL)
        return true;
    if ((b & SC_ACCESS_SELECT_ERRORS) && sc_access_is_error(r))
        return true;
    if ((b & SC_ACCESS_SELECT_SLOW) && r->duration_ns > s->slow_ns)
        return true;
    if (b & SC_ACCESS_SELECT_SAMPLE) {
        if (s->sample_all)
            return true;
        uint64_t key = r->request_id.len ? sc_access_sample_key(r->request_id.p, r->request_id.len)
                                         : xorshift64s(rng);
        return key < s->sample_below;
    }
    return false;
}

/* ---- the line ---- */

/* Output budgets of the string fields (quotes included). */
enum {
    B_UPSTREAM = 256, B_METHOD = 64, B_AUTHORITY = 256, B_PATH = 2048, B_GRPC = 256,
    B_REASON = 64, B_INSTANCE = 128, B_CALLER = 1024, B_REQUEST_ID = 264, B_TRACE = 72,
    /* keys, punctuation, 24 numbers and booleans at 24 bytes, the time */
    B_FIXED = 1024,
};
_Static_assert(B_UPSTREAM + B_METHOD + B_AUTHORITY + B_PATH + 2 * B_GRPC + B_REASON + B_INSTANCE + B_CALLER +
                   B_REQUEST_ID + 2 * B_TRACE + B_FIXED < SC_ACCESS_LINE_MAX,
               "an access log line must fit SC_ACCESS_LINE_MAX with every field at its budget");

static inline void jstr(sc_jw *w, sc_obs_str s, size_t budget)
{
    if (s.p)
        sc_jw_str(w, s.p, s.len, budget);
    else
        sc_jw_raw(w, "null", 4);
}

static size_t port_text(char *out, size_t n, unsigned port)
{
    out[n++] = ':';
    return n + sc_fmt_u64(out + n, port);
}

/* The text of the last IPv4 address formatted on this thread: the lines
 * of one worker mostly name the same few instances in a row. */
static _Thread_local struct {
    uint32_t addr;      /* network order */
    uint16_t port;      /* network order */
    uint8_t len;        /* 0: empty */
    char text[24];      /* up to "255.255.255.255:65535" */
} v4_text;

size_t sc_obs_sockaddr_text(const struct sockaddr *sa, char *out)
{
    size_t n = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        if (v4_text.len && v4_text.addr == in->sin_addr.s_addr && v4_text.port == in->sin_port) {
            memcpy(out, v4_text.text, v4_text.len);
            return v4_text.len;
        }
        const uint8_t *a = (const uint8_t *)&in->sin_addr;
        for (int i = 0; i < 4; i++) {
            if (i)
                out[n++] = '.';
            n += sc_fmt_u64(out + n, a[i]);
        }
        n = port_text(out, n, ntohs(in->sin_port));
        v4_text.addr = in->sin_addr.s_addr;
        v4_text.port = in->sin_port;
        memcpy(v4_text.text, out, n);
        v4_text.len = (uint8_t)n;
        return n;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        out[n++] = '[';
        if (!inet_ntop(AF_INET6, &in6->sin6_addr, out + n, 48))
            return 0;
        n += strlen(out + n);
        out[n++] = ']';
        return port_text(out, n, ntohs(in6->sin6_port));
    }
    return 0;
}

/* Wall clock minus monotonic clock, per thread, read again when a second
 * of monotonic time has passed: two clock reads per second instead of two
 * per line. A step of the wall clock shows in the lines within a second. */
static _Thread_local struct {
    uint64_t mono;
    int64_t offset;
} wall_cache;

uint64_t sc_access_wall_ns(const sc_access_record *r)
{
    if (r->start_unix_ns)
        return r->start_unix_ns;
    /* the end of the exchange is about now (the record is made then) */
    uint64_t end = r->start_mono_ns ? r->start_mono_ns + r->duration_ns : sc_now_ns();
    if (!wall_cache.mono || end - wall_cache.mono > 1000000000u) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t mono = sc_now_ns();
        wall_cache.offset = (int64_t)((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec - mono);
        wall_cache.mono = mono;
    }
    uint64_t start = r->start_mono_ns ? r->start_mono_ns : end;
    int64_t t = (int64_t)start + wall_cache.offset;
    return t > 0 ? (uint64_t)t : 0;
}

/* Keys, punctuation, numbers and the time are written without a bound
 * check: with every string held to its budget (sc_jw_str) the _Static_assert
 * above keeps the line inside SC_ACCESS_LINE_MAX, which sc_access_format
 * checks once on entry; B_FIXED covers all of these. */
#define PUT(w, lit) (memcpy((w)->p, "" lit, sizeof(lit) - 1), (w)->p += sizeof(lit) - 1)

static inline void put_u64(sc_jw *w, uint64_t v)
{
    w->p += sc_fmt_u64(w->p, v);
}

/* Milliseconds with three decimals, from nanoseconds. */
static inline void put_ms(sc_jw *w, uint64_t ns)
{
    uint64_t us = ns / 1000u;
    put_u64(w, us / 1000u);
    unsigned frac = (unsigned)(us % 1000u);
    w->p[0] = '.';
    w->p[1] = (char)('0' + frac / 100);
    memcpy(w->p + 2, sc_dec_pairs + 2 * (frac % 100), 2);
    w->p += 4;
}

static inline void jproto(sc_jw *w, uint8_t p)
{
    if (p == SC_OBS_PROTO_HTTP1)
        PUT(w, "\"HTTP/1.1\"");
    else if (p == SC_OBS_PROTO_HTTP2)
        PUT(w, "\"HTTP/2\"");
    else
        PUT(w, "null");
}

static inline void jbool(sc_jw *w, bool b)
{
    if (b)
        PUT(w, "true");
    else
        PUT(w, "false");
}

size_t sc_access_format(const sc_access_record *r, char *buf, size_t cap)
{
    if (cap < SC_ACCESS_LINE_MAX)
        return 0;
    sc_jw w;
    sc_jw_init(&w, buf, cap - 1); /* room for the '\n' */
    PUT(&w, "{\"time\":");
    sc_jw_time(&w, sc_access_wall_ns(r));
    if (r->direction == SC_OBS_INBOUND)
        PUT(&w, ",\"direction\":\"inbound\",\"upstream\":");
    else
        PUT(&w, ",\"direction\":\"outbound\",\"upstream\":");
    jstr(&w, r->upstream, B_UPSTREAM);
    PUT(&w, ",\"method\":");
    jstr(&w, r->method, B_METHOD);
    PUT(&w, ",\"authority\":");
    jstr(&w, r->authority, B_AUTHORITY);
    PUT(&w, ",\"path\":");
    jstr(&w, r->path, B_PATH);
    /* gRPC: "/package.Service/Method" */
    sc_obs_str svc = {0}, mth = {0};
    if (r->grpc && r->path.len > 2 && r->path.p[0] == '/') {
        const char *slash = memchr(r->path.p + 1, '/', r->path.len - 1);
        if (slash && slash > r->path.p + 1 && (size_t)(slash - r->path.p) + 1 < r->path.len &&
            !memchr(slash + 1, '/', r->path.len - (size_t)(slash - r->path.p) - 1)) {
            svc = (sc_obs_str){r->path.p + 1, (size_t)(slash - r->path.p) - 1};
            mth = (sc_obs_str){slash + 1, r->path.len - (size_t)(slash - r->path.p) - 1};
        }
    }
    if (svc.p) {
        PUT(&w, ",\"grpc_service\":");
        jstr(&w, svc, B_GRPC);
        PUT(&w, ",\"grpc_method\":");
        jstr(&w, mth, B_GRPC);
    } else {
        PUT(&w, ",\"grpc_service\":null,\"grpc_method\":null"); /* both or neither */
    }
    PUT(&w, ",\"status\":");
    put_u64(&w, r->status > 0 ? (uint64_t)r->status : 0);
    PUT(&w, ",\"grpc_status\":");
    if (r->grpc_status >= 0)
        put_u64(&w, (uint64_t)r->grpc_status);
    else
        PUT(&w, "null");
    PUT(&w, ",\"reason\":");
    sc_jw_cstr_or_null(&w, r->reason, B_REASON);
    PUT(&w, ",\"duration_ms\":");
    put_ms(&w, r->duration_ns);
    PUT(&w, ",\"upstream_ms\":");
    if (r->upstream_ns >= 0)
        put_ms(&w, (uint64_t)r->upstream_ns);
    else
        PUT(&w, "null");
    PUT(&w, ",\"attempts\":");
    put_u64(&w, r->attempts);
    PUT(&w, ",\"instance\":");
    if (!r->instance.p && r->instance_addr) {
        char a[80];
        size_t n = sc_obs_sockaddr_text(r->instance_addr, a);
        jstr(&w, n ? (sc_obs_str){a, n} : (sc_obs_str){0}, B_INSTANCE);
    } else {
        jstr(&w, r->instance, B_INSTANCE);
    }
    PUT(&w, ",\"bytes_in\":");
    put_u64(&w, r->bytes_in);
    PUT(&w, ",\"bytes_out\":");
    put_u64(&w, r->bytes_out);
    PUT(&w, ",\"caller\":");
    jstr(&w, r->caller, B_CALLER);
    PUT(&w, ",\"request_id\":");
    jstr(&w, r->request_id, B_REQUEST_ID);
    if (r->trace_id.p || r->span_id.p) {
        PUT(&w, ",\"trace_id\":");
        jstr(&w, r->trace_id, B_TRACE);
        PUT(&w, ",\"span_id\":");
        jstr(&w, r->span_id, B_TRACE);
    } else {
        PUT(&w, ",\"trace_id\":null,\"span_id\":null");
    }
    PUT(&w, ",\"downstream_protocol\":");
    jproto(&w, r->down_proto);
    PUT(&w, ",\"upstream_protocol\":");
    jproto(&w, r->up_proto);
    PUT(&w, ",\"downstream_tls\":");
    jbool(&w, r->down_tls);
    PUT(&w, ",\"upstream_tls\":");
    jbool(&w, r->up_tls);
    if (w.truncated)
        PUT(&w, ",\"truncated\":true");
    PUT(&w, "}");
    if (w.overflow)
        return 0; /* cannot happen with the budgets above; never write half a line */
    *w.p++ = '\n';
    return (size_t)(w.p - buf);
}
