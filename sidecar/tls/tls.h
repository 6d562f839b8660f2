/*
 * tls.h: transport security between sidecars (OpenSSL 3).
 *
 * What it is for: the connection layer terminates mTLS on the inbound
 * listener and originates (m)TLS to upstreams through this module; the
 * control thread watches certificate files and swaps contexts; the admin
 * endpoint shows certificates and their expiry. See docs/tls.md.
 *
 * Pieces:
 *  - sc_tls_ctx: one immutable, refcounted SSL_CTX per role (server = inbound,
 *    client = outbound) built once from a certificate, its key and a CA
 *    bundle (several roots). TLS 1.2 and 1.3 only, ALPN h2 / http/1.1.
 *  - Per connection: sc_tls_ssl_server()/sc_tls_ssl_client() make the SSL,
 *    sc_tls_handshake/read/write/shutdown drive it on a non-blocking socket
 *    and return negative errno values (EAGAIN + which direction is wanted).
 *  - Identities: the peer's SPIFFE ID (its one URI SAN), the outbound
 *    server-identity check, and allow lists with trailing-'*' patterns.
 *  - sc_tls_session_cache: client-side sessions per upstream instance, so
 *    reconnects resume instead of doing full handshakes.
 *  - sc_tls_watch: the files behind a context; on a change (or SIGHUP) it
 *    builds a new context and publishes it only when it is valid.
 *  - Certificate facts for the admin endpoint and readiness (expiry).
 *
 * Files: spiffe.c (identities as text, no OpenSSL; its own header spiffe.h,
 * included here), tls_identity.c (identities in certificates and on
 * connections), tls_cert.c (certificate facts), tls_ctx.c (material and
 * contexts), tls_conn.c (connections: verification, handshake, I/O,
 * errors), tls_session.c (session caches), tls_watch.c (reloads);
 * tls_internal.h is what they share. tls_runtime.c is the process's use of
 * all this (tls_runtime.h).
 *
 * Errors: negative errno (common.h). Functions that can explain a failure to
 * a human take `char *err, size_t errlen`; a failed handshake or I/O call
 * keeps its explanation on the SSL (sc_tls_conn_error). No function leaves
 * anything in OpenSSL's per-thread error queue, so one connection's error
 * never shows up in another connection's log line.
 *
 * Threads: contexts, watches and certificate functions may be used from any
 * thread. An SSL belongs to the one worker that drives it. A session cache is
 * internally locked (one per worker keeps the lock uncontended).
 */
#ifndef SC_TLS_H
#define SC_TLS_H

#include "core/common.h"
#include "tls/spiffe.h"   /* identities as text: SPIFFE IDs, allow lists, escaping */

#include <openssl/types.h>   /* SSL, X509 */
#include <sys/types.h>       /* ssize_t */
#include <time.h>

/* ---- contexts ---- */

typedef enum { SC_TLS_ROLE_SERVER = 0, SC_TLS_ROLE_CLIENT } sc_tls_role;

typedef struct sc_tls_ctx sc_tls_ctx;

/*
 * Where the material of a context comes from: PEM files, or PEM text in
 * memory (certificates handed out by Consul Connect). For each of cert, key
 * and ca, the *_pem text wins when set.
 *   cert: the leaf first, then any intermediates.
 *   key:  the leaf's private key (unencrypted PEM).
 *   ca:   one or more root certificates; a chain must end in one of them.
 * Server: cert and key are required; with ca, client certificates are
 * requested and verified (and required when require_client_cert); without
 * ca, require_client_cert is an error.
 * Client: cert and key are optional (mTLS when given); without ca the
 * system's default trust store verifies servers.
 */
typedef struct sc_tls_ctx_opts {
    sc_tls_role role;
    const char *cert_file, *key_file, *ca_file;
    const char *cert_pem, *key_pem, *ca_pem;
    bool require_client_cert;       /* server only */
} sc_tls_ctx_opts;

