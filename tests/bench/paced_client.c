/*
 * paced_client.c: an HTTP/1.1 keep-alive load generator with evenly paced
 * arrivals, over plaintext or mutual TLS, for tests/bench/run.sh.
 *
 * Why it exists: h2load --rps paces each connection with its own timer,
 * started when that connection is up. Plaintext connections come up within
 * microseconds of each other, so their timers fire together and the proxy
 * reads a burst of requests per wake-up; mTLS connections come up
 * milliseconds apart, so their requests arrive one by one. The TLS run and
 * its plaintext twin then differ in batching, not only in TLS. Here one
 * schedule drives every connection: request k is due at t0 + k / rate on
 * connection k % conns, for TLS and plaintext alike, so both see the same
 * arrival pattern (one request every 1/rate seconds).
 *
 *   paced_client [-t CERT KEY CA] -c CONNS -r RATE -D SECONDS [-l LOGFILE]
 *                HOST PORT PATH
 *
 * A request whose connection is still busy at its due time waits for it
 * (counted as "late"); latency runs from the due time to the last byte of
 * the response, so waiting is not hidden. Responses must carry
 * Content-Length (the bench backends do). The summary lines use h2load's
 * wording ("finished in", "requests:", "status codes:") so that
 * tests/bench/benchlib.py parses both tools the same way; the log file has
 * h2load's columns (start µs since the epoch, status, duration µs).
 *
 * Bounded: runs for SECONDS (plus up to 2 s to collect answers), at most
 * CONNS connections; exits 1 on a connection failure.
 *
 *   cc -O2 -Wall -Wextra -o paced_client paced_client.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256
#define RBUF 8192

typedef struct {
    int fd;
    SSL *ssl;
    bool busy;                 /* a request is out, its response not complete */
    uint32_t queued;           /* due requests waiting for this connection */
    uint64_t due_ns[64];       /* ring of due times of queued requests */
    uint32_t qhead;
    uint64_t cur_due_ns;       /* due time of the request in flight */
    char buf[RBUF];
    size_t len;
} conn;

