/*
 * grpc_backend.c: a minimal, fast h2c (prior knowledge) server that answers
 * every request like a gRPC unary method, for the benchmark in run.sh.
 *
 *   grpc_backend PORT [RESPONSE_PAYLOAD_BYTES]
 *
 * For each request (any method, any path) it reads and discards the body and
 * answers once the request stream has ended:
 *   HEADERS  :status 200, content-type: application/grpc
 *   DATA     one length-prefixed gRPC message (5-byte prefix + payload)
 *   HEADERS  grpc-status: 0 (trailers, END_STREAM)
 * A GET with a content-type other than application/grpc gets a plain
 * "ok\n" 200 instead, so readiness probes stay simple.
 *
 * One thread, one libev loop, nonblocking sockets; the codec does no I/O
 * (nghttp2_session_mem_recv / mem_send) and this file moves the bytes. It
 * is a test peer: it trusts its clients and keeps no limits beyond what
 * nghttp2 enforces.
 *
 * Build: cc -O2 -o grpc_backend grpc_backend.c -lnghttp2 -lev
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>
#include <nghttp2/nghttp2.h>

#define RBUF_SIZE 65536
#define WBUF_SIZE 65536

typedef struct conn {
    ev_io rio, wio;
    int fd;
    nghttp2_session *session;
    /* Bytes produced by nghttp2_session_mem_send but not yet written. */
    uint8_t *wbuf;
    size_t wlen, woff, wcap;
} conn;

typedef struct stream {
    size_t off;        /* bytes of the response message already sent */
    int is_grpc;
    int is_get;
    struct stream *next_free;
} stream;

static uint8_t *g_msg;        /* framed response message */
static size_t g_msg_len;
static const char g_plain[] = "ok\n";
static stream *g_free_streams;

static stream *stream_new(void) {
    stream *s = g_free_streams;
    if (s) {
        g_free_streams = s->next_free;
    } else {
        s = malloc(sizeof(*s));
        if (!s) return NULL;
    }
    memset(s, 0, sizeof(*s));
    return s;
}

static void stream_free(stream *s) {
    s->next_free = g_free_streams;
    g_free_streams = s;
}

static void conn_close(struct ev_loop *loop, conn *c) {
    ev_io_stop(loop, &c->rio);
    ev_io_stop(loop, &c->wio);
    close(c->fd);
    nghttp2_session_del(c->session);  /* frees streams via on_stream_close */
    free(c->wbuf);
    free(c);
}

/* Drain nghttp2's output into the socket. Returns -1 when the connection must
 * be closed, 0 otherwise (write watcher armed while output is pending). */
static int conn_flush(struct ev_loop *loop, conn *c) {
    for (;;) {
        if (c->woff == c->wlen) {
            c->woff = c->wlen = 0;
            /* Gather frames into one buffer so that one write carries them all.
             * mem_send's pointer is valid only until its next call: copy now. */
            while (c->wlen < WBUF_SIZE) {
                const uint8_t *data;
                ssize_t n = nghttp2_session_mem_send(c->session, &data);
                if (n < 0) return -1;
                if (n == 0) break;
                if (c->wlen + (size_t)n > c->wcap) {
                    size_t cap = c->wcap * 2;
                    while (cap < c->wlen + (size_t)n) cap *= 2;
                    uint8_t *nb = realloc(c->wbuf, cap);
                    if (!nb) return -1;
                    c->wbuf = nb;
                    c->wcap = cap;
                }
                memcpy(c->wbuf + c->wlen, data, (size_t)n);
                c->wlen += (size_t)n;
            }
            if (c->wlen == 0) break;
        }
        ssize_t n = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ev_io_start(loop, &c->wio);
                return 0;
            }
            return -1;
        }
        c->woff += (size_t)n;
    }
    ev_io_stop(loop, &c->wio);
    if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session))
        return -1;
    return 0;
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    conn *c = w->data;
    if (conn_flush(loop, c) < 0) conn_close(loop, c);
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    conn *c = w->data;
    uint8_t buf[RBUF_SIZE];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            conn_close(loop, c);
            return;
        }
        if (n == 0) {
            conn_close(loop, c);
            return;
        }
        if (nghttp2_session_mem_recv(c->session, buf, (size_t)n) < 0) {
            conn_close(loop, c);
            return;
        }
        if ((size_t)n < sizeof(buf)) break;
    }
    if (conn_flush(loop, c) < 0) conn_close(loop, c);
}

