/*
 * observe.h: what the request path calls, so that its glue to the access
 * log, the failure rings and request IDs stays a few lines:
 *
 *   at the request head:   the x-request-id to forward (kept or generated);
 *   when the exchange ends: one record to every observer (the access log
 *                           line, the failure ring).
 *
 * One sc_obs_worker per worker thread, made by sc_obs_workers_new() before
 * the workers run (sidecar.c) and used by its worker alone.
 *
 * Memory: the array owns nothing but itself: the producers and rings
 * belong to the access log and the failure set, which must outlive it.
 */
#ifndef SC_OBS_OBSERVE_H
#define SC_OBS_OBSERVE_H

#include "obs/access_log.h"
#include "obs/failures.h"
#include "obs/request_id.h"

typedef struct sc_obs_worker {
    sc_access_producer *log;        /* NULL: access log off */
    sc_failure_ring *failures;      /* NULL: none */
    sc_request_id_rng rid;          /* seeded from getrandom */
} sc_obs_worker;

/* n entries for workers 0..n-1 (log may be NULL); NULL when out of memory.
 * A generator the kernel could not seed is seeded otherwise and a WARN
 * says so. Free with free(). */
sc_obs_worker *sc_obs_workers_new(unsigned n, struct sc_access_log *log, sc_failures *failures);

/*
 * The x-request-id this request goes on with. `have` is the value the
 * request carries (NULL when it has none; `count` how many x-request-id
 * fields it has). A single valid one is kept: *out points to it and 0 is
 * returned. Otherwise (none, invalid, or more than one) a new ID is
 * written into buf (at least SC_REQUEST_ID_LEN + 1 bytes), *out points to
 * buf, and 1 is returned: the caller then removes the fields the request
 * had and adds x-request-id: buf. *out_len gets the length either way.
 */
int sc_obs_request_id(sc_obs_worker *o, const char *have, size_t have_len, unsigned count, char *buf,
                      const char **out, size_t *out_len);

/* The exchange ended: the access log line (when selected) and the failure
 * ring (when it failed). Never blocks, never allocates. */
static inline void sc_obs_done(sc_obs_worker *o, const sc_access_record *r)
{
    sc_access_log_emit(o->log, r);
    sc_failures_record(o->failures, r);
}

#endif
