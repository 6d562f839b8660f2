/*
 * tls_handshake_bench.c: CPU per mTLS handshake of sidecar/tls (server and
 * client side measured separately, each on its own thread over loopback
 * TCP), full and resumed. Not a ctest; build and run by hand:
 *
 *   cc -O2 -std=c17 -D_GNU_SOURCE -Isidecar tests/bench/tls_handshake_bench.c \
 *      sidecar/tls/spiffe.c sidecar/tls/tls_{cert,conn,ctx,identity,session,watch}.c \
 *      -lssl -lcrypto -lpthread -o /tmp/tls_handshake_bench
 *   /tmp/tls_handshake_bench [-n 1000] [-r 5] [-d CERTDIR] [-m full|resumed|persist|both]
 *
 * CERTDIR holds ca-bundle.pem, api.pem/.key (server) and web.pem/.key
 * (client) as certs/make-certs.sh writes them; without -d the program runs
 * certs/make-certs.sh (so start it from the repository root) into a
 * temporary directory. Other load on the machine inflates thread CPU time:
 * compare the minimum of several runs (-r). Each connection: TCP connect,
 * TLS handshake (ECDSA P-256 leaf both ways, client certificate required and
 * verified, server identity checked, X25519), the server extracts and
 * authorizes the caller's identity, one byte each way (carries the TLS 1.3
 * ticket), close_notify, close. CPU is CLOCK_THREAD_CPUTIME_ID (user+sys)
 * of the thread, so the server figure is what an inbound sidecar worker pays.
 * "persist" compares the server's CPU per request/response exchange (200
 * and 400 bytes) over one connection, TLS against plaintext.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tls/tls.h"

#define ID(svc) "spiffe://example.org/ns/default/dc/dc1/svc/" svc

static int n_conns = 1000;
static char certdir[512];
static int lfd;
static uint16_t port;

typedef struct result {
    double cpu_s, wall_s;
    int reused, failed;
} result;

static double now_s(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "tls_handshake_bench: %s: %s\n", what, err);
    exit(1);
}

static char *path(const char *f)
{
    static char buf[8][600];
    static int i;
    char *p = buf[i++ & 7];
    snprintf(p, 600, "%s/%s", certdir, f);
    return p;
}

typedef struct run {
    sc_tls_ctx *sctx, *cctx;
    bool resume;
    result srv, cli;
} run;

static void *server_thread(void *arg)
{
    run *r = arg;
    pthread_setname_np(pthread_self(), "server");
    const char *allow[] = {ID("web")};
    char err[256], id[SC_TLS_ID_MAX], b;
    sc_tls_want w;
    double c0 = now_s(CLOCK_THREAD_CPUTIME_ID), w0 = now_s(CLOCK_MONOTONIC);
    for (int i = 0; i < n_conns; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            die("accept", strerror(errno));
        SSL *ssl = sc_tls_ssl_server(r->sctx, fd, err, sizeof(err));
        if (!ssl)
            die("server ssl", err);
        if (sc_tls_handshake(ssl, &w) != 0) {
            r->srv.failed++;
            fprintf(stderr, "server: %s\n", sc_tls_conn_error(ssl));
        } else {
            if (sc_tls_peer_identity(ssl, id, sizeof(id)) < 0 || !sc_tls_allowed(allow, 1, id))
                r->srv.failed++;
            r->srv.reused += sc_tls_session_reused(ssl);
            if (sc_tls_read(ssl, &b, 1, &w) != 1 || sc_tls_write(ssl, "y", 1, &w) != 1)
                r->srv.failed++;
            sc_tls_shutdown(ssl, &w);
        }
        sc_tls_ssl_free(ssl);
        close(fd);
    }
    r->srv.cpu_s = now_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    r->srv.wall_s = now_s(CLOCK_MONOTONIC) - w0;
    return NULL;
}

static void *client_thread(void *arg)
{
    run *r = arg;
    pthread_setname_np(pthread_self(), "client");
    char err[256], b;
    sc_tls_want w;
    sc_tls_session_cache *cache = r->resume ? sc_tls_session_cache_new(64) : NULL;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    double c0 = now_s(CLOCK_THREAD_CPUTIME_ID), w0 = now_s(CLOCK_MONOTONIC);
    for (int i = 0; i < n_conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            die("connect", strerror(errno));
        sc_tls_client_opts o = {.sni = "api", .server_identity = ID("api"),
                                .alpn = SC_TLS_ALPN_H2, .cache = cache,
                                .session_key = "api/127.0.0.1"};
        SSL *ssl = sc_tls_ssl_client(r->cctx, fd, &o, err, sizeof(err));
        if (!ssl)
            die("client ssl", err);
        if (sc_tls_handshake(ssl, &w) != 0) {
            r->cli.failed++;
            fprintf(stderr, "client: %s\n", sc_tls_conn_error(ssl));
        } else {
            r->cli.reused += sc_tls_session_reused(ssl);
            if (sc_tls_write(ssl, "x", 1, &w) != 1 || sc_tls_read(ssl, &b, 1, &w) != 1)
                r->cli.failed++;
            sc_tls_shutdown(ssl, &w);
        }
        sc_tls_ssl_free(ssl);
        close(fd);
    }
    r->cli.cpu_s = now_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    r->cli.wall_s = now_s(CLOCK_MONOTONIC) - w0;
    sc_tls_session_cache_free(cache);
    return NULL;
}

/* ---- per request over one persistent connection: TLS vs plaintext ---- */

