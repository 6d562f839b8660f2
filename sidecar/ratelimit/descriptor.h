/*
 * descriptor.h: which rate limits apply to a request and under which key
 * ("descriptor"). Pure functions: no I/O, no allocation, no clock.
 *
 * A limit (sc_rate_limit, config.h) applies when its match holds: the
 * request's normalised path starts with match.path_prefix (plain byte
 * prefix: "/api" also matches "/apix"; write "/api/" for a directory) and
 * its method is one of match.methods. Its key is made of the parts listed
 * in `key`, in order:
 *
 *   route          one bucket for every request of the route (the only part)
 *   caller         the caller's verified SPIFFE identity (inbound mutual TLS)
 *   header:NAME    the value of the first NAME field (header:host: the authority)
 *   claim:NAME     a claim of the caller's verified JWT, as the JWT stage gives it
 *   method         the request method
 *   path           the normalised path, without the query
 *
 * A part whose value is absent (no such header, no verified caller, no such
 * claim) makes the key "missing": with `missing: share` (the default) every
 * such request shares one bucket per distinct key (the absent part is
 * encoded apart from an empty value); with `missing: skip` the limit does
 * not apply to the request.
 *
 * Paths are matched after normalisation, so "/a/../api/x" and "/%61pi/x"
 * cannot step around a limit on "/api/" that the app would apply to them:
 * the query and fragment are cut, percent-escapes of unreserved characters
 * (A-Z a-z 0-9 - . _ ~) are decoded, other escapes get upper-case hex, and
 * "." and ".." segments are resolved (RFC 3986 6.2.2 and 5.2.4). Other
 * escapes ("%2F") are compared as written.
 *
 * Keys: the parts joined by 0x1f, an absent part written as 0x1e; at most
 * SC_RL_KEY_MAX bytes. A longer key keeps its first SC_RL_KEY_KEEP bytes
 * followed by 0x1d and the hex of the first 16 bytes of the SHA-256 of the
 * whole key, so two long keys share a bucket only by a hash collision; the
 * form is the same in every sidecar, so global keys agree in Redis.
 */
#ifndef SC_RL_DESCRIPTOR_H
#define SC_RL_DESCRIPTOR_H

#include "config/config.h"

#define SC_RL_KEY_MAX 256
#define SC_RL_KEY_KEEP 223          /* + 0x1d + 32 hex digits = 256 */
#define SC_RL_SEP '\x1f'            /* between parts */
#define SC_RL_ABSENT '\x1e'         /* a part whose value is absent */

/*
 * What the limits see of a request head. Borrowed pointers, valid for the
 * calls that take the view; nothing needs a terminating NUL.
 *
 * `header` returns the value of the first field named `name` (lower-case)
 * and its length, or NULL when there is none; for "host" it returns the
 * authority (:authority in HTTP/2, Host in HTTP/1.1). `claim` returns the
 * value of a claim of the caller's verified JWT as text (strings as they
 * are, other JSON values as written), or NULL when the request carries no
 * verified token or the token has no such claim; it may be NULL itself
 * while no JWT stage runs (configuration refuses claim keys then). Both get
 * `ctx` back.
 *
 * `norm` is scratch space for the normalised path, at least path_len + 1
 * bytes; the first call that needs the path fills it (norm_len, norm_done),
 * later limits reuse it. Zero norm_done for each new request.
 */
typedef struct sc_rl_request {
    const char *method;
    size_t method_len;
    const char *path;               /* as received: origin-form, with the query */
    size_t path_len;
    const char *caller;             /* verified SPIFFE identity; NULL = none */
    size_t caller_len;
    const char *(*header)(void *ctx, const char *name, size_t name_len, size_t *value_len);
    const char *(*claim)(void *ctx, const char *name, size_t *value_len);
    void *ctx;
    char *norm;
    size_t norm_cap;
    size_t norm_len;
    bool norm_done;
} sc_rl_request;

/*
 * Normalises path[0..len) into out (see above); out needs max(len, 1) bytes
 * at most (normalising never lengthens a path). Returns 0 with *out_len, or
 * -ENOSPC when cap is too small. A path that does not start with '/' (the
 * asterisk form) only has its escapes and query treated.
 */
int sc_rl_path_normalize(const char *path, size_t len, char *out, size_t cap, size_t *out_len);

/*
 * Whether limit `l` applies to request `r`, and its key:
 *   1: it applies; key[0..*klen) is its key (key holds SC_RL_KEY_MAX bytes);
 *   0: it does not (match fails, or a part is absent with missing: skip).
 * A norm buffer too small for the path (a caller's mistake) makes the raw
 * path, cut at the query, stand for the normalised one.
 */
int sc_rl_descriptor(const sc_rate_limit *l, sc_rl_request *r, char *key, size_t *klen);

/*
 * A key for people (admin /clusters, logs): parts separated by " | ", an
 * absent part as "-", a shortened key's hash as "#<hex>", bytes outside
 * printable ASCII (and '\\') as \xNN. NUL terminated, cut to cap. Returns
 * the length written.
 */
size_t sc_rl_key_display(const char *key, size_t klen, char *out, size_t cap);

#endif
