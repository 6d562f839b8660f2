/*
 * test_tls.c: the TLS module with real handshakes over non-blocking
 * socketpairs, certificates made at test time by certs/make-certs.sh:
 *   CA "ca"  (dir a): api, web, payments, old (expired)
 *   CA "ca2" (dir b): api, web (same identities, another root)
 *   bundle.pem = ca + ca2 (rotation)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tls/tls.h"

#define SCRIPT SC_TEST_DATA "/../../certs/make-certs.sh"
#define CONN_ERR_SIZE 1200
#define ID(svc) "spiffe://example.org/ns/default/dc/dc1/svc/" svc

static char dir[256];
static char path_buf[64][512];
static int n_paths;

/* dir-relative path, kept for the whole run */
static const char *P(const char *rel)
{
    for (int i = 0; i < n_paths; i++) {
        size_t dl = strlen(dir);
        if (strcmp(path_buf[i] + dl + 1, rel) == 0)
            return path_buf[i];
    }
    assert_true(n_paths < 64);
    snprintf(path_buf[n_paths], sizeof(path_buf[0]), "%s/%s", dir, rel);
    return path_buf[n_paths++];
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    assert_int_equal(rc, 0);
}

static int group_setup(void **st)
{
    (void)st;
    signal(SIGPIPE, SIG_IGN);
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/sc-tls-test.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        return -1;
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "set -e; S='%s'; D='%s'; exec >/dev/null;"
             "sh \"$S\" --out \"$D/a\" api web payments;"
             "sh \"$S\" --out \"$D/a\" --expired old;"
             "sh \"$S\" --out \"$D/b\" --ca-name ca2 api web;"
             "cat \"$D/a/ca/ca.pem\" \"$D/b/ca/ca2.pem\" > \"$D/bundle.pem\"",
             SCRIPT, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "make-certs.sh failed\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **st)
{
    (void)st;
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- helpers ---- */

static sc_tls_ctx *server_ctx(const char *d, const char *svc, const char *ca, bool require)
{
    char c[64], k[64], err[512] = "";
    snprintf(c, sizeof(c), "%s/%s.pem", d, svc);
    snprintf(k, sizeof(k), "%s/%s.key", d, svc);
    sc_tls_ctx *ctx = sc_tls_ctx_new_server(P(c), P(k), ca ? P(ca) : NULL, require, err,
                                            sizeof(err));
    if (!ctx)
        fprintf(stderr, "server ctx: %s\n", err);
    assert_non_null(ctx);
    return ctx;
}

static sc_tls_ctx *client_ctx(const char *d, const char *svc, const char *ca)
{
    char c[64], k[64], err[512] = "";
    if (svc) {
        snprintf(c, sizeof(c), "%s/%s.pem", d, svc);
        snprintf(k, sizeof(k), "%s/%s.key", d, svc);
    }
    sc_tls_ctx *ctx = sc_tls_ctx_new_client(svc ? P(c) : NULL, svc ? P(k) : NULL, P(ca), err,
                                            sizeof(err));
    if (!ctx)
        fprintf(stderr, "client ctx: %s\n", err);
    assert_non_null(ctx);
    return ctx;
}

typedef struct conn {
    int fds[2];
    SSL *c, *s;
    int crc, src;   /* handshake results */
} conn;

/* o NULL: the server must be api (every client names what it verifies). */
static void conn_open(conn *x, sc_tls_ctx *cctx, sc_tls_ctx *sctx, const sc_tls_client_opts *o)
{
    static const sc_tls_client_opts api = {.server_identity = ID("api")};
    char err[256];
    if (!o)
        o = &api;
    memset(x, 0, sizeof(*x));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, x->fds), 0);
    x->c = sc_tls_ssl_client(cctx, x->fds[0], o, err, sizeof(err));
    x->s = sc_tls_ssl_server(sctx, x->fds[1], err, sizeof(err));
    assert_non_null(x->c);
    assert_non_null(x->s);
    x->crc = x->src = -EAGAIN;
}

/* Drives both sides until neither wants more (done or failed). */
static void conn_handshake(conn *x)
{
    sc_tls_want w;
    for (int i = 0; i < 100 && (x->crc == -EAGAIN || x->src == -EAGAIN); i++) {
        if (x->crc == -EAGAIN) {
            x->crc = sc_tls_handshake(x->c, &w);
            assert_true(x->crc != -EAGAIN || w != SC_TLS_WANT_NONE);
        }
        if (x->src == -EAGAIN)
            x->src = sc_tls_handshake(x->s, &w);
    }
    assert_int_not_equal(x->crc, -EAGAIN);
    assert_int_not_equal(x->src, -EAGAIN);
}

static void conn_close(conn *x)
{
    sc_tls_ssl_free(x->c);
    sc_tls_ssl_free(x->s);
    close(x->fds[0]);
    close(x->fds[1]);
}

/* Reads on r until it returns something other than -EAGAIN (the peer wrote already). */
static ssize_t read_some(SSL *r, char *buf, size_t len)
{
    sc_tls_want w;
    ssize_t n = -EAGAIN;
    for (int i = 0; i < 20 && n == -EAGAIN; i++)
        n = sc_tls_read(r, buf, len, &w);
    return n;
}

static void send_recv(SSL *from, SSL *to, const char *msg)
{
    sc_tls_want w;
    char buf[256];
    assert_int_equal(sc_tls_write(from, msg, strlen(msg), &w), (ssize_t)strlen(msg));
    ssize_t n = read_some(to, buf, sizeof(buf));
    assert_int_equal(n, (ssize_t)strlen(msg));
    assert_memory_equal(buf, msg, strlen(msg));
}

/* ---- handshakes ---- */

static void test_allowed_caller(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("a", "web", "a/ca-bundle.pem");
    sc_tls_client_opts o = {.sni = "api", .server_identity = ID("api"),
                            .alpn = SC_TLS_ALPN_H2_HTTP1};
    conn x;
    conn_open(&x, c, s, &o);
    conn_handshake(&x);
    assert_int_equal(x.crc, 0);
    assert_int_equal(x.src, 0);
    assert_string_equal(sc_tls_conn_error(x.c), "");

    char id[SC_TLS_ID_MAX];
    assert_int_equal(sc_tls_peer_identity(x.s, id, sizeof(id)), (int)strlen(ID("web")));
    assert_string_equal(id, ID("web"));
    assert_int_equal(sc_tls_peer_identity(x.c, id, sizeof(id)), (int)strlen(ID("api")));
    assert_string_equal(id, ID("api"));
    assert_int_equal(sc_tls_peer_identity(x.s, id, 10), -ENOSPC);

    const char *allow[] = {ID("web")};
    assert_true(sc_tls_allowed(allow, 1, ID("web")));
    assert_string_equal(sc_tls_alpn_selected(x.s), "h2");
    assert_string_equal(sc_tls_alpn_selected(x.c), "h2");
    assert_string_equal(sc_tls_version(x.c), "TLSv1.3");
    assert_false(sc_tls_session_reused(x.c));
    assert_string_equal(SSL_get_servername(x.s, TLSEXT_NAMETYPE_host_name), "api");

    sc_tls_cert_info pi;
    assert_int_equal(sc_tls_peer_cert_info(x.s, &pi), 0);
    assert_string_equal(pi.identity, ID("web"));
    assert_string_equal(pi.subject, "CN = web");
    /* the caller's serial as Consul writes it (tls.authorize: consul) */
    char sn[SC_TLS_ID_MAX], want[SC_TLS_ID_MAX];
    size_t k = 0;
    for (size_t i = 0; pi.serial[i]; i += 2) {
        if (k)
            want[k++] = ':';
        want[k++] = pi.serial[i];
        want[k++] = pi.serial[i + 1];
    }
    want[k] = 0;
    assert_int_equal(sc_tls_peer_serial(x.s, sn, sizeof(sn)), (int)strlen(want));
    assert_string_equal(sn, want);
    assert_int_equal(sc_tls_peer_serial(x.s, sn, 4), -ENOSPC);

    send_recv(x.c, x.s, "GET / HTTP/1.1\r\n\r\n");
    send_recv(x.s, x.c, "HTTP/1.1 200 OK\r\n\r\n");

    /* Clean close: close_notify reads as 0 on the other side. */
    sc_tls_want w;
    assert_int_equal(sc_tls_shutdown(x.c, &w), 0);
    char buf[64];
    assert_int_equal(read_some(x.s, buf, sizeof(buf)), 0);
    conn_close(&x);
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
}

/* TLS 1.3: the client finishes first, the server refuses its certificate and
 * the client learns it (an alert) on its first read. */
static void expect_client_refused(sc_tls_ctx *cctx, sc_tls_ctx *sctx, const char *server_msg)
{
    sc_tls_client_opts o = {.server_identity = ID("api")};
    conn x;
    conn_open(&x, cctx, sctx, &o);
    conn_handshake(&x);
    assert_int_equal(x.src, -EACCES);
    if (!strstr(sc_tls_conn_error(x.s), server_msg))
        fail_msg("server error '%s' lacks '%s'", sc_tls_conn_error(x.s), server_msg);
    char id[SC_TLS_ID_MAX];
    assert_true(sc_tls_peer_identity(x.s, id, sizeof(id)) < 0);
    if (x.crc == 0) {
        char buf[64];
        ssize_t n = read_some(x.c, buf, sizeof(buf));
        assert_int_equal(n, -EPROTO);
    } else {
        assert_int_equal(x.crc, -EPROTO);
    }
    if (!strstr(sc_tls_conn_error(x.c), "peer sent alert"))
        fail_msg("client error '%s'", sc_tls_conn_error(x.c));
    sc_tls_want w;
    assert_int_equal(sc_tls_shutdown(x.s, &w), 0);   /* no close_notify after a failure */
    conn_close(&x);
}

static void test_no_client_cert_refused(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("a", NULL, "a/ca-bundle.pem");
    expect_client_refused(c, s, "client sent no certificate");
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
}

static void test_other_ca_refused(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("b", "web", "bundle.pem");
    expect_client_refused(c, s, "client certificate verify failed: unable to get local issuer");
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
}

