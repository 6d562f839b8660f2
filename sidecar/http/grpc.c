/*
 * grpc.c: gRPC metadata helpers (PROTOCOL-HTTP2.md, statuscodes.md,
 * http-grpc-status-mapping.md). Pure functions, no allocation.
 */
#include "http/grpc.h"

#include <string.h>

static const char *const policy_names[SC_GRPC_STATUS_MAX + 1] = {
    "ok", "cancelled", "unknown", "invalid-argument", "deadline-exceeded", "not-found",
    "already-exists", "permission-denied", "resource-exhausted", "failed-precondition",
    "aborted", "out-of-range", "unimplemented", "internal", "unavailable", "data-loss",
    "unauthenticated",
};

const char *sc_grpc_status_name(int code)
{
    if (code < 0 || code > SC_GRPC_STATUS_MAX)
        return "invalid";
    return policy_names[code];
}

/* "deadline-exceeded" vs "DEADLINE_EXCEEDED": same letters, other case, '_' for '-'. */
static bool upper_snake_eq(const char *s, size_t len, const char *policy)
{
    if (strlen(policy) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char want = policy[i] == '-' ? '_' : (char)(policy[i] - 'a' + 'A');
        if (s[i] != want)
            return false;
    }
    return true;
}

int sc_grpc_status_from_name(const char *s, size_t len)
{
    if (!s || len == 0)
        return -EINVAL;
    if (s[0] >= '0' && s[0] <= '9') {
        if (len > 2 || (len == 2 && s[0] == '0'))
            return -EINVAL;
        int v = 0;
        for (size_t i = 0; i < len; i++) {
            if (s[i] < '0' || s[i] > '9')
                return -EINVAL;
            v = v * 10 + (s[i] - '0');
        }
        return v <= SC_GRPC_STATUS_MAX ? v : -EINVAL;
    }
    for (int i = 0; i <= SC_GRPC_STATUS_MAX; i++) {
        const char *n = policy_names[i];
        if ((strlen(n) == len && memcmp(n, s, len) == 0) || upper_snake_eq(s, len, n))
            return i;
    }
    return -EINVAL;
}

int sc_grpc_status_parse(const char *s, size_t len, int *out)
{
    if (!s || len == 0)
        return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
        if (v > SC_GRPC_STATUS_MAX)  /* stop before any overflow: leading zeros keep v small */
            return -1;
    }
    if (out)
        *out = v;
    return 0;
}

/* Units from the finest: n u m S M H. */
static const struct {
    char unit;
    uint64_t ns;
} units[] = {
    {'n', 1ull},
    {'u', 1000ull},
    {'m', 1000000ull},
    {'S', 1000000000ull},
    {'M', 60ull * 1000000000ull},
    {'H', 3600ull * 1000000000ull},
};

#define TIMEOUT_MAX_DIGITS 8
#define TIMEOUT_MAX_VALUE 99999999ull
#define TIMEOUT_SATURATE (UINT64_MAX / 2)

int sc_grpc_timeout_parse(const char *s, size_t len, uint64_t *ns)
{
    if (!s || len < 2 || len > TIMEOUT_MAX_DIGITS + 1)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    for (size_t u = 0; u < SC_ARRAY_LEN(units); u++)
        if (s[len - 1] == units[u].unit) {
            uint64_t mult = units[u].ns;
            *ns = v > TIMEOUT_SATURATE / mult ? TIMEOUT_SATURATE : SC_MIN(v * mult, TIMEOUT_SATURATE);
            return 0;
        }
    return -EINVAL;
}

size_t sc_grpc_timeout_format(uint64_t ns, char *buf, size_t cap)
{
    if (cap < TIMEOUT_MAX_DIGITS + 2) {
        if (cap > 0)
            buf[0] = '\0';
        return 0;
    }
    /* gRPC core sends "1n" for a deadline already due: 0 would mean none. */
    if (ns == 0)
        ns = 1;
    uint64_t v = 0;
    char unit = 'H';
    for (size_t u = 0; u < SC_ARRAY_LEN(units); u++) {
        uint64_t m = units[u].ns;
        v = ns / m + (ns % m != 0); /* round up: never shorten a deadline */
        unit = units[u].unit;
        if (v <= TIMEOUT_MAX_VALUE)
            break;
    }
    /* UINT64_MAX ns is ~5.1e6 hours, so the loop always ends within 8 digits. */
    size_t len = sc_fmt_u64(buf, v);
    buf[len++] = unit;
    buf[len] = '\0';
    return len;
}

/* v starts with lower-case `base` (n bytes) in any letter case: media types
 * are case-insensitive (RFC 9110 8.3.1). The lower-case spelling every
 * client sends is a plain memcmp (two word compares for the gRPC type). */
static bool prefix_ieq(const char *v, const char *base, size_t n)
{
    return memcmp(v, base, n) == 0 || sc_ascii_ieq_n(v, base, n);
}

bool sc_grpc_is_content_type(const char *v, size_t len)
{
    static const char base[] = "application/grpc";
    const size_t blen = sizeof(base) - 1;
    if (!v || len < blen || !prefix_ieq(v, base, blen))
        return false;
    if (len == blen)
        return true;
    if (v[blen] == '+')
        return len > blen + 1; /* application/grpc+proto; a bare '+' names nothing */
    size_t i = blen;
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    return i < len && v[i] == ';';
}

static const char hexdig[] = "0123456789ABCDEF";

size_t sc_grpc_message_encode(const char *msg, char *buf, size_t cap)
{
    if (cap == 0)
        return 0;
    size_t out = 0;
    for (const unsigned char *p = (const unsigned char *)msg; p && *p; p++) {
        unsigned char c = *p;
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            if (out + 1 > cap - 1)
                break;
            buf[out++] = (char)c;
        } else {
            if (out + 3 > cap - 1)
                break; /* never emit half an escape */
            buf[out++] = '%';
            buf[out++] = hexdig[c >> 4];
            buf[out++] = hexdig[c & 15];
        }
    }
    buf[out] = '\0';
    return out;
}

size_t sc_grpc_message_decode(const char *s, size_t len, char *buf, size_t cap)
{
    if (cap == 0)
        return 0;
    size_t out = 0;
    for (size_t i = 0; i < len && out + 1 < cap; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = sc_hexval(s[i + 1])) >= 0 && (lo = sc_hexval(s[i + 2])) >= 0) {
            buf[out++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            buf[out++] = s[i]; /* invalid escapes pass through, as the spec asks */
        }
    }
    buf[out] = '\0';
    return out;
}

int sc_grpc_status_from_http(int http_status)
{
    switch (http_status) {
    case 400:
        return SC_GRPC_INTERNAL;
    case 401:
        return SC_GRPC_UNAUTHENTICATED;
    case 403:
        return SC_GRPC_PERMISSION_DENIED;
    case 404:
        return SC_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return SC_GRPC_UNAVAILABLE;
    default:
        return SC_GRPC_UNKNOWN;
    }
}
