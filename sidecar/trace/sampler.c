/*
 * sampler.c: parent-based ratio sampling and ID generation (see sampler.h).
 */
#include "trace/sampler.h"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define TWO_POW_63 9223372036854775808.0

void sc_sampler_init(sc_sampler *s, double ratio)
{
    if (!(ratio > 0)) /* also NaN */
        s->bound = 0;
    else if (ratio >= 1)
        s->bound = UINT64_C(1) << 63;
    else
        s->bound = (uint64_t)(ratio * TWO_POW_63);
}

bool sc_sampler_ratio(const sc_sampler *s, const uint8_t trace_id[SC_TRACE_ID_LEN])
{
    uint64_t x; /* the low 8 bytes, big-endian */
    memcpy(&x, trace_id + 8, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return (x >> 1) < s->bound;
}

bool sc_sampler_decide(const sc_sampler *s, const sc_trace_ctx *ctx, bool forced, sc_sample_reason *why)
{
    sc_sample_reason r;
    bool yes;
    if (forced) {
        r = SC_SAMPLE_BY_FORCE;
        yes = true;
    } else if (ctx->decision != SC_TRACE_DECISION_NONE) {
        r = SC_SAMPLE_BY_PARENT;
        yes = ctx->decision == SC_TRACE_DECISION_SAMPLED;
    } else {
        r = SC_SAMPLE_BY_RATIO;
        yes = sc_sampler_ratio(s, ctx->trace_id);
    }
    if (why)
        *why = r;
    return yes;
}

/* splitmix64: spreads one seed over the xoshiro state. */
static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

void sc_trace_rng_seed(sc_trace_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix(&seed);
}

void sc_trace_rng_init(sc_trace_rng *r)
{
    if (getrandom(r->s, sizeof(r->s), GRND_NONBLOCK) != (ssize_t)sizeof(r->s) ||
        (r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sc_trace_rng_seed(r, (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                                 ((uint64_t)getpid() << 48) ^ (uint64_t)(uintptr_t)r);
    }
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t sc_trace_rng_next(sc_trace_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Big-endian: the first byte of the ID is the top byte of v. */
static inline void put64(uint8_t *out, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(out, &v, 8);
}

void sc_trace_new_trace_id(sc_trace_rng *r, uint8_t out[SC_TRACE_ID_LEN])
{
    uint64_t hi, lo;
    do {
        hi = sc_trace_rng_next(r);
        lo = sc_trace_rng_next(r);
    } while (!(hi | lo));
    put64(out, hi);
    put64(out + 8, lo);
}

void sc_trace_new_span_id(sc_trace_rng *r, uint8_t out[SC_SPAN_ID_LEN])
{
    uint64_t v;
    do
        v = sc_trace_rng_next(r);
    while (!v);
    put64(out, v);
}
