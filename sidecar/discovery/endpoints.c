#include "discovery/endpoints.h"

#include <pthread.h>
#include <stdlib.h>

#define MAX_SLOTS 256

static _Atomic uint64_t g_epoch = 1;
static _Atomic uint64_t *_Atomic g_slots[MAX_SLOTS];
static _Atomic unsigned g_n_slots;
static pthread_mutex_t g_retire_lock = PTHREAD_MUTEX_INITIALIZER; /* control thread only */
static sc_endpoints *g_retired;
static _Atomic uint64_t g_version;

sc_endpoints *sc_endpoints_new(size_t n)
{
    sc_endpoints *e = calloc(1, sizeof(*e) + n * sizeof(sc_instance));
    if (e)
        e->n = n;
    return e;
}

void sc_epoch_register(_Atomic uint64_t *slot)
{
    unsigned i = atomic_load(&g_n_slots);
    if (i >= MAX_SLOTS)
        abort(); /* more worker threads than any machine needs */
    atomic_store(&g_slots[i], slot);
    atomic_fetch_add(&g_n_slots, 1);
}

void sc_epoch_enter(_Atomic uint64_t *slot)
{
    atomic_store(slot, atomic_load(&g_epoch));
}

void sc_epoch_leave(_Atomic uint64_t *slot)
{
    atomic_store(slot, 0);
}

void sc_endpoints_publish(sc_endpoints_ref *ref, sc_endpoints *snap)
{
    snap->version = atomic_fetch_add(&g_version, 1) + 1;
    sc_endpoints *old = atomic_exchange(&ref->cur, snap);
    if (!old)
        return;
    old->retire_epoch = sc_epoch_retire();
    pthread_mutex_lock(&g_retire_lock);
    old->retired_next = g_retired;
    g_retired = old;
    pthread_mutex_unlock(&g_retire_lock);
}

static bool can_free(uint64_t retire_epoch)
{
    unsigned n = atomic_load(&g_n_slots);
    for (unsigned i = 0; i < n && i < MAX_SLOTS; i++) {
        _Atomic uint64_t *slot = atomic_load(&g_slots[i]);
        uint64_t e = slot ? atomic_load(slot) : 0;
        if (e != 0 && e < retire_epoch)
            return false;
    }
    return true;
}

uint64_t sc_epoch_retire(void)
{
    return atomic_fetch_add(&g_epoch, 1) + 1;
}

bool sc_epoch_passed(uint64_t retire_epoch)
{
    return can_free(retire_epoch);
}

size_t sc_endpoints_reclaim(void)
{
    size_t waiting = 0;
    pthread_mutex_lock(&g_retire_lock);
    sc_endpoints **pp = &g_retired;
    while (*pp) {
        sc_endpoints *e = *pp;
        if (can_free(e->retire_epoch)) {
            *pp = e->retired_next;
            free(e);
        } else {
            pp = &e->retired_next;
            waiting++;
        }
    }
    pthread_mutex_unlock(&g_retire_lock);
    return waiting;
}

void sc_endpoints_ref_clear(sc_endpoints_ref *ref)
{
    free(atomic_exchange(&ref->cur, NULL));
}
