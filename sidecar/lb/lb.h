/*
 * lb.h: choosing an instance for a request. Pure functions: the caller
 * passes the instances, optional per-instance load and skip flags, and the
 * per-worker cursor / random state, so every algorithm is unit tested with
 * a fixed seed and no clock.
 *
 *   round_robin    weighted: over W = sum of weights, instance i gets
 *                  weight_i of every W consecutive picks
 *   random         weighted random
 *   least_request  power of two choices: two weighted-random candidates,
 *                  the one with fewer active requests per unit of weight wins
 *
 * Skipped instances (ejected) are never chosen while any other is left; when
 * all are skipped the skip flags are ignored (route to all rather than none).
 */
#ifndef SC_LB_H
#define SC_LB_H

#include "config/config.h"
#include "discovery/endpoints.h"

typedef struct sc_lb_ctx {
    uint32_t rr;        /* round robin cursor */
    uint64_t rng;       /* xorshift64* state, never 0 */
} sc_lb_ctx;

void sc_lb_ctx_init(sc_lb_ctx *c, uint64_t seed);
uint64_t sc_lb_rand(sc_lb_ctx *c);

/* Returns the chosen index in [0, n), or -1 when n == 0.
 * `load` (active requests) and `skip` may be NULL. */
int sc_lb_pick(sc_lb_kind kind, const sc_instance *inst, size_t n, const uint32_t *load, const uint8_t *skip,
               sc_lb_ctx *ctx);

#endif
