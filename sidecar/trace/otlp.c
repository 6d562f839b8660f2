/*
 * otlp.c: OTLP/HTTP JSON encoding of span records (see otlp.h).
 */
#include "trace/otlp.h"

#include "obs/digits.h"

#include <assert.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void sc_otlp_buf_reset(sc_otlp_buf *b)
{
    b->len = 0;
    b->oom = false;
}

void sc_otlp_buf_free(sc_otlp_buf *b)
{
    free(b->p);
    *b = (sc_otlp_buf){0};
}

/*
 * Writing: a span reserves the most it can write once (span_max()), then
 * writes through a cursor with no further checks; the NUL goes after the
 * body only, in sc_otlp_end (the reader, tracer.c, passes the length). A
 * string's bound is 6 bytes a byte (\u00XX and \ufffd are the longest
 * escapes) and its quotes.
 */
#define STR_MAX(n) (6 * (size_t)(n) + 2)
#define NUM_MAX 20 /* the digits of a uint64, or '-' and those of an int64 */

/* The slow path of reserve(): out of line, so that the fast one inlines
 * to a compare. */
static __attribute__((noinline)) bool grow_slow(sc_otlp_buf *b, size_t more)
{
    if (b->oom)
        return false;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

/* Where to write up to `more` bytes (and room for the NUL after them), or
 * NULL once an allocation failed. */
static inline char *reserve(sc_otlp_buf *b, size_t more)
{
    if (SC_LIKELY(!b->oom && b->len + more + 1 <= b->cap))
        return b->p + b->len;
    return grow_slow(b, more) ? b->p + b->len : NULL;
}

/* Takes what was written from o0 (reserved with `more`) up to o. */
static inline void commit(sc_otlp_buf *b, const char *o0, const char *o, size_t more)
{
    assert((size_t)(o - o0) <= more); /* the bound of the piece holds */
    (void)more;
    b->len += (size_t)(o - o0);
}

static inline void put(sc_otlp_buf *b, const char *s, size_t n)
{
    char *o = reserve(b, n);
    if (o) {
        memcpy(o, s, n);
        commit(b, o, o + n, n);
    }
}

#define PUTL(b, lit) put((b), (lit), sizeof(lit) - 1)
/* A literal at the cursor: a copy of a known size (a few stores). */
#define LIT(o, lit) (memcpy((o), (lit), sizeof(lit) - 1), (o) + sizeof(lit) - 1)

static inline uint64_t load64(const void *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}
static inline void store64(void *p, uint64_t x) { memcpy(p, &x, 8); }

/* 10 <= v < 10^4 in decimal (status codes, counts): the 4 digits in the
 * lanes of one 32-bit word as sc_dec_word does, without its first split;
 * 4 bytes are stored at o whatever the length. */
static inline char *dec_small(char *o, uint32_t v)
{
    uint32_t z = v / 100u | (v % 100u) << 16; /* 2 lanes of 16 bits, < 100 */
    uint32_t q = ((z * 103u) >> 10) & 0x000f000fu;
    z = (q | (z - q * 10u) << 8) + 0x30303030u;
    size_t n = 2 + (v >= 100u) + (v >= 1000u);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    z >>= 8 * (4 - n); /* the leading zeros are the first bytes */
#else
    z = __builtin_bswap32(z) << 8 * (4 - n);
#endif
    memcpy(o, &z, 4);
    return o + n;
}

/* 1 <= v < 10^8 in decimal; 8 bytes are stored at o whatever the length. */
static inline char *dec_short(char *o, uint32_t v)
{
    size_t n = sc_dec_len(v);
    uint64_t w = sc_dec_word(v);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    w >>= 8 * (8 - n); /* the leading zeros are the first bytes */
#else
    w <<= 8 * (8 - n);
#endif
    store64(o, w);
    return o + n;
}

/* v in decimal, 8 digits a step (sc_dec_word): a timestamp (19 digits) is
 * the 3 leading ones and two words. Stores stay within NUM_MAX bytes. */
static inline char *dec(char *o, uint64_t v)
{
    if (v < 10) {
        *o = (char)('0' + v);
        return o + 1;
    }
    if (v < 10000u)
        return dec_small(o, (uint32_t)v);
    if (v < 100000000u)
        return dec_short(o, (uint32_t)v);
    if (v < 10000000000000000ull) {
        o = dec_short(o, (uint32_t)(v / 100000000u));
        store64(o, sc_dec_word((uint32_t)(v % 100000000u)));
        return o + 8;
    }
    uint64_t low = v % 10000000000000000ull;
    o = dec_short(o, (uint32_t)(v / 10000000000000000ull)); /* 1..1844 */
    store64(o, sc_dec_word((uint32_t)(low / 100000000u)));
    store64(o + 8, sc_dec_word((uint32_t)(low % 100000000u)));
    return o + 16;
}

static inline char *dec_signed(char *o, int64_t v)
{
    if (v < 0) {
        *o++ = '-';
        return dec(o, (uint64_t)0 - (uint64_t)v);
    }
    return dec(o, (uint64_t)v);
}

/* A time in decimal. The times of a batch are close: all but their last 8
 * digits (a 0.1 s step) are mostly those of the time before, kept in
 * b->time_hi as text, so a time is a compare, a copy and one sc_dec_word.
 * (A zeroed buffer's hi, 0, is no time's: the times that use it are 10^8
 * or more.) Stores stay within NUM_MAX bytes. */
static inline char *dec_time(char *o, sc_otlp_buf *b, uint64_t v)
{
    if (v < 100000000u)
        return dec(o, v);
    uint64_t hi = v / 100000000u;
    if (hi != b->time_hi) {
        b->time_len = (uint8_t)(dec(b->time_text, hi) - b->time_text); /* up to 12 digits */
        b->time_hi = hi;
    }
    memcpy(o, b->time_text, sizeof(b->time_text));
    o += b->time_len;
    store64(o, sc_dec_word((uint32_t)(v % 100000000u)));
    return o + 8;
}

/* A time field: `field` a literal ending in the value's opening quote. */
static inline char *time_(char *o, sc_otlp_buf *b, const char *field, size_t field_len, uint64_t mono_ns,
                          int64_t offset_ns)
{
    int64_t t = (int64_t)mono_ns + offset_ns;
    memcpy(o, field, field_len);
    o = dec_time(o + field_len, b, t > 0 ? (uint64_t)t : 0);
    *o = '"';
    return o + 1;
}
#define TIME(o, b, field, mono_ns, offset_ns) time_((o), (b), "" field, sizeof(field) - 1, (mono_ns), (offset_ns))

/* An ID in quotes, in lower-case hex. */
static inline char *hex_id(char *o, const uint8_t *id, size_t n)
{
    *o = '"';
    sc_hex_bytes(id, n, o + 1);
    o[2 * n + 1] = '"';
    return o + 2 * n + 2;
}

/* Length of the valid UTF-8 sequence at s (1..4), 0 when invalid (overlong
 * forms, surrogates and code points past U+10FFFF are invalid). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* True when all 8 bytes of x are printable ASCII other than '"' and '\\'
 * (0x20..0x7f): a byte's top bit ends up set when it is 0x80 or more, below
 * 0x20, '"' or '\\'; a borrow between bytes only starts at such a byte. */
static inline bool plain8(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    return !(((x - ones * 0x20) | x | ((x ^ (ones * '"')) - ones) | ((x ^ (ones * '\\')) - ones)) & highs);
}

/* Copies s[0..n) to o when every byte is plain (plain8), else returns false
 * (having written some of it). No byte goes alone: 8 bytes a step and the
 * last 8 by an overlapping load; below 8, two overlapping loads of 4 or 2
 * (or the one byte) checked as one word padded with spaces, which are plain. */
static inline __attribute__((always_inline)) bool copy_plain(char *o, const char *s, size_t n)
{
    const uint64_t spaces = 0x2020202020202020ull;
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8) {
            uint64_t x = load64(s + i);
            if (!plain8(x))
                return false;
            store64(o + i, x);
        }
        uint64_t x = load64(s + n - 8);
        if (!plain8(x))
            return false;
        store64(o + n - 8, x);
        return true;
    }
    if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, s, 4);
        memcpy(&hi, s + n - 4, 4);
        if (!plain8(lo | (uint64_t)hi << 32))
            return false;
        memcpy(o, &lo, 4);
        memcpy(o + n - 4, &hi, 4);
        return true;
    }
    if (n >= 2) {
        uint16_t lo, hi;
        memcpy(&lo, s, 2);
        memcpy(&hi, s + n - 2, 2);
        if (!plain8((spaces << 32) | lo | (uint64_t)hi << 16))
            return false;
        memcpy(o, &lo, 2);
        memcpy(o + n - 2, &hi, 2);
        return true;
    }
    if (n == 1) {
        if (!plain8((spaces << 8) | (unsigned char)s[0]))
            return false;
        o[0] = s[0];
    }
    return true;
}

