#include "lb/lb.h"

void sc_lb_ctx_init(sc_lb_ctx *c, uint64_t seed)
{
    c->rr = (uint32_t)seed;
    c->rng = seed ? seed : 0x9E3779B97F4A7C15ull;
}

uint64_t sc_lb_rand(sc_lb_ctx *c)
{
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static uint32_t weight_of(const sc_instance *inst, size_t i)
{
    return inst[i].weight ? inst[i].weight : 1;
}

/* Total weight of the eligible instances; *uniform when all weights are 1 and nothing is skipped. */
static uint64_t total_weight(const sc_instance *inst, size_t n, const uint8_t *skip, bool *uniform)
{
    uint64_t w = 0;
    *uniform = true;
    for (size_t i = 0; i < n; i++) {
        if (skip && skip[i]) {
            *uniform = false;
            continue;
        }
        uint32_t wi = weight_of(inst, i);
        if (wi != 1)
            *uniform = false;
        w += wi;
    }
    return w;
}

/* The instance holding position r in the weighted sequence of eligible instances. */
static int at_position(const sc_instance *inst, size_t n, const uint8_t *skip, uint64_t r)
{
    for (size_t i = 0; i < n; i++) {
        if (skip && skip[i])
            continue;
        uint32_t wi = weight_of(inst, i);
        if (r < wi)
            return (int)i;
        r -= wi;
    }
    return -1; /* unreachable when r < total */
}

static int weighted_random(const sc_instance *inst, size_t n, const uint8_t *skip, uint64_t total, bool uniform,
                           sc_lb_ctx *ctx)
{
    uint64_t r = sc_lb_rand(ctx) % total;
    return uniform ? (int)r : at_position(inst, n, skip, r);
}

int sc_lb_pick(sc_lb_kind kind, const sc_instance *inst, size_t n, const uint32_t *load, const uint8_t *skip,
               sc_lb_ctx *ctx)
{
    if (n == 0)
        return -1;
    bool uniform;
    uint64_t total = total_weight(inst, n, skip, &uniform);
    if (total == 0) {
        skip = NULL; /* everything is ejected: route to all rather than none */
        total = total_weight(inst, n, NULL, &uniform);
    }
    switch (kind) {
    case SC_LB_RANDOM:
        return weighted_random(inst, n, skip, total, uniform, ctx);
    case SC_LB_LEAST_REQUEST: {
        int a = weighted_random(inst, n, skip, total, uniform, ctx);
        if (!load || a < 0 || weight_of(inst, (size_t)a) == total)
            return a; /* no loads, or a is the only eligible instance: nothing to compare */
        int b = weighted_random(inst, n, skip, total, uniform, ctx);
        if (a == b) /* one more draw for a distinct second candidate */
            b = weighted_random(inst, n, skip, total, uniform, ctx);
        /* fewer active requests per unit of weight: load_a / w_a < load_b / w_b */
        uint64_t la = (uint64_t)load[a] * weight_of(inst, (size_t)b);
        uint64_t lb = (uint64_t)load[b] * weight_of(inst, (size_t)a);
        return lb < la ? b : a;
    }
    case SC_LB_ROUND_ROBIN:
    default: {
        uint64_t r = ctx->rr++ % total;
        return uniform ? (int)r : at_position(inst, n, skip, r);
    }
    }
}