static conn conns[MAX_CONNS];
static int nconns;
static const char *req;
static size_t req_len;
static FILE *logf;
static uint64_t n_sent, n_done, n_2xx, n_3xx, n_4xx, n_5xx, n_late, n_errors;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t epoch_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *what)
{
    fprintf(stderr, "paced_client: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static int do_send(conn *c)
{
    size_t off = 0;
    while (off < req_len) {
        ssize_t n;
        if (c->ssl) {
            size_t w = 0;
            n = SSL_write_ex(c->ssl, req + off, req_len - off, &w) == 1 ? (ssize_t)w : -1;
        } else {
            n = send(c->fd, req + off, req_len - off, MSG_NOSIGNAL);
        }
        if (n < 0)
            return -1;  /* requests are tiny: a full socket buffer is an error here */
        off += (size_t)n;
    }
    return 0;
}

static void start_request(conn *c, uint64_t due)
{
    c->busy = true;
    c->cur_due_ns = due;
    n_sent++;
    if (do_send(c) < 0) {
        fprintf(stderr, "paced_client: send failed: %s\n", strerror(errno));
        n_errors++;
        c->busy = false;
    }
}

/* Returns the response length when buf holds a whole response, 0 when more
 * is needed, -1 when it is not a response this tool understands. */
static long complete(const char *b, size_t len, int *status)
{
    const char *end = memmem(b, len, "\r\n\r\n", 4);
    if (!end)
        return len >= RBUF ? -1 : 0;
    if (len < 12 || memcmp(b, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(b + 9);
    long cl = -1;
    for (const char *p = memchr(b, '\n', (size_t)(end - b)); p && p < end; p = memchr(p, '\n', (size_t)(end - p))) {
        p++;
        if ((size_t)(end - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
            cl = strtol(p + 15, NULL, 10);
    }
    if (cl < 0)
        return -1;
    size_t total = (size_t)(end - b) + 4 + (size_t)cl;
    if (total > RBUF)
        return -1;
    return len >= total ? (long)total : 0;
}

static void on_response(conn *c, int status)
{
    uint64_t t = now_ns();
    n_done++;
    if (status >= 200 && status < 300) n_2xx++;
    else if (status < 400) n_3xx++;
    else if (status < 500) n_4xx++;
    else n_5xx++;
    if (logf) {
        uint64_t dur_us = (t - c->cur_due_ns) / 1000u;
        fprintf(logf, "%llu\t%d\t%llu\n", (unsigned long long)(epoch_us() - dur_us), status,
                (unsigned long long)dur_us);
    }
    c->busy = false;
    if (c->queued) {
        uint64_t due = c->due_ns[c->qhead];
        c->qhead = (c->qhead + 1) % 64;
        c->queued--;
        start_request(c, due);
    }
}

static void on_readable(conn *c)
{
    for (;;) {
        ssize_t n;
        if (c->ssl) {
            size_t r = 0;
            int rv = SSL_read_ex(c->ssl, c->buf + c->len, RBUF - c->len, &r);
            if (rv != 1) {
                int e = SSL_get_error(c->ssl, rv);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    return;
                die("TLS read failed (connection closed?)");
            }
            n = (ssize_t)r;
        } else {
            n = recv(c->fd, c->buf + c->len, RBUF - c->len, 0);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n <= 0)
                die("connection closed by the server");
        }
        c->len += (size_t)n;
        int status = 0;
        long used;
        while (c->len && (used = complete(c->buf, c->len, &status)) != 0) {
            if (used < 0)
                die("unexpected response (no Content-Length, or larger than 8 KiB)");
            memmove(c->buf, c->buf + used, c->len - (size_t)used);
            c->len -= (size_t)used;
            on_response(c, status);
        }
    }
}

static int dial(const char *host, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        die("HOST must be an IPv4 address");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("connect failed");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL, *ca = NULL, *logpath = NULL;
    double rate = 0, secs = 0;
    int opt;
    nconns = 1;
    while ((opt = getopt(argc, argv, "t:c:r:D:l:")) != -1) {
        switch (opt) {
        case 't':
            if (optind + 1 >= argc)
                die("-t needs CERT KEY CA");
            cert = optarg;
            key = argv[optind++];
            ca = argv[optind++];
            break;
        case 'c': nconns = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'D': secs = atof(optarg); break;
        case 'l': logpath = optarg; break;
        default: die("usage: paced_client [-t CERT KEY CA] -c CONNS -r RATE -D SECONDS [-l LOG] HOST PORT PATH");
        }
    }
    if (argc - optind != 3 || nconns < 1 || nconns > MAX_CONNS || rate <= 0 || secs <= 0 || secs > 3600)
        die("usage: paced_client [-t CERT KEY CA] -c CONNS(1..256) -r RATE -D SECONDS(<=3600) [-l LOG] HOST PORT PATH");
    const char *host = argv[optind], *path = argv[optind + 2];
    int port = atoi(argv[optind + 1]);
    static char reqbuf[1024];
    int rl = snprintf(reqbuf, sizeof(reqbuf), "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: paced_client\r\n\r\n",
                      path, host, port);
    if (rl < 0 || (size_t)rl >= sizeof(reqbuf))
        die("path too long");
    req = reqbuf;
    req_len = (size_t)rl;
    if (logpath && !(logf = fopen(logpath, "w")))
        die("cannot open the log file");

    SSL_CTX *ctx = NULL;
    if (cert) {
        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
            die("cannot load the client certificate, key or CA");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        static const unsigned char alpn[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    }
    int ep = epoll_create1(0);
    for (int i = 0; i < nconns; i++) {
        conn *c = &conns[i];
        c->fd = dial(host, port);
        if (ctx) {
            c->ssl = SSL_new(ctx);
            if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1 || SSL_connect(c->ssl) != 1)
                die("TLS handshake failed");
            if (i == 0) {
                const unsigned char *p = NULL;
                unsigned pl = 0;
                SSL_get0_alpn_selected(c->ssl, &p, &pl);
                printf("TLS Protocol: %s\nCipher: %s\nApplication protocol: %.*s\n", SSL_get_version(c->ssl),
                       SSL_get_cipher_name(c->ssl), (int)pl, p ? (const char *)p : "");
            }
        }
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl");
    }
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

    const uint64_t interval = (uint64_t)(1e9 / rate);
    const uint64_t total = (uint64_t)(rate * secs);
    const uint64_t t0 = now_ns() + 1000000u;
    uint64_t k = 0;   /* next request to schedule */
    uint64_t hard_end = t0 + (uint64_t)(secs * 1e9) + 2000000000u;
    while ((k < total || n_done + n_errors < n_sent) && now_ns() < hard_end) {
        /* Start every request that is due. */
        uint64_t t = now_ns();
        while (k < total && t0 + k * interval <= t) {
            conn *c = &conns[k % (uint64_t)nconns];
            uint64_t due = t0 + k * interval;
            if (!c->busy) {
                start_request(c, due);
            } else if (c->queued < 64) {
                c->due_ns[(c->qhead + c->queued) % 64] = due;
                c->queued++;
                n_late++;
            } else {
                n_errors++;   /* hopelessly behind: count it as failed */
            }
            k++;
        }
        if (k < total) {
            uint64_t next = t0 + k * interval;
            struct itimerspec its = {.it_value = {.tv_sec = (time_t)(next / 1000000000u),
                                                  .tv_nsec = (long)(next % 1000000000u)}};
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 100);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u32 == UINT32_MAX) {
                uint64_t x;
                (void)!read(tfd, &x, sizeof(x));
                continue;
            }
            on_readable(&conns[evs[i].data.u32]);
        }
    }
    double wall = (double)(now_ns() - t0) / 1e9;
    uint64_t failed = total - n_done;   /* never answered, or never sent */
    printf("finished in %.2fs, %.2f req/s, 0KB/s\n", wall, (double)n_2xx / (secs < wall ? secs : wall));
    printf("requests: %llu total, %llu started, %llu done, %llu succeeded, %llu failed, 0 errored, 0 timeout\n",
           (unsigned long long)total, (unsigned long long)n_sent, (unsigned long long)n_done,
           (unsigned long long)n_done, (unsigned long long)failed);
    printf("status codes: %llu 2xx, %llu 3xx, %llu 4xx, %llu 5xx\n", (unsigned long long)n_2xx,
           (unsigned long long)n_3xx, (unsigned long long)n_4xx, (unsigned long long)n_5xx);
    printf("paced: %llu of %llu requests waited for a busy connection\n", (unsigned long long)n_late,
           (unsigned long long)total);
    if (logf)
        fclose(logf);
    return n_done == total ? 0 : 1;
}