static void test_expired_refused(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("a", "old", "a/ca-bundle.pem");
    expect_client_refused(c, s, "certificate has expired (depth 0, CN = old)");
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
}

static void test_server_identity_mismatch(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("a", "web", "a/ca-bundle.pem");
    sc_tls_client_opts o = {.server_identity = ID("payments")};
    conn x;
    conn_open(&x, c, s, &o);
    conn_handshake(&x);
    assert_int_equal(x.crc, -EACCES);
    assert_string_equal(sc_tls_conn_error(x.c), "server identity " ID("api")
                                                " is not the expected " ID("payments"));
    assert_int_equal(x.src, -EPROTO);
    assert_non_null(strstr(sc_tls_conn_error(x.s), "peer sent alert"));
    conn_close(&x);

    /* A server whose chain is fine but from a root the client does not trust. */
    sc_tls_ctx *s2 = server_ctx("b", "api", "bundle.pem", true);
    sc_tls_client_opts o2 = {.server_identity = ID("api")};
    conn_open(&x, c, s2, &o2);
    conn_handshake(&x);
    assert_int_equal(x.crc, -EACCES);
    assert_non_null(strstr(sc_tls_conn_error(x.c), "server certificate verify failed"));
    conn_close(&x);

    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(s2);
    sc_tls_ctx_unref(c);
}

static void test_optional_client_cert(void **st)
{
    (void)st;
    /* With a CA but not required: a caller without certificate gets in with
     * no identity, which a non-empty allow list refuses. */
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", false);
    sc_tls_ctx *c = client_ctx("a", NULL, "a/ca-bundle.pem");
    conn x;
    conn_open(&x, c, s, NULL);
    conn_handshake(&x);
    assert_int_equal(x.crc, 0);
    assert_int_equal(x.src, 0);
    char id[SC_TLS_ID_MAX];
    assert_int_equal(sc_tls_peer_identity(x.s, id, sizeof(id)), -ENOENT);
    const char *allow[] = {"*"};
    assert_false(sc_tls_allowed(allow, 1, NULL));
    assert_null(sc_tls_alpn_selected(x.s));
    conn_close(&x);
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
}

static void test_alpn(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("a", "web", "a/ca-bundle.pem");
    static const struct { sc_tls_alpn a; const char *want; } cases[] = {
        {SC_TLS_ALPN_H2, "h2"},
        {SC_TLS_ALPN_HTTP1, "http/1.1"},
        {SC_TLS_ALPN_H2_HTTP1, "h2"},
        {SC_TLS_ALPN_NONE, NULL},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_tls_client_opts o = {.alpn = cases[i].a, .sni = "127.0.0.1"};
        conn x;
        conn_open(&x, c, s, &o);
        conn_handshake(&x);
        assert_int_equal(x.crc, 0);
        assert_int_equal(x.src, 0);
        assert_null(SSL_get_servername(x.s, TLSEXT_NAMETYPE_host_name));   /* IP: no SNI */
        const char *got = sc_tls_alpn_selected(x.c);
        if (cases[i].want)
            assert_string_equal(got, cases[i].want);
        else
            assert_null(got);
        conn_close(&x);
    }
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
}

static void test_bundle_two_roots(void **st)
{
    (void)st;
    /* During a CA rotation every sidecar trusts both roots: leaves of either pass. */
    sc_tls_ctx *servers[] = {server_ctx("a", "api", "bundle.pem", true),
                             server_ctx("b", "api", "bundle.pem", true)};
    sc_tls_ctx *clients[] = {client_ctx("a", "web", "bundle.pem"),
                             client_ctx("b", "web", "bundle.pem")};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            sc_tls_client_opts o = {.server_identity = ID("api")};
            conn x;
            conn_open(&x, clients[j], servers[i], &o);
            conn_handshake(&x);
            assert_int_equal(x.crc, 0);
            assert_int_equal(x.src, 0);
            char id[SC_TLS_ID_MAX];
            assert_true(sc_tls_peer_identity(x.s, id, sizeof(id)) > 0);
            assert_string_equal(id, ID("web"));
            send_recv(x.c, x.s, "ping");
            conn_close(&x);
        }
    assert_int_equal(sc_tls_ctx_n_roots(servers[0]), 2);
    assert_string_equal(sc_tls_ctx_root(servers[0], 1)->subject,
                        "O = Sidecar development, CN = ca2 (example.org)");
    assert_true(sc_tls_ctx_root(servers[0], 0)->is_ca);
    assert_null(sc_tls_ctx_root(servers[0], 2));
    for (int i = 0; i < 2; i++) {
        sc_tls_ctx_unref(servers[i]);
        sc_tls_ctx_unref(clients[i]);
    }
}

/* ---- resumption ---- */

static void resume_round(sc_tls_ctx *c, sc_tls_ctx *s, sc_tls_session_cache *cache, bool tls12,
                         bool expect_reused)
{
    sc_tls_client_opts o = {.server_identity = ID("api"), .cache = cache,
                            .session_key = "api/127.0.0.1:15443", .alpn = SC_TLS_ALPN_H2};
    conn x;
    conn_open(&x, c, s, &o);
    if (tls12)
        SSL_set_max_proto_version(x.c, TLS1_2_VERSION);
    conn_handshake(&x);
    assert_int_equal(x.crc, 0);
    assert_int_equal(x.src, 0);
    if (sc_tls_session_reused(x.c) != expect_reused)
        fail_msg("reused %d, want %d (tls12 %d)", sc_tls_session_reused(x.c), expect_reused, tls12);
    assert_int_equal(sc_tls_session_reused(x.s), expect_reused);
    assert_string_equal(sc_tls_version(x.c), tls12 ? "TLSv1.2" : "TLSv1.3");
    /* Identities are known on resumed sessions too (from the session). */
    char id[SC_TLS_ID_MAX];
    assert_true(sc_tls_peer_identity(x.s, id, sizeof(id)) > 0);
    assert_string_equal(id, ID("web"));
    assert_true(sc_tls_peer_identity(x.c, id, sizeof(id)) > 0);
    assert_string_equal(id, ID("api"));
    assert_string_equal(sc_tls_alpn_selected(x.c), "h2");
    /* The server's data carries the TLS 1.3 ticket to the client. */
    send_recv(x.s, x.c, "hello");
    sc_tls_want w;
    assert_int_equal(sc_tls_shutdown(x.c, &w), 0);
    conn_close(&x);
}

/* The server's session cache is bounded in memory: each cached session holds
 * the client's parsed certificate chain (about 13 KiB of RSS with a leaf + CA
 * chain), so the cap is what bounds the memory a stream of full handshakes
 * from clients that never resume can pin; 10,000 sessions were 130 MiB. */
static void test_server_session_cache_bounded(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    long n = SSL_CTX_sess_get_cache_size(sc_tls_ctx_ssl_ctx(s));
    assert_true(n > 0);
    assert_true(n <= 2048);
    sc_tls_ctx_unref(s);
}

static void test_session_resumption(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("a", "web", "a/ca-bundle.pem");
    sc_tls_session_cache *cache = sc_tls_session_cache_new(16);

    resume_round(c, s, cache, false, false);
    assert_int_equal(sc_tls_session_cache_count(cache), 1);
    resume_round(c, s, cache, false, true);
    resume_round(c, s, cache, false, true);   /* each resumption brings a new ticket */
    sc_tls_ctx_flush_sessions(s, time(NULL));   /* nothing expired: still resumable */
    resume_round(c, s, cache, false, true);

    /* TLS 1.2: the session stays and is reused again and again. */
    sc_tls_session_cache *c12 = sc_tls_session_cache_new(16);
    resume_round(c, s, c12, true, false);
    resume_round(c, s, c12, true, true);
    resume_round(c, s, c12, true, true);
    assert_int_equal(sc_tls_session_cache_count(c12), 1);

    /* A new client context (reload) never offers sessions of the old one. */
    sc_tls_ctx *c2 = client_ctx("a", "web", "a/ca-bundle.pem");
    resume_round(c2, s, cache, false, false);
    resume_round(c2, s, cache, false, true);
    /* A new server context (reload) has new sessions: a full handshake. */
    sc_tls_ctx *s2 = server_ctx("a", "api", "a/ca-bundle.pem", true);
    resume_round(c2, s2, cache, false, false);
    resume_round(c2, s2, cache, false, true);

    /* Another key does not see these sessions. */
    sc_tls_client_opts o = {.server_identity = ID("api"), .cache = cache, .session_key = "other/10.0.0.1:1"};
    conn x;
    conn_open(&x, c2, s2, &o);
    conn_handshake(&x);
    assert_int_equal(x.crc, 0);
    assert_false(sc_tls_session_reused(x.c));
    conn_close(&x);

    /* LRU bound on keys. */
    sc_tls_session_cache *tiny = sc_tls_session_cache_new(1);
    resume_round(c2, s2, tiny, false, false);
    sc_tls_client_opts o2 = {.server_identity = ID("api"), .cache = tiny, .session_key = "k2"};
    conn_open(&x, c2, s2, &o2);
    conn_handshake(&x);
    send_recv(x.s, x.c, "t");
    conn_close(&x);
    assert_int_equal(sc_tls_session_cache_count(tiny), 1);
    resume_round(c2, s2, tiny, false, false);   /* evicted by k2 */

    sc_tls_session_cache_free(tiny);
    sc_tls_session_cache_free(cache);
    sc_tls_session_cache_free(c12);
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(s2);
    sc_tls_ctx_unref(c);
    sc_tls_ctx_unref(c2);
}

/* ---- reload ---- */

static void copy_file(const char *from, const char *to)
{
    sh("cp '%s' '%s.tmp' && mv -f '%s.tmp' '%s'", from, to, to, to);
}

