/*
 * handshake_client.c: full mTLS handshakes, one connection at a time, each
 * counted only when the server has provably finished it: the client waits
 * for the server's first TLS 1.3 NewSessionTicket, which a server sends only
 * after it has processed the client's certificate, CertificateVerify and
 * Finished. For the tls-full load of tests/bench/run.sh.
 *
 *   handshake_client -t SECS CERT KEY CA HOST PORT
 *
 * Why not `openssl s_time -new` alone: s_time closes each connection as soon
 * as its own side of the handshake is done, with the client's last flight
 * (certificate, CertificateVerify, Finished) still unread by the server. A
 * server that sees the close first may drop the connection without doing
 * that half of the handshake (verifying the client's chain and signature);
 * one that reads first does it all. Under callgrind HAProxy verified the
 * client of 32 of 68 s_time connections and the sidecar of all 62, so CPU
 * per s_time connection compared different work, by a share that depends on
 * timing. Here every counted connection is a whole handshake on both sides.
 *
 * Output, like s_time's: one '*' per confirmed handshake on one line, then
 * "N connections in T real seconds, 0 bytes read per connection" and
 * "E not confirmed" (connections that failed or got no ticket within 1 s).
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int got_ticket;

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    (void)ssl, (void)sess;
    got_ticket = 1;
    return 0;   /* not kept: every connection is a full handshake */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One connection: 1 when the handshake completed and a ticket arrived. */
static int one(SSL_CTX *ctx, const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok = 0;
    if (fd < 0)
        return 0;
    int one_ = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one_, sizeof(one_));
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
        close(fd);
        return 0;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    got_ticket = 0;
    if (SSL_connect(ssl) == 1) {
        /* Post-handshake messages arrive through SSL_read; a blocking
         * SSL_read would go on waiting for application data after the
         * ticket, so the socket turns non-blocking and poll bounds the wait. */
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        double end = now_s() + 1.0;
        while (!got_ticket && now_s() < end) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (SSL_has_pending(ssl) == 0 && poll(&p, 1, 100) <= 0)
                continue;
            char b[64];
            int n = SSL_read(ssl, b, sizeof(b));
            if (n <= 0 && SSL_get_error(ssl, n) != SSL_ERROR_WANT_READ)
                break;
        }
        ok = got_ticket;
        SSL_shutdown(ssl);   /* close_notify, as a client that is done would */
    }
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    return ok;
}

int main(int argc, char **argv)
{
    double secs = 10;
    int opt;
    while ((opt = getopt(argc, argv, "t:")) != -1) {
        if (opt == 't')
            secs = atof(optarg);
        else
            return 2;
    }
    if (argc - optind != 5 || secs <= 0) {
        fprintf(stderr, "usage: %s -t SECS CERT KEY CA HOST PORT\n", argv[0]);
        return 2;
    }
    const char *cert = argv[optind], *key = argv[optind + 1], *ca = argv[optind + 2];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[optind + 4]))};
    if (inet_pton(AF_INET, argv[optind + 3], &sa.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[optind + 3]);
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    double t0 = now_s(), end = t0 + secs;
    long n = 0, bad = 0;
    while (now_s() < end) {
        if (one(ctx, &sa)) {
            n++;
            putchar('*');
        } else {
            bad++;
        }
    }
    double t = now_s() - t0;
    printf("\n%ld connections in %.0f real seconds, 0 bytes read per connection\n", n, t);
    printf("%ld not confirmed\n", bad);
    SSL_CTX_free(ctx);
    return n ? 0 : 1;
}
