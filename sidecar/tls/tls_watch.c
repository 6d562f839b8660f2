/*
 * tls_watch.c: material that changes while the process runs. A watch
 * remembers the files behind a context (device, inode, size, times) and,
 * when one changed or on demand (SIGHUP), builds a new context and makes it
 * current only when it is valid; a memory watch takes Connect PEM text
 * instead. The timer and signal that drive it are in tls_runtime.c.
 *
 * Memory: the watch owns copies of its paths and one reference to the
 * current context; sc_tls_watch_get hands out another reference, so the
 * previous context lives on while connections made from it are open.
 * Threads: only the control thread replaces the current context;
 * sc_tls_watch_get may run on any thread (mutex).
 */
#include "tls/tls_internal.h"

#include "core/file_id.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- watches ---- */

static bool opts_has_files_only(const sc_tls_ctx_opts *o)
{
    return !o->cert_pem && !o->key_pem && !o->ca_pem;
}

struct sc_tls_watch {
    pthread_mutex_t mu;                 /* guards cur */
    sc_tls_ctx *cur;
    sc_tls_ctx_opts opts;               /* paths point into the strings below */
    char *cert, *key, *ca;
    sc_file_id seen[3];                    /* at the last attempt */
    bool memory;                        /* material set with sc_tls_watch_set_pem, no files */
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void watch_stat(const sc_tls_watch *w, sc_file_id ids[3])
{
    sc_file_id_of(w->opts.cert_file, &ids[0]);
    sc_file_id_of(w->opts.key_file, &ids[1]);
    sc_file_id_of(w->opts.ca_file, &ids[2]);
}

void sc_tls_watch_free(sc_tls_watch *w)
{
    if (!w)
        return;
    sc_tls_ctx_unref(w->cur);
    pthread_mutex_destroy(&w->mu);
    free(w->cert);
    free(w->key);
    free(w->ca);
    free(w);
}

sc_tls_watch *sc_tls_watch_new(const sc_tls_ctx_opts *o, char *err, size_t errlen)
{
    if (!o || !opts_has_files_only(o)) {
        sc_tls_set_err(err, errlen, "tls: a watch needs file paths, not PEM text");
        return NULL;
    }
    sc_tls_watch *w = calloc(1, sizeof(*w));
    if (!w || pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        sc_tls_set_err(err, errlen, "tls: out of memory");
        return NULL;
    }
    w->cert = dup_or_null(o->cert_file);
    w->key = dup_or_null(o->key_file);
    w->ca = dup_or_null(o->ca_file);
    w->opts = *o;
    w->opts.cert_file = w->cert;
    w->opts.key_file = w->key;
    w->opts.ca_file = w->ca;
    if ((o->cert_file && !w->cert) || (o->key_file && !w->key) || (o->ca_file && !w->ca)) {
        sc_tls_set_err(err, errlen, "tls: out of memory");
        sc_tls_watch_free(w);
        return NULL;
    }
    watch_stat(w, w->seen);
    w->cur = sc_tls_ctx_new(&w->opts, err, errlen);
    if (!w->cur) {
        sc_tls_watch_free(w);
        return NULL;
    }
    return w;
}

sc_tls_ctx *sc_tls_watch_get(sc_tls_watch *w)
{
    pthread_mutex_lock(&w->mu);
    sc_tls_ctx *c = sc_tls_ctx_ref(w->cur);
    pthread_mutex_unlock(&w->mu);
    return c;
}

/*
 * Loads the material `o` names, builds a context from it and makes it the
 * watch's current one, unless it is byte for byte the current material
 * (0) or unusable: unreadable, inconsistent, or a certificate that is
 * expired or not yet valid (-errno and err; the current one stays).
 * `what` names the certificate in the error ("tls.cert <path>", "the new
 * certificate (serial ...)"). Control thread: only it replaces cur, so
 * reading cur here needs no lock. Returns 1 when the new material is in use.
 */
static int install(sc_tls_watch *w, const sc_tls_ctx_opts *o, const char *what, char *err, size_t errlen)
{
    sc_tls_blob cert, key, ca;
    int rc = sc_tls_load_blobs(o, &cert, &key, &ca, err, errlen);
    if (rc < 0)
        return rc;
    unsigned char digest[32];
    sc_tls_digest_blobs((const sc_tls_blob *[]){&cert, &key, &ca}, 3, digest);
    if (w->cur && memcmp(digest, w->cur->digest, sizeof(digest)) == 0) {
        sc_tls_blob_free(&cert);
        sc_tls_blob_free(&key);
        sc_tls_blob_free(&ca);
        return 0;
    }
    sc_tls_ctx *nc = sc_tls_build_ctx(o, &cert, &key, &ca, err, errlen);
    sc_tls_blob_free(&cert);
    sc_tls_blob_free(&key);
    sc_tls_blob_free(&ca);
    if (!nc)
        return -EINVAL;
    memcpy(nc->digest, digest, sizeof(digest));
    if (nc->has_cert) {
        int64_t t = (int64_t)time(NULL);
        sc_tls_cert_state st = sc_tls_cert_check(&nc->cert, t, 0);
        if (st == SC_TLS_CERT_EXPIRED || st == SC_TLS_CERT_NOT_YET_VALID) {
            sc_tls_set_err(err, errlen, "%s: the new certificate is %s (valid %s to %s); keeping the current one",
                           what ? what : "tls", sc_tls_cert_state_name(st), nc->cert.not_before_iso,
                           nc->cert.not_after_iso);
            sc_tls_ctx_unref(nc);
            return -EINVAL;
        }
    }
    pthread_mutex_lock(&w->mu);
    sc_tls_ctx *old = w->cur;
    w->cur = nc;
    pthread_mutex_unlock(&w->mu);
    sc_tls_ctx_unref(old);
    return 1;
}

sc_tls_watch *sc_tls_watch_new_memory(sc_tls_role role, bool require_client_cert)
{
    sc_tls_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        return NULL;
    }
    w->opts.role = role;
    w->opts.require_client_cert = require_client_cert;
    w->memory = true;
    return w;
}

int sc_tls_watch_set_pem(sc_tls_watch *w, const char *cert_pem, const char *key_pem,
                         const char *ca_pem, char *err, size_t errlen)
{
    if (!w->memory) {
        sc_tls_set_err(err, errlen, "tls: this material comes from files, not from memory");
        return -EINVAL;
    }
    sc_tls_ctx_opts o = w->opts;
    o.cert_pem = cert_pem;
    o.key_pem = key_pem;
    o.ca_pem = ca_pem;
    return install(w, &o, "the Connect leaf certificate", err, errlen);
}

int sc_tls_watch_check(sc_tls_watch *w, bool force, char *err, size_t errlen)
{
    if (w->memory)
        return 0;   /* in-memory material changes only through sc_tls_watch_set_pem */
    sc_file_id now_ids[3];
    watch_stat(w, now_ids);
    bool changed = force;
    for (int i = 0; i < 3 && !changed; i++)
        changed = !sc_file_id_eq(&now_ids[i], &w->seen[i]);
    if (!changed)
        return 0;
    memcpy(w->seen, now_ids, sizeof(now_ids));

    char what[PATH_MAX + 16];
    snprintf(what, sizeof(what), "tls.cert %s", w->cert ? w->cert : "");
    return install(w, &w->opts, what, err, errlen);
}
