/*
 * outlier.h: outlier ejection. Each instance of an upstream has a state
 * shared by all workers and kept across endpoint snapshots (the caller keys
 * it by instance id); the upstream has the count of instances ejected now.
 *
 * Rules:
 * - A success resets the instance's consecutive-failure count; a gateway
 *   error or connect failure increments it. While an instance is ejected
 *   its outcomes (from requests already in flight) are ignored, also after
 *   its time has passed until a check (sc_outlier_check) returns it.
 * - When the count reaches consecutive_failures the instance is ejected for
 *   eject_for_ms * m, capped at max_eject_ms, where m is its ejection
 *   multiplier after this ejection: 1 the first time, one more each time it
 *   is ejected again.
 * - Decay: the multiplier drops by one for every eject_for_ms the instance
 *   has spent in service since it last returned (lazily, when it is ejected
 *   again). An instance that fails right after its return gets a longer
 *   ejection; one that stayed healthy for m * eject_for_ms starts over at 1.
 * - Cap: at most floor(n_instances * max_ejected_percent / 100) instances are
 *   ejected at once (3 instances at 50% -> 1; 2 -> 1; 1 -> 0: a lone
 *   instance is never ejected). An ejection refused by the cap is counted
 *   (ejections_capped) and retried on the instance's next failure.
 *   n_instances is the current snapshot's size, passed by the caller; when
 *   it shrinks, instances already ejected stay ejected until their time.
 * - Return: an instance whose time has passed returns to service on the
 *   first check after it (sc_outlier_check / _is_ejected); that call, and
 *   only that call, learns that it returned, decrements ejected_now and
 *   resets the instance's consecutive count. A caller that forgets an
 *   instance (gone from discovery) calls sc_outlier_remove() so an ejection
 *   in progress does not hold a slot of the cap forever.
 *
 * Concurrency: lock-free, C11 atomics. ejected_now never exceeds the cap in
 * force when an ejection was made (a reservation by CAS comes first, then the
 * claim of the instance; a loser gives its reservation back, so a racing
 * ejection of another instance may be refused spuriously: never one too
 * many). Each ejection and each return is reported to exactly one caller.
 * The consecutive count is approximate under races (a success and a failure
 * racing may leave either result).
 *
 * A disabled policy makes sc_outlier_record() a no-op returning 0.
 *
 * Memory: the caller owns both structs (zeroed by the init functions); no
 * allocation, no I/O; the clock is an argument (ms, monotonic, > 0).
 */
#ifndef SC_RES_OUTLIER_H
#define SC_RES_OUTLIER_H

#include "config/config.h"

#include <stdatomic.h>

typedef struct sc_outlier_instance {
    _Atomic uint32_t consecutive;      /* gateway/connect failures in a row */
    _Atomic uint64_t ejected_until_ms; /* 0 = in service */
    _Atomic uint32_t ejections;        /* ejection multiplier (see Decay); 0 = never */
    _Atomic uint32_t active_requests;  /* kept by the caller for least_request */
    _Atomic uint64_t ejected_at_ms;    /* last ejection */
    _Atomic uint64_t returned_at_ms;   /* last return to service, 0 = none yet */
    _Atomic uint64_t total_ejections;  /* since init */
} sc_outlier_instance;

typedef struct sc_outlier {
    _Atomic uint32_t ejected_now;
    _Atomic uint64_t ejections_total, returns_total, ejections_capped;
    /* the parameters: set by init and sc_outlier_set_policy (a policy reload) */
    _Atomic bool enabled;
    _Atomic uint32_t consecutive_failures; /* >= 1 */
    _Atomic uint64_t eject_for_ms;
    _Atomic uint64_t max_eject_ms;     /* >= eject_for_ms */
    _Atomic uint64_t max_ejected_ppm;  /* max_ejected_percent in parts per million */
} sc_outlier;

typedef struct sc_outlier_view {
    uint32_t ejected_now;
    uint32_t max_ejected;              /* the cap for the n_instances given */
    uint64_t ejections_total, returns_total, ejections_capped;
} sc_outlier_view;

typedef struct sc_outlier_instance_view {
    bool ejected;                      /* ejection time not yet over */
    uint64_t ms_left;                  /* until return, 0 when not ejected */
    uint32_t consecutive;
    uint32_t multiplier;               /* as stored (before decay) */
    uint64_t total_ejections;
    uint32_t active_requests;
    uint64_t ejected_at_ms, returned_at_ms;
} sc_outlier_instance_view;

/* Not thread safe: before the structs are shared. */
void sc_outlier_init(sc_outlier *o, const sc_outlier_policy *p);
/* While shared (a policy reload, one thread at a time): the parameters of p
 * for every later outcome; the counters, the instances' failure counts and
 * the ejections in force stay (an ejected instance returns at the time it
 * was given, also when p disables detection). A decision racing with the
 * change may use some old and some new parameters. */
void sc_outlier_set_policy(sc_outlier *o, const sc_outlier_policy *p);
void sc_outlier_instance_init(sc_outlier_instance *in);

/* The cap for n instances: floor(n * max_ejected_percent / 100). */
uint32_t sc_outlier_max_ejected(const sc_outlier *o, size_t n_instances);

/*
 * Records one outcome of instance `in` among n_instances. failure: a gateway
 * error (502/503/504, gRPC UNAVAILABLE from the instance) or a connect
 * failure; anything else is a success. Returns 1 when this call ejected the
 * instance (the caller logs it; *in tells until when), else 0.
 */
int sc_outlier_record(sc_outlier *o, sc_outlier_instance *in, size_t n_instances,
                      bool gateway_or_connect_failure, uint64_t now_ms);

/* Is the instance ejected at now_ms? Returns an expired one to service. */
bool sc_outlier_is_ejected(sc_outlier *o, sc_outlier_instance *in, uint64_t now_ms);
/* Same; *returned (may be NULL) is true for the one call that returned it. */
bool sc_outlier_check(sc_outlier *o, sc_outlier_instance *in, uint64_t now_ms, bool *returned);

/* The instance is being forgotten: if it is ejected, its slot of the cap is
 * given back now. Returns true when it was ejected. */
bool sc_outlier_remove(sc_outlier *o, sc_outlier_instance *in);

void sc_outlier_snapshot(const sc_outlier *o, size_t n_instances, sc_outlier_view *out);
void sc_outlier_instance_snapshot(const sc_outlier_instance *in, uint64_t now_ms,
                                  sc_outlier_instance_view *out);

#endif
