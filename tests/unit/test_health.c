/* Unit tests for discovery/grpc_health.c (the hand-written protobuf) and
 * discovery/app_health.c (the probe, on a real libev loop against sockets
 * on loopback), and for sc_health_ready(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "discovery/app_health.h"
#include "discovery/grpc_health.h"

/* ---- protobuf ---- */

static void test_decode_request(void **st)
{
    (void)st;
    char svc[16];
    assert_int_equal(sc_grpc_health_decode_request((const uint8_t *)"", 0, svc, sizeof(svc)), 0);
    assert_string_equal(svc, "");
    const uint8_t web[] = {0x0a, 0x03, 'w', 'e', 'b'};
    assert_int_equal(sc_grpc_health_decode_request(web, sizeof(web), svc, sizeof(svc)), 0);
    assert_string_equal(svc, "web");
    /* unknown fields of every wire type are skipped; the last service wins */
    const uint8_t mixed[] = {0x10, 0x96, 0x01,                   /* 2: varint 150 */
                             0x19, 1, 2, 3, 4, 5, 6, 7, 8,       /* 3: fixed64 */
                             0x25, 1, 2, 3, 4,                   /* 4: fixed32 */
                             0x2a, 0x02, 'x', 'y',               /* 5: bytes */
                             0x0a, 0x01, 'a', 0x0a, 0x02, 'b', 'c'};
    assert_int_equal(sc_grpc_health_decode_request(mixed, sizeof(mixed), svc, sizeof(svc)), 0);
    assert_string_equal(svc, "bc");
    /* malformed */
    static const struct { uint8_t b[8]; size_t n; } bad[] = {
        {{0x0a}, 1},                     /* key without length */
        {{0x0a, 0x05, 'a'}, 3},          /* length past the end */
        {{0x08, 0x01}, 2},               /* field 1 as a varint */
        {{0x0b}, 1},                     /* group */
        {{0x00, 0x00}, 2},               /* field 0 */
        {{0x10, 0x80}, 2},               /* truncated varint */
        {{0x0a, 0x01, 0x00}, 3},         /* NUL in the name */
        {{0x19, 1, 2}, 3},               /* short fixed64 */
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++)
        assert_int_equal(sc_grpc_health_decode_request(bad[i].b, bad[i].n, svc, sizeof(svc)), -EPROTO);
    uint8_t longname[40] = {0x0a, 30};
    memset(longname + 2, 'n', 30);
    assert_int_equal(sc_grpc_health_decode_request(longname, 32, svc, sizeof(svc)), -ENOSPC);
}

static void test_encode_response(void **st)
{
    (void)st;
    uint8_t b[16];
    assert_int_equal(sc_grpc_health_encode_response(SC_HEALTH_SERVING, b), 2);
    assert_int_equal(b[0], 0x08);
    assert_int_equal(b[1], 0x01);
    assert_int_equal(sc_grpc_health_encode_response(SC_HEALTH_NOT_SERVING, b), 2);
    assert_int_equal(b[1], 0x02);
    assert_int_equal(sc_grpc_health_encode_response(SC_HEALTH_SERVICE_UNKNOWN, b), 2);
    assert_int_equal(b[1], 0x03);
    assert_int_equal(sc_grpc_health_encode_response(SC_HEALTH_UNKNOWN, b), 0);
    assert_int_equal(sc_grpc_health_encode_response(300, b), 3);
    assert_int_equal(b[1], 0xac);
    assert_int_equal(b[2], 0x02);
}

/* ---- app probe ---- */

static int listener(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    *port = ntohs(a.sin_port);
    return fd;
}

typedef struct probe_env {
    int changes;
    bool last_up;
} probe_env;

static void on_change(void *arg, bool up)
{
    probe_env *e = arg;
    e->changes++;
    e->last_up = up;
}