/* Builds a context: reads and checks everything (PEM syntax, the key matches
 * the certificate, the CA bundle holds at least one certificate), builds the
 * X509 store, ciphers, groups, session cache and ALPN selection once. Dates
 * are not checked here: a sidecar may start with an expired certificate and
 * report it through readiness (sc_tls_cert_check). Returns a context holding
 * one reference for the caller, or NULL with the reason in err
 * ("tls.key /etc/x.key: does not match the certificate in tls.cert ..."). */
sc_tls_ctx *sc_tls_ctx_new(const sc_tls_ctx_opts *o, char *err, size_t errlen);
sc_tls_ctx *sc_tls_ctx_new_server(const char *cert_file, const char *key_file,
                                  const char *ca_file, bool require_client_cert, char *err,
                                  size_t errlen);
sc_tls_ctx *sc_tls_ctx_new_client(const char *cert_file, const char *key_file,
                                  const char *ca_file, char *err, size_t errlen);

/* References (atomic). Every SSL made from a context also holds one, so a
 * reload may drop the old context while its connections finish on it. */
sc_tls_ctx *sc_tls_ctx_ref(sc_tls_ctx *ctx);
void sc_tls_ctx_unref(sc_tls_ctx *ctx);     /* NULL is a no-op */

sc_tls_role sc_tls_ctx_role(const sc_tls_ctx *ctx);
/* The underlying SSL_CTX (borrowed), for what this module does not cover. */
SSL_CTX *sc_tls_ctx_ssl_ctx(sc_tls_ctx *ctx);
/* Process-unique number of the context, increasing with every new one. */
uint64_t sc_tls_ctx_generation(const sc_tls_ctx *ctx);
/* Server: drops expired sessions from the session cache (the automatic flush,
 * which walks the whole cache under its lock every 255 handshakes, is off).
 * Call from the control thread every minute or so. */
void sc_tls_ctx_flush_sessions(sc_tls_ctx *ctx, time_t now);

/* ---- connections ---- */

/* Protocols the client offers in ALPN. A server selects h2 when offered, else
 * http/1.1, else continues without ALPN (treat as http/1.1). */
typedef enum {
    SC_TLS_ALPN_NONE = 0,
    SC_TLS_ALPN_H2,                 /* grpc, http2 upstreams */
    SC_TLS_ALPN_HTTP1,              /* http1 upstreams */
    SC_TLS_ALPN_H2_HTTP1,           /* both, h2 preferred */
} sc_tls_alpn;

/* Optional client-side session resumption, one store per worker (or shared;
 * it is locked). Holds up to max_keys keys ("upstream/instance"), a few
 * sessions each; TLS 1.3 sessions are used once (RFC 8446 C.4), TLS 1.2
 * ones until they expire. Sessions of an older context (before a reload) are
 * never offered. Must outlive every SSL made with it. */
typedef struct sc_tls_session_cache sc_tls_session_cache;
sc_tls_session_cache *sc_tls_session_cache_new(size_t max_keys);
void sc_tls_session_cache_free(sc_tls_session_cache *c);   /* NULL is a no-op */
/* Sessions currently held (tests, admin). */
size_t sc_tls_session_cache_count(sc_tls_session_cache *c);

/*
 * What a client connection checks besides the chain (at least one of sni and
 * server_identity is required: without a name any certificate the CA
 * vouches for would do, and with the system roots that is any public
 * certificate):
 *  - sni, a DNS name: sent as SNI and matched against the server
 *    certificate's DNS SANs (RFC 6125: a wildcard only as the whole
 *    left-most label; the subject CN is not used when DNS SANs exist);
 *    an IP literal ("10.0.0.7", "::1", "[::1]"): not sent (RFC 6066),
 *    matched against the certificate's IP SANs.
 *  - server_identity: the server's one URI SAN must be exactly this SPIFFE ID.
 * Both are checked when both are set, on full handshakes and again on
 * resumed sessions (whose certificate must also still be within its dates).
 */