/* s[0..n) escaped: '"', '\\' and control bytes escaped, valid UTF-8 as it
 * is, any other byte as U+FFFD; plain runs 8 bytes a step. */
static __attribute__((noinline)) char *escape(char *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t x = load64(u + i);
            if (plain8(x)) {
                store64(o, x);
                o += 8;
                i += 8;
                continue;
            }
        }
        unsigned char c = u[i];
        size_t l = c >= 0x20 && c != '"' && c != '\\' ? utf8_len(u + i, n - i) : 0;
        if (l) {
            for (size_t k = 0; k < l; k++)
                *o++ = (char)u[i + k];
            i += l;
            continue;
        }
        if (c == '"') {
            o = LIT(o, "\\\"");
        } else if (c == '\\') {
            o = LIT(o, "\\\\");
        } else if (c < 0x20) {
            o = LIT(o, "\\u00");
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            o = LIT(o, "\\ufffd");
        }
        i++;
    }
    return o;
}

/* A JSON string with its quotes (at most STR_MAX(n) bytes). Inlined
 * everywhere: most are short, where a call costs as much as the copy. */
static inline __attribute__((always_inline)) char *str(char *o, const char *s, size_t n)
{
    *o++ = '"';
    if (SC_LIKELY(copy_plain(o, s, n)))
        o += n;
    else
        o = escape(o, s, n);
    *o = '"';
    return o + 1;
}

