/*
 * spiffe.h: identities as text, without OpenSSL.
 *
 * What it is for: the checks and transformations of SPIFFE IDs and of the
 * allow-list patterns that name them, which both the configuration (to
 * refuse a bad tls.server_identity or tls.allow entry at load time) and the
 * TLS layer (to refuse a peer, to authorize a caller) need; and the escaping
 * of text a peer chose before it goes into a log line. Nothing here includes
 * an OpenSSL header or touches an SSL or X509 object, so the configuration
 * code can use it without linking libssl. The X.509 side (the URI SAN of a
 * certificate, the peer's identity on a connection) is in tls.h.
 *
 * Memory: every function writes into buffers the caller owns and keeps
 * nothing; static texts (`why`) live forever. Any thread.
 */
#ifndef SC_TLS_SPIFFE_H
#define SC_TLS_SPIFFE_H

#include "core/common.h"

/* Max length of an identity this module handles (longer URI SANs are refused). */
#define SC_TLS_ID_MAX 512

/*
 * Whether id[0..len) is a SPIFFE ID as the SPIFFE ID specification defines
 * it, and at most SC_TLS_ID_MAX - 1 bytes: "spiffe://" (lower case), a
 * trust domain of 1..255 characters [a-z0-9.-_], then a path that is empty
 * or "/"-separated segments of [A-Za-z0-9.-_], none empty, "." or "..", no
 * trailing "/"; no query, fragment, port, user info or percent-encoding.
 * So a valid identity never holds a control character, space, quote or
 * non-ASCII byte and can go into a header or a log line as it is.
 * 0 when valid, else -EINVAL with *why (when not NULL, static text).
 */
int sc_tls_spiffe_id_valid(const char *id, size_t len, const char **why);

/* Bytes a peer chose (a URI SAN, a name) made safe for a log line: printable
 * ASCII other than the backslash is kept, every other byte becomes \xHH
 * (so "a\r\nb" reads "a\x0d\x0ab" and cannot start a new line); at most cap - 1
 * characters (a cut is marked with "..."), always NUL-terminated (cap > 0).
 * Returns the length written. */
size_t sc_tls_escape(const void *in, size_t n, char *out, size_t cap);
/* The same, keeping the backslash when keep_backslash: for text whose
 * backslashes are already escapes of its own (OpenSSL's one-line names). */
size_t sc_tls_escape_ex(const void *in, size_t n, char *out, size_t cap, bool keep_backslash);

/* A certificate serial (big-endian magnitude) the way Consul writes one
 * (connect.HexString of SerialNumber.Bytes()): lower-case hex byte pairs
 * joined by ':', leading zero bytes dropped, "" for zero. Returns the
 * length, or -ENOSPC (cap needs 3 bytes per octet). */
int sc_tls_serial_colon_hex(const unsigned char *be, size_t n, char *out, size_t cap);

/*
 * Allow-list patterns: an exact identity, or a prefix ending in '*' that
 * matches any identity starting with the prefix and at least one more
 * character: "spiffe://example.org/ns/default/dc/dc1/svc/web-*", or the
 * prefix ".../svc/" followed by '*' for every service of dc1 (see
 * docs/tls.md). A lone "*" matches every verified identity. A '*' anywhere
 * else is not supported, and a '*' inside the trust domain (before the first
 * '/' after "://") is refused so "spiffe://example.org*" cannot match
 * "spiffe://example.org.evil/...". Comparison is byte for byte (SPIFFE trust
 * domains are lower case).
 */
/* 0 when valid, else -EINVAL and *why (when not NULL) says why (static text). */
int sc_tls_pattern_valid(const char *pattern, const char **why);

/*
 * The identity a service has in our mesh, Consul Connect style: our own
 * identity's trust domain and namespace, `dc` (NULL: ours) and `service`:
 * spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>. Returns the length, or -EINVAL
 * when our identity is not in that form, -ENOSPC when out is too small.
 */
int sc_tls_identity_for_service(const char *ours, const char *dc, const char *service, char *out, size_t cap);
/* Whether identity may call. n == 0 (no list configured): true, whatever the
 * identity. identity NULL or "" (no verified identity) is never allowed by a
 * non-empty list, not even by "*".
 * An invalid pattern matches nothing (fail closed). */
bool sc_tls_allowed(const char *const *allow, size_t n, const char *identity);

#endif