static ssize_t msg_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                           size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                           void *user_data) {
    (void)user_data;
    stream *s = source->ptr;
    size_t left = g_msg_len - s->off;
    size_t n = left < length ? left : length;
    memcpy(buf, g_msg + s->off, n);
    s->off += n;
    if (s->off == g_msg_len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        static const nghttp2_nv trailers[] = {
            {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, NGHTTP2_NV_FLAG_NONE},
        };
        if (nghttp2_submit_trailer(session, stream_id, trailers, 1) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

static ssize_t plain_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                             size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                             void *user_data) {
    (void)session; (void)stream_id; (void)user_data;
    stream *s = source->ptr;
    size_t total = sizeof(g_plain) - 1;
    size_t n = total - s->off < length ? total - s->off : length;
    memcpy(buf, g_plain + s->off, n);
    s->off += n;
    if (s->off == total) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int respond(nghttp2_session *session, int32_t stream_id) {
    stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!s) return 0;
    if (s->is_get && !s->is_grpc) {
        static const nghttp2_nv hdrs[] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"content-type", (uint8_t *)"text/plain", 12, 10, NGHTTP2_NV_FLAG_NONE},
        };
        nghttp2_data_provider prd = {.source.ptr = s, .read_callback = plain_read_cb};
        return nghttp2_submit_response(session, stream_id, hdrs, 2, &prd);
    }
    static const nghttp2_nv hdrs[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = msg_read_cb};
    return nghttp2_submit_response(session, stream_id, hdrs, 2, &prd);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud) {
    (void)ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    stream *s = stream_new();
    if (!s) return NGHTTP2_ERR_CALLBACK_FAILURE;
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
    (void)flags; (void)ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!s) return 0;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        s->is_get = (valuelen == 3 && memcmp(value, "GET", 3) == 0) ||
                    (valuelen == 4 && memcmp(value, "HEAD", 4) == 0);
    } else if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
        s->is_grpc = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud) {
    (void)ud;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        if (respond(session, frame->hd.stream_id) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *ud) {
    (void)error_code; (void)ud;
    stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s) {
        nghttp2_session_set_stream_user_data(session, stream_id, NULL);
        stream_free(s);
    }
    return 0;
}

static nghttp2_session_callbacks *g_callbacks;
static nghttp2_option *g_option;

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            return;  /* EAGAIN or a transient error: wait for the next event */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn *c = calloc(1, sizeof(*c));
        if (!c || !(c->wbuf = malloc(WBUF_SIZE))) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->wcap = WBUF_SIZE;
        if (nghttp2_session_server_new2(&c->session, g_callbacks, c, g_option) != 0) {
            free(c->wbuf);
            free(c);
            close(fd);
            continue;
        }
        nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024},
            {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
        };
        nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 2);
        nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, 1 << 24);
        ev_io_init(&c->rio, on_read, fd, EV_READ);
        ev_io_init(&c->wio, on_write, fd, EV_WRITE);
        c->rio.data = c->wio.data = c;
        ev_io_start(loop, &c->rio);
        if (conn_flush(loop, c) < 0) conn_close(loop, c);
    }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)w; (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [RESPONSE_PAYLOAD_BYTES]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    size_t payload = argc > 2 ? (size_t)atol(argv[2]) : 16;
    if (port <= 0 || port > 65535 || payload > (1u << 20)) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    /* Framed message: flag 0 (uncompressed), 4-byte big-endian length, then
     * a protobuf-looking payload (field 1, length-delimited, filler bytes). */
    g_msg_len = 5 + payload;
    g_msg = malloc(g_msg_len);
    if (!g_msg) return 1;
    g_msg[0] = 0;
    g_msg[1] = (uint8_t)(payload >> 24);
    g_msg[2] = (uint8_t)(payload >> 16);
    g_msg[3] = (uint8_t)(payload >> 8);
    g_msg[4] = (uint8_t)payload;
    for (size_t i = 0; i < payload; i++) g_msg[5 + i] = (uint8_t)('a' + i % 26);
    if (payload >= 2 && payload - 2 < 128) {
        g_msg[5] = 0x0a;
        g_msg[6] = (uint8_t)(payload - 2);
    }

    signal(SIGPIPE, SIG_IGN);

    nghttp2_session_callbacks_new(&g_callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(g_callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(g_callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(g_callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(g_callbacks, on_stream_close);
    nghttp2_option_new(&g_option);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) { perror("bind"); return 1; }
    if (listen(lfd, 1024) < 0) { perror("listen"); return 1; }

    struct ev_loop *loop = EV_DEFAULT;
    ev_io lw;
    ev_io_init(&lw, on_accept, lfd, EV_READ);
    ev_io_start(loop, &lw);
    ev_signal sterm, sint;
    ev_signal_init(&sterm, on_signal, SIGTERM);
    ev_signal_init(&sint, on_signal, SIGINT);
    ev_signal_start(loop, &sterm);
    ev_signal_start(loop, &sint);

    fprintf(stderr, "grpc_backend: listening on 127.0.0.1:%d, %zu-byte message\n", port, g_msg_len);
    ev_run(loop, 0);
    close(lfd);
    return 0;
}
