/*
 * jsonw.c: the bounded JSON writer (jsonw.h).
 */
#include "obs/jsonw.h"
#include "obs/digits.h"

void sc_jw_u64(sc_jw *w, uint64_t v)
{
    if (SC_UNLIKELY((size_t)(w->end - w->p) < 20)) {
        char tmp[20];
        sc_jw_raw(w, tmp, sc_fmt_u64(tmp, v));
        return;
    }
    w->p += sc_fmt_u64(w->p, v);
}

void sc_jw_i64(sc_jw *w, int64_t v)
{
    if (v < 0) {
        sc_jw_char(w, '-');
        sc_jw_u64(w, (uint64_t)0 - (uint64_t)v);
    } else {
        sc_jw_u64(w, (uint64_t)v);
    }
}

void sc_jw_ms(sc_jw *w, uint64_t ns)
{
    uint64_t us = ns / 1000u;
    sc_jw_u64(w, us / 1000u);
    unsigned frac = (unsigned)(us % 1000u);
    char t[4] = {'.', (char)('0' + frac / 100)};
    memcpy(t + 2, sc_dec_pairs + 2 * (frac % 100), 2);
    sc_jw_raw(w, t, 4);
}

static const char hex[] = "0123456789abcdef";

/* Length of the valid UTF-8 sequence starting at s[0] (a byte >= 0x80),
 * or 0 when it is not one (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* bounds of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (left < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

/* Byte classes: 0 copied as is, 1 escaped, 2 the start (or not) of UTF-8. */
static const uint8_t byte_class[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};

static inline bool plain(unsigned char c)
{
    return byte_class[c] == 0;
}

void sc_jw_str_any(sc_jw *w, const char *s, size_t len, size_t budget)
{
    size_t room = (size_t)(w->end - w->p);
    if (budget > room)
        budget = room;
    if (SC_UNLIKELY(budget < 5)) {
        w->overflow = true;
        w->p = w->end;
        return;
    }
    const unsigned char *in = (const unsigned char *)s, *e = in + len;
    char *q = w->p;
    char *hard = q + budget - 1;        /* the closing quote goes here at the latest */
    char *soft = hard - 3;              /* where "..." starts if the string does not fit */
    char *cut = NULL;                   /* output position of the first character past `soft` */
    *q++ = '"';
    if (len + 2 <= budget && sc_jw_plain_all(in, len)) {
        /* the common case: nothing to escape and it fits */
        sc_jw_copy_small(q, in, len);
        q[len] = '"';
        w->p = q + len + 1;
        return;
    }
    while (in < e) {
        char esc[6];
        const char *src;
        size_t k, adv;
        if (plain(*in)) {
            /* a run of bytes copied as they are */
            const unsigned char *r = in;
            const unsigned char *lim = in + SC_MIN((size_t)(e - in), (size_t)(hard - q) + 1);
            while (r < lim && plain(*r))
                r++;
            size_t n = (size_t)(r - in);
            if (q + n <= soft) {
                memcpy(q, in, n);
                q += n;
                in = r;
                continue;
            }
            src = (const char *)in; /* past soft: byte by byte */
            k = adv = 1;
        } else if (*in >= 0x80) {
            size_t n = utf8_len(in, (size_t)(e - in));
            if (n) {
                src = (const char *)in;
                k = adv = n;
            } else {
                src = "\\ufffd";
                k = 6;
                adv = 1;
            }
        } else {
            unsigned char c = *in;
            char short_esc = c == '"' ? '"' : c == '\\' ? '\\' : c == '\n' ? 'n' : c == '\r' ? 'r'
                             : c == '\t' ? 't' : c == '\b' ? 'b' : c == '\f' ? 'f' : 0;
            esc[0] = '\\';
            if (short_esc) {
                esc[1] = short_esc;
                k = 2;
            } else {
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                k = 6;
            }
            src = esc;
            adv = 1;
        }
        if (!cut && q + k > soft)
            cut = q;
        if (q + k > hard) {
            q = cut;
            memcpy(q, "...", 3);
            q += 3;
            w->truncated = true;
            break;
        }
        memcpy(q, src, k);
        q += k;
        in += adv;
    }
    *q++ = '"';
    w->p = q;
}

void sc_jw_cstr_or_null(sc_jw *w, const char *s, size_t budget)
{
    if (s)
        sc_jw_str(w, s, strlen(s), budget);
    else
        SC_JW_LIT(w, "null");
}

void sc_jw_civil(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    /* Howard Hinnant's days-to-civil algorithm (public domain). */
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static inline void two(char *o, unsigned v)
{
    o[0] = (char)('0' + v / 10);
    o[1] = (char)('0' + v % 10);
}

/* The text up to the seconds of the last second formatted on this thread:
 * the lines of one second share it, so most lines format only the ms. */
static _Thread_local struct {
    uint64_t secs;
    bool valid;
    char t[20];     /* "\"YYYY-MM-DDTHH:MM:SS" */
} time_cache;

void sc_jw_time(sc_jw *w, uint64_t unix_ns)
{
    uint64_t secs = unix_ns / 1000000000u;
    unsigned ms = (unsigned)(unix_ns / 1000000u % 1000u);
    char *t = time_cache.t;
    if (!time_cache.valid || time_cache.secs != secs) {
        int64_t y;
        unsigned mo, d;
        sc_jw_civil((int64_t)(secs / 86400u), &y, &mo, &d);
        unsigned sod = (unsigned)(secs % 86400u);
        /* "YYYY-MM-DDTHH:MM:SS.mmmZ" with quotes: 26 bytes (years 0..9999) */
        unsigned yy = (unsigned)(y < 0 ? 0 : y > 9999 ? 9999 : y);
        t[0] = '"';
        two(t + 1, yy / 100);
        two(t + 3, yy % 100);
        t[5] = '-';
        two(t + 6, mo);
        t[8] = '-';
        two(t + 9, d);
        t[11] = 'T';
        two(t + 12, sod / 3600);
        t[14] = ':';
        two(t + 15, sod / 60 % 60);
        t[17] = ':';
        two(t + 18, sod % 60);
        time_cache.secs = secs;
        time_cache.valid = true;
    }
    char out[26];
    memcpy(out, t, 20);
    out[20] = '.';
    out[21] = (char)('0' + ms / 100);
    memcpy(out + 22, sc_dec_pairs + 2 * (ms % 100), 2);
    out[24] = 'Z';
    out[25] = '"';
    sc_jw_raw(w, out, sizeof(out));
}