/* A string written on its own (the resource's). */
static void put_str(sc_otlp_buf *b, const char *s, size_t n)
{
    char *o = reserve(b, STR_MAX(n));
    if (o)
        commit(b, o, str(o, s, n), STR_MAX(n));
}

/* {"key":"k","value":{"stringValue":"v"}} (a resource attribute): keys
 * are fixed names that need no escaping. */
static void put_kv_str(sc_otlp_buf *b, const char *key, const char *v)
{
    PUTL(b, "{\"key\":\"");
    put(b, key, strlen(key));
    PUTL(b, "\",\"value\":{\"stringValue\":");
    put_str(b, v, strlen(v));
    PUTL(b, "}}");
}

/* The start of every attribute's JSON object by key and value type, made
 * once: {"key":"<name>","value":{"stringValue": (then the string),
 * ..."intValue":" (then the digits) or ..."boolValue": (then true or
 * false). Copied whole (a fixed size: a few wide stores, no call) and the
 * cursor moved by n. The row after the last key is sc_span_attr_name's
 * name for an unknown one. */
typedef struct attr_prefix {
    char s[63];
    uint8_t n; /* copied along with s: the next bytes written overwrite it */
} attr_prefix;
/* by key and type; 4 types a row and 64 bytes an entry, so an entry's
 * address is two shifts */
static attr_prefix g_prefix[SC_ATTR__COUNT + 1][4];

/* What follows an event's time by kind, made once the same way:
 * ","name":"<name>","attributes":[ and, for a kind with a value, the
 * value's {"key":"<value name>","value":{"intValue":" (then the digits). */
typedef struct event_text {
    char s[126];
    uint8_t n, n_bare; /* n_bare: without the value's part; copied along like attr_prefix.n */
} event_text;
static event_text g_event[SC_EV__COUNT + 1];
static pthread_once_t g_tables_once = PTHREAD_ONCE_INIT;

/* snprintf into a table row; the names are span.c's fixed ones (letters,
 * digits, '.', '_': nothing to escape), so one too long or needing an
 * escape is a bug any test finds. */
static uint8_t row_printf(char *s, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static uint8_t row_printf(char *s, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s, cap, fmt, ap);
    va_end(ap);
    if (n <= 0 || (size_t)n >= cap)
        abort();
    return (uint8_t)n;
}

static void plain_name(const char *name)
{
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"' || *p == '\\')
            abort();
}

static void tables_init(void)
{
    static const char *const value[3] = {
        [SC_ATTR_T_STR] = "\"stringValue\":", [SC_ATTR_T_INT] = "\"intValue\":\"", [SC_ATTR_T_BOOL] = "\"boolValue\":"};
    for (unsigned k = 0; k <= SC_ATTR__COUNT; k++)
        for (unsigned t = 0; t < 3; t++) {
            attr_prefix *pf = &g_prefix[k][t];
            pf->n = row_printf(pf->s, sizeof(pf->s), "{\"key\":\"%s\",\"value\":{%s",
                               sc_span_attr_name((sc_span_attr_key)k), value[t]);
        }
    for (unsigned e = 0; e <= SC_EV__COUNT; e++) {
        event_text *et = &g_event[e];
        const char *name = sc_span_event_name((sc_span_event_kind)e);
        const char *vn = sc_span_event_value_name((sc_span_event_kind)e);
        plain_name(name);
        et->n_bare = row_printf(et->s, sizeof(et->s), ",\"name\":\"%s\",\"attributes\":[", name);
        et->n = vn ? row_printf(et->s + et->n_bare, sizeof(et->s) - et->n_bare,
                                "{\"key\":\"%s\",\"value\":{\"intValue\":\"", vn) + et->n_bare
                   : et->n_bare;
    }
}

