/*
 * jwks.c: JWKS documents into verification keys (see jwks.h). The key
 * parameters are decoded and checked here (strict base64url, sizes, no
 * private material) and handed to libcjose's keyspec constructors, so
 * cjose's own, more lenient JWK import never sees a document.
 */
#include "jwt/jwks.h"

#include "jwt/jwt_config.h"
#include "jwt/jwt_internal.h"

#include <cjose/cjose.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers shared by the module ---- */

void sc_jwt_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

char *sc_jwt_printable(const char *s, size_t n, char *out, size_t cap)
{
    if (!cap)
        return out;
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[k++] = (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') ? '?' : (char)ch;
    }
    out[k] = 0;
    if (k < n && cap >= 4)
        memcpy(out + cap - 4, "...", 4);
    return out;
}

static int8_t b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return (int8_t)(c - 'A');
    if (c >= 'a' && c <= 'z')
        return (int8_t)(c - 'a' + 26);
    if (c >= '0' && c <= '9')
        return (int8_t)(c - '0' + 52);
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

long sc_jwt_b64url_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    if (len % 4 == 1)
        return -1;
    size_t need = sc_jwt_b64url_decoded_len(len);
    if (need > cap)
        return -1;
    uint32_t acc = 0;
    unsigned nbits = 0;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        int8_t v = b64_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        nbits += 6;
        if (nbits >= 8) {
            nbits -= 8;
            out[k++] = (uint8_t)(acc >> nbits);
            acc &= (1u << nbits) - 1;
        }
    }
    if (acc != 0) /* bits after the last octet must be zero */
        return -1;
    return (long)k;
}

/* ---- key sets ---- */

sc_jwks *sc_jwks_ref(sc_jwks *k)
{
    if (k)
        atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
    return k;
}

static void jwks_free(sc_jwks *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->keys[i].kid);
        if (k->keys[i].cjose)
            cjose_jwk_release(k->keys[i].cjose);
    }
    free(k->keys);
    free(k);
}

void sc_jwks_unref(sc_jwks *k)
{
    if (k && atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) == 1)
        jwks_free(k);
}