static void test_reload(void **st)
{
    (void)st;
    const char *cert = P("live/cert.pem"), *key = P("live/key.pem"), *ca = P("live/ca.pem");
    sh("mkdir -p '%s/live'", dir);
    copy_file(P("a/api.pem"), cert);
    copy_file(P("a/api.key"), key);
    copy_file(P("a/ca-bundle.pem"), ca);
    char err[512] = "";
    sc_tls_ctx_opts o = {.role = SC_TLS_ROLE_SERVER, .cert_file = cert, .key_file = key,
                         .ca_file = ca, .require_client_cert = true};
    sc_tls_watch *w = sc_tls_watch_new(&o, err, sizeof(err));
    assert_non_null(w);
    sc_tls_ctx *c = client_ctx("a", "web", "bundle.pem");

    sc_tls_ctx *ctx1 = sc_tls_watch_get(w);
    const sc_tls_cert_info *ci = sc_tls_ctx_cert(ctx1);
    assert_non_null(ci);
    char serial1[84];
    strcpy(serial1, ci->serial);
    assert_int_equal(sc_tls_watch_check(w, false, err, sizeof(err)), 0);
    assert_int_equal(sc_tls_watch_check(w, true, err, sizeof(err)), 0);    /* same bytes */
    copy_file(P("a/api.pem"), cert);                                       /* new inode, same bytes */
    assert_int_equal(sc_tls_watch_check(w, false, err, sizeof(err)), 0);

    /* A connection begun on the old context. */
    sc_tls_client_opts co = {.server_identity = ID("api")};
    conn old;
    conn_open(&old, c, ctx1, &co);

    /* Garbage: refused, old stays, reported once. */
    sh("echo 'not a certificate' > '%s'", cert);
    err[0] = 0;
    int rc = sc_tls_watch_check(w, false, err, sizeof(err));
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err, "tls.cert"));
    assert_non_null(strstr(err, "no PEM certificate"));
    assert_int_equal(sc_tls_watch_check(w, false, err, sizeof(err)), 0);
    sc_tls_ctx *cur = sc_tls_watch_get(w);
    assert_ptr_equal(cur, ctx1);
    sc_tls_ctx_unref(cur);

    /* New cert (CA b) while the key is still the old one: mismatch, refused. */
    copy_file(P("b/api.pem"), cert);
    rc = sc_tls_watch_check(w, false, err, sizeof(err));
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err, "does not match"));
    /* Then the key: accepted, a new context. */
    copy_file(P("b/api.key"), key);
    copy_file(P("bundle.pem"), ca);
    assert_int_equal(sc_tls_watch_check(w, false, err, sizeof(err)), 1);
    sc_tls_ctx *ctx2 = sc_tls_watch_get(w);
    assert_ptr_not_equal(ctx2, ctx1);
    assert_true(sc_tls_ctx_generation(ctx2) > sc_tls_ctx_generation(ctx1));
    assert_string_not_equal(sc_tls_ctx_cert(ctx2)->serial, serial1);
    assert_int_equal(sc_tls_ctx_n_roots(ctx2), 2);

    /* The old connection finishes on the old context after its last reference
     * outside the SSL is gone. */
    sc_tls_ctx_unref(ctx1);
    conn_handshake(&old);
    assert_int_equal(old.crc, 0);
    assert_int_equal(old.src, 0);
    send_recv(old.c, old.s, "still here");
    conn_close(&old);

    /* New connections use the new material. */
    conn x;
    conn_open(&x, c, ctx2, &co);
    conn_handshake(&x);
    assert_int_equal(x.src, 0);
    sc_tls_cert_info pi;
    assert_int_equal(sc_tls_peer_cert_info(x.c, &pi), 0);
    assert_string_equal(pi.issuer, "O = Sidecar development, CN = ca2 (example.org)");
    conn_close(&x);

    /* An expired replacement is refused. */
    copy_file(P("a/old.pem"), cert);
    copy_file(P("a/old.key"), key);
    rc = sc_tls_watch_check(w, false, err, sizeof(err));
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err, "expired"));
    /* A vanished file is refused too. */
    sh("rm -f '%s'", ca);
    rc = sc_tls_watch_check(w, false, err, sizeof(err));
    assert_int_equal(rc, -ENOENT);
    assert_non_null(strstr(err, "tls.ca"));
    cur = sc_tls_watch_get(w);
    assert_ptr_equal(cur, ctx2);
    sc_tls_ctx_unref(cur);
    /* SIGHUP with the good files back. */
    copy_file(P("a/api.pem"), cert);
    copy_file(P("a/api.key"), key);
    copy_file(P("a/ca-bundle.pem"), ca);
    assert_int_equal(sc_tls_watch_check(w, true, err, sizeof(err)), 1);

    sc_tls_ctx_unref(ctx2);
    sc_tls_ctx_unref(c);
    sc_tls_watch_free(w);

    /* Invalid initial material: no watch. */
    sh("echo junk > '%s'", key);
    assert_null(sc_tls_watch_new(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "tls.key"));
}

/* Workers take the current context per connection while the control thread
 * rotates certificate and CA (ca -> ca2 -> ca ...): no handshake fails. */
typedef struct load_arg {
    sc_tls_watch *w;
    sc_tls_ctx *client;
    sc_tls_session_cache *cache;
    atomic_bool *stop;
    int done, failed;
} load_arg;

static void *load_worker(void *p)
{
    load_arg *a = p;
    while (!atomic_load(a->stop) || a->done < 20) {
        sc_tls_ctx *s = sc_tls_watch_get(a->w);
        sc_tls_client_opts o = {.server_identity = ID("api"), .cache = a->cache,
                                .session_key = "api/1"};
        char err[256];
        int fds[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) < 0)
            break;
        SSL *c = sc_tls_ssl_client(a->client, fds[0], &o, err, sizeof(err));
        SSL *sv = sc_tls_ssl_server(s, fds[1], err, sizeof(err));
        sc_tls_ctx_unref(s);    /* the SSL holds the context from here on */
        sc_tls_want w;
        int rc = -EAGAIN, rs = -EAGAIN;
        for (int i = 0; i < 100 && (rc == -EAGAIN || rs == -EAGAIN); i++) {
            if (rc == -EAGAIN)
                rc = sc_tls_handshake(c, &w);
            if (rs == -EAGAIN)
                rs = sc_tls_handshake(sv, &w);
        }
        char buf[8];
        ssize_t n = -EAGAIN;
        if (rc == 0 && rs == 0 && sc_tls_write(sv, "ok", 2, &w) == 2)
            for (int i = 0; i < 20 && n == -EAGAIN; i++)
                n = sc_tls_read(c, buf, sizeof(buf), &w);
        if (n != 2) {
            a->failed++;
            fprintf(stderr, "load: %d/%d %s | %s\n", rc, rs, sc_tls_conn_error(c),
                    sc_tls_conn_error(sv));
        }
        sc_tls_ssl_free(c);
        sc_tls_ssl_free(sv);
        close(fds[0]);
        close(fds[1]);
        a->done++;
    }
    return NULL;
}

static void test_reload_under_load(void **st)
{
    (void)st;
    const char *cert = P("load/cert.pem"), *key = P("load/key.pem"), *ca = P("load/ca.pem");
    sh("mkdir -p '%s/load'", dir);
    copy_file(P("a/api.pem"), cert);
    copy_file(P("a/api.key"), key);
    copy_file(P("bundle.pem"), ca);
    char err[512];
    sc_tls_ctx_opts o = {.role = SC_TLS_ROLE_SERVER, .cert_file = cert, .key_file = key,
                         .ca_file = ca, .require_client_cert = true};
    sc_tls_watch *w = sc_tls_watch_new(&o, err, sizeof(err));
    assert_non_null(w);
    sc_tls_ctx *client = client_ctx("b", "web", "bundle.pem");
    sc_tls_session_cache *cache = sc_tls_session_cache_new(4);
    atomic_bool stop = false;
    load_arg args[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        args[i] = (load_arg){.w = w, .client = client, .cache = cache, .stop = &stop};
        assert_int_equal(pthread_create(&th[i], NULL, load_worker, &args[i]), 0);
    }
    int reloads = 0;
    for (int i = 0; i < 6; i++) {
        usleep(20000);
        const char *d = (i % 2 == 0) ? "b" : "a";
        char c[64], k[64];
        snprintf(c, sizeof(c), "%s/api.pem", d);
        snprintf(k, sizeof(k), "%s/api.key", d);
        copy_file(P(k), key);   /* key first: one refused attempt is possible in between */
        copy_file(P(c), cert);
        int rc = sc_tls_watch_check(w, true, err, sizeof(err));
        if (rc != 1)
            fail_msg("reload %d: %d %s", i, rc, err);
        reloads++;
    }
    atomic_store(&stop, true);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failed, 0);
        assert_true(args[i].done >= 20);
    }
    assert_int_equal(reloads, 6);
    sc_tls_session_cache_free(cache);
    sc_tls_ctx_unref(client);
    sc_tls_watch_free(w);
}

/* ---- contexts: errors and sources ---- */