/* The most a span writes besides its strings' bytes: the fixed fields
 * (IDs, flags, kind, times, the keys, dropped counts, status), each
 * attribute (a comma, the prefix copied whole, an int or bool or a string's
 * quotes, the closing) and each event (the time, the text copied whole, a
 * value and the closing); with room to spare. */
#define SPAN_FIXED_MAX 480
#define SPAN_ATTR_MAX (1 + sizeof(attr_prefix) + NUM_MAX + 8)
#define SPAN_EVENT_MAX (24 + NUM_MAX + sizeof(event_text) + NUM_MAX + 8)

/* The most sc_otlp_span writes for s. The string attributes' bytes are
 * s->pool_used at most (span.c takes each value from the pool, a value set
 * again included); attr() holds them to it, so a record that says
 * otherwise has a value cut short, never a write past the reservation. */
static inline size_t span_max(const sc_span *s)
{
    return SPAN_FIXED_MAX + STR_MAX(s->name_len) + STR_MAX(s->status_len) + s->n_attrs * SPAN_ATTR_MAX +
           6 * (size_t)s->pool_used + s->n_events * SPAN_EVENT_MAX;
}

/* One attribute of a span (a type neither string nor bool is an integer);
 * *pool_left: the pool bytes the reservation still has room for. */
static inline char *attr(char *o, const sc_span *s, const sc_span_attr *a, bool first, size_t *pool_left)
{
    unsigned t = a->type == SC_ATTR_T_STR || a->type == SC_ATTR_T_BOOL ? a->type : SC_ATTR_T_INT;
    const attr_prefix *pf = &g_prefix[SC_MIN((unsigned)a->key, (unsigned)SC_ATTR__COUNT)][t];
    *o = ',';
    o += !first;
    memcpy(o, pf, sizeof(*pf));
    o += pf->n;
    if (t == SC_ATTR_T_STR) {
        size_t len = SC_MIN((size_t)a->len, *pool_left); /* a->len in a record span.c made */
        *pool_left -= len;
        o = str(o, s->pool + a->off, len);
        return LIT(o, "}}");
    }
    if (t == SC_ATTR_T_INT) {
        o = dec_signed(o, a->i);
        return LIT(o, "\"}}");
    }
    return a->i ? LIT(o, "true}}") : LIT(o, "false}}");
}

/* IDs, flags, name, kind, times, up to the attributes' '['. */
static inline char *span_head(char *o, sc_otlp_buf *b, const sc_span *s, int64_t offset_ns, bool first)
{
    *o = ',';
    o += !first;
    o = LIT(o, "{\"traceId\":");
    o = hex_id(o, s->trace_id, SC_TRACE_ID_LEN);
    o = LIT(o, ",\"spanId\":");
    o = hex_id(o, s->span_id, SC_SPAN_ID_LEN);
    _Static_assert(SC_SPAN_ID_LEN == 8, "a span ID is one 64-bit load");
    if (load64(s->parent_id) != 0) { /* zero: a root span */
        o = LIT(o, ",\"parentSpanId\":");
        o = hex_id(o, s->parent_id, SC_SPAN_ID_LEN);
    }
    o = LIT(o, ",\"flags\":");
    o = dec(o, s->trace_flags | SC_OTLP_FLAG_HAS_IS_REMOTE | (s->parent_remote ? SC_OTLP_FLAG_IS_REMOTE : 0));
    o = LIT(o, ",\"name\":");
    o = str(o, s->name, s->name_len);
    o = LIT(o, ",\"kind\":");
    o = dec(o, s->kind);
    o = TIME(o, b, ",\"startTimeUnixNano\":\"", s->start_ns, offset_ns);
    o = TIME(o, b, ",\"endTimeUnixNano\":\"", s->end_ns, offset_ns);
    return LIT(o, ",\"attributes\":[");
}

/* From the attributes' ']' to the span's end: dropped counts, events,
 * status. */
