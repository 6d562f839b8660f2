/*
 * propagation.c: W3C Trace Context and B3 headers (see propagation.h).
 * The grammar each parser follows is quoted next to it; every rule broken
 * means "no context from this header", never a partly filled one.
 */
#include "trace/propagation.h"

#include "obs/digits.h"

#include <strings.h>


void sc_trace_hex(const uint8_t *b, size_t n, char *out)
{
    sc_hex_bytes(b, n, out);
}

bool sc_trace_id_is_zero(const uint8_t *b, size_t n)
{
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= b[i];
    return acc == 0;
}

/* Lower-case hex only (HEXDIGLC; B3 is lower-hex too). -1 for anything else. */
static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* 2n lower-case hex characters into n bytes; false on any other character. */
static bool unhex(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

static void trim(const char **s, size_t *len)
{
    while (*len && is_ows(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len && is_ows((*s)[*len - 1]))
        (*len)--;
}

static void ctx_clear(sc_trace_ctx *out)
{
    memset(out->trace_id, 0, sizeof(out->trace_id));
    memset(out->span_id, 0, sizeof(out->span_id));
    out->valid = false;
    out->debug = false;
    out->decision = SC_TRACE_DECISION_NONE;
    out->format = 0;
    out->tracestate_len = 0;
    out->tracestate[0] = 0;
}

/* ---- traceparent ----
 *   value          = version "-" version-format
 *   version        = 2HEXDIGLC            ; ff is forbidden
 *   version-format = trace-id "-" parent-id "-" trace-flags      (version 00)
 *   trace-id       = 32HEXDIGLC           ; all zeroes forbidden
 *   parent-id      = 16HEXDIGLC           ; all zeroes forbidden
 *   trace-flags    = 2HEXDIGLC
 * Version 00 is exactly 55 characters. A higher version is read by its
 * first 55 characters, which must be followed by the end or a '-'; only
 * the sampled bit of its flags is used (the others may mean something else
 * there). */
#define TP_LEN 55

bool sc_trace_parse_traceparent(const char *s, size_t len, sc_trace_ctx *out)
{
    ctx_clear(out);
    if (!s)
        return false;
    trim(&s, &len);
    if (len < TP_LEN)
        return false;
    uint8_t version, flags;
    if (!unhex(s, 1, &version) || version == 0xff || s[2] != '-')
        return false;
    if (version == 0 ? len != TP_LEN : (len > TP_LEN && s[TP_LEN] != '-'))
        return false;
    uint8_t tid[SC_TRACE_ID_LEN], sid[SC_SPAN_ID_LEN];
    if (!unhex(s + 3, SC_TRACE_ID_LEN, tid) || s[35] != '-' || !unhex(s + 36, SC_SPAN_ID_LEN, sid) ||
        s[52] != '-' || !unhex(s + 53, 1, &flags))
        return false;
    if (sc_trace_id_is_zero(tid, sizeof(tid)) || sc_trace_id_is_zero(sid, sizeof(sid)))
        return false;
    memcpy(out->trace_id, tid, sizeof(tid));
    memcpy(out->span_id, sid, sizeof(sid));
    out->valid = true;
    out->format = SC_TRACE_FMT_W3C;
    out->decision = (flags & SC_TRACE_FLAG_SAMPLED) ? SC_TRACE_DECISION_SAMPLED : SC_TRACE_DECISION_NOT_SAMPLED;
    return true;
}

/* ---- tracestate ----
 *   list        = list-member 0*31( OWS "," OWS list-member )
 *   list-member = key "=" value / OWS
 *   key         = simple-key / multi-tenant-key
 *   simple-key  = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
 *   multi-tenant-key = tenant-id "@" system-id
 *   tenant-id   = ( lcalpha / DIGIT ) 0*240( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
 *   system-id   = lcalpha 0*13( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
 *   value       = 0*255(chr) nblk-chr
 *   nblk-chr    = %x21-2B / %x2D-3C / %x3E-7E
 *   chr         = %x20 / nblk-chr
 * Empty (whitespace-only) members are allowed and do not count toward the
 * 32. A key given twice makes the list invalid (only one entry per key is
 * allowed). */

static bool is_lcalpha(char c) { return c >= 'a' && c <= 'z'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_keychar(char c)
{
    return is_lcalpha(c) || is_digit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

static bool keychars(const char *s, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (!is_keychar(s[i]))
            return false;
    return true;
}

static bool ts_key_ok(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (!at)
        return n >= 1 && n <= 256 && is_lcalpha(k[0]) && keychars(k, 1, n);
    size_t tn = (size_t)(at - k), sn = n - tn - 1;
    const char *sys = at + 1;
    return tn >= 1 && tn <= 241 && (is_lcalpha(k[0]) || is_digit(k[0])) && keychars(k, 1, tn) &&
           sn >= 1 && sn <= 14 && is_lcalpha(sys[0]) && keychars(sys, 1, sn);
}

static bool ts_value_ok(const char *v, size_t n)
{
    if (n < 1 || n > 256 || v[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=')
            return false;
    }
    return true;
}

typedef struct {
    const char *p;          /* "key=value" */
    size_t len, key_len;
} ts_member;

/* One member (already trimmed, non-empty) into m[*n]; false when invalid. */
static bool ts_member_add(const char *s, size_t len, ts_member *m, size_t *n)
{
    const char *eq = memchr(s, '=', len);
    if (!eq)
        return false;
    size_t kl = (size_t)(eq - s);
    if (!ts_key_ok(s, kl) || !ts_value_ok(eq + 1, len - kl - 1))
        return false;
    for (size_t i = 0; i < *n; i++)
        if (m[i].key_len == kl && memcmp(m[i].p, s, kl) == 0)
            return false;
    if (*n == SC_TRACESTATE_MAX_MEMBERS)
        return false;
    m[(*n)++] = (ts_member){.p = s, .len = len, .key_len = kl};
    return true;
}

/* Splits one field on ',' into members; false when any member is invalid. */
static bool ts_field(const char *s, size_t len, ts_member *m, size_t *n)
{
    size_t i = 0;
    while (i <= len) {
        size_t j = i;
        while (j < len && s[j] != ',')
            j++;
        const char *ms = s + i;
        size_t ml = j - i;
        trim(&ms, &ml);
        if (ml && !ts_member_add(ms, ml, m, n))
            return false;
        i = j + 1;
    }
    return true;
}

/* Joins the members into out->tracestate, cutting as the specification
 * says when they do not fit: members over 128 characters first, then from
 * the end. */
static void ts_store(ts_member *m, size_t n, sc_trace_ctx *out)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += m[i].len + (i ? 1 : 0);
    if (total > SC_TRACESTATE_MAX) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (m[i].len <= 128)
                m[k++] = m[i];
        n = k;
        total = 0;
        for (size_t i = 0; i < n; i++)
            total += m[i].len + (i ? 1 : 0);
        while (n && total > SC_TRACESTATE_MAX) {
            total -= m[n - 1].len + (n > 1 ? 1 : 0);
            n--;
        }
    }
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (i)
            out->tracestate[w++] = ',';
        memcpy(out->tracestate + w, m[i].p, m[i].len);
        w += m[i].len;
    }
    out->tracestate[w] = 0;
    out->tracestate_len = (uint16_t)w;
}

static bool ts_parse(const sc_trace_val *fields, size_t nf, sc_trace_ctx *out)
{
    ts_member m[SC_TRACESTATE_MAX_MEMBERS];
    size_t n = 0;
    out->tracestate_len = 0;
    out->tracestate[0] = 0;
    for (size_t i = 0; i < nf; i++)
        if (fields[i].p && !ts_field(fields[i].p, fields[i].len, m, &n))
            return false;
    ts_store(m, n, out);
    return true;
}

bool sc_trace_parse_tracestate(const char *s, size_t len, sc_trace_ctx *out)
{
    if (len > SC_TRACESTATE_MAX_INPUT) {
        out->tracestate_len = 0;
        out->tracestate[0] = 0;
        return false;
    }
    sc_trace_val v = {.p = s, .len = len, .count = 1};
    return ts_parse(&v, 1, out);
}

/* ---- B3 ----
 * Single header: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]], or
 * a lone {SamplingState}. TraceId is 16 or 32 lower-hex characters (64 bits
 * are left-padded with zeros), SpanId and ParentSpanId 16; SamplingState is
 * 1 (accept), 0 (deny) or d (debug). IDs of all zeros are invalid. */

static bool b3_trace_id(const char *s, size_t len, uint8_t out[SC_TRACE_ID_LEN])
{
    memset(out, 0, SC_TRACE_ID_LEN);
    if (len == 32)
        return unhex(s, 16, out) && !sc_trace_id_is_zero(out, 16);
    if (len == 16)
        return unhex(s, 8, out + 8) && !sc_trace_id_is_zero(out, 16);
    return false;
}

static bool b3_span_id(const char *s, size_t len, uint8_t out[SC_SPAN_ID_LEN])
{
    return len == 16 && unhex(s, 8, out) && !sc_trace_id_is_zero(out, 8);
}

/* SamplingState of the single header into the context; false if not one. */
static bool b3_state(char c, sc_trace_ctx *out)
{
    switch (c) {
    case '1':
        out->decision = SC_TRACE_DECISION_SAMPLED;
        return true;
    case '0':
        out->decision = SC_TRACE_DECISION_NOT_SAMPLED;
        return true;
    case 'd':
        out->decision = SC_TRACE_DECISION_SAMPLED;
        out->debug = true;
        return true;
    default:
        return false;
    }
}

bool sc_trace_parse_b3(const char *s, size_t len, sc_trace_ctx *out)
{
    ctx_clear(out);
    if (!s)
        return false;
    trim(&s, &len);
    if (len == 1) {
        if (b3_state(s[0], out))
            return true;
        ctx_clear(out);
        return false;
    }
    const char *d1 = memchr(s, '-', len);
    if (!d1)
        return false;
    size_t tl = (size_t)(d1 - s);
    const char *rest = d1 + 1;
    size_t rl = len - tl - 1;
    const char *d2 = memchr(rest, '-', rl);
    size_t sl = d2 ? (size_t)(d2 - rest) : rl;
    uint8_t tid[SC_TRACE_ID_LEN], sid[SC_SPAN_ID_LEN], pid[SC_SPAN_ID_LEN];
    if (!b3_trace_id(s, tl, tid) || !b3_span_id(rest, sl, sid))
        return false;
    if (d2) {
        const char *st = d2 + 1;
        size_t stl = rl - sl - 1;
        /* "-{state}" or "-{state}-{parent}" */
        if (stl != 1 && (stl != 18 || st[1] != '-' || !unhex(st + 2, 8, pid)))
            return false;
        if (!b3_state(st[0], out)) {
            ctx_clear(out);
            return false;
        }
    }
    memcpy(out->trace_id, tid, sizeof(tid));
    memcpy(out->span_id, sid, sizeof(sid));
    out->valid = true;
    out->format = SC_TRACE_FMT_B3;
    return true;
}

/* x-b3-sampled: "1" / "0", and "true" / "false" as older tracers sent it. */
static int b3_sampled_value(const char *s, size_t len)
{
    trim(&s, &len);
    if (len == 1 && (s[0] == '1' || s[0] == '0'))
        return s[0] == '1';
    if (len == 4 && memcmp(s, "true", 4) == 0)
        return 1;
    if (len == 5 && memcmp(s, "false", 5) == 0)
        return 0;
    return -1;
}

bool sc_trace_parse_b3multi(const sc_trace_in *in, sc_trace_ctx *out)
{
    ctx_clear(out);
    const sc_trace_val *t = &in->b3_trace_id, *sp = &in->b3_span_id, *pa = &in->b3_parent_id,
                       *sa = &in->b3_sampled, *fl = &in->b3_flags;
    if (t->count > 1 || sp->count > 1 || pa->count > 1 || sa->count > 1 || fl->count > 1)
        return false;
    if (fl->count) {
        const char *v = fl->p;
        size_t n = fl->len;
        trim(&v, &n);
        if (n != 1 || (v[0] != '0' && v[0] != '1'))
            return false;
        out->debug = v[0] == '1';
    }
    if (sa->count) {
        int smp = b3_sampled_value(sa->p, sa->len);
        if (smp < 0) {
            ctx_clear(out);
            return false;
        }
        out->decision = smp ? SC_TRACE_DECISION_SAMPLED : SC_TRACE_DECISION_NOT_SAMPLED;
    }
    if (out->debug) /* debug implies an accept decision */
        out->decision = SC_TRACE_DECISION_SAMPLED;
    if (!t->count && !sp->count && !pa->count)
        return true; /* a sampling decision alone (or nothing) */
    const char *tv = t->p, *sv = sp->p, *pv = pa->p;
    size_t tl = t->len, sl = sp->len, pl = pa->len;
    if (tv)
        trim(&tv, &tl);
    if (sv)
        trim(&sv, &sl);
    if (pv)
        trim(&pv, &pl);
    uint8_t tid[SC_TRACE_ID_LEN], sid[SC_SPAN_ID_LEN], pid[SC_SPAN_ID_LEN];
    if (!t->count || !sp->count || !b3_trace_id(tv, tl, tid) || !b3_span_id(sv, sl, sid) ||
        (pa->count && (pl != 16 || !unhex(pv, 8, pid)))) {
        ctx_clear(out);
        return false;
    }
    memcpy(out->trace_id, tid, sizeof(tid));
    memcpy(out->span_id, sid, sizeof(sid));
    out->valid = true;
    out->format = SC_TRACE_FMT_B3MULTI;
    return true;
}

/* ---- collecting a request's headers ---- */

void sc_trace_in_init(sc_trace_in *in, const char *force_header)
{
    /* Everything but the tracestate slots (about 800 bytes, read only up
     * to n_tracestate): this runs for every request. */
    memset(&in->traceparent, 0, sizeof(in->traceparent));
    memset(&in->n_tracestate, 0, sizeof(*in) - offsetof(sc_trace_in, n_tracestate));
    in->force_header = force_header;
    in->force_header_len = force_header ? strlen(force_header) : 0;
}

static void keep(sc_trace_val *v, const char *value, size_t len)
{
    if (v->count < 255)
        v->count++;
    v->p = value;
    v->len = len;
}

/* A force header asks unless its value is empty, "0" or "false". */
static bool force_asks(const char *v, size_t n)
{
    trim(&v, &n);
    return n && !(n == 1 && v[0] == '0') && !(n == 5 && strncasecmp(v, "false", 5) == 0);
}

bool sc_trace_in_header(sc_trace_in *in, const char *name, size_t nl, const char *value, size_t vl)
{
    if (in->force_header && nl == in->force_header_len && memcmp(name, in->force_header, nl) == 0) {
        if (force_asks(value, vl))
            in->forced = true;
        return false;
    }
    /* Every trace header name starts with t, b or x: most names stop here. */
    if (nl < 2 || (name[0] != 't' && name[0] != 'b' && name[0] != 'x'))
        return false;
    if (nl == 11 && memcmp(name, "traceparent", 11) == 0) {
        keep(&in->traceparent, value, vl);
    } else if (nl == 10 && memcmp(name, "tracestate", 10) == 0) {
        in->tracestate_total += vl + 1;
        if (in->n_tracestate == SC_TRACESTATE_MAX_FIELDS || in->tracestate_total > SC_TRACESTATE_MAX_INPUT)
            in->tracestate_bad = true;
        else
            in->tracestate[in->n_tracestate++] = (sc_trace_val){.p = value, .len = vl, .count = 1};
    } else if (nl == 2 && memcmp(name, "b3", 2) == 0) {
        keep(&in->b3, value, vl);
    } else if (nl > 6 && memcmp(name, "x-b3-", 5) == 0) {
        const char *k = name + 5;
        size_t kl = nl - 5;
        if (kl == 7 && memcmp(k, "traceid", 7) == 0)
            keep(&in->b3_trace_id, value, vl);
        else if (kl == 6 && memcmp(k, "spanid", 6) == 0)
            keep(&in->b3_span_id, value, vl);
        else if (kl == 12 && memcmp(k, "parentspanid", 12) == 0)
            keep(&in->b3_parent_id, value, vl);
        else if (kl == 7 && memcmp(k, "sampled", 7) == 0)
            keep(&in->b3_sampled, value, vl);
        else if (kl == 5 && memcmp(k, "flags", 5) == 0)
            keep(&in->b3_flags, value, vl);
        else
            return false;
    } else {
        return false;
    }
    return true;
}

void sc_trace_extract(const sc_trace_in *in, unsigned formats, sc_trace_ctx *out)
{
    uint8_t decision = SC_TRACE_DECISION_NONE;
    bool debug = false;
    if (!(in->traceparent.count | in->b3.count | in->b3_trace_id.count | in->b3_span_id.count |
          in->b3_parent_id.count | in->b3_sampled.count | in->b3_flags.count)) {
        ctx_clear(out); /* no trace header at all: the common case, nothing to parse */
        return;
    }
    if ((formats & SC_TRACE_FMT_W3C) && in->traceparent.count == 1 &&
        sc_trace_parse_traceparent(in->traceparent.p, in->traceparent.len, out)) {
        /* Only with a valid traceparent; an invalid tracestate leaves none. */
        if (in->n_tracestate && !in->tracestate_bad)
            ts_parse(in->tracestate, in->n_tracestate, out);
        return;
    }
    if ((formats & SC_TRACE_FMT_B3) && in->b3.count == 1 && sc_trace_parse_b3(in->b3.p, in->b3.len, out)) {
        if (out->valid)
            return;
        decision = out->decision;
        debug = out->debug;
    }
    if ((formats & SC_TRACE_FMT_B3MULTI) && sc_trace_parse_b3multi(in, out)) {
        if (out->valid)
            return;
        if (decision == SC_TRACE_DECISION_NONE) {
            decision = out->decision;
            debug = out->debug;
        }
    }
    ctx_clear(out);
    out->decision = decision;
    out->debug = debug;
}

/* ---- writing ---- */

static char *out_reserve(sc_trace_out *o, const char *name, size_t name_len, size_t value_len)
{
    if (o->n == SC_TRACE_OUT_MAX || o->used + value_len > sizeof(o->buf))
        return NULL;
    char *v = o->buf + o->used;
    o->h[o->n++] = (sc_trace_hdr){.name = name, .name_len = name_len, .value = v, .value_len = value_len};
    o->used += value_len;
    return v;
}

#define OUT(o, lit, len) out_reserve((o), (lit), sizeof(lit) - 1, (len))

/* A B3 trace ID: 16 characters when the upper half is zero (a 64-bit ID),
 * else 32. Returns the length written. */
static size_t b3_trace_hex(const uint8_t *tid, char *out)
{
    if (sc_trace_id_is_zero(tid, 8)) {
        sc_trace_hex(tid + 8, 8, out);
        return 16;
    }
    sc_trace_hex(tid, 16, out);
    return 32;
}

size_t sc_trace_inject(const sc_trace_ctx *ctx, const uint8_t span_id[SC_SPAN_ID_LEN],
                       const uint8_t *parent_id, bool sampled, unsigned formats, sc_trace_out *o)
{
    o->n = 0;
    o->used = 0;
    bool debug = ctx->debug && sampled;
    if (formats & SC_TRACE_FMT_W3C) {
        char *v = OUT(o, "traceparent", TP_LEN);
        if (v) {
            memcpy(v, "00-", 3);
            sc_trace_hex(ctx->trace_id, 16, v + 3);
            v[35] = '-';
            sc_trace_hex(span_id, 8, v + 36);
            memcpy(v + 52, sampled ? "-01" : "-00", 3);
        }
        if (ctx->tracestate_len && (v = OUT(o, "tracestate", ctx->tracestate_len)))
            memcpy(v, ctx->tracestate, ctx->tracestate_len);
    }
    if (formats & SC_TRACE_FMT_B3) {
        char tmp[32 + 1 + 16 + 2 + 17];
        size_t n = b3_trace_hex(ctx->trace_id, tmp);
        tmp[n++] = '-';
        sc_trace_hex(span_id, 8, tmp + n);
        n += 16;
        tmp[n++] = '-';
        tmp[n++] = debug ? 'd' : sampled ? '1' : '0';
        if (parent_id && !sc_trace_id_is_zero(parent_id, 8)) {
            tmp[n++] = '-';
            sc_trace_hex(parent_id, 8, tmp + n);
            n += 16;
        }
        char *v = OUT(o, "b3", n);
        if (v)
            memcpy(v, tmp, n);
    }
    if (formats & SC_TRACE_FMT_B3MULTI) {
        char tmp[32];
        size_t n = b3_trace_hex(ctx->trace_id, tmp);
        char *v = OUT(o, "x-b3-traceid", n);
        if (v)
            memcpy(v, tmp, n);
        if ((v = OUT(o, "x-b3-spanid", 16)))
            sc_trace_hex(span_id, 8, v);
        if (parent_id && !sc_trace_id_is_zero(parent_id, 8) && (v = OUT(o, "x-b3-parentspanid", 16)))
            sc_trace_hex(parent_id, 8, v);
        /* Debug implies accept: x-b3-flags alone, no x-b3-sampled. */
        if (debug && (v = OUT(o, "x-b3-flags", 1)))
            v[0] = '1';
        else if (!debug && (v = OUT(o, "x-b3-sampled", 1)))
            v[0] = sampled ? '1' : '0';
    }
    return o->n;
}
