/*
 * retry.c: see retry.h.
 */
#include "resilience/retry.h"

#include "http/grpc.h"

#include <math.h>
#include <string.h>

bool sc_retry_should(const sc_retry_policy *p, uint32_t attempt, int http_status, int grpc_status,
                     uint32_t cond)
{
    if (!p->enabled || attempt >= p->max_attempts)
        return false;
    if (cond & p->on)
        return true;
    if (grpc_status > 0 && grpc_status <= SC_GRPC_STATUS_MAX && ((p->on_grpc >> grpc_status) & 1u))
        return true;
    if (http_status >= 500 && http_status <= 599) {
        if (p->on & SC_COND_5XX)
            return true;
        if ((p->on & SC_COND_GATEWAY_ERROR) && http_status >= 502 && http_status <= 504)
            return true;
    }
    if (http_status >= 400 && http_status <= 499 && (p->on & SC_COND_4XX))
        return true;
    return false;
}

uint64_t sc_retry_backoff_ms(const sc_retry_policy *p, uint32_t attempt, uint64_t rand)
{
    uint64_t base = p->backoff_base_ms, max = p->backoff_max_ms;
    uint32_t k = attempt ? attempt - 1 : 0;
    uint64_t cap;
    if (base == 0)
        cap = 0;
    else if (k >= 64 || base > (max >> k)) /* base * 2^k > max, tested without computing it */
        cap = max;
    else
        cap = base << k;
    if (cap == UINT64_MAX)
        return rand;
    /* the high half of rand * (cap + 1): uniform over [0, cap] without the bias of % */
    __extension__ typedef unsigned __int128 u128;
    return (uint64_t)(((u128)rand * (u128)(cap + 1)) >> 64);
}

static void trim(const char **v, size_t *len)
{
    const char *s = *v;
    size_t n = *len;
    while (n && (s[0] == ' ' || s[0] == '\t')) {
        s++;
        n--;
    }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    *v = s;
    *len = n;
}

/* Decimal digits only, at least one; saturates at UINT64_MAX. */
static bool digits(const char *s, size_t n, uint64_t *out)
{
    if (n == 0)
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        x = x > (UINT64_MAX - d) / 10 ? UINT64_MAX : x * 10 + d;
    }
    *out = x;
    return true;
}

int sc_retry_parse_pushback_ms(const char *v, size_t len, int64_t *ms)
{
    if (!v)
        return -EINVAL;
    trim(&v, &len);
    bool neg = len && v[0] == '-';
    uint64_t x;
    if (!digits(v + neg, len - neg, &x))
        return -EINVAL;
    if (neg) {
        *ms = x ? -1 : 0;
        return 0;
    }
    if (x > INT64_MAX)
        return -EINVAL;
    *ms = (int64_t)x;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool num(const char *s, size_t n, unsigned *out)
{
    unsigned x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        x = x * 10 + (unsigned)(s[i] - '0');
    }
    *out = x;
    return true;
}

/* IMF-fixdate, RFC 9110 5.6.7: "Sun, 06 Nov 1994 08:49:37 GMT", exactly 29 bytes, case-sensitive. */
static bool imf_fixdate(const char *s, size_t n, int64_t *unix_s)
{
    static const char days[] = "MonTueWedThuFriSatSun";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    if (n != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
        s[19] != ':' || s[22] != ':' || s[25] != ' ' || memcmp(s + 26, "GMT", 3) != 0)
        return false;
    bool day_ok = false;
    for (int i = 0; i < 7 && !day_ok; i++)
        day_ok = memcmp(s, days + 3 * i, 3) == 0;
    unsigned mon = 0;
    for (unsigned i = 0; i < 12 && !mon; i++)
        if (memcmp(s + 8, months + 3 * i, 3) == 0)
            mon = i + 1;
    unsigned day, year, hh, mm, ss;
    if (!day_ok || !mon || !num(s + 5, 2, &day) || !num(s + 12, 4, &year) ||
        !num(s + 17, 2, &hh) || !num(s + 20, 2, &mm) || !num(s + 23, 2, &ss))
        return false;
    static const unsigned mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day < 1 || day > mdays[mon - 1] || (mon == 2 && day == 29 && !leap) || hh > 23 ||
        mm > 59 || ss > 60)
        return false;
    *unix_s = days_from_civil(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss;
    return true;
}