/* Appends "; "-separated text to notes. */
static void note(char *notes, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(char *notes, size_t cap, const char *fmt, ...)
{
    if (!notes || !cap)
        return;
    size_t used = strlen(notes);
    if (used + 3 >= cap)
        return;
    if (used) {
        memcpy(notes + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(notes + used, cap - used, fmt, ap);
    va_end(ap);
}

/* How a key is named in messages: "key 2 (kid \"abc\")". */
static void key_label(size_t i, const char *kid, char *out, size_t cap)
{
    if (kid) {
        char pk[72];
        snprintf(out, cap, "key %zu (kid \"%s\")", i, sc_jwt_printable(kid, strlen(kid), pk, sizeof(pk)));
    } else {
        snprintf(out, cap, "key %zu (no kid)", i);
    }
}

/* A base64url member of a key: decoded into a new buffer (*out, *olen),
 * max_len bounds it. Returns 0, or -1 with err set. */
static int member_b64(json_t *key, const char *name, size_t max_len, uint8_t **out, size_t *olen,
                      const char *label, char *err, size_t errlen)
{
    json_t *v = json_object_get(key, name);
    if (!v) {
        sc_jwt_set_err(err, errlen, "%s: missing \"%s\"", label, name);
        return -1;
    }
    if (!json_is_string(v)) {
        sc_jwt_set_err(err, errlen, "%s: \"%s\" is not a string", label, name);
        return -1;
    }
    size_t len = json_string_length(v);
    size_t dl = sc_jwt_b64url_decoded_len(len);
    if (len == 0 || dl > max_len) {
        sc_jwt_set_err(err, errlen, "%s: \"%s\" is %s", label, name, len ? "too long" : "empty");
        return -1;
    }
    uint8_t *b = malloc(dl ? dl : 1);
    if (!b) {
        sc_jwt_set_err(err, errlen, "out of memory");
        return -1;
    }
    long n = sc_jwt_b64url_decode(json_string_value(v), len, b, dl);
    if (n < 0) {
        free(b);
        sc_jwt_set_err(err, errlen, "%s: \"%s\" is not base64url (RFC 7515: URL-safe alphabet, no padding)", label,
                       name);
        return -1;
    }
    *out = b;
    *olen = (size_t)n;
    return 0;
}

/* Strips leading zero octets (JWK integers are unsigned big-endian). */
static size_t significant_bits(const uint8_t *b, size_t n)
{
    size_t i = 0;
    while (i < n && b[i] == 0)
        i++;
    if (i == n)
        return 0;
    unsigned top = b[i], bits = 0;
    while (top) {
        bits++;
        top >>= 1;
    }
    return (n - i - 1) * 8 + bits;
}

static int import_rsa(json_t *key, const char *label, sc_jwk *out, char *err, size_t errlen)
{
    uint8_t *n = NULL, *e = NULL;
    size_t nlen = 0, elen = 0;
    int rc = -1;
    if (member_b64(key, "n", SC_JWKS_MAX_RSA_BITS / 8 + 1, &n, &nlen, label, err, errlen) < 0 ||
        member_b64(key, "e", 8, &e, &elen, label, err, errlen) < 0)
        goto out;
    size_t bits = significant_bits(n, nlen);
    if (bits < SC_JWKS_MIN_RSA_BITS || bits > SC_JWKS_MAX_RSA_BITS) {
        sc_jwt_set_err(err, errlen, "%s: an RSA modulus of %zu bits; %d to %d are accepted", label, bits,
                       SC_JWKS_MIN_RSA_BITS, SC_JWKS_MAX_RSA_BITS);
        goto out;
    }
    size_t ebits = significant_bits(e, elen);
    if (ebits < 2 || !(e[elen - 1] & 1)) {
        sc_jwt_set_err(err, errlen, "%s: the RSA exponent \"e\" must be odd and at least 3", label);
        goto out;
    }
    cjose_err cerr = {0};
    cjose_jwk_rsa_keyspec spec = {.n = n, .nlen = nlen, .e = e, .elen = elen};
    out->cjose = cjose_jwk_create_RSA_spec(&spec, &cerr);
    if (!out->cjose) {
        sc_jwt_set_err(err, errlen, "%s: libcjose refused the RSA key: %s", label,
                       cerr.message ? cerr.message : "unknown error");
        goto out;
    }
    out->type = SC_JWK_RSA;
    out->bits = (unsigned)bits;
    out->algs = SC_JWT_ALGS_RSA;
    rc = 0;
out:
    free(n);
    free(e);
    return rc;
}

static int import_ec(json_t *key, const char *label, sc_jwk *out, char *notes, size_t notes_len, char *err,
                     size_t errlen)
{
    static const struct {
        const char *name;
        int nid;
        size_t bytes;
        uint32_t alg;
    } curves[] = {
        {"P-256", NID_X9_62_prime256v1, 32, SC_JWT_ES256},
        {"P-384", NID_secp384r1, 48, SC_JWT_ES384},
        {"P-521", NID_secp521r1, 66, SC_JWT_ES512},
    };
    const char *crv = json_string_value(json_object_get(key, "crv"));
    if (!crv) {
        sc_jwt_set_err(err, errlen, "%s: an EC key needs \"crv\" (a string)", label);
        return -1;
    }
    size_t c = 0;
    while (c < SC_ARRAY_LEN(curves) && strcmp(crv, curves[c].name) != 0)
        c++;
    if (c == SC_ARRAY_LEN(curves)) {
        char pc[40];
        note(notes, notes_len, "%s skipped: curve \"%s\" is not supported (P-256, P-384, P-521 are)", label,
             sc_jwt_printable(crv, strlen(crv), pc, sizeof(pc)));
        return 1;
    }
    uint8_t *x = NULL, *y = NULL;
    size_t xl = 0, yl = 0;
    int rc = -1;
    if (member_b64(key, "x", curves[c].bytes, &x, &xl, label, err, errlen) < 0 ||
        member_b64(key, "y", curves[c].bytes, &y, &yl, label, err, errlen) < 0)
        goto out;
    if (xl != curves[c].bytes || yl != curves[c].bytes) {
        sc_jwt_set_err(err, errlen, "%s: \"x\" and \"y\" of a %s key are %zu octets each (RFC 7518 6.2.1.2)", label,
                       crv, curves[c].bytes);
        goto out;
    }
    cjose_err cerr = {0};
    cjose_jwk_ec_keyspec spec = {.crv = (cjose_jwk_ec_curve)curves[c].nid, .x = x, .xlen = xl, .y = y, .ylen = yl};
    out->cjose = cjose_jwk_create_EC_spec(&spec, &cerr);
    if (!out->cjose) {
        sc_jwt_set_err(err, errlen, "%s: not a point on %s", label, crv);
        goto out;
    }
    out->type = SC_JWK_EC;
    out->bits = (unsigned)(curves[c].nid == NID_secp521r1 ? 521 : curves[c].bytes * 8);
    out->algs = curves[c].alg;
    rc = 0;
out:
    free(x);
    free(y);
    return rc;
}

static int import_oct(json_t *key, const char *label, sc_jwk *out, char *err, size_t errlen)
{
    uint8_t *k = NULL;
    size_t kl = 0;
    if (member_b64(key, "k", 1024, &k, &kl, label, err, errlen) < 0)
        return -1;
    if (kl < SC_JWKS_MIN_HMAC_BYTES) {
        sc_jwt_set_err(err, errlen, "%s: an HMAC secret of %zu octets; at least %d are needed (RFC 7518 3.2)", label,
                       kl, SC_JWKS_MIN_HMAC_BYTES);
        OPENSSL_cleanse(k, kl);
        free(k);
        return -1;
    }
    cjose_err cerr = {0};
    out->cjose = cjose_jwk_create_oct_spec(k, kl, &cerr);
    OPENSSL_cleanse(k, kl);
    free(k);
    if (!out->cjose) {
        sc_jwt_set_err(err, errlen, "%s: libcjose refused the secret: %s", label,
                       cerr.message ? cerr.message : "unknown error");
        return -1;
    }
    out->type = SC_JWK_OCT;
    out->bits = (unsigned)(kl * 8);
    /* a secret shorter than the hash does not serve that hash (RFC 7518 3.2) */
    out->algs = SC_JWT_HS256 | (kl >= 48 ? SC_JWT_HS384 : 0) | (kl >= 64 ? SC_JWT_HS512 : 0);
    return 0;
}

/* Whether the key says it is for signatures (use, key_ops); 1 = skip it. */
static int key_purpose(json_t *key, const char *label, char *notes, size_t notes_len, char *err, size_t errlen)
{
    json_t *use = json_object_get(key, "use");
    if (use && !json_is_string(use)) {
        sc_jwt_set_err(err, errlen, "%s: \"use\" is not a string", label);
        return -1;
    }
    if (use && strcmp(json_string_value(use), "sig") != 0) {
        char pu[40];
        note(notes, notes_len, "%s skipped: use \"%s\"", label,
             sc_jwt_printable(json_string_value(use), json_string_length(use), pu, sizeof(pu)));
        return 1;
    }
    json_t *ops = json_object_get(key, "key_ops");
    if (ops) {
        if (!json_is_array(ops)) {
            sc_jwt_set_err(err, errlen, "%s: \"key_ops\" is not an array", label);
            return -1;
        }
        bool verify = false;
        size_t i;
        json_t *op;
        json_array_foreach(ops, i, op)
        {
            if (!json_is_string(op)) {
                sc_jwt_set_err(err, errlen, "%s: \"key_ops\" holds a non-string", label);
                return -1;
            }
            verify |= strcmp(json_string_value(op), "verify") == 0;
        }
        if (!verify) {
            note(notes, notes_len, "%s skipped: key_ops without \"verify\"", label);
            return 1;
        }
    }
    return 0;
}

/* One member of "keys": 0 imported into *out, 1 skipped (noted), -1 error. */
static int import_key(json_t *key, size_t i, bool allow_secrets, sc_jwk *out, char *notes, size_t notes_len, char *err,
                      size_t errlen)
{
    char label[128];
    if (!json_is_object(key)) {
        sc_jwt_set_err(err, errlen, "key %zu is not a JSON object", i);
        return -1;
    }
    json_t *kidv = json_object_get(key, "kid");
    if (kidv && (!json_is_string(kidv) || json_string_length(kidv) == 0 ||
                 json_string_length(kidv) > SC_JWKS_MAX_KID ||
                 strlen(json_string_value(kidv)) != json_string_length(kidv))) {
        sc_jwt_set_err(err, errlen, "key %zu: \"kid\" must be a string of 1 to %d bytes without NUL", i,
                       SC_JWKS_MAX_KID);
        return -1;
    }
    const char *kid = kidv ? json_string_value(kidv) : NULL;
    key_label(i, kid, label, sizeof(label));
    const char *kty = json_string_value(json_object_get(key, "kty"));
    if (!kty) {
        sc_jwt_set_err(err, errlen, "%s: missing \"kty\" (a string)", label);
        return -1;
    }
    int p = key_purpose(key, label, notes, notes_len, err, errlen);
    if (p != 0)
        return p;
    uint32_t want = 0;
    json_t *algv = json_object_get(key, "alg");
    if (algv) {
        if (!json_is_string(algv)) {
            sc_jwt_set_err(err, errlen, "%s: \"alg\" is not a string", label);
            return -1;
        }
        want = sc_jwt_alg_from_name(json_string_value(algv), json_string_length(algv));
        if (!want) {
            char pa[40];
            note(notes, notes_len, "%s skipped: alg \"%s\" is not supported", label,
                 sc_jwt_printable(json_string_value(algv), json_string_length(algv), pa, sizeof(pa)));
            return 1;
        }
    }
    static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "oth"};
    int rc;
    if (strcmp(kty, "RSA") == 0 || strcmp(kty, "EC") == 0) {
        for (size_t k = 0; k < SC_ARRAY_LEN(priv); k++)
            if (json_object_get(key, priv[k])) {
                sc_jwt_set_err(err, errlen, "%s: holds private key material (\"%s\"); publish public keys only",
                               label, priv[k]);
                return -1;
            }
        rc = kty[0] == 'R' ? import_rsa(key, label, out, err, errlen)
                           : import_ec(key, label, out, notes, notes_len, err, errlen);
    } else if (strcmp(kty, "oct") == 0) {
        if (!allow_secrets) {
            sc_jwt_set_err(err, errlen, "%s: an HMAC secret (kty \"oct\") is only accepted from a jwks_file", label);
            return -1;
        }
        rc = import_oct(key, label, out, err, errlen);
    } else {
        char pk[40];
        note(notes, notes_len, "%s skipped: kty \"%s\" is not supported (RSA, EC and oct are)", label,
             sc_jwt_printable(kty, strlen(kty), pk, sizeof(pk)));
        return 1;
    }
    if (rc != 0)
        return rc;
    if (want) {
        if (!(out->algs & want)) {
            sc_jwt_set_err(err, errlen, "%s: alg \"%s\" does not fit a %s key%s", label, sc_jwt_alg_name(want), kty,
                           out->type == SC_JWK_OCT ? " of this size" : "");
            cjose_jwk_release(out->cjose);
            out->cjose = NULL;
            return -1;
        }
        out->algs = want;
    }
    out->kid = kid ? strdup(kid) : NULL;
    if (kid && !out->kid) {
        cjose_jwk_release(out->cjose);
        out->cjose = NULL;
        sc_jwt_set_err(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int sc_jwks_parse(const char *doc, size_t len, bool allow_secrets, sc_jwks **out, char *notes, size_t notes_len,
                  char *err, size_t errlen)
{
    *out = NULL;
    if (notes && notes_len)
        notes[0] = 0;
    if (len > SC_JWKS_MAX_BYTES) {
        sc_jwt_set_err(err, errlen, "the JWKS is %zu bytes; at most %u are accepted", len, SC_JWKS_MAX_BYTES);
        return -EINVAL;
    }
    json_error_t je;
    json_t *root = json_loadb(doc, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char pt[120];
        sc_jwt_set_err(err, errlen, "the JWKS is not JSON: %s (line %d, column %d)",
                       sc_jwt_printable(je.text, strlen(je.text), pt, sizeof(pt)), je.line, je.column);
        return -EINVAL;
    }
    json_t *keys = json_object_get(root, "keys");
    if (!json_is_object(root) || !json_is_array(keys)) {
        json_decref(root);
        sc_jwt_set_err(err, errlen, "the JWKS is not an object with a \"keys\" array (RFC 7517 5)");
        return -EINVAL;
    }
    size_t n = json_array_size(keys);
    if (n > SC_JWKS_MAX_KEYS) {
        json_decref(root);
        sc_jwt_set_err(err, errlen, "the JWKS holds %zu keys; at most %d are accepted", n, SC_JWKS_MAX_KEYS);
        return -EINVAL;
    }
    sc_jwks *k = calloc(1, sizeof(*k));
    if (k)
        k->keys = calloc(n ? n : 1, sizeof(sc_jwk));
    if (!k || !k->keys) {
        free(k);
        json_decref(root);
        sc_jwt_set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    atomic_init(&k->refs, 1);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        sc_jwk key = {0};
        int r = import_key(json_array_get(keys, i), i, allow_secrets, &key, notes, notes_len, err, errlen);
        if (r < 0) {
            rc = -EINVAL;
            break;
        }
        if (r == 0) {
            for (size_t j = 0; j < k->n; j++)
                if (key.kid && k->keys[j].kid && strcmp(key.kid, k->keys[j].kid) == 0 &&
                    (key.algs & k->keys[j].algs)) {
                    char label[128];
                    key_label(i, key.kid, label, sizeof(label));
                    sc_jwt_set_err(err, errlen, "%s: the kid is already used by key for the same algorithms", label);
                    rc = -EINVAL;
                }
            k->keys[k->n++] = key;
            if (rc < 0)
                break;
        }
    }
    json_decref(root);
    if (rc == 0 && k->n == 0) {
        sc_jwt_set_err(err, errlen, "the JWKS has no usable signature key%s%s", notes && notes[0] ? ": " : "",
                       notes && notes[0] ? notes : "");
        rc = -EINVAL;
    }
    if (rc < 0) {
        jwks_free(k);
        return rc;
    }
    unsigned int dl = 0;
    EVP_Digest(doc, len, k->digest, &dl, EVP_sha256(), NULL);
    *out = k;
    return (int)k->n;
}

int sc_jwks_load_file(const char *path, bool allow_secrets, sc_jwks **out, char *notes, size_t notes_len, char *err,
                      size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the loader */
    if (fd < 0) {
        int e = errno;
        sc_jwt_set_err(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        sc_jwt_set_err(err, errlen, "%s: not a regular file", path);
        return -EINVAL;
    }
    if (st.st_size > (off_t)SC_JWKS_MAX_BYTES) {
        close(fd);
        sc_jwt_set_err(err, errlen, "%s: %lld bytes; a JWKS of at most %u is accepted", path, (long long)st.st_size,
                       SC_JWKS_MAX_BYTES);
        return -EINVAL;
    }
    char *buf = malloc(SC_JWKS_MAX_BYTES + 1);
    if (!buf) {
        close(fd);
        sc_jwt_set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, SC_JWKS_MAX_BYTES + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            free(buf);
            sc_jwt_set_err(err, errlen, "%s: %s", path, strerror(e));
            return -e;
        }
        if (r == 0 || (len += (size_t)r) > SC_JWKS_MAX_BYTES)
            break;
    }
    close(fd);
    char why[384];
    int rc = len > SC_JWKS_MAX_BYTES ? (snprintf(why, sizeof(why), "more than %u bytes", SC_JWKS_MAX_BYTES), -EINVAL)
                                     : sc_jwks_parse(buf, len, allow_secrets, out, notes, notes_len, why, sizeof(why));
    free(buf);
    if (rc < 0)
        sc_jwt_set_err(err, errlen, "%s: %s", path, why);
    return rc;
}