static inline char *span_tail(char *o, sc_otlp_buf *b, const sc_span *s, int64_t offset_ns)
{
    *o++ = ']';
    if (s->dropped_attrs) {
        o = LIT(o, ",\"droppedAttributesCount\":");
        o = dec(o, s->dropped_attrs);
    }
    o = LIT(o, ",\"events\":[");
    for (unsigned i = 0; i < s->n_events; i++) {
        const sc_span_event *e = &s->events[i];
        const event_text *et = &g_event[SC_MIN((unsigned)e->kind, (unsigned)SC_EV__COUNT)];
        *o = ',';
        o += i != 0;
        o = TIME(o, b, "{\"timeUnixNano\":\"", e->t_ns, offset_ns);
        memcpy(o, et, sizeof(*et));
        if (et->n != et->n_bare && e->value >= 0) {
            o = dec(o + et->n, (uint64_t)e->value);
            o = LIT(o, "\"}}]}");
        } else {
            o = LIT(o + et->n_bare, "]}");
        }
    }
    *o++ = ']';
    if (s->dropped_events) {
        o = LIT(o, ",\"droppedEventsCount\":");
        o = dec(o, s->dropped_events);
    }
    o = LIT(o, ",\"status\":{\"code\":");
    o = dec(o, s->status);
    if (s->status == SC_SPAN_STATUS_ERROR && s->status_len) {
        o = LIT(o, ",\"message\":");
        o = str(o, s->status_msg, s->status_len);
    }
    return LIT(o, "}}");
}

int sc_otlp_begin(sc_otlp_buf *b, const sc_otlp_resource *res)
{
    pthread_once(&g_tables_once, tables_init);
    PUTL(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    put_kv_str(b, "service.name", res->service_name);
    PUTL(b, ",");
    put_kv_str(b, "service.instance.id", res->service_instance_id);
    if (res->service_version) {
        PUTL(b, ",");
        put_kv_str(b, "service.version", res->service_version);
    }
    PUTL(b, ",");
    put_kv_str(b, "telemetry.sdk.name", "sidecar");
    PUTL(b, ",");
    put_kv_str(b, "telemetry.sdk.language", "c");
    PUTL(b, ",");
    put_kv_str(b, "telemetry.sdk.version", res->sdk_version);
    PUTL(b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"sidecar\",\"version\":");
    put_str(b, res->sdk_version, strlen(res->sdk_version));
    PUTL(b, "},\"spans\":[");
    return b->oom ? -ENOMEM : 0;
}

int sc_otlp_span(sc_otlp_buf *b, const sc_span *s, int64_t offset_ns, bool first)
{
    pthread_once(&g_tables_once, tables_init); /* a span without a begin still gets the tables */
    size_t more = span_max(s);
    char *o = reserve(b, more), *const o0 = o;
    if (!o)
        return -ENOMEM;
    o = span_head(o, b, s, offset_ns, first);
    size_t pool_left = s->pool_used;
    for (unsigned i = 0; i < s->n_attrs; i++)
        o = attr(o, s, &s->attrs[i], i == 0, &pool_left);
    o = span_tail(o, b, s, offset_ns);
    commit(b, o0, o, more);
    return 0;
}

/* The NUL after the body (the only one written). */
int sc_otlp_end(sc_otlp_buf *b)
{
    PUTL(b, "]}]}]}");
    if (b->oom)
        return -ENOMEM;
    b->p[b->len] = 0; /* reserve() kept room for it */
    return 0;
}

int sc_otlp_parse_response(const char *body, size_t len, uint64_t *rejected, char *msg, size_t msgcap)
{
    *rejected = 0;
    if (msgcap)
        msg[0] = 0;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t'))
        i++;
    if (i == len)
        return 0;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return -EPROTO;
    }
    json_t *ps = json_object_get(root, "partialSuccess");
    if (json_is_object(ps)) {
        json_t *r = json_object_get(ps, "rejectedSpans");
        if (json_is_integer(r) && json_integer_value(r) > 0) {
            *rejected = (uint64_t)json_integer_value(r);
        } else if (json_is_string(r)) {
            const char *s = json_string_value(r);
            char *end;
            errno = 0;
            unsigned long long v = strtoull(s, &end, 10);
            if (*s >= '0' && *s <= '9' && !*end && errno == 0)
                *rejected = v;
        }
        json_t *m = json_object_get(ps, "errorMessage");
        if (json_is_string(m) && msgcap)
            snprintf(msg, msgcap, "%s", json_string_value(m));
    }
    json_decref(root);
    return 0;
}
