/*
 * fuzz_h2_down.c: the HTTP/2 caller side of the data plane, end to end. A
 * caller connection (tests/support/driver.h) starts with the HTTP/2
 * preface and then writes the fuzz input's bytes; its requests go through
 * the real streams to a fake upstream (HTTP/1.1 or h2c by route) and back.
 * The loop runs a bounded number of iterations; then everything is closed
 * and freed. Crashes, sanitizer reports, leaks, and anything the driver
 * finds still accounted for after every connection closed are findings.
 *
 * Input layout:
 *   byte 0   bits 0-1: route (0 inbound -> app over h2c, 1 upstream "h1"
 *            over HTTP/1.1, 2 upstream "grpc" over h2c, 3 = 2);
 *            bits 2-3: fake upstream mode (0/3 canned answers, 1 the given
 *            bytes at once, 2 the given bytes after the first request);
 *            bit 4: the upstream half-closes after its bytes;
 *            bit 5: the caller half-closes after its bytes;
 *            bits 6-7: caller write size (0 all at once, else 1, 7, 64
 *            bytes per loop iteration)
 *   then     the caller's bytes (after the preface the driver writes),
 *   optional SEP ("\xde\xad\xbe\xef") and the fake upstream's bytes (modes 1
 *            and 2; without them the upstream answers canned).
 * tests/fuzz/gen_h2_seeds.py writes the seed corpus in this layout. With
 * SC_FUZZ_VERBOSE set, each input's outcome is printed on stderr.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "driver.h"

#define SEP "\xde\xad\xbe\xef"
#define SEP_LEN 4
#define MAX_ITER 400

static const char config_yaml[] =
    "service: {name: fuzz}\n"
    "inbound: {listen: 127.0.0.1:15001, app: '@UPSTREAM@', app_protocol: http2}\n"
    "admin: {listen: 127.0.0.1:19000}\n"
    "limits: {stream_buffer: 16KiB, max_header_bytes: 8KiB, h2_max_concurrent_streams: 8}\n"
    "upstreams:\n"
    "  - upstream: h1\n"
    "    protocol: http1\n"
    "    listen: 127.0.0.1:15002\n"
    "    discovery: {static: ['@UPSTREAM@']}\n"
    "  - upstream: grpc\n"
    "    protocol: grpc\n"
    "    listen: 127.0.0.1:15003\n"
    "    discovery: {static: ['@UPSTREAM@']}\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t chunks[4] = {0, 1, 7, 64};
    if (size < 1)
        return 0;
    sc_log_set_level(SC_LOG_ERROR);
    uint8_t flags = data[0];
    const uint8_t *caller = data + 1, *up = NULL;
    size_t caller_len = size - 1, up_len = 0;
    const uint8_t *sep = memmem(caller, caller_len, SEP, SEP_LEN);
    if (sep) {
        up = sep + SEP_LEN;
        up_len = caller_len - (size_t)(up - caller);
        caller_len = (size_t)(sep - caller);
    }

    char err[256];
    sc_drv *d = sc_drv_new(config_yaml, err, sizeof(err));
    if (!d) {
        fprintf(stderr, "fuzz_h2_down: driver: %s\n", err);
        abort();
    }
    unsigned route = flags & 3;
    if (route == 3)
        route = 2;
    sc_drv_up_mode mode = SC_DRV_UP_CANNED;
    if (up_len && ((flags >> 2) & 3) == 1)
        mode = SC_DRV_UP_AT_ONCE;
    else if (up_len && ((flags >> 2) & 3) == 2)
        mode = SC_DRV_UP_AFTER_REQUEST;
    if (sc_drv_upstream(d, mode, up, up_len, (flags & 0x10) != 0) < 0 || sc_drv_connect(d, route) < 0 ||
        sc_drv_send(d, SC_DRV_H2_PREFACE, SC_DRV_H2_PREFACE_LEN) < 0 || sc_drv_send(d, caller, caller_len) < 0)
        abort();
    sc_drv_set_chunk(d, chunks[flags >> 6]);
    if (flags & 0x20)
        sc_drv_shutdown(d);
    unsigned iters = sc_drv_run(d, MAX_ITER);
    if (getenv("SC_FUZZ_VERBOSE")) {
        /* What an input did, for whoever writes seeds: replay with this set. */
        size_t got, total;
        sc_drv_received(d, &got, &total);
        fprintf(stderr, "fuzz_h2_down: route %u, %u iterations, upstream: %u connections, %u requests; "
                "caller got %zu bytes%s\n", route, iters, sc_drv_upstream_accepted(d), sc_drv_upstream_requests(d),
                total, sc_drv_caller_eof(d) ? " and EOF" : "");
    }
    sc_drv_free(d);
    return 0;
}
