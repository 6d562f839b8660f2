/*
 * worker.h: what the control plane may do with the data plane's worker
 * threads (proxy/worker.c): create, start, wake, join, free them, and read
 * their counters. Everything else about a worker is private to
 * sidecar/proxy/.
 *
 * Each worker is one thread with one event loop, its own listening sockets
 * (SO_REUSEPORT), connections and streams. The control thread talks to it
 * only through sc_worker_wake (an ev_async: the reasons are bits, collected
 * until the worker runs) and reads its counters (proxy/stats.h) with
 * relaxed loads: sums may be slightly stale, never torn.
 *
 * Ownership: sc_worker_new allocates; sc_worker_free releases a worker that
 * was joined (or never started).
 */
#ifndef SC_WORKER_H
#define SC_WORKER_H

#include "config/config.h"
#include "proxy/stats.h"

#include <stddef.h>
#include <stdint.h>

struct sidecar;
typedef struct sc_worker sc_worker;

/* Worker `id` of sc: its loop and listening sockets (bound now, so address
 * problems show before anything runs; worker 0 first checks that no other
 * process holds them). NULL with *err set (-EADDRINUSE, -ENOMEM, ...). */
sc_worker *sc_worker_new(struct sidecar *sc, unsigned id, int *err);
int sc_worker_start(sc_worker *w);
void sc_worker_join(sc_worker *w);
void sc_worker_free(sc_worker *w);      /* NULL is fine */

/* Why a worker is woken (bits, any thread, async-signal-unsafe). A reason
 * given before the worker's loop runs is kept until it does. */
enum {
    SC_WAKE_DRAIN = 1u << 0,    /* stop accepting, finish in-flight requests within drain_timeout, exit */
    SC_WAKE_STOP = 1u << 1,     /* exit now (second signal) */
    SC_WAKE_AUTHZ = 1u << 2,    /* a Consul authorization lookup ended: requests waiting for it go on */
    SC_WAKE_JWT = 1u << 3,      /* a JWKS fetch ended: requests waiting for an issuer's keys go on */
    SC_WAKE_ROUTES = 1u << 4,   /* a reload added or removed routes: take the listeners handed over,
                                 * close those of removed routes and drain their connections */
};
void sc_worker_wake(sc_worker *w, unsigned reasons);

/* Control thread, reload adding a route or moving its listener: one
 * listening socket on `a` per worker into fds[n_workers] (bound now, so an
 * address problem shows before anything changes). probe: first check that
 * no other socket holds the address (false when the holders may be this
 * process's own listeners of a removed route not closed yet). 0, or a
 * negative errno with err set and nothing left open. */
int sc_workers_bind(const struct sidecar *sc, const sc_addr *a, bool probe, int *fds, char *err, size_t errlen);
/* Hands fds (from sc_workers_bind; taken) to each worker as route `route`'s
 * listener, replacing the one it has, and wakes them. The route must be
 * published (route < n_routes) first. */
void sc_workers_hand(struct sidecar *sc, size_t route, int *fds);
/* Wakes every worker with `reasons`. */
void sc_workers_wake(struct sidecar *sc, unsigned reasons);

/* Sum over sc's workers of one counter: off is offsetof(sc_worker_stats,
 * <counter>) (plus k * sizeof(sc_counter) for an array element). Any thread. */
uint64_t sc_workers_sum(const struct sidecar *sc, size_t off);
/* The same for route `route`'s counters: off within sc_route_stats. */
uint64_t sc_workers_sum_route(const struct sidecar *sc, size_t route, size_t off);

/* What a worker thread does around its ev_run, for running a worker's loop
 * on the calling thread instead (tests/support/driver.c drives it with
 * EVRUN_NOWAIT): begin starts its watchers; end closes every connection
 * still open and frees the closed ones. Without sc_worker_start the worker
 * holds no epoch slot, so endpoint snapshots are never waited for. */
void sc_worker_loop_begin(sc_worker *w);
void sc_worker_loop_end(sc_worker *w);

/* Fails when any other socket holds the address. */
int sc_listen_probe(const sc_addr *a, char *err, size_t errlen);
/* A listening socket for a route with SO_REUSEPORT. */
int sc_listen_socket(const sc_addr *a, int *fd_out, char *err, size_t errlen);

#endif