typedef struct sc_tls_client_opts {
    const char *sni;                /* server name to send and verify (see above); NULL: none */
    const char *server_identity;    /* exact URI SAN the server must have; NULL: none checked */
    sc_tls_alpn alpn;
    sc_tls_session_cache *cache;    /* NULL: no resumption */
    const char *session_key;        /* with cache: e.g. "payments/10.0.0.7:15443" */
} sc_tls_client_opts;

/* A server-side (accepted) or client-side (connecting) SSL on fd, which
 * must be a non-blocking connected socket (fd < 0: the caller sets BIOs).
 * The caller owns the SSL and releases it with sc_tls_ssl_free (also after
 * a failed handshake). NULL on failure (err), also for a client without
 * any name to verify (neither sni nor server_identity). The fd stays the
 * caller's. */
SSL *sc_tls_ssl_server(sc_tls_ctx *ctx, int fd, char *err, size_t errlen);
SSL *sc_tls_ssl_client(sc_tls_ctx *ctx, int fd, const sc_tls_client_opts *o, char *err,
                       size_t errlen);
/* Frees the SSL (NULL is a no-op). Unlike a bare SSL_free, a connection
 * that ended without a TLS failure (even without close_notify: peer gone,
 * idle timeout) leaves its session resumable in the server's cache. */
void sc_tls_ssl_free(SSL *ssl);

/* Which readiness a call that returned -EAGAIN waits for. TLS can want to
 * write during a read (post-handshake messages) and to read during a write. */
typedef enum { SC_TLS_WANT_NONE = 0, SC_TLS_WANT_READ, SC_TLS_WANT_WRITE } sc_tls_want;

/*
 * Non-blocking I/O; `want` is always set (SC_TLS_WANT_NONE unless -EAGAIN).
 *
 * sc_tls_handshake: 0 when the handshake is complete (also when called
 *   again afterwards). -EAGAIN: call again when *want is ready.
 *   -EACCES: we refused the peer: its certificate did not verify (expired,
 *   unknown CA, ...), it sent none although one is required, its identity
 *   is not the expected server identity or its name not the expected sni,
 *   its URI SAN is not a valid SPIFFE ID, or (resumed session) the
 *   certificate the session was made with is no longer within its dates.
 *   -EPROTO: any other TLS failure, including the peer refusing us (an alert).
 *   -ECONNRESET (peer closed) or another -errno from the socket.
 * sc_tls_read: bytes read (> 0); 0 at a clean end (close_notify);
 *   -EAGAIN; -ECONNRESET also when the peer closed without close_notify
 *   (treat like a TCP reset: a read-until-close body is truncated); -EPROTO.
 *   The SSL reads ahead (whole socket buffers) and decrypts records of up
 *   to 16 KiB whole, so bytes can wait inside it while the socket is not
 *   readable: read until -EAGAIN, and when a paused reader resumes, read (or
 *   check sc_tls_pending) before waiting for the socket again.
 * sc_tls_write: bytes written (> 0, may be fewer than len); -EAGAIN: call
 *   again with the same bytes first (more may follow; the buffer may move);
 *   -EPIPE/-ECONNRESET; -EPROTO.
 * sc_tls_shutdown: sends close_notify; 0 when sent (it does not wait for the
 *   peer's), -EAGAIN with *want, or -errno. Skips sending after a failure.
 * On failure the explanation is in sc_tls_conn_error(ssl).
 */
int sc_tls_handshake(SSL *ssl, sc_tls_want *want);
ssize_t sc_tls_read(SSL *ssl, void *buf, size_t len, sc_tls_want *want);
ssize_t sc_tls_write(SSL *ssl, const void *buf, size_t len, sc_tls_want *want);
int sc_tls_shutdown(SSL *ssl, sc_tls_want *want);
/* Decrypted or undecrypted bytes buffered inside the SSL. */
bool sc_tls_pending(const SSL *ssl);

/* Why the last call on this SSL failed, for a log line or a 403 reason:
 * "certificate verify failed: certificate has expired (depth 0, CN = web)",
 * "server identity spiffe://.../svc/x is not the expected spiffe://.../svc/y",
 * "peer sent alert: tlsv13 alert certificate required". "" when none. The
 * text lives until SSL_free. */