static void test_ctx_errors(void **st)
{
    (void)st;
    char err[512];
    assert_null(sc_tls_ctx_new_server(P("a/nope.pem"), P("a/api.key"), NULL, false, err,
                                      sizeof(err)));
    assert_non_null(strstr(err, "tls.cert"));
    assert_non_null(strstr(err, "nope.pem: cannot open: No such file"));

    assert_null(sc_tls_ctx_new_server(P("a/api.pem"), P("a/web.key"), NULL, false, err,
                                      sizeof(err)));
    assert_non_null(strstr(err, "does not match"));

    assert_null(sc_tls_ctx_new_server(P("a/api.pem"), P("a/api.key"), NULL, true, err,
                                      sizeof(err)));
    assert_non_null(strstr(err, "needs tls.ca"));

    assert_null(sc_tls_ctx_new_server(P("a/api.pem"), NULL, NULL, false, err, sizeof(err)));
    assert_null(sc_tls_ctx_new_server(P("a/api.pem"), P("a/api.key"), P("a/api.key"), true, err,
                                      sizeof(err)));
    assert_non_null(strstr(err, "tls.ca"));

    /* A key as certificate, a certificate as key. */
    assert_null(sc_tls_ctx_new_client(P("a/web.key"), P("a/web.pem"), P("a/ca-bundle.pem"), err,
                                      sizeof(err)));
    assert_non_null(strstr(err, "tls.cert"));

    /* A truncated certificate after a good one. */
    sh("head -c 900 '%s' > '%s'", P("bundle.pem"), P("trunc.pem"));
    assert_null(sc_tls_ctx_new_client(NULL, NULL, P("trunc.pem"), err, sizeof(err)));
    assert_non_null(strstr(err, "certificate 2 is not valid PEM"));

    /* Wrong role for the connection constructors. */
    sc_tls_ctx *c = client_ctx("a", "web", "a/ca-bundle.pem");
    assert_null(sc_tls_ssl_server(c, -1, err, sizeof(err)));
    assert_int_equal(sc_tls_ctx_role(c), SC_TLS_ROLE_CLIENT);
    sc_tls_ctx_unref(c);
    /* Nothing left in the error queue for the next connection's log line. */
    assert_int_equal(ERR_peek_error(), 0);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 65536);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_pem_in_memory(void **st)
{
    (void)st;
    char *cert = slurp(P("a/web.pem")), *key = slurp(P("a/web.key")),
         *ca = slurp(P("a/ca-bundle.pem"));
    char err[512];
    sc_tls_ctx_opts o = {.role = SC_TLS_ROLE_CLIENT, .cert_pem = cert, .key_pem = key,
                         .ca_pem = ca};
    sc_tls_ctx *c = sc_tls_ctx_new(&o, err, sizeof(err));
    assert_non_null(c);
    assert_null(sc_tls_watch_new(&o, err, sizeof(err)));   /* files only */
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    conn x;
    conn_open(&x, c, s, NULL);
    conn_handshake(&x);
    assert_int_equal(x.crc, 0);
    assert_int_equal(x.src, 0);
    conn_close(&x);
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
    free(cert);
    free(key);
    free(ca);
}

/* In-memory material (Consul Connect): empty until set, swaps like a reload,
 * refuses bad answers and keeps the old context, rotates to another CA. */
static void test_watch_set_pem(void **st)
{
    (void)st;
    char *cert = slurp(P("a/api.pem")), *key = slurp(P("a/api.key")),
         *wkey = slurp(P("a/web.key")), *bundle = slurp(P("bundle.pem")),
         *ca_a = slurp(P("a/ca/ca.pem")), *cert_b = slurp(P("b/api.pem")),
         *key_b = slurp(P("b/api.key")), *old = slurp(P("a/old.pem")),
         *old_key = slurp(P("a/old.key"));
    char err[512];
    sc_tls_watch *w = sc_tls_watch_new_memory(SC_TLS_ROLE_SERVER, true);
    assert_non_null(w);
    assert_null(sc_tls_watch_get(w));                       /* nothing yet: accepts fail */
    assert_int_equal(sc_tls_watch_check(w, true, err, sizeof(err)), 0);   /* no files */

    /* the first material */
    assert_int_equal(sc_tls_watch_set_pem(w, cert, key, ca_a, err, sizeof(err)), 1);
    sc_tls_ctx *s1 = sc_tls_watch_get(w);
    assert_non_null(s1);
    assert_string_equal(sc_tls_ctx_cert(s1)->identity, ID("api"));
    assert_int_equal(sc_tls_ctx_n_roots(s1), 1);
    /* the same bytes: nothing to do */
    assert_int_equal(sc_tls_watch_set_pem(w, cert, key, ca_a, err, sizeof(err)), 0);

    /* an open connection on the first context */
    sc_tls_ctx *c1 = client_ctx("a", "web", "bundle.pem");
    sc_tls_client_opts o = {.server_identity = ID("api")};
    conn x;
    conn_open(&x, c1, s1, &o);
    conn_handshake(&x);
    assert_int_equal(x.crc, 0);
    assert_int_equal(x.src, 0);

    /* refused: key of another certificate, garbage, expired leaf; the old stays */
    err[0] = 0;
    assert_true(sc_tls_watch_set_pem(w, cert, wkey, ca_a, err, sizeof(err)) < 0);
    assert_true(err[0] != 0);
    assert_true(sc_tls_watch_set_pem(w, "not pem", key, ca_a, err, sizeof(err)) < 0);
    assert_true(sc_tls_watch_set_pem(w, cert, key, "-----BEGIN CERTIFICATE-----\nxx\n", err,
                                     sizeof(err)) < 0);
    assert_true(sc_tls_watch_set_pem(w, old, old_key, ca_a, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "expired"));
    sc_tls_ctx *cur = sc_tls_watch_get(w);
    assert_ptr_equal(cur, s1);
    sc_tls_ctx_unref(cur);

    /* rotation: new roots (both CAs) then a leaf of the new CA */
    assert_int_equal(sc_tls_watch_set_pem(w, cert, key, bundle, err, sizeof(err)), 1);
    assert_int_equal(sc_tls_watch_set_pem(w, cert_b, key_b, bundle, err, sizeof(err)), 1);
    sc_tls_ctx *s2 = sc_tls_watch_get(w);
    assert_ptr_not_equal(s2, s1);
    assert_int_equal(sc_tls_ctx_n_roots(s2), 2);
    assert_true(sc_tls_ctx_generation(s2) > sc_tls_ctx_generation(s1));
    /* new handshakes use it (clients of either CA pass) ... */
    sc_tls_ctx *clients[] = {client_ctx("a", "web", "bundle.pem"), client_ctx("b", "web", "bundle.pem")};
    for (int i = 0; i < 2; i++) {
        conn y;
        conn_open(&y, clients[i], s2, &o);
        conn_handshake(&y);
        assert_int_equal(y.crc, 0);
        assert_int_equal(y.src, 0);
        send_recv(y.c, y.s, "new");
        conn_close(&y);
        sc_tls_ctx_unref(clients[i]);
    }
    /* ... and the connection on the old context goes on */
    send_recv(x.c, x.s, "old");
    send_recv(x.s, x.c, "still");
    conn_close(&x);

    /* a client watch without a certificate (mode simple): roots only */
    sc_tls_watch *wc = sc_tls_watch_new_memory(SC_TLS_ROLE_CLIENT, false);
    assert_non_null(wc);
    assert_int_equal(sc_tls_watch_set_pem(wc, NULL, NULL, bundle, err, sizeof(err)), 1);
    sc_tls_ctx *cc = sc_tls_watch_get(wc);
    assert_null(sc_tls_ctx_cert(cc));
    sc_tls_ctx_unref(cc);
    sc_tls_watch_free(wc);

    /* a file watch does not take PEM text */
    sc_tls_ctx_opts fo = {.role = SC_TLS_ROLE_SERVER, .cert_file = P("a/api.pem"),
                          .key_file = P("a/api.key"), .ca_file = P("a/ca/ca.pem")};
    sc_tls_watch *fw = sc_tls_watch_new(&fo, err, sizeof(err));
    assert_non_null(fw);
    assert_int_equal(sc_tls_watch_set_pem(fw, cert, key, ca_a, err, sizeof(err)), -EINVAL);
    sc_tls_watch_free(fw);

    sc_tls_ctx_unref(s2);
    sc_tls_ctx_unref(s1);
    sc_tls_ctx_unref(c1);
    sc_tls_watch_free(w);
    char *fr[] = {cert, key, wkey, bundle, ca_a, cert_b, key_b, old, old_key};
    for (size_t i = 0; i < SC_ARRAY_LEN(fr); i++)
        free(fr[i]);
}

/* sc_tls_chain_verify_pem: a Connect leaf is used only once the roots in use
 * vouch for it. Same answers as a handshake against a context with those roots. */
