/*
 * h1.h: a strict HTTP/1.1 codec that does no I/O (the nghttp2 way): bytes go
 * in, parsed heads and body chunks come out. Used on both sides of the proxy:
 * requests from callers and responses from upstreams.
 *
 * Strictness (RFC 9112): CRLF line endings only; method and header names are
 * tokens; header values are VCHAR / obs-text / SP / HTAB; no whitespace
 * before the colon; no obs-fold; exactly one Host for requests; a
 * Content-Length is 1*DIGIT without overflow, duplicates with different
 * values are refused; Transfer-Encoding together with Content-Length is
 * refused; a request whose Transfer-Encoding is not exactly "chunked" is
 * refused (a response's is read until close); chunk sizes are hex without
 * overflow; limits on request line and header block size.
 *
 * Memory: sc_h1_parse_head() does not copy: the sc_h1_head fields point into
 * the caller's buffer and stay valid while that buffer does.
 */
#ifndef SC_H1_H
#define SC_H1_H

#include "core/common.h"

#define SC_H1_MAX_HEADERS 100

typedef struct sc_h1_str {
    const char *p;
    size_t len;
} sc_h1_str;

typedef struct sc_h1_header {
    sc_h1_str name;
    sc_h1_str value;
} sc_h1_header;

typedef enum {
    SC_H1_BODY_NONE = 0,     /* no body (GET without length, 204, 304, HEAD response) */
    SC_H1_BODY_LENGTH,       /* Content-Length bytes */
    SC_H1_BODY_CHUNKED,
    SC_H1_BODY_UNTIL_CLOSE,  /* responses only */
} sc_h1_body_kind;

typedef struct sc_h1_head {
    /* request */
    sc_h1_str method;
    sc_h1_str target;
    /* response */
    int status;
    sc_h1_str reason;
    /* both */
    int minor_version;                 /* 0 or 1 */
    sc_h1_header headers[SC_H1_MAX_HEADERS];
    size_t n_headers;
    /* derived from the headers */
    sc_h1_body_kind body;
    uint64_t content_length;           /* when body == SC_H1_BODY_LENGTH */
    bool keep_alive;                   /* after this message (version and Connection) */
    bool expect_continue;              /* request: Expect: 100-continue */
    bool upgrade;                      /* Connection: upgrade with an Upgrade header */
    sc_h1_str host;                    /* request: the Host header value */
    bool te_trailers;                  /* request: TE contains "trailers" */
    uint32_t n_connection;             /* Connection header fields (see sc_h1_is_hop_by_hop_head) */
    /* request-target, taken apart (RFC 9112 3.2) */
    sc_h1_str scheme;                  /* absolute-form: the scheme as sent ("http"); else empty */
    sc_h1_str authority;               /* absolute-form: the authority, validated like Host; else empty */
    sc_h1_str path;                    /* origin-form and "*": the target; absolute-form: what follows
                                        * the authority (path and query, may be empty); CONNECT: empty */
} sc_h1_head;

/* A NULL limits pointer, or a field left 0, means the default. */
typedef struct sc_h1_limits {
    size_t max_request_line;           /* request line / status line (without CRLF), default 8192 */
    size_t max_head;                   /* whole head incl. final CRLF, default 65536 */
} sc_h1_limits;

/* Parse errors: distinguishable so the caller can answer 400 or 431. */
#define SC_H1_ERR_INCOMPLETE 0         /* not an error: need more bytes */
#define SC_H1_ERR_SYNTAX (-EPROTO)     /* -> 400 */
#define SC_H1_ERR_TOO_LARGE (-EMSGSIZE) /* -> 431 (head) or 414 (request line) */
#define SC_H1_ERR_LINE_TOO_LONG (-ENAMETOOLONG) /* -> 414 */
#define SC_H1_ERR_UNSUPPORTED (-ENOTSUP) /* -> 501 (e.g. unknown transfer coding), 505 for version */

/*
 * Parses a request head (is_request) or a response head from buf[0..len).
 * Returns the number of bytes the head occupies (> 0) when complete,
 * 0 when more bytes are needed (and the limits are not yet exceeded), or a
 * negative SC_H1_ERR_*. `why`, when not NULL, receives a static string
 * naming the problem ("duplicate Content-Length", ...).
 * For responses, `request_method_head` and the status decide body == NONE.
 * Stateless: call again with the whole head received so far. Bytes are
 * validated as they arrive, so an invalid prefix fails before its line is
 * complete, and a limit is reported as soon as the bytes prove it exceeded.
 * Up to 8 leading empty lines before a request line are skipped (and
 * counted in the returned length); more is a syntax error.
 * Decisions beyond the summary at the top: Content-Length and chunk sizes
 * above INT64_MAX are refused; Transfer-Encoding in an HTTP/1.0 message is
 * refused (RFC 9112 6.1: faulty framing); the request-target must be VCHAR
 * only and match its form (origin, absolute, authority for CONNECT only,
 * "*" for OPTIONS only); Host, the authority of an absolute-form target and
 * a CONNECT target are all uri-host [":" port]: an IP literal in brackets or
 * reg-name bytes, no userinfo, a port of at most 5 digits (Host may be
 * empty; an http/https absolute-form needs a host; CONNECT needs a port);
 * an absolute-form target may not carry a fragment ('#'); status codes outside 100..599 are refused; "HTTP/1.1 200\r\n"
 * (no SP before an empty reason) is accepted. Expect and Upgrade are
 * ignored in HTTP/1.0. A CONNECT response is not special-cased: the caller
 * tunnels after a 2xx to CONNECT.
 */