#define REQ_LEN 200
#define RESP_LEN 400

typedef struct preq {
    sc_tls_ctx *sctx, *cctx;
    bool tls;
    int n;
    double srv_cpu, cli_cpu;
} preq;

static ssize_t io_read(SSL *ssl, int fd, void *b, size_t l)
{
    sc_tls_want w;
    return ssl ? sc_tls_read(ssl, b, l, &w) : read(fd, b, l);
}

static ssize_t io_write(SSL *ssl, int fd, const void *b, size_t l)
{
    sc_tls_want w;
    return ssl ? sc_tls_write(ssl, b, l, &w) : write(fd, b, l);
}

static void read_full(SSL *ssl, int fd, char *b, size_t l)
{
    for (size_t got = 0; got < l;) {
        ssize_t n = io_read(ssl, fd, b + got, l - got);
        if (n <= 0)
            die("read", "short");
        got += (size_t)n;
    }
}

static void *preq_server(void *arg)
{
    preq *p = arg;
    pthread_setname_np(pthread_self(), "server");
    char err[256], buf[RESP_LEN];
    int fd = accept(lfd, NULL, NULL);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    SSL *ssl = NULL;
    sc_tls_want w;
    if (p->tls) {
        ssl = sc_tls_ssl_server(p->sctx, fd, err, sizeof(err));
        if (!ssl || sc_tls_handshake(ssl, &w) != 0)
            die("server handshake", ssl ? sc_tls_conn_error(ssl) : err);
    }
    memset(buf, 'r', sizeof(buf));
    double c0 = now_s(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < p->n; i++) {
        read_full(ssl, fd, buf, REQ_LEN);
        if (io_write(ssl, fd, buf, RESP_LEN) != RESP_LEN)
            die("server write", "short");
    }
    p->srv_cpu = now_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    sc_tls_ssl_free(ssl);
    close(fd);
    return NULL;
}

static void *preq_client(void *arg)
{
    preq *p = arg;
    pthread_setname_np(pthread_self(), "client");
    char err[256], buf[RESP_LEN];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("connect", strerror(errno));
    SSL *ssl = NULL;
    sc_tls_want w;
    if (p->tls) {
        sc_tls_client_opts o = {.server_identity = ID("api"), .alpn = SC_TLS_ALPN_H2};
        ssl = sc_tls_ssl_client(p->cctx, fd, &o, err, sizeof(err));
        if (!ssl || sc_tls_handshake(ssl, &w) != 0)
            die("client handshake", ssl ? sc_tls_conn_error(ssl) : err);
    }
    memset(buf, 'q', sizeof(buf));
    double c0 = now_s(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < p->n; i++) {
        if (io_write(ssl, fd, buf, REQ_LEN) != REQ_LEN)
            die("client write", "short");
        read_full(ssl, fd, buf, RESP_LEN);
    }
    p->cli_cpu = now_s(CLOCK_THREAD_CPUTIME_ID) - c0;
    sc_tls_ssl_free(ssl);
    close(fd);
    return NULL;
}

