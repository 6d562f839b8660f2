/*
 * otlp.c: OTLP/HTTP JSON encoding of span records (see otlp.h).
 */
#include "trace/otlp.h"

#include "obs/digits.h"

#include <jansson.h>
#include <pthread.h>
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

/* The slow path of grow(): out of line, so that every put inlines to a
 * compare and a copy (of a fixed size for the literals). */
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

/* Room for `more` bytes and the NUL; false once an allocation failed. */
static inline bool grow(sc_otlp_buf *b, size_t more)
{
    if (SC_LIKELY(!b->oom && b->len + more + 1 <= b->cap))
        return true;
    return grow_slow(b, more);
}

static inline __attribute__((always_inline)) void put(sc_otlp_buf *b, const char *s, size_t n)
{
    if (!grow(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

#define PUTL(b, lit) put((b), (lit), sizeof(lit) - 1)

static void put_u64(sc_otlp_buf *b, uint64_t v)
{
    if (!grow(b, 20)) /* the digits straight into the buffer */
        return;
    b->len += sc_fmt_dec(b->p + b->len, v);
    b->p[b->len] = 0;
}

static void put_i64(sc_otlp_buf *b, int64_t v)
{
    if (v < 0) {
        PUTL(b, "-");
        put_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(b, (uint64_t)v);
    }
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

/* A JSON string with its quotes. */
/* True when all 8 bytes of x are printable ASCII other than '"' and '\\'
 * (0x20..0x7f): a byte's top bit ends up set when it is 0x80 or more, below
 * 0x20, '"' or '\\'; a borrow between bytes only starts at such a byte. */
static inline bool plain8(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    return !(((x - ones * 0x20) | x | ((x ^ (ones * '"')) - ones) | ((x ^ (ones * '\\')) - ones)) & highs);
}

static void put_str(sc_otlp_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    PUTL(b, "\"");
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    /* the common case, plain ASCII, 8 bytes a step */
    size_t whole = n & ~(size_t)7;
    while (i < whole) {
        uint64_t x;
        memcpy(&x, u + i, 8);
        if (!plain8(x))
            break;
        i += 8;
    }
    size_t run = i; /* bytes copied as they are, flushed in one put */
    while (i < n) {
        unsigned char c = u[i];
        size_t l = c >= 0x20 && c != '"' && c != '\\' ? utf8_len(u + i, n - i) : 0;
        if (l) {
            i += l;
            run += l;
            continue;
        }
        put(b, s + i - run, run);
        run = 0;
        if (c == '"') {
            PUTL(b, "\\\"");
        } else if (c == '\\') {
            PUTL(b, "\\\\");
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(b, e, 6);
        } else {
            PUTL(b, "\\ufffd");
        }
        i++;
    }
    put(b, s + n - run, run);
    PUTL(b, "\"");
}

static void put_cstr(sc_otlp_buf *b, const char *s) { put_str(b, s, strlen(s)); }

static void put_hex(sc_otlp_buf *b, const uint8_t *id, size_t n)
{
    if (!grow(b, 2 * n + 2)) /* the digits straight into the buffer */
        return;
    char *o = b->p + b->len;
    o[0] = '"';
    sc_trace_hex(id, n, o + 1);
    o[2 * n + 1] = '"';
    b->len += 2 * n + 2;
    b->p[b->len] = 0;
}

/* {"key":"<key>" and `tail`, in one step: keys are the fixed attribute
 * and event value names of span.c (letters, digits, '.', '_'), which need
 * no escaping. */
static void put_key(sc_otlp_buf *b, const char *key, const char *tail, size_t tail_len)
{
    size_t kl = strlen(key);
    if (!grow(b, 8 + kl + tail_len))
        return;
    char *o = b->p + b->len;
    memcpy(o, "{\"key\":\"", 8);
    memcpy(o + 8, key, kl);
    memcpy(o + 8 + kl, tail, tail_len);
    b->len += 8 + kl + tail_len;
    b->p[b->len] = 0;
}
#define PUT_KEY(b, key, lit) put_key((b), (key), "" lit, sizeof(lit) - 1)

/* {"key":"k","value":{"stringValue":"v"}} */
static void put_kv_str(sc_otlp_buf *b, const char *key, const char *v, size_t n)
{
    PUT_KEY(b, key, "\",\"value\":{\"stringValue\":");
    put_str(b, v, n);
    PUTL(b, "}}");
}

static void put_kv_int(sc_otlp_buf *b, const char *key, int64_t v)
{
    PUT_KEY(b, key, "\",\"value\":{\"intValue\":\"");
    put_i64(b, v);
    PUTL(b, "\"}}");
}

static void put_time_(sc_otlp_buf *b, const char *field, size_t field_len, uint64_t mono_ns, int64_t offset_ns)
{
    int64_t t = (int64_t)mono_ns + offset_ns;
    put(b, field, field_len);
    put_u64(b, t > 0 ? (uint64_t)t : 0);
    PUTL(b, "\"");
}
/* `field` a literal ending in the opening quote of the value */
#define put_time(b, field, mono_ns, offset_ns) put_time_((b), "" field, sizeof(field) - 1, (mono_ns), (offset_ns))

/* The start of every attribute's JSON object by key and value type, made
 * once: {"key":"<name>","value":{"stringValue": (then the string),
 * ..."intValue":" (then the digits) or ..."boolValue": (then true or
 * false): one copy per attribute instead of a strlen and three. The row
 * after the last key is sc_span_attr_name's name for an unknown one. */
typedef struct attr_prefix {
    char s[96];
    uint8_t n;
} attr_prefix;
static attr_prefix g_prefix[SC_ATTR__COUNT + 1][3];
static pthread_once_t g_prefix_once = PTHREAD_ONCE_INIT;

static void prefix_init(void)
{
    static const char *const value[3] = {
        [SC_ATTR_T_STR] = "\"stringValue\":", [SC_ATTR_T_INT] = "\"intValue\":\"", [SC_ATTR_T_BOOL] = "\"boolValue\":"};
    for (unsigned k = 0; k <= SC_ATTR__COUNT; k++)
        for (unsigned t = 0; t < 3; t++) {
            int n = snprintf(g_prefix[k][t].s, sizeof(g_prefix[k][t].s), "{\"key\":\"%s\",\"value\":{%s",
                             sc_span_attr_name((sc_span_attr_key)k), value[t]);
            if (n <= 0 || (size_t)n >= sizeof(g_prefix[k][t].s))
                abort(); /* the names are span.c's fixed ones: a longer one is a bug any test finds */
            g_prefix[k][t].n = (uint8_t)n;
        }
}

/* One attribute of a span (a type neither string nor bool is an integer). */
static void put_attr(sc_otlp_buf *b, const sc_span *s, const sc_span_attr *a)
{
    unsigned t = a->type == SC_ATTR_T_STR || a->type == SC_ATTR_T_BOOL ? a->type : SC_ATTR_T_INT;
    const attr_prefix *pf = &g_prefix[SC_MIN((unsigned)a->key, (unsigned)SC_ATTR__COUNT)][t];
    put(b, pf->s, pf->n);
    if (t == SC_ATTR_T_STR) {
        put_str(b, s->pool + a->off, a->len);
        PUTL(b, "}}");
    } else if (t == SC_ATTR_T_INT) {
        put_i64(b, a->i);
        PUTL(b, "\"}}");
    } else if (a->i) {
        PUTL(b, "true}}");
    } else {
        PUTL(b, "false}}");
    }
}

int sc_otlp_begin(sc_otlp_buf *b, const sc_otlp_resource *res)
{
    PUTL(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    put_kv_str(b, "service.name", res->service_name, strlen(res->service_name));
    PUTL(b, ",");
    put_kv_str(b, "service.instance.id", res->service_instance_id, strlen(res->service_instance_id));
    if (res->service_version) {
        PUTL(b, ",");
        put_kv_str(b, "service.version", res->service_version, strlen(res->service_version));
    }
    PUTL(b, ",");
    put_kv_str(b, "telemetry.sdk.name", "sidecar", 7);
    PUTL(b, ",");
    put_kv_str(b, "telemetry.sdk.language", "c", 1);
    PUTL(b, ",");
    put_kv_str(b, "telemetry.sdk.version", res->sdk_version, strlen(res->sdk_version));
    PUTL(b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"sidecar\",\"version\":");
    put_cstr(b, res->sdk_version);
    PUTL(b, "},\"spans\":[");
    return b->oom ? -ENOMEM : 0;
}

int sc_otlp_span(sc_otlp_buf *b, const sc_span *s, int64_t offset_ns, bool first)
{
    if (!first)
        PUTL(b, ",");
    PUTL(b, "{\"traceId\":");
    put_hex(b, s->trace_id, SC_TRACE_ID_LEN);
    PUTL(b, ",\"spanId\":");
    put_hex(b, s->span_id, SC_SPAN_ID_LEN);
    if (!sc_trace_id_is_zero(s->parent_id, SC_SPAN_ID_LEN)) {
        PUTL(b, ",\"parentSpanId\":");
        put_hex(b, s->parent_id, SC_SPAN_ID_LEN);
    }
    PUTL(b, ",\"flags\":");
    put_u64(b, s->trace_flags | SC_OTLP_FLAG_HAS_IS_REMOTE | (s->parent_remote ? SC_OTLP_FLAG_IS_REMOTE : 0));
    PUTL(b, ",\"name\":");
    put_str(b, s->name, s->name_len);
    PUTL(b, ",\"kind\":");
    put_u64(b, s->kind);
    put_time(b, ",\"startTimeUnixNano\":\"", s->start_ns, offset_ns);
    put_time(b, ",\"endTimeUnixNano\":\"", s->end_ns, offset_ns);
    PUTL(b, ",\"attributes\":[");
    pthread_once(&g_prefix_once, prefix_init);
    for (unsigned i = 0; i < s->n_attrs; i++) {
        if (i)
            PUTL(b, ",");
        put_attr(b, s, &s->attrs[i]);
    }
    PUTL(b, "]");
    if (s->dropped_attrs) {
        PUTL(b, ",\"droppedAttributesCount\":");
        put_u64(b, s->dropped_attrs);
    }
    PUTL(b, ",\"events\":[");
    for (unsigned i = 0; i < s->n_events; i++) {
        const sc_span_event *e = &s->events[i];
        if (i)
            PUTL(b, ",");
        put_time(b, "{\"timeUnixNano\":\"", e->t_ns, offset_ns);
        PUTL(b, ",\"name\":");
        put_cstr(b, sc_span_event_name(e->kind));
        PUTL(b, ",\"attributes\":[");
        const char *vn = sc_span_event_value_name(e->kind);
        if (vn && e->value >= 0)
            put_kv_int(b, vn, e->value);
        PUTL(b, "]}");
    }
    PUTL(b, "]");
    if (s->dropped_events) {
        PUTL(b, ",\"droppedEventsCount\":");
        put_u64(b, s->dropped_events);
    }
    PUTL(b, ",\"status\":{\"code\":");
    put_u64(b, s->status);
    if (s->status == SC_SPAN_STATUS_ERROR && s->status_len) {
        PUTL(b, ",\"message\":");
        put_str(b, s->status_msg, s->status_len);
    }
    PUTL(b, "}}");
    return b->oom ? -ENOMEM : 0;
}

int sc_otlp_end(sc_otlp_buf *b)
{
    PUTL(b, "]}]}]}");
    return b->oom ? -ENOMEM : 0;
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