int sc_h1_parse_head(const char *buf, size_t len, bool is_request, bool request_method_head,
                     const sc_h1_limits *limits, sc_h1_head *out, const char **why);

/*
 * Cost control for heads that arrive in many small reads. Each
 * sc_h1_parse_head() call rescans from the start, so calling it after every
 * read costs O(head^2) for a peer that sends one byte at a time. This cheap
 * check (it looks only at buf[prev_len..len) ) says whether parsing again can
 * give a different answer than "incomplete": a line ended, a byte no head may
 * contain arrived, or a limit may have been reached. A caller that re-parses
 * only then gets the same verdicts (errors may come later, at the end of the
 * offending line) at a cost of O(lines * head), and the number of lines is
 * bounded (SC_H1_MAX_HEADERS, at most 8 leading empty lines).
 * `prev_len` is the buffered length at the previous parse (0 at first).
 */
bool sc_h1_head_worth_parsing(const char *buf, size_t prev_len, size_t len, const sc_h1_limits *limits);

/* Case-insensitive lookup of the first header named `name`; NULL if absent. */
const sc_h1_header *sc_h1_find(const sc_h1_head *h, const char *name);

/* True for hop-by-hop headers a proxy must not forward: Connection,
 * Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade,
 * and any header named in `connection` (the Connection header's value,
 * a comma list; may be empty). */
bool sc_h1_is_hop_by_hop(const char *name, size_t len, sc_h1_str connection);

/* The same for a field of the parsed message h, with the names listed in
 * every Connection field of h (RFC 9110 7.6.1: several Connection fields are
 * one list), not only the first. */
bool sc_h1_is_hop_by_hop_head(const sc_h1_head *h, const char *name, size_t len);

/*
 * True for a field a proxy must not take from a trailer section and pass on
 * (RFC 9110 6.5.1): the hop-by-hop names and the fields that frame, route,
 * modify or authenticate a message (Content-Length, Content-Type,
 * Content-Encoding, Content-Range, Host, Expect, Max-Forwards, Range,
 * Authorization, Proxy-Authorization, Cookie, Set-Cookie). Had they come
 * in the head they would have changed how the message was read; after the
 * body they can only mislead a recipient that merges trailers into headers.
 */
bool sc_h1_trailer_forbidden(const char *name, size_t len);

/*
 * Body decoder: feed bytes that follow the head.
 */
typedef struct sc_h1_body {
    sc_h1_body_kind kind;
    uint64_t remaining;                /* LENGTH: bytes left; CHUNKED: bytes left in chunk */
    int state;                         /* private */
    size_t aux;                        /* private: bytes consumed of the current line */
    size_t trailer_bytes;              /* private */
    size_t max_trailer_bytes;          /* default 16384 (set by init) */
    /* Trailer section of a chunked body, accumulated (raw "name: value\r\n" lines,
     * validated). Caller-provided storage; trailers beyond it are an error. */
    char *trailer_buf;
    size_t trailer_cap, trailer_len;
    const char *why;                   /* after an error: static description */
} sc_h1_body;

void sc_h1_body_init(sc_h1_body *b, sc_h1_body_kind kind, uint64_t content_length,
                     char *trailer_buf, size_t trailer_cap);

typedef enum {
    SC_H1_BODY_NEED_MORE = 0,          /* all input consumed, no data produced */
    SC_H1_BODY_DATA = 1,               /* (*data, *data_len) is body payload (points into input) */
    SC_H1_BODY_DONE = 2,               /* message complete; trailers (if any) in trailer_buf */
} sc_h1_body_result;

/*
 * Consumes from in[0..len): sets *consumed to the bytes used. Returns
 * SC_H1_BODY_DATA with payload in (*data, *data_len) (call again with the rest),
 * SC_H1_BODY_DONE at the end of the message (bytes after it belong to the next
 * message), SC_H1_BODY_NEED_MORE when all input was consumed without payload,
 * or SC_H1_ERR_SYNTAX / SC_H1_ERR_TOO_LARGE. UNTIL_CLOSE never returns DONE:
 * the caller ends it at EOF. For NONE it returns DONE at once. Errors are
 * sticky (later calls return the same error), set b->why and *consumed = 0.
 * Chunk extensions are skipped; one chunk-size line may carry at most 4096
 * bytes after the size (TOO_LARGE). max_trailer_bytes counts the bytes of
 * trailer fields (not the final CRLF); 0 refuses any trailer field.
 */
int sc_h1_body_decode(sc_h1_body *b, const char *in, size_t len, size_t *consumed,
                      const char **data, size_t *data_len);

/*
 * Parses the accumulated trailer block into headers (pointers into b->trailer_buf).
 * Returns the count (>= 0), SC_H1_ERR_SYNTAX, or SC_H1_ERR_TOO_LARGE when
 * there are more than `max` fields.
 */
int sc_h1_body_trailers(const sc_h1_body *b, sc_h1_header *out, size_t max);

/* Reason phrase for a status code ("OK", "Bad Gateway", ... "Unknown"). */
const char *sc_h1_reason(int status);

/* Writes "content-length: <n>\r\n" at out (at least 40 bytes), no
 * terminator; returns its length. For the head writers of both sides. */
size_t sc_h1_content_length_line(char *out, uint64_t n);

#endif
