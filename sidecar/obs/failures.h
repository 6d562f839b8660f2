/*
 * failures.h: the last failed requests, so that "what happened?" has an
 * answer without a log search: a bounded ring per worker, written by that
 * worker only, read by the admin thread (GET /failures, the admin page).
 *
 * What counts as a failure is sc_access_is_error() (access_log.h). Each
 * entry is a fixed-size copy (strings cut to their field's size, a cut one
 * ends in "..."), so the ring never allocates and outlives the request.
 *
 * Consistency without locks: every slot carries a sequence number (a
 * seqlock: odd while its worker writes it); a reader copies the slot and
 * keeps the copy only when the number was even and unchanged, and only
 * when the entry's serial is the one it expected (not overwritten by a
 * newer one meanwhile). The payload is stored and loaded as relaxed atomic
 * words, so readers never race in the C sense (ThreadSanitizer clean).
 *
 * Threads: sc_failures_new/free on the control thread; ring i is written
 * by worker i alone; snapshots and rendering from any thread.
 * Memory: sc_failures owns its rings; sc_failures_render_json returns a
 * string the caller frees.
 */
#ifndef SC_OBS_FAILURES_H
#define SC_OBS_FAILURES_H

#include "obs/access_log.h"
#include "obs/request_id.h"

#include <stdatomic.h>
#include <stdio.h>

/* Entries kept per worker (the oldest is overwritten). */
#define SC_FAILURES_PER_WORKER 64
/* Most entries one GET /failures returns. */
#define SC_FAILURES_LIMIT_MAX 1000

typedef struct sc_failure {
    uint64_t serial;                /* per worker, from 1 */
    uint64_t time_unix_ns;          /* when the request head arrived */
    uint64_t duration_ns;
    uint32_t worker;
    int32_t status;                 /* HTTP status the caller got, 0 none */
    int32_t grpc_status;            /* -1 none */
    uint32_t attempts;
    uint8_t direction;              /* sc_obs_direction */
    char upstream[64];
    char instance[64];              /* "" when no instance was reached */
    char reason[40];                /* x-sidecar-reason, "" when the upstream answered */
    char method[16];
    char path[160];
    char request_id[SC_REQUEST_ID_MAX + 1];
    char trace_id[33];
} sc_failure;

#define SC_FAILURE_WORDS ((sizeof(sc_failure) + 7) / 8)

typedef struct sc_failure_slot {
    _Atomic uint32_t seq;           /* odd while being written */
    _Atomic uint64_t w[SC_FAILURE_WORDS];
} sc_failure_slot;

typedef struct sc_failure_ring {
    _Alignas(64) _Atomic uint64_t count; /* entries ever written */
    uint32_t worker;
    sc_failure_slot slot[SC_FAILURES_PER_WORKER];
} sc_failure_ring;

typedef struct sc_failures {
    unsigned n;
    sc_failure_ring *rings;
} sc_failures;

/* NULL when out of memory. */
sc_failures *sc_failures_new(unsigned n_workers);
void sc_failures_free(sc_failures *f);
/* Ring of worker i, or NULL (f NULL or i out of range). */
sc_failure_ring *sc_failures_ring(sc_failures *f, unsigned worker);

/* Worker side: records r when sc_access_is_error(r); returns whether it
 * did. No allocation; ~1 KiB copied. NULL ring: no-op. */
bool sc_failures_record(sc_failure_ring *ring, const sc_access_record *r);
/* Worker side: stores a prepared entry (serial and worker are set here). */
void sc_failure_ring_push(sc_failure_ring *ring, sc_failure *e);
/* Entries recorded since start, all workers. */
uint64_t sc_failures_total(const sc_failures *f);

/* The sidecar_failures_recorded_total family for /stats (0 when f is NULL). */
void sc_failures_render_stats(const sc_failures *f, FILE *out);

/* Any thread: up to max entries, every worker merged, newest first (by
 * time, then worker), consistent copies only; upstream (NULL: all) keeps
 * only that upstream's. Returns how many were written to out. */
size_t sc_failures_snapshot(const sc_failures *f, const char *upstream, sc_failure *out, size_t max);

/*
 * The JSON of GET /failures (fields in docs/observability.md): an array of
 * entries, newest first, [{"time":..., "upstream":..., ...}, ...], at most
 * `limit` of them (clamped to 1..SC_FAILURES_LIMIT_MAX), ages against
 * now_unix_ns. Caller frees; NULL when out of memory.
 */
char *sc_failures_render_json(const sc_failures *f, const char *upstream, size_t limit, uint64_t now_unix_ns);

#endif