static double persist_run(sc_tls_ctx *s, sc_tls_ctx *c, bool tls, int n)
{
    preq p = {.sctx = s, .cctx = c, .tls = tls, .n = n};
    pthread_t ts, tc;
    pthread_create(&ts, NULL, preq_server, &p);
    pthread_create(&tc, NULL, preq_client, &p);
    pthread_join(tc, NULL);
    pthread_join(ts, NULL);
    return p.srv_cpu / n * 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Runs `reps` times; prints the minimum and the median per handshake (the
 * minimum is the figure least disturbed by other load on the machine). */
static void one_run(const char *name, sc_tls_ctx *s, sc_tls_ctx *c, bool resume, int reps)
{
    double sv[64], cv[64];
    int reused = 0, failed = 0;
    for (int i = 0; i < reps; i++) {
        run r = {.sctx = s, .cctx = c, .resume = resume};
        pthread_t ts, tc;
        pthread_create(&ts, NULL, server_thread, &r);
        pthread_create(&tc, NULL, client_thread, &r);
        pthread_join(tc, NULL);
        pthread_join(ts, NULL);
        sv[i] = r.srv.cpu_s / n_conns * 1e6;
        cv[i] = r.cli.cpu_s / n_conns * 1e6;
        reused += r.srv.reused;
        failed += r.srv.failed + r.cli.failed;
    }
    qsort(sv, (size_t)reps, sizeof(sv[0]), cmp_double);
    qsort(cv, (size_t)reps, sizeof(cv[0]), cmp_double);
    printf("| %-8s | %5d x %-3d | %8d | %7.0f / %-7.0f | %7.0f / %-7.0f | %6d |\n", name, n_conns,
           reps, reused, sv[0], sv[reps / 2], cv[0], cv[reps / 2], failed);
}

int main(int argc, char **argv)
{
    const char *mode = "both";
    int opt, reps = 5;
    while ((opt = getopt(argc, argv, "n:d:m:r:")) != -1) {
        switch (opt) {
        case 'r': reps = atoi(optarg) < 1 ? 1 : atoi(optarg) > 64 ? 64 : atoi(optarg); break;
        case 'n': n_conns = atoi(optarg); break;
        case 'd': snprintf(certdir, sizeof(certdir), "%s", optarg); break;
        case 'm': mode = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-n N] [-r RUNS] [-d CERTDIR] [-m full|resumed|persist|both]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    char tmp[] = "/tmp/tls-bench.XXXXXX";
    if (!certdir[0]) {
        if (!mkdtemp(tmp))
            die("mkdtemp", strerror(errno));
        snprintf(certdir, sizeof(certdir), "%s", tmp);
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "sh certs/make-certs.sh --out '%s' api web >/dev/null", tmp);
        if (system(cmd) != 0)
            die("make-certs.sh (run from the repository root)", cmd);
    }
    char err[512];
    sc_tls_ctx *s = sc_tls_ctx_new_server(path("api.pem"), path("api.key"),
                                          path("ca-bundle.pem"), true, err, sizeof(err));
    if (!s)
        die("server ctx", err);
    sc_tls_ctx *c = sc_tls_ctx_new_client(path("web.pem"), path("web.key"),
                                          path("ca-bundle.pem"), err, sizeof(err));
    if (!c)
        die("client ctx", err);

    lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1024) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0)
        die("listen", strerror(errno));
    port = ntohs(sa.sin_port);

    printf("%s, ECDSA P-256 leaves, client certificate required, TLS 1.3, X25519\n\n",
           OpenSSL_version(OPENSSL_VERSION));
    printf("| mode     | conns x runs | resumed  | server CPU us/handshake, min / median | "
           "client CPU us/handshake, min / median | failed |\n");
    printf("|----------|--------------|----------|-------------------|-------------------|--------|\n");
    bool full = strcmp(mode, "resumed") != 0, res = strcmp(mode, "full") != 0;
    if (full)
        one_run("full", s, c, false, reps);
    if (res)
        one_run("resumed", s, c, true, reps);
    if (strcmp(mode, "both") == 0 || strcmp(mode, "persist") == 0) {
        int n = n_conns * 20;
        double plain = 1e9, tls = 1e9;
        for (int i = 0; i < reps; i++) {
            double p = persist_run(s, c, false, n), t = persist_run(s, c, true, n);
            plain = p < plain ? p : plain;
            tls = t < tls ? t : tls;
        }
        printf("\nPersistent connection, %d exchanges of %d+%d bytes, server thread CPU per "
               "exchange (min of runs): plaintext %.2f us, TLS %.2f us (%.2fx)\n",
               n, REQ_LEN, RESP_LEN, plain, tls, tls / plain);
    }
    sc_tls_ctx_unref(s);
    sc_tls_ctx_unref(c);
    close(lfd);
    if (strcmp(certdir, tmp) == 0) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
        if (system(cmd) != 0)
            return 1;
    }
    return 0;
}
