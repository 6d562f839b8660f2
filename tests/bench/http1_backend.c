/*
 * http1_backend.c: a minimal HTTP/1.1 keep-alive server for the benchmark in
 * run.sh. It answers every request with the same small 200 response, as
 * cheaply as possible, so that the load generator and this backend (sharing
 * one core) outrun the proxy under test on the other core.
 *
 *   http1_backend PORT [BODY_BYTES]
 *
 * One thread, epoll, nonblocking sockets. Requests are delimited by the blank
 * line ending their head; a Content-Length body is skipped; chunked request
 * bodies are not supported (the benchmark sends none). Pipelined requests are
 * answered in order, with one write for all of them. "Connection: close" in
 * a request closes the connection after the response. A test peer: it trusts
 * its clients and enforces no limits beyond its buffer size.
 *
 * Build: cc -O2 -o http1_backend http1_backend.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define RBUF 16384
#define MAX_EVENTS 256

typedef struct conn {
    int fd;
    size_t rlen;
    size_t skip;            /* body bytes of the current request still to discard */
    char *out;              /* pending response bytes (only when a write was short) */
    size_t out_len, out_off;
    char rbuf[RBUF];
} conn;

static char *g_resp;
static size_t g_resp_len;
static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { (void)sig; g_stop = 1; }

static void conn_close(int ep, conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

/* Case-insensitive search for a header line "name: value" in a request head. */
static int head_has(const char *head, size_t len, const char *line) {
    size_t n = strlen(line);
    for (size_t i = 0; i + n <= len; i++) {
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, line, n) == 0) return 1;
    }
    return 0;
}

static long head_content_length(const char *head, size_t len) {
    static const char k[] = "content-length:";
    size_t n = sizeof(k) - 1;
    for (size_t i = 0; i + n <= len; i++) {
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, k, n) == 0)
            return strtol(head + i + n, NULL, 10);
    }
    return 0;
}

/* Sends `len` bytes, keeping what the socket did not take. -1: close. */
static int conn_send(int ep, conn *c, const char *buf, size_t len) {
    if (c->out_len > c->out_off) {
        /* Already blocked: queue behind the pending bytes. */
        char *nb = realloc(c->out, c->out_len + len);
        if (!nb) return -1;
        memcpy(nb + c->out_len, buf, len);
        c->out = nb;
        c->out_len += len;
        return 0;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(c->fd, buf + off, len - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) return -1;
            free(c->out);
            c->out = malloc(len - off);
            if (!c->out) return -1;
            memcpy(c->out, buf + off, len - off);
            c->out_len = len - off;
            c->out_off = 0;
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return 0;
        }
        off += (size_t)n;
    }
    return 0;
}

static int conn_flush_pending(int ep, conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->out_off += (size_t)n;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

/* Reads what is there and answers every complete request. -1: close. */
static int conn_read(int ep, conn *c) {
    static char out[64 * 1024];
    for (;;) {
        ssize_t n = read(c->fd, c->rbuf + c->rlen, RBUF - c->rlen);
        if (n == 0) return -1;
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->rlen += (size_t)n;
        size_t pos = 0, olen = 0;
        int close_after = 0;
        while (pos < c->rlen) {
            if (c->skip) {
                size_t k = c->rlen - pos < c->skip ? c->rlen - pos : c->skip;
                pos += k;
                c->skip -= k;
                continue;
            }
            char *end = memmem(c->rbuf + pos, c->rlen - pos, "\r\n\r\n", 4);
            if (!end) break;
            size_t hlen = (size_t)(end - (c->rbuf + pos)) + 4;
            long cl = head_content_length(c->rbuf + pos, hlen);
            if (head_has(c->rbuf + pos, hlen, "connection: close")) close_after = 1;
            pos += hlen;
            c->skip = cl > 0 ? (size_t)cl : 0;
            if (olen + g_resp_len > sizeof(out)) {
                if (conn_send(ep, c, out, olen) < 0) return -1;
                olen = 0;
            }
            memcpy(out + olen, g_resp, g_resp_len);
            olen += g_resp_len;
            if (close_after) break;
        }
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
        if (olen && conn_send(ep, c, out, olen) < 0) return -1;
        if (close_after) {
            shutdown(c->fd, SHUT_WR);
            return -1;
        }
        if (c->rlen == RBUF) return -1;   /* a head larger than the buffer */
        /* One read per readiness event: epoll is level-triggered and comes
         * back if more is there, which saves the read that ends in EAGAIN. */
        return 0;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [BODY_BYTES]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    long body = argc > 2 ? atol(argv[2]) : 64;
    if (port <= 0 || port > 65535 || body < 1 || body > 65536) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %ld\r\n\r\n", body);
    g_resp_len = (size_t)hl + (size_t)body;
    g_resp = malloc(g_resp_len);
    if (!g_resp) return 1;
    memcpy(g_resp, head, (size_t)hl);
    for (long i = 0; i < body - 1; i++) g_resp[hl + i] = (char)('a' + i % 26);
    g_resp[g_resp_len - 1] = '\n';

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) < 0) { perror("bind"); return 1; }
    if (listen(lfd, 4096) < 0) { perror("listen"); return 1; }

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    fprintf(stderr, "http1_backend: listening on 127.0.0.1:%d, %zu-byte response\n", port, g_resp_len);

    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conn *nc = malloc(sizeof(*nc));
                    if (!nc) { close(fd); continue; }
                    nc->fd = fd;
                    nc->rlen = nc->skip = 0;
                    nc->out = NULL;
                    nc->out_len = nc->out_off = 0;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && conn_flush_pending(ep, c) < 0) {
                conn_close(ep, c);
                continue;
            }
            if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && conn_read(ep, c) < 0)
                conn_close(ep, c);
        }
    }
    close(lfd);
    return 0;
}
