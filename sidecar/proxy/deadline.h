/*
 * deadline.h: one worker's queue of the request deadlines of one route.
 *
 * Requests of a route mostly get the same timeout, so their deadlines come
 * in the order the requests start. A queue in deadline order then takes a
 * deadline at its tail and drops one from anywhere in O(1), and one libev
 * timer serves the whole queue, instead of a start and a stop on libev's
 * timer heap per request (about 120 instructions). The timer is lazy: it
 * runs for the head it was started for; a head that leaves does not stop
 * it. When it fires, the deadlines that have passed are handed to the
 * queue's `expire`, and it is started again for the new head.
 *
 * A deadline earlier than the tail's (a caller's shorter grpc-timeout, a
 * reload that shortened the timeout) does not go in: sc_dq_add returns
 * false and the caller runs a timer of its own for it.
 *
 * Invariant: while the queue holds a deadline, the timer runs, for a time
 * no later than the head's deadline.
 *
 * Memory: the queue owns nothing; each entry is embedded in its owner
 * (sc_stream), which removes it (sc_dq_remove) before it is freed.
 */
#ifndef SC_DEADLINE_H
#define SC_DEADLINE_H

#include "core/common.h"
#include "proxy/list.h"

#include <ev.h>

/* The step both lazy deadlines take (the queue here, a connection's idle
 * and header-read deadline in proxy.h): t runs for time `at` (sc_now_ns()
 * time), unless it already runs for a deadline no later (*armed_ns: what
 * it runs for, 0 = not started by this function, or fired since). now is
 * sc_now_ns(), or 0 to read the clock only when the timer is started. */
void sc_deadline_timer(struct ev_loop *loop, ev_timer *t, uint64_t *armed_ns, uint64_t now, uint64_t at);

/* A deadline this close has passed: libev runs timers by its loop time,
 * which may be a little behind the clock. */
#define SC_DEADLINE_SLACK_NS 1000000u
static inline bool sc_deadline_passed(uint64_t at, uint64_t now)
{
    return at <= now + SC_DEADLINE_SLACK_NS;
}

typedef struct sc_dq_entry {
    sc_link link;                   /* in sc_dq.list; unlinked: next == NULL */
    uint64_t at_ns;                 /* the deadline, sc_now_ns() time */
} sc_dq_entry;

typedef struct sc_dq {
    ev_timer timer;
    struct ev_loop *loop;
    sc_link list;                   /* entries, earliest deadline first */
    uint64_t armed_ns;              /* the deadline the timer runs for; 0 = stopped */
    void (*expire)(sc_dq_entry *e); /* e's deadline passed; e is out of the queue */
} sc_dq;

void sc_dq_init(sc_dq *q, struct ev_loop *loop, void (*expire)(sc_dq_entry *e));
/* Stops the timer; the queue must be empty. */
void sc_dq_stop(sc_dq *q);
/* Queues e with its deadline at_ns; false (e not queued) when at_ns is
 * earlier than the last deadline queued. */
bool sc_dq_add(sc_dq *q, sc_dq_entry *e, uint64_t at_ns);

static inline bool sc_dq_queued(const sc_dq_entry *e)
{
    return e->link.next != NULL;
}

/* Takes e out of its queue (no timer is touched); nothing when it is not in one. */
static inline void sc_dq_remove(sc_dq_entry *e)
{
    sc_list_remove(&e->link);
}

#endif