static void stop_loop(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void run_for(struct ev_loop *loop, double s)
{
    ev_timer t;
    ev_timer_init(&t, stop_loop, s, 0);
    ev_timer_start(loop, &t);
    ev_run(loop, 0);
    ev_timer_stop(loop, &t);
}

/* Runs the loop until the app's state is `up` (at most 3 s); true if reached. */
static bool wait_state(struct ev_loop *loop, sc_app_health *h, bool up)
{
    for (int i = 0; i < 150 && sc_app_health_is_up(h) != up; i++)
        run_for(loop, 0.02);
    return sc_app_health_is_up(h) == up;
}

/* An HTTP app answering every connection with `status` (a thread). */
typedef struct http_app {
    int fd;
    _Atomic int status;
    pthread_t th;
} http_app;

static void *http_app_run(void *arg)
{
    http_app *a = arg;
    for (;;) {
        int c = accept(a->fd, NULL, NULL);
        if (c < 0)
            return NULL;
        char buf[2048];
        ssize_t n = recv(c, buf, sizeof(buf) - 1, 0);
        if (n > 0) {
            buf[n] = 0;
            char resp[128];
            int l = snprintf(resp, sizeof(resp),
                             "HTTP/1.1 %d X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                             strstr(buf, "GET /healthz HTTP/1.1\r\n") ? a->status : 404);
            send(c, resp, (size_t)l, MSG_NOSIGNAL);
        }
        close(c);
    }
}

static sc_config *cfg_for(uint16_t port, int probe)
{
    sc_config *cfg = calloc(1, sizeof(*cfg));
    char a[32];
    snprintf(a, sizeof(a), "127.0.0.1:%u", port);
    assert_int_equal(sc_addr_parse(a, &cfg->inbound.app, false), 0);
    cfg->inbound.enabled = true;
    cfg->health.app_probe = probe;
    cfg->health.app_path = probe == SC_APP_PROBE_HTTP ? "/healthz" : NULL;
    cfg->health.interval_ms = 100;
    cfg->health.timeout_ms = 100;
    return cfg;
}

static void test_tcp_probe(void **st)
{
    (void)st;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    uint16_t port;
    int lfd = listener(&port);
    sc_config *cfg = cfg_for(port, SC_APP_PROBE_TCP);
    sc_app_health *h = NULL;
    assert_int_equal(sc_app_health_start(loop, cfg, &h), 0);
    probe_env env = {0};
    sc_app_health_subscribe(h, on_change, &env);
    assert_false(sc_app_health_is_up(h)); /* not probed yet */
    assert_true(wait_state(loop, h, true));
    assert_int_equal(env.changes, 1);
    assert_non_null(strstr(sc_app_health_reason(h), "accepts TCP connections"));

    /* the sidecar's readiness follows */
    sidecar sc;
    memset(&sc, 0, sizeof(sc));
    sc.app_health = h;
    char why[200];
    assert_false(sc_health_ready(&sc, why, sizeof(why)));
    assert_string_equal(why, "starting");
    atomic_store(&sc.ready, true);
    assert_true(sc_health_ready(&sc, why, sizeof(why)));

    close(lfd); /* the app dies: down after 2 failed probes */
    run_for(loop, 0.15);
    assert_true(env.changes == 1 || !env.last_up);
    assert_true(wait_state(loop, h, false));
    assert_int_equal(env.changes, 2);
    assert_non_null(strstr(sc_app_health_reason(h), "Connection refused"));
    assert_false(sc_health_ready(&sc, why, sizeof(why)));
    assert_non_null(strstr(why, "app down: app 127.0.0.1:"));
    assert_false(sc_health_ready(&sc, NULL, 0));

    /* back: up after one good probe */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    listen(fd, 16);
    assert_true(wait_state(loop, h, true));
    assert_int_equal(env.changes, 3);
    atomic_store(&sc.draining, true);
    assert_false(sc_health_ready(&sc, why, sizeof(why)));
    assert_string_equal(why, "draining");

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    sc_app_health_render_stats(h, f);
    fclose(f);
    assert_non_null(strstr(text, "sidecar_app_healthy 1"));
    free(text);

    sc_app_health_stop(h);
    close(fd);
    free(cfg);
    ev_loop_destroy(loop);
}

static void test_http_probe(void **st)
{
    (void)st;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    http_app app = {.status = 200};
    uint16_t port;
    app.fd = listener(&port);
    pthread_create(&app.th, NULL, http_app_run, &app);
    sc_config *cfg = cfg_for(port, SC_APP_PROBE_HTTP);
    sc_app_health *h = NULL;
    assert_int_equal(sc_app_health_start(loop, cfg, &h), 0);
    assert_true(wait_state(loop, h, true));
    assert_non_null(strstr(sc_app_health_reason(h), "answered GET /healthz with 200"));
    app.status = 503;
    assert_true(wait_state(loop, h, false));
    assert_non_null(strstr(sc_app_health_reason(h), "with 503"));
    app.status = 204;
    assert_true(wait_state(loop, h, true));
    sc_app_health_stop(h);
    shutdown(app.fd, SHUT_RDWR);
    close(app.fd);
    pthread_join(app.th, NULL);

    /* an app that accepts and never answers: the probe times out */
    int silent = listener(&port);
    free(cfg);
    cfg = cfg_for(port, SC_APP_PROBE_HTTP);
    assert_int_equal(sc_app_health_start(loop, cfg, &h), 0);
    run_for(loop, 0.15);
    assert_true(wait_state(loop, h, false));
    assert_non_null(strstr(sc_app_health_reason(h), "did not answer GET /healthz within 100ms"));
    sc_app_health_stop(h);
    close(silent);
    free(cfg);
    ev_loop_destroy(loop);
}

static void test_nothing_to_probe(void **st)
{
    (void)st;
    sc_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    sc_app_health *h = (sc_app_health *)1;
    assert_int_equal(sc_app_health_start(EV_DEFAULT, &cfg, &h), -ENOENT); /* no inbound */
    assert_null(h);
    cfg.inbound.enabled = true;
    cfg.health.app_probe = SC_APP_PROBE_NONE;
    assert_int_equal(sc_app_health_start(EV_DEFAULT, &cfg, &h), -ENOENT);
    assert_true(sc_app_health_is_up(NULL));
    sc_app_health_stop(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_request),
        cmocka_unit_test(test_encode_response),
        cmocka_unit_test(test_tcp_probe),
        cmocka_unit_test(test_http_probe),
        cmocka_unit_test(test_nothing_to_probe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
