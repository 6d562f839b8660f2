/*
 * jwt_internal.h: what the files of the jwt module share and nobody else
 * should use.
 */
#ifndef SC_JWT_INTERNAL_H
#define SC_JWT_INTERNAL_H

#include "core/common.h"

#include <stdarg.h>
#include <stdio.h>

/*
 * Strict base64url (RFC 4648 section 5, as JOSE uses it, RFC 7515 section 2):
 * the URL-safe alphabet only, no padding, no whitespace, a length that is
 * not 1 modulo 4 and zero bits after the last whole octet (so each byte
 * string has exactly one encoding). Writes at most cap bytes; returns the
 * decoded length, or -1 for an invalid encoding or one that does not fit.
 */
long sc_jwt_b64url_decode(const char *in, size_t len, uint8_t *out, size_t cap);
/* The decoded length of a valid encoding of len characters. */
static inline size_t sc_jwt_b64url_decoded_len(size_t len)
{
    return len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
}

/* snprintf into err when err is not NULL (errlen > 0). */
void sc_jwt_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Copies s (at most n bytes) into out as printable ASCII for a log line or an
 * error text: control characters, '"', '\\' and bytes >= 0x7f become '?',
 * and a text longer than cap - 1 ends in "...". Returns out. */
char *sc_jwt_printable(const char *s, size_t n, char *out, size_t cap);

#endif
