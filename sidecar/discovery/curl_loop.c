/*
 * curl_loop.c: libcurl multi on a libev loop (see curl_loop.h).
 */
#include "discovery/curl_loop.h"

#include <ev.h>
#include <stdlib.h>

typedef struct csock {
    ev_io io;
    sc_curl_loop *cl;
    curl_socket_t fd;
    struct csock *prev, *next;
} csock;

struct sc_curl_loop {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;
    csock *socks;
    sc_curl_done_cb done;
    void *arg;
};

static void collect(sc_curl_loop *cl)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(cl->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode rc = m->data.result;
        void *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&priv);
        curl_multi_remove_handle(cl->multi, e);
        cl->done(e, rc, priv, cl->arg);
    }
}

static void sock_ev_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    csock *cs = SC_CONTAINER_OF(w, csock, io);
    sc_curl_loop *cl = cs->cl;
    int flags = ((revents & EV_READ) ? CURL_CSELECT_IN : 0) | ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(cl->multi, cs->fd, flags, &running); /* may free cs */
    collect(cl);
}

static void csock_free(sc_curl_loop *cl, csock *cs)
{
    ev_io_stop(cl->loop, &cs->io);
    if (cs->prev)
        cs->prev->next = cs->next;
    else
        cl->socks = cs->next;
    if (cs->next)
        cs->next->prev = cs->prev;
    free(cs);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)e;
    sc_curl_loop *cl = userp;
    csock *cs = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (cs)
            csock_free(cl, cs);
        return 0;
    }
    if (!cs) {
        cs = calloc(1, sizeof(*cs));
        if (!cs)
            return -1;
        cs->cl = cl;
        cs->fd = s;
        cs->next = cl->socks;
        if (cl->socks)
            cl->socks->prev = cs;
        cl->socks = cs;
        ev_init(&cs->io, sock_ev_cb);
        curl_multi_assign(cl->multi, s, cs);
    } else {
        ev_io_stop(cl->loop, &cs->io);
    }
    int ev = ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    ev_io_set(&cs->io, s, ev);
    ev_io_start(cl->loop, &cs->io);
    return 0;
}

static void timer_ev(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_curl_loop *cl = SC_CONTAINER_OF(t, sc_curl_loop, timer);
    int running;
    curl_multi_socket_action(cl->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect(cl);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    sc_curl_loop *cl = userp;
    ev_timer_stop(cl->loop, &cl->timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&cl->timer, (double)timeout_ms / 1000.0, 0);
        ev_timer_start(cl->loop, &cl->timer);
    }
    return 0;
}

sc_curl_loop *sc_curl_loop_new(struct ev_loop *loop, sc_curl_done_cb done, void *arg)
{
    sc_curl_loop *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    cl->loop = loop;
    cl->done = done;
    cl->arg = arg;
    cl->multi = curl_multi_init();
    if (!cl->multi) {
        free(cl);
        return NULL;
    }
    ev_init(&cl->timer, timer_ev);
    curl_multi_setopt(cl->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(cl->multi, CURLMOPT_SOCKETDATA, cl);
    curl_multi_setopt(cl->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(cl->multi, CURLMOPT_TIMERDATA, cl);
    return cl;
}

int sc_curl_loop_add(sc_curl_loop *cl, CURL *easy)
{
    return curl_multi_add_handle(cl->multi, easy) == CURLM_OK ? 0 : -EIO;
}

void sc_curl_loop_remove(sc_curl_loop *cl, CURL *easy)
{
    curl_multi_remove_handle(cl->multi, easy);
}

void sc_curl_loop_free(sc_curl_loop *cl)
{
    if (!cl)
        return;
    ev_timer_stop(cl->loop, &cl->timer);
    curl_multi_cleanup(cl->multi); /* CURL_POLL_REMOVE for every socket still open */
    while (cl->socks)
        csock_free(cl, cl->socks);
    free(cl);
}
