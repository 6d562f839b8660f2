/*
 * deadline.c: the lazy deadline queue (deadline.h).
 */
#include "proxy/deadline.h"

void sc_deadline_timer(struct ev_loop *loop, ev_timer *t, uint64_t *armed_ns, uint64_t now, uint64_t at)
{
    if (ev_is_active(t) && *armed_ns && *armed_ns <= at)
        return; /* it fires first; its callback starts it again for the rest */
    if (!now)
        now = sc_now_ns();
    ev_timer_stop(loop, t);
    ev_timer_set(t, at > now ? (double)(at - now) / 1e9 : 0.0, 0);
    ev_timer_start(loop, t);
    *armed_ns = at;
}

static void fired(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_dq *q = SC_CONTAINER_OF(t, sc_dq, timer);
    q->armed_ns = 0;
    uint64_t now = sc_now_ns();
    while (!sc_list_empty(&q->list)) {
        sc_dq_entry *e = SC_CONTAINER_OF(q->list.next, sc_dq_entry, link);
        if (!sc_deadline_passed(e->at_ns, now)) {
            sc_deadline_timer(q->loop, &q->timer, &q->armed_ns, now, e->at_ns);
            return;
        }
        sc_list_remove(&e->link);
        q->expire(e); /* may add to or remove from this queue */
    }
}

void sc_dq_init(sc_dq *q, struct ev_loop *loop, void (*expire)(sc_dq_entry *e))
{
    q->loop = loop;
    q->expire = expire;
    q->armed_ns = 0;
    sc_list_init(&q->list);
    ev_init(&q->timer, fired);
}

void sc_dq_stop(sc_dq *q)
{
    ev_timer_stop(q->loop, &q->timer);
    q->armed_ns = 0;
}

bool sc_dq_add(sc_dq *q, sc_dq_entry *e, uint64_t at_ns)
{
    if (!sc_list_empty(&q->list)) {
        if (at_ns < SC_CONTAINER_OF(q->list.prev, sc_dq_entry, link)->at_ns)
            return false;
        /* the timer runs for a time no later than the head's, hence this one's */
        e->at_ns = at_ns;
        sc_list_push(&q->list, &e->link);
        return true;
    }
    e->at_ns = at_ns;
    sc_list_push(&q->list, &e->link);
    /* Empty until now: the timer may still run for a head that left. It
     * stays when it fires no later than this deadline. */
    sc_deadline_timer(q->loop, &q->timer, &q->armed_ns, 0, at_ns);
    return true;
}