const char *sc_tls_conn_error(const SSL *ssl);

/* Formats and clears this thread's OpenSSL error queue ("; "-separated),
 * "" when empty. Returns the length written. */
size_t sc_tls_last_error(char *buf, size_t len);

/* After the handshake. "h2", "http/1.1" (static strings) or NULL (no ALPN). */
const char *sc_tls_alpn_selected(const SSL *ssl);
/* Whether the handshake resumed a session (skipped certificates). */
bool sc_tls_session_reused(const SSL *ssl);
/* "TLSv1.3" etc. (static). */
const char *sc_tls_version(const SSL *ssl);

/* ---- identities (the text side, without OpenSSL, is in spiffe.h) ---- */

/* The verified peer's identity: the single URI SAN of its certificate, a
 * valid SPIFFE ID (sc_tls_spiffe_id_valid), also on resumed sessions.
 * Writes it NUL-terminated and returns its length, or: -ENOENT no peer
 * certificate / no URI SAN; -EPERM the certificate did not verify; -EPROTO
 * several URI SANs, or one that is not a valid SPIFFE ID (an embedded NUL,
 * control characters, ...); -ENOSPC it does not fit in len. The handshake
 * already refuses a peer whose URI SAN is -EPROTO (see sc_tls_handshake). */
int sc_tls_peer_identity(const SSL *ssl, char *out, size_t len);
/* The URI SAN of any certificate, same results (no verification check). */
int sc_tls_cert_identity(X509 *cert, char *out, size_t len);

/* The peer certificate's serial as sc_tls_serial_colon_hex writes it
 * ("0a:1b:..."); -ENOENT without a peer certificate. No allocation. */
int sc_tls_peer_serial(const SSL *ssl, char *out, size_t cap);

/* ---- certificate facts (admin endpoint, readiness) ---- */

typedef struct sc_tls_cert_info {
    char subject[256];              /* "CN = web" (RFC 2253-like, one line) */
    char issuer[256];
    char identity[SC_TLS_ID_MAX];   /* URI SAN, "" when none */
    char serial[84];                /* lower-case hex, no separators */
    char sha256[65];                /* fingerprint of the DER, hex */
    int64_t not_before, not_after;  /* unix seconds */
    char not_before_iso[24], not_after_iso[24]; /* "2026-01-02T03:04:05Z" */
    bool is_ca;
} sc_tls_cert_info;

int sc_tls_cert_info_get(X509 *cert, sc_tls_cert_info *out);
/* The first certificate of a PEM file. 0, or -errno / -EINVAL with err. */
int sc_tls_cert_info_file(const char *path, sc_tls_cert_info *out, char *err, size_t errlen);
/* The peer's certificate on a connection; -ENOENT when there is none. */
int sc_tls_peer_cert_info(const SSL *ssl, sc_tls_cert_info *out);

/*
 * Whether a chain verifies against a set of roots the way a peer's handshake
 * checks it (same store as a context built from ca_pem: every certificate of
 * ca_pem is a trust anchor, the chain must end in one of them, at most 8
 * deep, every certificate valid at `now`). cert_pem: the leaf first, then
 * any intermediates (untrusted, as sent in a handshake). now: unix seconds,
 * 0 for the current time. Nothing is kept; any thread. Returns:
 *   0        it verifies,
 *  -EINVAL   cert_pem or ca_pem is missing or not valid PEM (err),
 *  -EPERM    it does not verify (err: "unable to get local issuer
 *            certificate (depth 0, CN = api)"),
 *  -ENOMEM.
 * Extended key usage is not checked (peers check it per role).
 */
int sc_tls_chain_verify_pem(const char *cert_pem, const char *ca_pem, int64_t now, char *err,
                            size_t errlen);
/* The context's own certificate (NULL for a client context without one) and
 * the roots of its CA bundle, computed when the context was built. Valid
 * while the caller holds a reference to ctx. */
