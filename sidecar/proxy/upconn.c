/*
 * upconn.c: connections to upstream instances, shared by up_h1.c and
 * up_h2.c: opening one (the bulkhead's connection cap, TLS origination with
 * the identity the instance must prove), the connect and idle timer, and
 * failing the streams that waited for a connection that never came up.
 */
#include "core/log.h"
#include "proxy/conns.h"
#include "sidecar.h"
#include "tls/tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void up_conn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_conn *c = SC_CONTAINER_OF(t, sc_conn, timer);
    if (c->flags & SC_CONN_F_CONNECTING) {
        SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: connect to %s timed out after %llums", c->route->name, c->peer_text,
                (unsigned long long)c->route->timeouts->connect_ms);
        sc_up_conn_fail_pending(SC_UP(c), SC_FAIL_CONNECT_TIMEOUT);
        sc_conn_close(c, -ETIMEDOUT);
    } else if (sc_conn_deadline_due(c)) {
        SC_DEBUG("upstream %s: closing idle connection to %s", c->route->name, c->peer_text);
        sc_conn_close(c, 0);
    }
}

sc_up_conn *sc_up_conn_new(sc_worker *w, sc_route *route, const struct sockaddr *sa, socklen_t len,
                           const sc_conn_ops *ops, int *err)
{
    int fd;
    if (!sc_bulkhead_conn_acquire(&route->bulkhead)) {
        *err = -EUSERS; /* bulkhead.max_connections reached */
        return NULL;
    }
    int rv = sc_socket_connect(sa, len, &fd);
    if (rv < 0) {
        sc_bulkhead_conn_release(&route->bulkhead);
        *err = rv;
        return NULL;
    }
    sc_up_conn *u = calloc(1, sizeof(*u));
    if (!u) {
        sc_bulkhead_conn_release(&route->bulkhead);
        close(fd);
        *err = -ENOMEM;
        return NULL;
    }
    sc_conn_init(&u->super, w, fd, ops, route);
    sc_list_init(&u->pending);
    memcpy(&u->super.peer, sa, len);
    u->super.peer_len = len;
    sc_sockaddr_text(sa, u->super.peer_text, sizeof(u->super.peer_text));
    const sc_policy *p = route->policy;
    if (p && p->tls.mode != SC_TLS_OFF) {
        sc_tls_watch *tw = p->tls.mode == SC_TLS_MUTUAL ? w->sc->tls_client : w->sc->tls_client_anon;
        sc_tls_ctx *ctx = tw ? sc_tls_watch_get(tw) : NULL;
        char key[160], terr[256] = "no TLS context", expect[SC_TLS_ID_MAX];
        snprintf(key, sizeof(key), "%s/%s", route->name, u->super.peer_text);
        const char *server_identity = p->tls.server_identity;
        const sc_tls_cert_info *ours = ctx ? sc_tls_ctx_cert(ctx) : NULL;
        if (!server_identity && p->discovery == SC_DISCOVERY_CONSUL && ours &&
            sc_tls_identity_for_service(ours->identity, p->consul.dc, p->consul.service ? p->consul.service : p->name,
                                        expect, sizeof(expect)) > 0)
            server_identity = expect; /* the identity Consul's service has in our mesh */
        sc_tls_client_opts o = {
            .sni = p->tls.sni,
            .server_identity = server_identity,
            .alpn = p->protocol == SC_PROTO_HTTP1 ? SC_TLS_ALPN_HTTP1 : SC_TLS_ALPN_H2,
            .cache = w->tls_sessions,
            .session_key = key,
        };
        SSL *ssl = ctx ? sc_tls_ssl_client(ctx, fd, &o, terr, sizeof(terr)) : NULL;
        if (ctx)
            sc_tls_ctx_unref(ctx);
        if (!ssl) {
            SC_WARN("upstream %s: cannot start TLS to %s: %s", route->name, u->super.peer_text, terr);
            sc_bulkhead_conn_release(&route->bulkhead);
            close(fd);
            free(u);
            *err = -EPROTO;
            return NULL;
        }
        u->super.ssl = ssl; /* the handshake starts once TCP is connected */
    }
    u->super.flags |= SC_CONN_F_CONNECTING;
    ev_io_set(&u->super.io, fd, EV_READ | EV_WRITE);
    ev_io_start(w->loop, &u->super.io);
    ev_timer_init(&u->super.timer, up_conn_timer_cb, (double)route->timeouts->connect_ms / 1000.0, 0);
    ev_timer_start(w->loop, &u->super.timer);
    sc_route_stats *rs = &w->stats->routes[route->index];
    SC_STAT_INC(rs->upstream_conns);
    SC_STAT_INC(rs->upstream_conns_total);
    sc_rstate(w, route)->n_conns++;
    return u;
}

void sc_up_conn_idle(sc_up_conn *u)
{
    sc_conn *c = &u->super;
    /* Still connecting (its streams left before it came up): the connect
     * timeout keeps running, so a connect that hangs is still given up at
     * timeouts.connect; the codec's on_connected calls here again once the
     * connection is up with nothing to do, and the idle timeout starts then. */
    if (c->flags & SC_CONN_F_CONNECTING)
        return;
    /* lazy (proxy.h): a connection that goes busy and idle again on every
     * request touches no timer; its users clear the deadline
     * (sc_conn_deadline_clear) when it gets work */
    sc_conn_deadline(c, c->route->timeouts->idle_ms);
}

void sc_up_conn_fail_pending(sc_up_conn *u, sc_fail why)
{
    while (!sc_list_empty(&u->pending)) {
        sc_stream *s = SC_CONTAINER_OF(u->pending.next, sc_stream, up_link);
        sc_list_remove(&s->up_link);
        s->up = NULL;
        sc_stream_upstream_failed(s, why);
    }
}
