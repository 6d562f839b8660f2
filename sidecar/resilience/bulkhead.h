/*
 * bulkhead.h: admission counts of one upstream (or of the inbound app),
 * shared by every worker thread: at most max_concurrent requests active, at
 * most max_pending waiting for a slot, at most max_connections connections.
 *
 * Concurrency: lock-free, C11 atomics. Admission is a CAS loop, so `active`
 * never exceeds max_concurrent, `pending` never exceeds max_pending and
 * `connections` never exceeds max_connections, under any interleaving.
 * The only approximation: while a promotion is in progress (active taken,
 * pending not yet released) pending is one too high, so a concurrent
 * arrival may be refused a queue slot it could have had: never the reverse.
 *
 * The waiting itself (queues, timers, wake-ups) belongs to the caller; this
 * module only keeps the counts. A typical caller:
 *
 *   switch (sc_bulkhead_try_enter(b)) {
 *   case SC_BULKHEAD_ADMITTED: run; ...; if (sc_bulkhead_leave(b)) wake a waiter; break;
 *   case SC_BULKHEAD_QUEUE:    queue with a queue_timeout_ms timer; when woken
 *                              (a slot may be free): if sc_bulkhead_try_promote(b) run,
 *                              else stay queued; on timeout sc_bulkhead_queue_timeout(b),
 *                              on cancel sc_bulkhead_abandon(b); break;
 *   case SC_BULKHEAD_REJECT:   fail fast (RESOURCE_EXHAUSTED / 503); break;
 *   }
 *
 * A new arrival may take a freed slot before a waiter does (no strict FIFO
 * across workers): waiters on every worker should try to promote whenever a
 * slot may have been freed (e.g. each loop iteration while their queue is
 * not empty), not only when their own worker released one.
 *
 * A disabled policy (or NULL) admits everything (active is still counted);
 * max_connections 0 means unlimited connections.
 *
 * Memory: caller owns the struct; nothing to free. No allocation, no I/O.
 */
#ifndef SC_RES_BULKHEAD_H
#define SC_RES_BULKHEAD_H

#include "config/config.h"

#include <stdatomic.h>

typedef struct sc_bulkhead {
    _Atomic uint32_t active, pending;
    _Atomic uint32_t connections;
    /* counters since init */
    _Atomic uint64_t admitted;        /* admitted at once */
    _Atomic uint64_t queued;          /* got a pending slot */
    _Atomic uint64_t promoted;        /* left the queue for an active slot */
    _Atomic uint64_t rejected;        /* refused: active and queue full */
    _Atomic uint64_t queue_timeouts;  /* left the queue on queue_timeout */
    _Atomic uint64_t abandoned;       /* left the queue otherwise (cancelled) */
    _Atomic uint64_t conn_rejected;   /* connection refused by max_connections */
    /* the limits: set by init and sc_bulkhead_set_limits (a policy reload) */
    _Atomic uint32_t max_concurrent;  /* UINT32_MAX = unlimited */
    _Atomic uint32_t max_pending;
    _Atomic uint32_t max_connections; /* 0 = unlimited */
    _Atomic uint64_t queue_timeout_ms; /* for the caller's timer */
} sc_bulkhead;

typedef enum { SC_BULKHEAD_ADMITTED = 0, SC_BULKHEAD_QUEUE, SC_BULKHEAD_REJECT } sc_bulkhead_result;

typedef struct sc_bulkhead_view {
    uint32_t active, pending, connections;
    uint32_t max_concurrent, max_pending, max_connections; /* as applied (UINT32_MAX / 0 = unlimited) */
    uint64_t queue_timeout_ms;
    uint64_t admitted, queued, promoted, rejected, queue_timeouts, abandoned, conn_rejected;
} sc_bulkhead_view;

/* "admitted", "queue", "reject". */
const char *sc_bulkhead_result_name(sc_bulkhead_result r);

/* Not thread safe: before the bulkhead is shared. p may be NULL (unlimited). */
void sc_bulkhead_init(sc_bulkhead *b, const sc_bulkhead_policy *p);
/* While shared (a policy reload, one thread at a time): the limits of p
 * for every later admission; the counts and counters stay. Slots taken stay
 * taken: under a lower limit `active` (or `connections`) may stay above it
 * until those requests leave, and arrivals queue or are refused meanwhile;
 * waiters are promoted under the new limit. */
void sc_bulkhead_set_limits(sc_bulkhead *b, const sc_bulkhead_policy *p);

/* ADMITTED: an active slot is taken (release with sc_bulkhead_leave).
 * QUEUE: a pending slot is taken (release with sc_bulkhead_try_promote,
 * _queue_timeout or _abandon). REJECT: nothing is taken. */
sc_bulkhead_result sc_bulkhead_try_enter(sc_bulkhead *b);

/* An admitted request ended: releases its active slot. Returns true when
 * requests are pending, so the caller wakes one (it may then promote). */
bool sc_bulkhead_leave(sc_bulkhead *b);

/* A queued request takes a free active slot: true (pending--, active++) or
 * false when none is free (it stays queued, its pending slot kept). */
bool sc_bulkhead_try_promote(sc_bulkhead *b);

/* A queued request leaves the queue without running: cancelled (abandon)
 * or after queue_timeout_ms (queue_timeout, also counted as a timeout). */
void sc_bulkhead_abandon(sc_bulkhead *b);
void sc_bulkhead_queue_timeout(sc_bulkhead *b);

/* Connection cap: true when a new connection may be opened (then counted);
 * release each acquired one once. Counting is done even when unlimited. */
bool sc_bulkhead_conn_acquire(sc_bulkhead *b);
void sc_bulkhead_conn_release(sc_bulkhead *b);

void sc_bulkhead_snapshot(const sc_bulkhead *b, sc_bulkhead_view *out);

#endif
