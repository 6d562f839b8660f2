/*
 * endpoints.h: the instances of one upstream, published by a discovery
 * source (static list, Consul) as immutable snapshots.
 *
 * The control thread publishes; workers read the current snapshot with one
 * atomic load and no reference counting. A replaced snapshot is freed only
 * after every worker has passed through its poll (epoch-based reclamation:
 * workers record the global epoch when they wake and 0 before they sleep),
 * so a worker may use the snapshot it loaded until it returns to its loop.
 * Anything a stream needs for longer (the instance address) it copies.
 */
#ifndef SC_ENDPOINTS_H
#define SC_ENDPOINTS_H

#include "config/config.h"

#include <stdatomic.h>

struct sc_instance_state;

typedef struct sc_instance {
    sc_addr addr;
    uint32_t weight;                /* >= 1 */
    char id[64];                    /* Consul service ID or the address text */
    /* Health shared by all workers and kept across snapshots (outlier
     * detection, active requests); set by sc_route_publish(), owned by the
     * route, NULL when published without it. */
    struct sc_instance_state *state;
} sc_instance;

typedef struct sc_endpoints {
    uint64_t version;               /* increases with each publish */
    uint64_t retire_epoch;          /* private */
    struct sc_endpoints *retired_next; /* private */
    bool stale;                     /* source unreachable: last known data */
    size_t n;
    sc_instance inst[];
} sc_endpoints;

typedef struct sc_endpoints_ref {
    _Atomic(sc_endpoints *) cur;
} sc_endpoints_ref;

/* Allocates an empty snapshot with room for n instances (n filled in by caller). */
sc_endpoints *sc_endpoints_new(size_t n);

/* Control thread: makes `snap` current (taking ownership); the old one is
 * retired and freed by a later sc_endpoints_reclaim(). */
void sc_endpoints_publish(sc_endpoints_ref *ref, sc_endpoints *snap);

/* Worker (or control thread): the current snapshot, never NULL once published. */
static inline sc_endpoints *sc_endpoints_current(sc_endpoints_ref *ref)
{
    return atomic_load_explicit(&ref->cur, memory_order_acquire);
}

/* Epoch slots: each worker registers one and updates it around its poll. */
/* Registers a slot (before its thread starts; called from the control thread). */
void sc_epoch_register(_Atomic uint64_t *slot);
void sc_epoch_enter(_Atomic uint64_t *slot);   /* after poll */
void sc_epoch_leave(_Atomic uint64_t *slot);   /* before poll */

/* Anything else published by atomic pointer and retired by epoch (route
 * versions, proxy/route.h): sc_epoch_retire() after the pointer is replaced
 * returns the epoch to wait for; sc_epoch_passed() says when no worker can
 * still see the old object (every worker slept in poll or woke after). */
uint64_t sc_epoch_retire(void);
bool sc_epoch_passed(uint64_t retire_epoch);

/* Control thread: frees retired snapshots no worker can still see. Returns
 * how many are still waiting. */
size_t sc_endpoints_reclaim(void);
/* Frees the current snapshot of a ref at shutdown (no workers running). */
void sc_endpoints_ref_clear(sc_endpoints_ref *ref);

#endif