static void test_chain_verify(void **st)
{
    (void)st;
    char *api = slurp(P("a/api.pem")), *api_b = slurp(P("b/api.pem")), *ca_a = slurp(P("a/ca/ca.pem")),
         *ca_b = slurp(P("b/ca/ca2.pem")), *bundle = slurp(P("bundle.pem")),
         *old = slurp(P("a/old.pem"));
    char err[512];
    int64_t now = (int64_t)time(NULL);

    assert_int_equal(sc_tls_chain_verify_pem(api, ca_a, 0, err, sizeof(err)), 0);
    assert_int_equal(sc_tls_chain_verify_pem(api, bundle, now, err, sizeof(err)), 0);
    assert_int_equal(sc_tls_chain_verify_pem(api_b, bundle, 0, err, sizeof(err)), 0);
    assert_int_equal(sc_tls_chain_verify_pem(api_b, ca_b, 0, err, sizeof(err)), 0);
    /* a leaf of another CA (a rotation whose roots did not arrive yet) */
    err[0] = 0;
    assert_int_equal(sc_tls_chain_verify_pem(api_b, ca_a, 0, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "unable to get local issuer certificate"));
    assert_non_null(strstr(err, "depth 0, CN = api"));
    assert_int_equal(sc_tls_chain_verify_pem(api, ca_b, 0, err, sizeof(err)), -EPERM);
    /* dates: expired, and at times outside the leaf's validity */
    assert_int_equal(sc_tls_chain_verify_pem(old, ca_a, 0, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "expired"));
    assert_int_equal(sc_tls_chain_verify_pem(api, ca_a, now + 400 * 86400, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "expired"));
    assert_int_equal(sc_tls_chain_verify_pem(api, ca_a, now - 86400, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "not yet valid"));
    /* unusable input */
    assert_int_equal(sc_tls_chain_verify_pem("garbage", ca_a, 0, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "no PEM certificate"));
    assert_int_equal(sc_tls_chain_verify_pem(api, "-----BEGIN CERTIFICATE-----\nxx\n", 0, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(sc_tls_chain_verify_pem(api, NULL, 0, err, sizeof(err)), -EINVAL);
    assert_int_equal(sc_tls_chain_verify_pem(NULL, ca_a, 0, err, sizeof(err)), -EINVAL);
    assert_int_equal(sc_tls_chain_verify_pem(api, ca_a, 0, NULL, 0), 0);   /* err is optional */

    /* an intermediate CA under ca: leaf + intermediate (a Connect CertPEM with its chain) */
    sh("set -e; cd '%s'; mkdir -p i; cd i; exec 2>/dev/null >/dev/null;"
       "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out int.key;"
       "openssl req -new -key int.key -subj /CN=int -out int.csr;"
       "printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > int.ext;"
       "openssl x509 -req -in int.csr -CA ../a/ca/ca.pem -CAkey ../a/ca/ca.key -set_serial 7 -days 30 "
       "  -extfile int.ext -out int.pem;"
       "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf.key;"
       "openssl req -new -key leaf.key -subj /CN=leaf -out leaf.csr;"
       "printf 'basicConstraints=critical,CA:FALSE\\nsubjectAltName=URI:" ID("leaf") "\\n' > leaf.ext;"
       "openssl x509 -req -in leaf.csr -CA int.pem -CAkey int.key -set_serial 8 -days 30 "
       "  -extfile leaf.ext -out leaf.pem;"
       "cat leaf.pem int.pem > chain.pem; cat ../a/ca/ca.pem int.pem > ca-int.pem",
       dir);
    char *leaf = slurp(P("i/leaf.pem")), *chain = slurp(P("i/chain.pem")), *ca_int = slurp(P("i/ca-int.pem")),
         *int_only = slurp(P("i/int.pem"));
    assert_int_equal(sc_tls_chain_verify_pem(chain, ca_a, 0, err, sizeof(err)), 0);
    assert_int_equal(sc_tls_chain_verify_pem(leaf, ca_a, 0, err, sizeof(err)), -EPERM);  /* chain missing */
    /* intermediates listed with the roots (Consul's IntermediateCerts) are trusted like them */
    assert_int_equal(sc_tls_chain_verify_pem(leaf, ca_int, 0, err, sizeof(err)), 0);
    /* but an intermediate alone is not a root: the chain must end in a self-signed one, as in a handshake */
    assert_int_equal(sc_tls_chain_verify_pem(chain, int_only, 0, err, sizeof(err)), -EPERM);
    assert_int_equal(sc_tls_chain_verify_pem(chain, ca_b, 0, err, sizeof(err)), -EPERM);

    /* the same verdicts as a handshake against contexts with those roots */
    char *leaf_key = slurp(P("i/leaf.key"));
    sc_tls_ctx_opts so = {.role = SC_TLS_ROLE_SERVER, .cert_pem = chain, .key_pem = leaf_key};
    sc_tls_ctx *s = sc_tls_ctx_new(&so, err, sizeof(err));
    assert_non_null(s);
    const char *cas[] = {ca_a, int_only, ca_b};
    for (size_t k = 0; k < SC_ARRAY_LEN(cas); k++) {
        sc_tls_ctx_opts co = {.role = SC_TLS_ROLE_CLIENT, .ca_pem = cas[k]};
        sc_tls_ctx *c = sc_tls_ctx_new(&co, err, sizeof(err));
        assert_non_null(c);
        conn x;
        sc_tls_client_opts lo = {.server_identity = ID("leaf")};
        conn_open(&x, c, s, &lo);
        conn_handshake(&x);
        bool verifies = sc_tls_chain_verify_pem(chain, cas[k], 0, NULL, 0) == 0;
        assert_int_equal(x.crc == 0, verifies);
        conn_close(&x);
        sc_tls_ctx_unref(c);
    }
    sc_tls_ctx_unref(s);
    assert_int_equal(ERR_peek_error(), 0);

    char *fr[] = {api, api_b, ca_a, ca_b, bundle, old, leaf, chain, ca_int, int_only, leaf_key};
    for (size_t i = 0; i < SC_ARRAY_LEN(fr); i++)
        free(fr[i]);
}

/* ---- I/O details ---- */

static void test_io_edges(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("a", "web", "a/ca-bundle.pem");
    conn x;
    conn_open(&x, c, s, NULL);
    sc_tls_want w;
    /* Shutdown before the handshake sends nothing. */
    assert_int_equal(sc_tls_shutdown(x.c, &w), 0);
    conn_handshake(&x);
    assert_int_equal(x.crc, 0);
    assert_int_equal(sc_tls_handshake(x.c, &w), 0);   /* idempotent */
    char buf[40000];
    /* Nothing to read: EAGAIN wanting read. */
    assert_int_equal(sc_tls_read(x.s, buf, sizeof(buf), &w), -EAGAIN);
    assert_int_equal(w, SC_TLS_WANT_READ);
    /* Fill the socket until the write wants to wait, then drain on the peer. */
    memset(buf, 'x', sizeof(buf));
    size_t sent = 0;
    ssize_t n;
    while ((n = sc_tls_write(x.c, buf, sizeof(buf), &w)) > 0)
        sent += (size_t)n;
    assert_int_equal(n, -EAGAIN);
    assert_int_equal(w, SC_TLS_WANT_WRITE);
    size_t got = 0;
    char rb[1000];   /* smaller than a record: the rest stays pending in the SSL */
    n = sc_tls_read(x.s, rb, sizeof(rb), &w);
    assert_int_equal(n, (ssize_t)sizeof(rb));
    assert_true(sc_tls_pending(x.s));
    got += (size_t)n;
    while ((n = sc_tls_read(x.s, rb, sizeof(rb), &w)) > 0)
        got += (size_t)n;
    assert_int_equal(n, -EAGAIN);
    assert_true(got > 0 && got <= sent);
    /* Peer vanishes without close_notify: a reset, not a clean end. (The
     * client first takes its ticket so its close is a FIN, not an RST.) */
    assert_int_equal(sc_tls_read(x.c, rb, sizeof(rb), &w), -EAGAIN);
    close(x.fds[0]);
    x.fds[0] = -1;
    while ((n = sc_tls_read(x.s, rb, sizeof(rb), &w)) > 0)
        ;
    assert_int_equal(n, -ECONNRESET);
    if (!strstr(sc_tls_conn_error(x.s), "without close_notify"))
        fail_msg("error: %s", sc_tls_conn_error(x.s));
    n = sc_tls_write(x.s, "x", 1, &w);
    assert_true(n < 0 && n != -EAGAIN);
    sc_tls_ssl_free(x.c);
    sc_tls_ssl_free(x.s);
    close(x.fds[1]);
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
}

static void test_handshake_peer_gone(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    int fds[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    char err[256];
    SSL *ssl = sc_tls_ssl_server(s, fds[1], err, sizeof(err));
    assert_non_null(ssl);
    sc_tls_want w;
    assert_int_equal(sc_tls_handshake(ssl, &w), -EAGAIN);
    assert_int_equal(w, SC_TLS_WANT_READ);
    assert_int_equal(write(fds[0], "GET / HTTP/1.1\r\n\r\n", 18), 18);   /* plaintext to a TLS port */
    int rc = sc_tls_handshake(ssl, &w);
    assert_int_equal(rc, -EPROTO);
    assert_non_null(strstr(sc_tls_conn_error(ssl), "TLS handshake"));
    sc_tls_ssl_free(ssl);
    close(fds[0]);
    close(fds[1]);

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    ssl = sc_tls_ssl_server(s, fds[1], err, sizeof(err));
    close(fds[0]);
    assert_int_equal(sc_tls_handshake(ssl, &w), -ECONNRESET);
    sc_tls_ssl_free(ssl);
    close(fds[1]);
    sc_tls_ctx_unref(s);
    assert_int_equal(ERR_peek_error(), 0);
}

/* ---- identities and allow lists ---- */

static void test_identity_for_service(void **st)
{
    (void)st;
    char out[256];
    const char *ours = "spiffe://example.org/ns/default/dc/dc1/svc/web";
    assert_true(sc_tls_identity_for_service(ours, NULL, "api", out, sizeof(out)) > 0);
    assert_string_equal(out, "spiffe://example.org/ns/default/dc/dc1/svc/api");
    assert_true(sc_tls_identity_for_service(ours, "dc2", "payments", out, sizeof(out)) > 0);
    assert_string_equal(out, "spiffe://example.org/ns/default/dc/dc2/svc/payments");
    assert_true(sc_tls_identity_for_service("spiffe://1234-abcd.consul/ns/team/dc/eu/svc/x", "", "y", out, sizeof(out)) > 0);
    assert_string_equal(out, "spiffe://1234-abcd.consul/ns/team/dc/eu/svc/y");
    static const char *const bad[] = {NULL, "", "https://example.org/ns/default/dc/dc1/svc/web",
                                      "spiffe:///ns/default/dc/dc1/svc/web", "spiffe://example.org/svc/web",
                                      "spiffe://example.org/ns//dc/dc1/svc/web", "spiffe://example.org/ns/default/dc/dc1/svc/"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sc_tls_identity_for_service(bad[i], NULL, "api", out, sizeof(out)), -EINVAL);
    assert_int_equal(sc_tls_identity_for_service(ours, NULL, "", out, sizeof(out)), -EINVAL);
    assert_int_equal(sc_tls_identity_for_service(ours, NULL, "api", out, 20), -ENOSPC);
}

static void test_patterns(void **st)
{
    (void)st;
    const char *why;
    assert_int_equal(sc_tls_pattern_valid(ID("web"), &why), 0);
    assert_null(why);
    assert_int_equal(sc_tls_pattern_valid(ID("*"), NULL), 0);
    assert_int_equal(sc_tls_pattern_valid(ID("web-*"), NULL), 0);
    assert_int_equal(sc_tls_pattern_valid("spiffe://example.org/*", NULL), 0);
    assert_int_equal(sc_tls_pattern_valid("*", NULL), 0);
    assert_int_equal(sc_tls_pattern_valid("spiffe://example.org/ns/*/svc/web", &why), -EINVAL);
    assert_non_null(strstr(why, "only at the end"));
    assert_int_equal(sc_tls_pattern_valid("spiffe://example.org*", &why), -EINVAL);
    assert_non_null(strstr(why, "trust domain"));
    assert_int_equal(sc_tls_pattern_valid("spiffe://*", &why), -EINVAL);
    assert_int_equal(sc_tls_pattern_valid("web*", &why), -EINVAL);
    assert_int_equal(sc_tls_pattern_valid("", &why), -EINVAL);
    assert_int_equal(sc_tls_pattern_valid(NULL, &why), -EINVAL);
    assert_int_equal(sc_tls_pattern_valid("spiffe://example.org/a b", &why), -EINVAL);
    assert_int_equal(sc_tls_pattern_valid("**", &why), -EINVAL);
}

static void test_allow_list(void **st)
{
    (void)st;
    const char *exact[] = {ID("web"), ID("batch")};
    assert_true(sc_tls_allowed(exact, 2, ID("web")));
    assert_true(sc_tls_allowed(exact, 2, ID("batch")));
    assert_false(sc_tls_allowed(exact, 2, ID("web2")));
    assert_false(sc_tls_allowed(exact, 2, ID("we")));
    assert_false(sc_tls_allowed(exact, 2, "spiffe://example.org/ns/default/dc/dc2/svc/web"));

    const char *wild[] = {ID("web-*")};
    assert_true(sc_tls_allowed(wild, 1, ID("web-frontend")));
    assert_false(sc_tls_allowed(wild, 1, ID("web-")));       /* needs a character */
    assert_false(sc_tls_allowed(wild, 1, ID("web")));
    assert_false(sc_tls_allowed(wild, 1, ID("webx")));

    const char *dc[] = {ID("*")};
    assert_true(sc_tls_allowed(dc, 1, ID("anything")));
    assert_false(sc_tls_allowed(dc, 1, "spiffe://example.org/ns/default/dc/dc2/svc/web"));
    assert_false(sc_tls_allowed(dc, 1, "spiffe://other.org/ns/default/dc/dc1/svc/web"));

    const char *td[] = {"spiffe://example.org/*"};
    assert_true(sc_tls_allowed(td, 1, ID("web")));
    assert_false(sc_tls_allowed(td, 1, "spiffe://example.org.evil/ns/default/dc/dc1/svc/web"));

    const char *any[] = {"*"};
    assert_true(sc_tls_allowed(any, 1, ID("x")));
    assert_false(sc_tls_allowed(any, 1, NULL));
    assert_false(sc_tls_allowed(any, 1, ""));

    /* Invalid patterns match nothing, valid ones next to them still do. */
    const char *bad[] = {"spiffe://example.org/ns/*/dc/dc1/svc/web", "spiffe://example.org*",
                         ID("api")};
    assert_false(sc_tls_allowed(bad, 3, "spiffe://example.org/ns/x/dc/dc1/svc/web"));
    assert_false(sc_tls_allowed(bad, 3, "spiffe://example.org.evil/x"));
    assert_true(sc_tls_allowed(bad, 3, ID("api")));

    /* No list: every peer the handshake let in. */
    assert_true(sc_tls_allowed(NULL, 0, ID("x")));
    assert_true(sc_tls_allowed(NULL, 0, NULL));
}

static X509 *load_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    return x;
}

static void test_cert_identity_edge_cases(void **st)
{
    (void)st;
    char id[SC_TLS_ID_MAX];
    /* The CA carries the trust domain as its URI SAN. */
    X509 *ca = load_cert(P("a/ca/ca.pem"));
    assert_int_equal(sc_tls_cert_identity(ca, id, sizeof(id)), 20);
    assert_string_equal(id, "spiffe://example.org");
    X509_free(ca);

    /* Build certificates with zero and two URI SANs. */
    X509 *x = load_cert(P("a/web.pem"));
    X509 *y = X509_dup(x);
    X509_EXTENSION *ext =
        X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "URI:spiffe://a/1,URI:spiffe://a/2");
    assert_non_null(ext);
    int loc = X509_get_ext_by_NID(y, NID_subject_alt_name, -1);
    X509_EXTENSION_free(X509_delete_ext(y, loc));
    assert_int_equal(sc_tls_cert_identity(y, id, sizeof(id)), -ENOENT);
    assert_true(X509_add_ext(y, ext, -1));
    assert_int_equal(sc_tls_cert_identity(y, id, sizeof(id)), -EPROTO);
    X509_EXTENSION_free(ext);
    ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "DNS:web");
    loc = X509_get_ext_by_NID(y, NID_subject_alt_name, -1);
    X509_EXTENSION_free(X509_delete_ext(y, loc));
    assert_true(X509_add_ext(y, ext, -1));
    assert_int_equal(sc_tls_cert_identity(y, id, sizeof(id)), -ENOENT);
    X509_EXTENSION_free(ext);
    X509_free(y);
    X509_free(x);
    assert_int_equal(sc_tls_cert_identity(NULL, id, sizeof(id)), -ENOENT);
    ERR_clear_error();
}