const sc_tls_cert_info *sc_tls_ctx_cert(const sc_tls_ctx *ctx);
size_t sc_tls_ctx_n_roots(const sc_tls_ctx *ctx);
const sc_tls_cert_info *sc_tls_ctx_root(const sc_tls_ctx *ctx, size_t i);

typedef enum {
    SC_TLS_CERT_VALID = 0,
    SC_TLS_CERT_EXPIRING,           /* valid, but expires within warn_days */
    SC_TLS_CERT_EXPIRED,
    SC_TLS_CERT_NOT_YET_VALID,
} sc_tls_cert_state;

/* Whole days until not_after, rounded down; negative once expired. */
int64_t sc_tls_cert_days_until_expiry(const sc_tls_cert_info *ci, int64_t now);
sc_tls_cert_state sc_tls_cert_check(const sc_tls_cert_info *ci, int64_t now, int64_t warn_days);
const char *sc_tls_cert_state_name(sc_tls_cert_state s);   /* "valid", "expiring", ... */

/* ---- watched material (reload on change and on SIGHUP) ---- */

typedef struct sc_tls_watch sc_tls_watch;

/* Loads the files of o (file paths only; the *_pem fields must be NULL) and
 * remembers their identity (device, inode, size, mtime, ctime; symlinks are
 * followed, so a Kubernetes-style "..data" swap counts as a change). NULL
 * with err when the initial material is invalid. */
sc_tls_watch *sc_tls_watch_new(const sc_tls_ctx_opts *o, char *err, size_t errlen);
void sc_tls_watch_free(sc_tls_watch *w);    /* drops its reference to the current ctx */

/*
 * In-memory material (Consul Connect): a watch with no context yet
 * (sc_tls_watch_get returns NULL until the first sc_tls_watch_set_pem
 * succeeds). NULL on -ENOMEM. sc_tls_watch_check does nothing on it.
 */
sc_tls_watch *sc_tls_watch_new_memory(sc_tls_role role, bool require_client_cert);

/*
 * Control thread: validates PEM text (same checks as sc_tls_ctx_new, plus:
 * a certificate already expired or not yet valid is refused) and makes it
 * the current context, like a file reload: new handshakes use it, open
 * connections keep theirs; workers keep calling sc_tls_watch_get. Only on a
 * watch made with sc_tls_watch_new_memory (else -EINVAL). cert_pem/key_pem
 * NULL for a client context without a certificate. Returns 1 swapped, 0
 * the same bytes as the current material, <0 refused (err says why; the old
 * context stays).
 */
int sc_tls_watch_set_pem(sc_tls_watch *w, const char *cert_pem, const char *key_pem,
                         const char *ca_pem, char *err, size_t errlen);

/* The current context with a new reference for the caller (thread-safe; take
 * it once per new connection, not per request). NULL only for a memory watch
 * that has no material yet. */
sc_tls_ctx *sc_tls_watch_get(sc_tls_watch *w);

/*
 * Control thread (one thread only; sc_tls_watch_get may run concurrently on
 * workers): when a file changed since the last attempt (or force, for
 * SIGHUP), builds a new context. Cheap when nothing changed (three stat(2)),
 * so it can be polled every second or driven by inotify. Returns:
 *   1  a new context is current (new handshakes use it; connections on the
 *      old one continue until they close),
 *   0  nothing to do (no change, or the same bytes as the current material:
 *      touching a file does not reset session caches),
 *  <0  the changed material is refused (-EINVAL, -ENOENT, ...), err says why
 *      and the old context stays. Refused: anything sc_tls_ctx_new refuses,
 *      and a new certificate that is already expired or not yet valid. The
 *      same broken files are not reported again until they change once more
 *      (or force). A cert and key replaced one after the other are refused
 *      in between (mismatch) and accepted once both are new.
 */
int sc_tls_watch_check(sc_tls_watch *w, bool force, char *err, size_t errlen);

#endif
