/*
 * observe.c: the per-worker observation context (observe.h).
 */
#include "obs/observe.h"

#include "core/log.h"

#include <stdlib.h>

sc_obs_worker *sc_obs_workers_new(unsigned n, struct sc_access_log *log, sc_failures *failures)
{
    sc_obs_worker *v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        return NULL;
    for (unsigned i = 0; i < n; i++) {
        v[i].log = sc_access_log_producer(log, i);
        v[i].failures = sc_failures_ring(failures, i);
        int rv = sc_request_id_rng_init(&v[i].rid);
        if (rv < 0)
            SC_WARN("request IDs: getrandom failed (%s); worker %u's generator is seeded from the clock "
                    "and the thread instead (IDs stay distinct, they are only less unpredictable)",
                    strerror(-rv), i);
    }
    return v;
}

int sc_obs_request_id(sc_obs_worker *o, const char *have, size_t have_len, unsigned count, char *buf,
                      const char **out, size_t *out_len)
{
    if (count == 1 && sc_request_id_valid(have, have_len)) {
        *out = have;
        *out_len = have_len;
        return 0;
    }
    *out_len = sc_request_id_generate(&o->rid, buf);
    *out = buf;
    return 1;
}