/* ---- certificate facts ---- */

static void test_cert_info(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    const sc_tls_cert_info *ci = sc_tls_ctx_cert(s);
    assert_non_null(ci);
    assert_string_equal(ci->subject, "CN = api");
    assert_string_equal(ci->issuer, "O = Sidecar development, CN = ca (example.org)");
    assert_string_equal(ci->identity, ID("api"));
    assert_false(ci->is_ca);
    assert_true(strlen(ci->serial) >= 16);
    assert_int_equal(strspn(ci->serial, "0123456789abcdef"), strlen(ci->serial));
    assert_int_equal(strlen(ci->sha256), 64);
    int64_t now = (int64_t)time(NULL);
    assert_true(ci->not_before <= now && ci->not_after > now);
    assert_int_equal(strlen(ci->not_after_iso), 20);
    assert_int_equal(ci->not_after_iso[10], 'T');
    int64_t days = sc_tls_cert_days_until_expiry(ci, now);
    assert_true(days == 364 || days == 365);
    assert_int_equal(sc_tls_cert_check(ci, now, 30), SC_TLS_CERT_VALID);
    assert_int_equal(sc_tls_cert_check(ci, now, 400), SC_TLS_CERT_EXPIRING);
    assert_int_equal(sc_tls_cert_check(ci, ci->not_before - 1, 30), SC_TLS_CERT_NOT_YET_VALID);
    assert_string_equal(sc_tls_cert_state_name(SC_TLS_CERT_EXPIRING), "expiring");

    /* The file helper; an expired certificate (a context may still hold it). */
    sc_tls_cert_info old;
    char err[256];
    assert_int_equal(sc_tls_cert_info_file(P("a/old.pem"), &old, err, sizeof(err)), 0);
    assert_string_equal(old.identity, ID("old"));
    assert_int_equal(sc_tls_cert_check(&old, now, 30), SC_TLS_CERT_EXPIRED);
    assert_true(sc_tls_cert_days_until_expiry(&old, now) < 0);
    assert_int_equal(sc_tls_cert_info_file(P("a/none.pem"), &old, err, sizeof(err)), -ENOENT);
    sc_tls_ctx *c = client_ctx("a", "old", "a/ca-bundle.pem");
    assert_int_equal(sc_tls_cert_check(sc_tls_ctx_cert(c), now, 30), SC_TLS_CERT_EXPIRED);
    sc_tls_ctx_unref(c);
    c = client_ctx("a", NULL, "a/ca-bundle.pem");
    assert_null(sc_tls_ctx_cert(c));
    sc_tls_ctx_unref(c);

    /* Pure arithmetic. */
    sc_tls_cert_info t = {.not_before = 0, .not_after = 10 * 86400};
    assert_int_equal(sc_tls_cert_days_until_expiry(&t, 0), 10);
    assert_int_equal(sc_tls_cert_days_until_expiry(&t, 86400 + 1), 8);
    assert_int_equal(sc_tls_cert_days_until_expiry(&t, 10 * 86400), 0);
    assert_int_equal(sc_tls_cert_days_until_expiry(&t, 10 * 86400 + 1), -1);
    assert_int_equal(sc_tls_cert_check(&t, 10 * 86400, 0), SC_TLS_CERT_EXPIRED);
    assert_int_equal(sc_tls_cert_check(&t, 3 * 86400, 7), SC_TLS_CERT_EXPIRING);
    assert_int_equal(sc_tls_cert_check(&t, 2 * 86400, 7), SC_TLS_CERT_VALID);
    sc_tls_ctx_unref(s);
}

