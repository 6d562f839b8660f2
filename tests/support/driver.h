/*
 * driver.h: the sidecar's data plane in one process, one thread, no
 * network beyond loopback: for fuzz targets and tests that need the real
 * codecs, streams and pools end to end.
 *
 * What it sets up (the way sidecar.c does, minus threads, admin, TLS,
 * Consul and health):
 *  - a configuration loaded from a YAML string (config/config.h); every
 *    "@UPSTREAM@" in it is replaced with the address of the fake upstream,
 *    and every listener address is bound on port 0 instead of the one
 *    written (the driver never connects to the listeners);
 *  - the process state (sc_sidecar_new) and ONE worker (sc_worker_new),
 *    whose loop the driver runs on the calling thread with
 *    ev_run(EVRUN_NOWAIT), a bounded number of iterations at a time;
 *  - a caller: one end of a socketpair(AF_UNIX) handed to sc_down_accept as
 *    an accepted connection of a route; the driver writes the bytes it is
 *    given to the other end and collects what the sidecar answers;
 *  - a fake upstream: a listening socket on 127.0.0.1:0 owned by the driver,
 *    served from the same loop iterations. It tells HTTP/1.1 from h2c by the
 *    connection preface and answers as configured (sc_drv_upstream).
 *
 * Nothing here allocates while sc_drv_run runs (fixed buffers inside the
 * driver), so an allocation-failure test that counts allocations during a
 * run counts the sidecar's (and its libraries') only.
 *
 * Ownership: sc_drv_new returns a driver the caller releases with
 * sc_drv_free, which closes every connection on both sides and frees the
 * sidecar; bytes passed in are copied.
 */
#ifndef SC_TEST_DRIVER_H
#define SC_TEST_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sidecar;
struct sc_worker;
typedef struct sc_drv sc_drv;

/* How the fake upstream answers on every connection it accepts. */
typedef enum {
    /* Each complete request gets a canned answer: HTTP/1.1: 200 with
     * SC_DRV_H1_BODY; h2c: SETTINGS first, SETTINGS ACK for the client's,
     * and for every stream that ends its request a gRPC-shaped success
     * (:status 200, application/grpc, one message SC_DRV_GRPC_MSG,
     * trailers grpc-status 0). */
    SC_DRV_UP_CANNED = 0,
    /* The given bytes, once, as soon as the connection is accepted. */
    SC_DRV_UP_AT_ONCE,
    /* The given bytes, once, when the first request on the connection is
     * complete (HTTP/1.1: head and body parsed; h2c: END_STREAM seen). */
    SC_DRV_UP_AFTER_REQUEST,
} sc_drv_up_mode;

#define SC_DRV_H1_BODY "hello from the fake upstream\n"
/* gRPC length-prefixed message: uncompressed, 5 bytes. */
#define SC_DRV_GRPC_MSG "\x00\x00\x00\x00\x05hello"
#define SC_DRV_GRPC_MSG_LEN 10

/* Sets everything up; NULL (with the reason in err) when the configuration
 * does not load or a socket cannot be made. */
sc_drv *sc_drv_new(const char *yaml, char *err, size_t errlen);
/* Opens the caller's connection on route `route` (index into
 * sidecar->routes: the inbound route first when configured, then one per
 * upstream in configuration order). Returns 0 or a negative errno. */
int sc_drv_connect(sc_drv *d, unsigned route);
/* Queues bytes for the caller to write (in order, as the socket takes them). */
int sc_drv_send(sc_drv *d, const void *p, size_t n);
/* Writes at most n bytes per loop iteration (0: no limit), so the sidecar
 * sees the caller's bytes arrive in pieces. */
void sc_drv_set_chunk(sc_drv *d, size_t n);
/* Half-closes the caller's side once every queued byte is written. */
void sc_drv_shutdown(sc_drv *d);
/* How the fake upstream answers (default: SC_DRV_UP_CANNED); `bytes` are
 * copied; close_after: half-close the connection once they are written. */
int sc_drv_upstream(sc_drv *d, sc_drv_up_mode mode, const void *bytes, size_t n, bool close_after);

/* Runs the worker's loop and both fake peers until nothing moves for a few
 * iterations in a row (no byte written or read by the driver, no
 * connection of the worker left with work) or max_iter iterations passed.
 * Timers (request deadlines, idle) do not fire within a run unless set
 * below a millisecond. Returns the number of iterations run. */
unsigned sc_drv_run(sc_drv *d, unsigned max_iter);

/* Everything the caller received so far (at most 256 KiB are kept; more is
 * counted in *total when not NULL). */
const uint8_t *sc_drv_received(const sc_drv *d, size_t *len, size_t *total);
/* The sidecar closed (or reset) the caller's connection. */
bool sc_drv_caller_eof(const sc_drv *d);
/* Connections the fake upstream accepted, and complete requests it saw. */
unsigned sc_drv_upstream_accepted(const sc_drv *d);
unsigned sc_drv_upstream_requests(const sc_drv *d);

struct sidecar *sc_drv_sidecar(sc_drv *d);
struct sc_worker *sc_drv_worker(sc_drv *d);

/* Closes every connection (sc_worker_loop_end), checks that no stream,
 * connection or pooled upstream connection is left accounted for (abort()
 * with a message otherwise: a fuzz finding), frees everything. */
void sc_drv_free(sc_drv *d);

/* HTTP/2 helpers for building inputs. Each returns the bytes written at
 * `out`, or 0 when they do not fit in `cap`. */
#define SC_DRV_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define SC_DRV_H2_PREFACE_LEN 24
size_t sc_drv_h2_frame(uint8_t *out, size_t cap, uint8_t type, uint8_t flags, uint32_t sid, const void *payload,
                       size_t len);
/* One HPACK "literal header field without indexing, new name" (no Huffman). */
size_t sc_drv_hpack_lit(uint8_t *out, size_t cap, const char *name, const char *value);

#endif
