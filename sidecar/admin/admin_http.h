/*
 * admin_http.h: the pure parts of the admin endpoint (no sockets, no loop),
 * so unit tests can reach every branch:
 *   - a bounded query-string parser (split on '&', then on the first '=',
 *     percent-decoding, '+' as a space);
 *   - the checks that keep web pages and DNS rebinding away from the admin
 *     endpoint: the Host a request names, the Origin and the non-simple
 *     marker a state-changing request must carry, the bearer token.
 *
 * Why the marker works: a browser sends a cross-site POST without asking
 * first only when it is "simple" (no custom header, a form or text/plain
 * content type). A custom header (X-Sidecar-Admin) or Content-Type:
 * application/json makes it ask with a CORS preflight (OPTIONS), which the
 * admin endpoint never grants, so the POST itself is never sent.
 *
 * Memory: nothing here allocates. sc_admin_query holds decoded copies in its
 * own fixed buffer; pointers into it live as long as the struct.
 */
#ifndef SC_ADMIN_HTTP_H
#define SC_ADMIN_HTTP_H

#include "core/common.h"

#include <sys/socket.h>

/* Bounds of one query string: parameters, and decoded bytes of all names
 * and values together. Admin parameters are short names; more is refused. */
#define SC_ADMIN_QUERY_MAX_PARAMS 16
#define SC_ADMIN_QUERY_MAX_TEXT 1024

typedef struct sc_admin_param {
    const char *name;               /* decoded, NUL terminated, never empty */
    const char *value;              /* decoded, NUL terminated; "" for `?flag` and `?flag=` */
} sc_admin_param;

typedef struct sc_admin_query {
    sc_admin_param p[SC_ADMIN_QUERY_MAX_PARAMS];
    size_t n;
    char text[SC_ADMIN_QUERY_MAX_TEXT + 2 * SC_ADMIN_QUERY_MAX_PARAMS];
    size_t used;
} sc_admin_query;

/*
 * Parses the query of a request target ("/log?level=debug": the part after
 * the first '?'; a target without one has no parameters). Empty segments
 * ("a=1&&b=2", a trailing '&') are skipped. Returns 0, or -EINVAL with *why
 * naming the problem: a '%' not followed by two hex digits, an encoded NUL,
 * an empty name, a name given twice (which one would count is a guess, so
 * neither does), a '#'; -E2BIG when there are more than
 * SC_ADMIN_QUERY_MAX_PARAMS parameters or their decoded text exceeds
 * SC_ADMIN_QUERY_MAX_TEXT. On error q holds no parameters.
 */
int sc_admin_query_parse(const char *target, size_t len, sc_admin_query *q, const char **why);

/* The decoded value of parameter `name`, or NULL when absent. */
const char *sc_admin_query_get(const sc_admin_query *q, const char *name);

/* The first parameter whose name is not in allowed[0..n), or NULL. */
const char *sc_admin_query_unknown(const sc_admin_query *q, const char *const *allowed, size_t n);

/*
 * Whether a Host header value names this admin endpoint. True for a loopback
 * name or address ("localhost", any 127.x.y.z, "[::1]", "[::ffff:127.0.0.1]")
 * or `own_ip` (the admin listener's own address when it is a specific one,
 * NULL otherwise; compared as an address, not as text), each with the port
 * `port`; and for an entry of allowed[0..n_allowed): "name" (then the port
 * must be `port`) or "name:port" / "[v6]:port", names compared without
 * regard to case. A Host without a port means port 80. Empty or malformed:
 * false.
 */
bool sc_admin_host_allowed(const char *host, size_t len, uint16_t port,
                           const struct sockaddr *own_ip, char *const *allowed, size_t n_allowed);

/* Validates an admin.allowed_hosts entry ("name", "name:port", "1.2.3.4",
 * "[v6]" or "[v6]:port"); NULL when good, else why not. */
const char *sc_admin_host_entry_problem(const char *entry);

/*
 * Whether a state-changing request may be served, from its headers (each
 * value with its length; p == NULL when absent): `origin` absent or exactly
 * "http://" + host (the admin's own origin, case-insensitive);
 * `sec_fetch_site` absent, "same-origin" or "none"; and the non-simple
 * marker: `marker` (X-Sidecar-Admin) present and not empty, or
 * `content_type` application/json (parameters allowed). Returns NULL when
 * allowed, else a static sentence saying why not (for the 403 body).
 */
typedef struct sc_admin_hval {
    const char *p;
    size_t len;
} sc_admin_hval;
const char *sc_admin_csrf_problem(sc_admin_hval host, sc_admin_hval origin,
                                  sc_admin_hval sec_fetch_site, sc_admin_hval marker,
                                  sc_admin_hval content_type);

/*
 * Whether an Authorization header value is "Bearer <token>" (scheme without
 * regard to case) with exactly `token`. The comparison takes the same time
 * whatever the bytes and lengths (both sides are hashed with SHA-256 and the
 * digests compared with CRYPTO_memcmp), so timing tells nothing about the
 * token. False when authz.p is NULL.
 */
bool sc_admin_token_ok(sc_admin_hval authz, const char *token);

#endif