static void test_last_error(void **st)
{
    (void)st;
    char buf[256];
    ERR_clear_error();
    assert_int_equal(sc_tls_last_error(buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
    BIO *b = BIO_new_mem_buf("junk", 4);
    assert_null(PEM_read_bio_X509(b, NULL, NULL, NULL));
    BIO_free(b);
    assert_true(sc_tls_last_error(buf, sizeof(buf)) > 0);
    assert_non_null(strstr(buf, "no start line"));
    assert_int_equal(ERR_peek_error(), 0);   /* cleared */
    /* A tiny buffer still drains the queue. */
    b = BIO_new_mem_buf("junk", 4);
    assert_null(PEM_read_bio_X509(b, NULL, NULL, NULL));
    BIO_free(b);
    assert_true(sc_tls_last_error(buf, 5) <= 4);
    assert_int_equal(ERR_peek_error(), 0);
}

static void test_serial_colon_hex(void **st)
{
    (void)st;
    char out[64];
    static const unsigned char a[] = {0x0a, 0x1b, 0xff, 0x00};
    assert_int_equal(sc_tls_serial_colon_hex(a, sizeof(a), out, sizeof(out)), 11);
    assert_string_equal(out, "0a:1b:ff:00");
    /* leading zero octets (DER positive sign) are not part of the number */
    static const unsigned char b[] = {0x00, 0x00, 0x80, 0x01};
    assert_int_equal(sc_tls_serial_colon_hex(b, sizeof(b), out, sizeof(out)), 5);
    assert_string_equal(out, "80:01");
    static const unsigned char z[] = {0x00};
    assert_int_equal(sc_tls_serial_colon_hex(z, 1, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(sc_tls_serial_colon_hex(NULL, 0, out, sizeof(out)), 0);
    assert_int_equal(sc_tls_serial_colon_hex(a, 3, out, 8), -ENOSPC);
    assert_int_equal(sc_tls_serial_colon_hex(a, 3, out, 9), 8);
    assert_string_equal(out, "0a:1b:ff");
}

/* ---- hardening: names, identities, sessions that outlive certificates ---- */

static EVP_PKEY *load_key(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

static void write_pem(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(PEM_write_X509(f, x));
    fclose(f);
}

/*
 * Issues <dir>/<name>.pem (key: a/web.key) signed by CA "a", valid from an
 * hour ago until now + valid_s, with these URI SANs (raw bytes, so a test
 * can put CR/LF in one; NULL entries end the list) and DNS:<dns> when set.
 * Returns the certificate path; the key is P("a/web.key").
 */
static const char *issue_cert(const char *name, const char *const *uris, const char *dns, long valid_s)
{
    X509 *ca = load_cert(P("a/ca/ca.pem"));
    EVP_PKEY *cakey = load_key(P("a/ca/ca.key")), *key = load_key(P("a/web.key"));
    X509 *x = X509_new();
    assert_non_null(x);
    assert_true(X509_set_version(x, 2));
    assert_true(ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL) & 0x7fffffff));
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), valid_s));
    X509_NAME *nm = X509_get_subject_name(x);
    assert_true(X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0));
    assert_true(X509_set_issuer_name(x, X509_get_subject_name(ca)));
    assert_true(X509_set_pubkey(x, key));
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    for (size_t i = 0; uris && uris[i]; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_IA5STRING *v = ASN1_IA5STRING_new();
        assert_true(ASN1_STRING_set(v, uris[i], (int)strlen(uris[i])));
        GENERAL_NAME_set0_value(g, GEN_URI, v);
        sk_GENERAL_NAME_push(gens, g);
    }
    if (dns) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_IA5STRING *v = ASN1_IA5STRING_new();
        assert_true(ASN1_STRING_set(v, dns, (int)strlen(dns)));
        GENERAL_NAME_set0_value(g, GEN_DNS, v);
        sk_GENERAL_NAME_push(gens, g);
    }
    if (sk_GENERAL_NAME_num(gens) > 0)
        assert_true(X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT));
    GENERAL_NAMES_free(gens);
    X509_EXTENSION *eku = X509V3_EXT_conf_nid(NULL, NULL, NID_ext_key_usage, "serverAuth,clientAuth");
    assert_non_null(eku);
    assert_true(X509_add_ext(x, eku, -1));
    X509_EXTENSION_free(eku);
    assert_true(X509_sign(x, cakey, EVP_sha256()) > 0);
    char rel[128];
    snprintf(rel, sizeof(rel), "h/%s.pem", name);
    sh("mkdir -p '%s/h'", dir);
    const char *path = P(rel);
    write_pem(path, x);
    X509_free(x);
    X509_free(ca);
    EVP_PKEY_free(cakey);
    EVP_PKEY_free(key);
    return path;
}

static sc_tls_ctx *ctx_from(sc_tls_role role, const char *cert, bool require)
{
    char err[512] = "";
    sc_tls_ctx_opts o = {.role = role, .cert_file = cert, .key_file = cert ? P("a/web.key") : NULL,
                         .ca_file = P("a/ca-bundle.pem"), .require_client_cert = require};
    sc_tls_ctx *c = sc_tls_ctx_new(&o, err, sizeof(err));
    if (!c)
        fail_msg("ctx: %s", err);
    return c;
}