int sc_retry_parse_retry_after(const char *v, size_t len, time_t now_unix, int64_t *ms)
{
    if (!v)
        return -EINVAL;
    trim(&v, &len);
    uint64_t secs;
    if (digits(v, len, &secs)) {
        *ms = secs > (uint64_t)INT64_MAX / 1000 ? INT64_MAX : (int64_t)(secs * 1000);
        return 0;
    }
    int64_t at;
    if (!imf_fixdate(v, len, &at))
        return -EINVAL;
    int64_t now = (int64_t)now_unix;
    *ms = at > now ? (at - now) * 1000 : 0;
    return 0;
}

bool sc_retry_pushback_acceptable(int64_t ms)
{
    return ms >= 0 && ms <= SC_RETRY_MAX_PUSHBACK_MS;
}

/* ------------------------------------------------------------------ budget */

void sc_retry_budget_init(sc_retry_budget *b, double ratio, uint32_t min_per_second)
{
    memset(b, 0, sizeof(*b));
    sc_retry_budget_set(b, ratio, min_per_second);
    sc_window_init(&b->window, SC_RETRY_BUDGET_WINDOW_MS);
    atomic_init(&b->granted, 0);
    atomic_init(&b->refused, 0);
}

void sc_retry_budget_set(sc_retry_budget *b, double ratio, uint32_t min_per_second)
{
    if (!(ratio > 0))
        ratio = 0;
    if (ratio > 100)
        ratio = 100;
    atomic_store_explicit(&b->ratio, ratio, memory_order_relaxed);
    atomic_store_explicit(&b->min_per_second, min_per_second, memory_order_relaxed);
    atomic_store_explicit(&b->ratio_ppm, (uint64_t)llround(ratio * 1e6), memory_order_relaxed);
    atomic_store_explicit(&b->floor, (uint64_t)min_per_second * (SC_RETRY_BUDGET_WINDOW_MS / 1000),
                          memory_order_relaxed);
}

static uint64_t param(const _Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

void sc_retry_budget_on_request(sc_retry_budget *b, uint64_t now_ms)
{
    sc_window_add(&b->window, now_ms, SC_WINDOW_LO(1), 0);
}

static bool within(const sc_retry_budget *b, uint64_t requests, uint64_t retries)
{
    return retries < param(&b->floor) || retries * 1000000u < param(&b->ratio_ppm) * requests;
}

bool sc_retry_budget_try_acquire(sc_retry_budget *b, uint64_t now_ms)
{
    sc_window_bucket *cur = sc_window_bucket_at(&b->window, now_ms);
    if (cur) {
        uint64_t mine = atomic_load_explicit(&cur->w[1], memory_order_relaxed);
        for (;;) {
            uint64_t s[4];
            sc_window_sum(&b->window, now_ms, cur, s);
            uint64_t req = s[1] + (atomic_load_explicit(&cur->w[0], memory_order_relaxed) &
                                   0xFFFFFFFFu);
            uint64_t ret = s[3] + (mine & 0xFFFFFFFFu);
            if (!within(b, req, ret))
                break;
            if (atomic_compare_exchange_weak_explicit(&cur->w[1], &mine, mine + 1,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed)) {
                atomic_fetch_add_explicit(&b->granted, 1, memory_order_relaxed);
                return true;
            }
        }
    }
    atomic_fetch_add_explicit(&b->refused, 1, memory_order_relaxed);
    return false;
}

void sc_retry_budget_snapshot(const sc_retry_budget *b, uint64_t now_ms, sc_retry_budget_view *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t s[4];
    sc_window_sum(&b->window, now_ms, NULL, s);
    out->requests = s[1];
    out->retries = s[3];
    /* smallest r with !(r < ratio * requests) is ceil(ratio * requests) */
    uint64_t by_ratio = (param(&b->ratio_ppm) * s[1] + 999999u) / 1000000u;
    out->allowance = SC_MAX(param(&b->floor), by_ratio);
    out->remaining = out->allowance > out->retries ? out->allowance - out->retries : 0;
    out->granted = atomic_load_explicit(&b->granted, memory_order_relaxed);
    out->refused = atomic_load_explicit(&b->refused, memory_order_relaxed);
    out->ratio = atomic_load_explicit(&b->ratio, memory_order_relaxed);
    out->min_per_second = atomic_load_explicit(&b->min_per_second, memory_order_relaxed);
}
