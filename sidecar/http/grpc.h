/*
 * grpc.h: the few gRPC facts the transparent data plane needs. The sidecar
 * never decodes protobuf; it reads `grpc-timeout`, `grpc-status`,
 * `grpc-message`, `grpc-retry-pushback-ms`, and speaks gRPC errors.
 * Pure functions, no allocation.
 */
#ifndef SC_GRPC_H
#define SC_GRPC_H

#include "core/common.h"

/* gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
typedef enum {
    SC_GRPC_OK = 0, SC_GRPC_CANCELLED = 1, SC_GRPC_UNKNOWN = 2, SC_GRPC_INVALID_ARGUMENT = 3,
    SC_GRPC_DEADLINE_EXCEEDED = 4, SC_GRPC_NOT_FOUND = 5, SC_GRPC_ALREADY_EXISTS = 6,
    SC_GRPC_PERMISSION_DENIED = 7, SC_GRPC_RESOURCE_EXHAUSTED = 8, SC_GRPC_FAILED_PRECONDITION = 9,
    SC_GRPC_ABORTED = 10, SC_GRPC_OUT_OF_RANGE = 11, SC_GRPC_UNIMPLEMENTED = 12,
    SC_GRPC_INTERNAL = 13, SC_GRPC_UNAVAILABLE = 14, SC_GRPC_DATA_LOSS = 15,
    SC_GRPC_UNAUTHENTICATED = 16,
} sc_grpc_status;

#define SC_GRPC_STATUS_MAX 16

/* "unavailable", "deadline-exceeded", ... (lower case, dashes: policy spelling);
 * "invalid" for a code outside 0..16. */
const char *sc_grpc_status_name(int code);
/* Accepts the policy spelling, upper-case with underscores ("UNAVAILABLE",
 * "DEADLINE_EXCEEDED") and decimal digits; returns 0..16 or -EINVAL. */
int sc_grpc_status_from_name(const char *s, size_t len);
/*
 * A grpc-status value received on the wire (trailers or a trailers-only
 * head): ASCII digits only (PROTOCOL-HTTP2.md: 1*DIGIT), value 0..16; no
 * sign, space or name. On success stores the code in *out and returns 0;
 * returns -1 (and leaves *out alone) for anything else, so that a peer's
 * garbage never becomes an index or a status.
 */
int sc_grpc_status_parse(const char *s, size_t len, int *out);

/* A received grpc-status as the call's outcome: what sc_grpc_status_parse
 * accepts, and UNKNOWN for anything else (a peer that sends garbage did not
 * report success). Always 0..SC_GRPC_STATUS_MAX. */
static inline int sc_grpc_status_wire(const void *v, size_t len)
{
    int g;
    return sc_grpc_status_parse((const char *)v, len, &g) == 0 ? g : SC_GRPC_UNKNOWN;
}

/*
 * grpc-timeout: 1 to 8 ASCII digits followed by one unit of H M S m u n.
 * Parses into nanoseconds (saturating at UINT64_MAX / 2). Returns 0 or -EINVAL.
 */
int sc_grpc_timeout_parse(const char *s, size_t len, uint64_t *ns);
/*
 * Formats `ns` as the most precise grpc-timeout value that fits 8 digits,
 * rounding up so that a deadline is never shortened below 1 unit; writes a NUL
 * terminated string into buf (at least 10 bytes). Returns its length.
 * 0 is sent as "1n" (as gRPC core does: the deadline is already due).
 * With cap < 10 nothing is written but a NUL (when cap > 0) and 0 is returned.
 */
size_t sc_grpc_timeout_format(uint64_t ns, char *buf, size_t cap);

/* True when a content-type value is application/grpc or application/grpc+x / ;x
 * (the media type compared case-insensitively; OWS allowed before ';'). */
bool sc_grpc_is_content_type(const char *v, size_t len);

/*
 * grpc-message is percent-encoded (PROTOCOL-HTTP2.md: bytes 0x20..0x7E stay,
 * except '%'; every other byte and '%' itself become %XX, upper-case hex).
 * Returns the encoded length written (truncating safely at cap-1 without
 * splitting an escape, always NUL terminated when cap > 0).
 */
size_t sc_grpc_message_encode(const char *msg, char *buf, size_t cap);
/*
 * Decodes a received grpc-message value s[0..len). Invalid escapes are kept
 * as they are (the spec asks receivers not to fail). Writes at most cap-1
 * bytes plus a NUL (the result may contain NUL bytes from %00); returns the
 * decoded length.
 */
size_t sc_grpc_message_decode(const char *s, size_t len, char *buf, size_t cap);

/* HTTP status -> gRPC status, as gRPC clients map a non-200 response
 * without grpc-status (400->INTERNAL, 401->UNAUTHENTICATED,
 * 403->PERMISSION_DENIED, 404->UNIMPLEMENTED, 429/502/503/504->UNAVAILABLE,
 * else UNKNOWN, 200 included: it is only called for a missing grpc-status). */
int sc_grpc_status_from_http(int http_status);

#endif