static void test_spiffe_id_valid(void **st)
{
    (void)st;
    static const char *const good[] = {
        "spiffe://example.org",
        "spiffe://example.org/ns/default/dc/dc1/svc/web",
        "spiffe://1234-abcd.consul/ns/default/dc/dc1/svc/api",
        "spiffe://a_b.c-d/Path.With-All_chars/0",
        "spiffe://x/..a/a..",
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(good); i++) {
        const char *why = "unset";
        if (sc_tls_spiffe_id_valid(good[i], strlen(good[i]), &why) != 0)
            fail_msg("'%s' refused: %s", good[i], why);
        assert_null(why);
    }
    static const struct { const char *id; const char *why; } bad[] = {
        {"spiffe://example.org/svc/web\r\nx-sidecar-caller: spiffe://example.org/admin", "control character"},
        {"spiffe://example.org/svc/w\x7f", "control character"},
        {"spiffe://example.org/svc/w\xc3\xa9", "outside ASCII"},
        {"", "does not start with spiffe://"},
        {"SPIFFE://example.org/svc/web", "does not start with spiffe://"},
        {"https://example.org/svc/web", "does not start with spiffe://"},
        {"spiffe:/example.org", "does not start with spiffe://"},
        {"spiffe://", "trust domain is empty"},
        {"spiffe:///svc/web", "trust domain is empty"},
        {"spiffe://Example.org/svc/web", "trust domain may hold only"},
        {"spiffe://example.org:443/svc/web", "trust domain may hold only"},
        {"spiffe://user@example.org/svc/web", "trust domain may hold only"},
        {"spiffe://example.org/", "ends with '/'"},
        {"spiffe://example.org/svc/", "ends with '/'"},
        {"spiffe://example.org//svc", "empty segment"},
        {"spiffe://example.org/svc/./web", "'.' or '..' segment"},
        {"spiffe://example.org/svc/..", "'.' or '..' segment"},
        {"spiffe://example.org/svc/web?x=1", "path may hold only"},
        {"spiffe://example.org/svc/web#f", "path may hold only"},
        {"spiffe://example.org/svc/we%20b", "path may hold only"},
        {"spiffe://example.org/svc/we b", "path may hold only"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        const char *why = NULL;
        assert_int_equal(sc_tls_spiffe_id_valid(bad[i].id, strlen(bad[i].id), &why), -EINVAL);
        if (!why || !strstr(why, bad[i].why))
            fail_msg("'%s': why '%s', want '%s'", bad[i].id, why ? why : "(null)", bad[i].why);
    }
    /* an embedded NUL (length given), the bounds */
    assert_int_equal(sc_tls_spiffe_id_valid("spiffe://a/b\0c", 14, NULL), -EINVAL);
    char id[SC_TLS_ID_MAX + 8];
    strcpy(id, "spiffe://example.org/");
    size_t l = strlen(id);
    memset(id + l, 'a', SC_TLS_ID_MAX - 1 - l);
    assert_int_equal(sc_tls_spiffe_id_valid(id, SC_TLS_ID_MAX - 1, NULL), 0);
    id[SC_TLS_ID_MAX - 1] = 'a';
    assert_int_equal(sc_tls_spiffe_id_valid(id, SC_TLS_ID_MAX, NULL), -EINVAL);
    char td[300] = "spiffe://";
    memset(td + 9, 'a', 256);
    td[9 + 256] = 0;
    assert_int_equal(sc_tls_spiffe_id_valid(td, strlen(td), NULL), -EINVAL);
    td[9 + 255] = 0;
    assert_int_equal(sc_tls_spiffe_id_valid(td, strlen(td), NULL), 0);
    assert_int_equal(sc_tls_spiffe_id_valid(NULL, 0, NULL), -EINVAL);
    /* a derived identity is held to the same rules */
    char out[256];
    assert_int_equal(sc_tls_identity_for_service(ID("web"), NULL, "a b", out, sizeof(out)), -EINVAL);
    assert_int_equal(sc_tls_identity_for_service(ID("web"), "dc\r\n1", "api", out, sizeof(out)), -EINVAL);
}

static void test_escape(void **st)
{
    (void)st;
    char out[64];
    assert_int_equal(sc_tls_escape("a\r\nb\\c\x7f\xc3", 8, out, sizeof(out)), 23);
    assert_string_equal(out, "a\\x0d\\x0ab\\x5cc\\x7f\\xc3");
    /* cut, marked */
    assert_int_equal(sc_tls_escape("abcdefghij", 10, out, 8), 7);
    assert_string_equal(out, "abcd...");
    assert_int_equal(sc_tls_escape("\n\n\n", 3, out, 8), 7);
    assert_string_equal(out, "\\x0a...");
    assert_int_equal(sc_tls_escape("abc", 3, out, 4), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(sc_tls_escape("abc", 0, out, 1), 0);
    assert_string_equal(out, "");
}

/* One handshake with these options against server certificate `srv`;
 * returns the client's result, its error text in err. */
static int try_client(sc_tls_ctx *c, sc_tls_ctx *s, const sc_tls_client_opts *o, char *err, size_t errlen)
{
    conn x;
    conn_open(&x, c, s, o);
    conn_handshake(&x);
    int rc = x.crc;
    if (rc == 0 && x.src == 0)
        send_recv(x.s, x.c, "ok");   /* carries the TLS 1.3 ticket */
    snprintf(err, errlen, "%s", sc_tls_conn_error(x.c));
    conn_close(&x);
    return rc;
}

static void test_server_name_verified(void **st)
{
    (void)st;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = client_ctx("a", "web", "a/ca-bundle.pem");
    char err[CONN_ERR_SIZE];
    /* the certificate names DNS:api, DNS:localhost, IP:127.0.0.1 */
    static const char *const ok[] = {"api", "localhost", "127.0.0.1"};
    for (size_t i = 0; i < SC_ARRAY_LEN(ok); i++) {
        sc_tls_client_opts o = {.sni = ok[i]};
        if (try_client(c, s, &o, err, sizeof(err)) != 0)
            fail_msg("sni %s: %s", ok[i], err);
    }
    static const char *const wrong[] = {"payments", "api.example.org", "127.0.0.2", "::1", "[::1]"};
    for (size_t i = 0; i < SC_ARRAY_LEN(wrong); i++) {
        sc_tls_client_opts o = {.sni = wrong[i]};
        assert_int_equal(try_client(c, s, &o, err, sizeof(err)), -EACCES);
        char want[160];
        snprintf(want, sizeof(want), "server certificate is not for the name %s (it names DNS:api, "
                                     "DNS:localhost, IP:127.0.0.1)", wrong[i]);
        if (strcmp(err, want) != 0)
            fail_msg("sni %s: '%s', want '%s'", wrong[i], err, want);
    }
    /* both set: both are checked */
    sc_tls_client_opts both = {.sni = "payments", .server_identity = ID("api")};
    assert_int_equal(try_client(c, s, &both, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "not for the name payments"));
    both.sni = "api";
    both.server_identity = ID("payments");
    assert_int_equal(try_client(c, s, &both, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "is not the expected " ID("payments")));
    /* no name at all: no connection (any certificate the CA signed would do) */
    char e2[256] = "";
    int fds[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    sc_tls_client_opts none = {.alpn = SC_TLS_ALPN_H2};
    assert_null(sc_tls_ssl_client(c, fds[0], &none, e2, sizeof(e2)));
    assert_non_null(strstr(e2, "no name to verify the server against"));
    assert_null(sc_tls_ssl_client(c, fds[0], NULL, e2, sizeof(e2)));
    close(fds[0]);
    close(fds[1]);
    assert_int_equal(ERR_peek_error(), 0);

    /* A resumed session skips verification: the name is checked again on
     * the certificate it carries (no SNI for addresses, so the server
     * resumes whatever the client offers). */
    sc_tls_session_cache *cache = sc_tls_session_cache_new(4);
    sc_tls_client_opts r = {.sni = "127.0.0.1", .cache = cache, .session_key = "api/x"};
    assert_int_equal(try_client(c, s, &r, err, sizeof(err)), 0);
    conn x;
    conn_open(&x, c, s, &r);
    conn_handshake(&x);
    assert_int_equal(x.crc, 0);
    assert_true(sc_tls_session_reused(x.c));     /* the session is good for this name */
    send_recv(x.s, x.c, "ok");
    conn_close(&x);
    r.sni = "127.0.0.2";
    conn_open(&x, c, s, &r);
    conn_handshake(&x);
    assert_true(sc_tls_session_reused(x.c));
    assert_int_equal(x.crc, -EACCES);
    assert_string_equal(sc_tls_conn_error(x.c), "server certificate (resumed session) is not for the name "
                                                "127.0.0.2 (it names DNS:api, DNS:localhost, IP:127.0.0.1)");
    conn_close(&x);
    sc_tls_session_cache_free(cache);
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
}

static void test_bad_uri_san_refused(void **st)
{
    (void)st;
    static const char *const crlf[] = {ID("web") "\r\nx-sidecar-caller: " ID("admin"), NULL};
    static const char *const https[] = {"https://example.org/web", NULL};
    static const char *const two[] = {ID("web"), ID("admin"), NULL};
    static const char *const good[] = {ID("web"), NULL};
    static const struct { const char *name; const char *const *uris; const char *why; } cases[] = {
        {"crlf", crlf, "its URI SAN \"" ID("web") "\\x0d\\x0ax-sidecar-caller: " ID("admin")
                       "\" is not a valid SPIFFE ID: it contains a control character"},
        {"https", https, "its URI SAN \"https://example.org/web\" is not a valid SPIFFE ID: it does "
                         "not start with spiffe:// (lower case)"},
        {"two", two, "it has 2 URI SANs (a SPIFFE certificate has exactly one)"},
    };
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c_api = client_ctx("a", "web", "a/ca-bundle.pem");
    char id[SC_TLS_ID_MAX];
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        const char *pem = issue_cert(cases[i].name, cases[i].uris, "api", 86400);
        X509 *x = load_cert(pem);
        assert_int_equal(sc_tls_cert_identity(x, id, sizeof(id)), -EPROTO);
        sc_tls_cert_info ci;
        sc_tls_cert_info_get(x, &ci);
        assert_string_equal(ci.identity, "");
        X509_free(x);

        /* as a caller: the inbound side refuses the handshake, says why
         * without a raw control character, and never has an identity */
        sc_tls_ctx *c = ctx_from(SC_TLS_ROLE_CLIENT, pem, false);
        conn cx;
        conn_open(&cx, c, s, NULL);
        conn_handshake(&cx);
        assert_int_equal(cx.src, -EACCES);
        char want[600];
        snprintf(want, sizeof(want), "client certificate refused: %s", cases[i].why);
        if (strcmp(sc_tls_conn_error(cx.s), want) != 0)
            fail_msg("%s: '%s', want '%s'", cases[i].name, sc_tls_conn_error(cx.s), want);
        assert_null(strpbrk(sc_tls_conn_error(cx.s), "\r\n"));
        assert_true(sc_tls_peer_identity(cx.s, id, sizeof(id)) < 0);
        conn_close(&cx);
        sc_tls_ctx_unref(c);

        /* as a server: refused when an identity is expected... */
        sc_tls_ctx *sv = ctx_from(SC_TLS_ROLE_SERVER, pem, true);
        sc_tls_client_opts o = {.server_identity = ID("web")};
        char err[CONN_ERR_SIZE];
        assert_int_equal(try_client(c_api, sv, &o, err, sizeof(err)), -EACCES);
        snprintf(want, sizeof(want), "server certificate refused: %s", cases[i].why);
        assert_string_equal(err, want);
        /* ...and a name alone does not look at URI SANs */
        sc_tls_client_opts byname = {.sni = "api"};
        assert_int_equal(try_client(c_api, sv, &byname, err, sizeof(err)), 0);
        sc_tls_ctx_unref(sv);
    }
    /* the same certificate with a proper SPIFFE ID passes */
    sc_tls_ctx *c = ctx_from(SC_TLS_ROLE_CLIENT, issue_cert("good", good, NULL, 86400), false);
    conn cx;
    conn_open(&cx, c, s, NULL);
    conn_handshake(&cx);
    assert_int_equal(cx.src, 0);
    assert_true(sc_tls_peer_identity(cx.s, id, sizeof(id)) > 0);
    assert_string_equal(id, ID("web"));
    conn_close(&cx);
    sc_tls_ctx_unref(c);
    sc_tls_ctx_unref(c_api);
    sc_tls_ctx_unref(s);
    assert_int_equal(ERR_peek_error(), 0);
}

/* A caller's session is resumed only while its certificate is valid: the
 * server's sessions end at the certificate's notAfter, and a resumed
 * session whose certificate has expired anyway is refused. */
static void test_resumed_session_client_cert_expired(void **st)
{
    (void)st;
    static const char *const uris[] = {ID("short"), NULL};
    const long life = 2;
    const char *pem = issue_cert("short", uris, NULL, life);
    time_t not_after = time(NULL) + life;
    sc_tls_ctx *s = server_ctx("a", "api", "a/ca-bundle.pem", true);
    sc_tls_ctx *c = ctx_from(SC_TLS_ROLE_CLIENT, pem, false);
    sc_tls_session_cache *cache = sc_tls_session_cache_new(4);
    sc_tls_client_opts k1 = {.server_identity = ID("api"), .cache = cache, .session_key = "k1"};
    sc_tls_client_opts k2 = {.server_identity = ID("api"), .cache = cache, .session_key = "k2"};

    conn x;
    conn_open(&x, c, s, &k1);
    conn_handshake(&x);
    assert_int_equal(x.src, 0);
    send_recv(x.s, x.c, "ticket");
    /* the server's session (its ticket) ends with the certificate, not after 2 hours */
    SSL_SESSION *ss = SSL_get0_session(x.s);
    assert_true(SSL_SESSION_get_time(ss) + SSL_SESSION_get_timeout(ss) <= (long)not_after + 1);
    conn_close(&x);

    /* k2: the same, then the cap is undone by hand to reach the second check */
    conn_open(&x, c, s, &k2);
    conn_handshake(&x);
    assert_int_equal(x.src, 0);
    send_recv(x.s, x.c, "ticket");
    SSL_SESSION_set_timeout(SSL_get0_session(x.s), 7200);
    conn_close(&x);

    /* while the certificate is valid, both resume */
    for (int i = 0; i < 2; i++) {
        conn_open(&x, c, s, i ? &k2 : &k1);
        conn_handshake(&x);
        assert_int_equal(x.src, 0);
        assert_true(sc_tls_session_reused(x.s));
        send_recv(x.s, x.c, "ticket");
        if (i)
            SSL_SESSION_set_timeout(SSL_get0_session(x.s), 7200);
        conn_close(&x);
    }

    while (time(NULL) <= not_after)
        usleep(100 * 1000);

    /* k1: the session timed out with the certificate: a full handshake,
     * which refuses the expired certificate */
    conn_open(&x, c, s, &k1);
    conn_handshake(&x);
    assert_false(sc_tls_session_reused(x.s));
    assert_int_equal(x.src, -EACCES);
    assert_non_null(strstr(sc_tls_conn_error(x.s), "certificate has expired"));
    conn_close(&x);
    /* k2: resumed (its session outlived the cap), then refused */
    conn_open(&x, c, s, &k2);
    conn_handshake(&x);
    assert_true(sc_tls_session_reused(x.s));
    assert_int_equal(x.src, -EACCES);
    if (!strstr(sc_tls_conn_error(x.s), "client certificate of the resumed session is no longer valid"))
        fail_msg("'%s'", sc_tls_conn_error(x.s));
    assert_non_null(strstr(sc_tls_conn_error(x.s), "CN = short"));
    conn_close(&x);

    sc_tls_session_cache_free(cache);
    sc_tls_ctx_unref(c);
    sc_tls_ctx_unref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allowed_caller),
        cmocka_unit_test(test_serial_colon_hex),
        cmocka_unit_test(test_no_client_cert_refused),
        cmocka_unit_test(test_other_ca_refused),
        cmocka_unit_test(test_expired_refused),
        cmocka_unit_test(test_server_identity_mismatch),
        cmocka_unit_test(test_optional_client_cert),
        cmocka_unit_test(test_alpn),
        cmocka_unit_test(test_bundle_two_roots),
        cmocka_unit_test(test_session_resumption),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_reload_under_load),
        cmocka_unit_test(test_ctx_errors),
        cmocka_unit_test(test_pem_in_memory),
        cmocka_unit_test(test_watch_set_pem),
        cmocka_unit_test(test_chain_verify),
        cmocka_unit_test(test_io_edges),
        cmocka_unit_test(test_handshake_peer_gone),
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_identity_for_service),
        cmocka_unit_test(test_allow_list),
        cmocka_unit_test(test_cert_identity_edge_cases),
        cmocka_unit_test(test_cert_info),
        cmocka_unit_test(test_last_error),
        cmocka_unit_test(test_spiffe_id_valid),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_server_name_verified),
        cmocka_unit_test(test_bad_uri_san_refused),
        cmocka_unit_test(test_resumed_session_client_cert_expired),
        cmocka_unit_test(test_server_session_cache_bounded),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
