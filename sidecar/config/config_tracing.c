/*
 * config_tracing.c: the `tracing:` section of sidecar.yaml (docs/tracing.md,
 * docs/configuration.md): where spans go, how many traces are recorded,
 * which trace headers are read and written, and the batching bounds.
 */
#include "config/config_internal.h"
#include "trace/propagation.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_SIZE_MAX 8192u
#define QUEUE_SIZE_MIN 16u
#define QUEUE_SIZE_MAX (1u << 20)
#define INTERVAL_MIN_MS 10u
#define INTERVAL_MAX_MS 3600000u
#define TIMEOUT_MIN_MS 100u
#define TIMEOUT_MAX_MS 60000u
#define ENDPOINT_MAX 512u
#define FORCE_HEADER_MAX 64u

static const struct {
    const char *name;
    unsigned bit;
} formats[] = {
    {"w3c", SC_TRACE_FMT_W3C},
    {"b3", SC_TRACE_FMT_B3},
    {"b3multi", SC_TRACE_FMT_B3MULTI},
};

void sc_config_tracing_defaults(sc_tracing_config *t)
{
    memset(t, 0, sizeof(*t));
    t->sample_ratio = 1.0;
    t->propagation_in = SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI;
    t->propagation_out = SC_TRACE_FMT_W3C;
    t->batch_size = 512;
    t->batch_interval_ms = 5000;
    t->queue_size = 2048;
    t->timeout_ms = 10000;
}

void sc_config_tracing_free(sc_tracing_config *t)
{
    free(t->endpoint);
    free(t->force_header);
    t->endpoint = t->force_header = NULL;
}

/* http:// or https://, a host, then an optional port and path; printable,
 * no spaces, no user info, no fragment. */
static bool endpoint_ok(const char *u, const char **why)
{
    const char *rest = strncmp(u, "http://", 7) == 0 ? u + 7 : strncmp(u, "https://", 8) == 0 ? u + 8 : NULL;
    if (!rest) {
        *why = "expected an http:// or https:// URL";
        return false;
    }
    if (strlen(u) > ENDPOINT_MAX) {
        *why = "longer than 512 characters";
        return false;
    }
    for (const unsigned char *p = (const unsigned char *)u; *p; p++)
        if (*p <= ' ' || *p >= 0x7f) {
            *why = "spaces, control or non-ASCII characters";
            return false;
        }
    size_t hl = strcspn(rest, "/?#");
    if (hl == 0 || rest[0] == ':') {
        *why = "no host";
        return false;
    }
    if (memchr(rest, '@', hl)) {
        *why = "user information is not supported";
        return false;
    }
    if (rest[hl] == '?') {
        *why = "a query needs a path before it";
        return false;
    }
    if (strchr(u, '#')) {
        *why = "a fragment is not sent";
        return false;
    }
    return true;
}

/* The list of a propagation direction into bits; false after reporting. */
static bool rd_formats(sc_cx *c, const sc_ynode *v, const char *field, unsigned *dst)
{
    if (!v)
        return true;
    char **names = NULL;
    size_t n = 0;
    if (!sc_config_rd_str_list(c, v, field, &names, &n))
        return false;
    unsigned bits = 0;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        unsigned bit = 0;
        for (size_t k = 0; k < SC_ARRAY_LEN(formats); k++)
            if (strcmp(names[i], formats[k].name) == 0)
                bit = formats[k].bit;
        const sc_ynode *at = v->kind == SC_YN_SEQ && i < v->n ? v->items[i] : v;
        char f[128];
        sc_config_path_idx(f, sizeof(f), field, i);
        if (!bit) {
            sc_config_err(c, at, f, "'%.64s' is not a trace header format; expected w3c, b3 or b3multi", names[i]);
            ok = false;
        } else if (bits & bit) {
            sc_config_err(c, at, f, "'%s' is listed twice", names[i]);
            ok = false;
        }
        bits |= bit;
        free(names[i]);
    }
    free(names);
    if (ok)
        *dst = bits;
    return ok;
}

/* A header name the sidecar may read to force sampling: a lower-cased
 * token, not one of the trace headers themselves. */
static void rd_force_header(sc_cx *c, const sc_ynode *v, sc_tracing_config *t)
{
    if (!v || !sc_config_rd_str(c, v, "tracing.force_header", false, &t->force_header) || !t->force_header)
        return;
    char *h = t->force_header;
    size_t n = strlen(h);
    bool token = n && n <= FORCE_HEADER_MAX;
    for (size_t i = 0; token && i < n; i++) {
        char ch = h[i];
        if (ch >= 'A' && ch <= 'Z')
            h[i] = (char)(ch - 'A' + 'a');
        else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
            token = false;
    }
    sc_trace_in probe;
    sc_trace_in_init(&probe, NULL);
    if (!token)
        sc_config_err(c, v, "tracing.force_header",
                      "'%.64s' is not a header name; use letters, digits, '-' and '_' (at most 64)", h);
    else if (sc_trace_in_header(&probe, h, n, "", 0))
        sc_config_err(c, v, "tracing.force_header", "'%s' is a trace header; name a header of its own", h);
    else
        return;
    free(t->force_header);
    t->force_header = NULL;
}

void sc_config_parse_tracing(sc_cx *c, const sc_ynode *m, sc_tracing_config *t)
{
    static const char *const keys[] = {"enabled", "endpoint", "sample_ratio", "propagation", "force_header",
                                       "batch_size", "batch_interval", "queue_size", "timeout"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    t->enabled = true;
    if (!sc_config_fields(c, m, "tracing", keys, SC_ARRAY_LEN(keys), f))
        return;
    sc_config_rd_bool(c, f[0], "tracing.enabled", &t->enabled);
    if (sc_config_rd_str(c, f[1], "tracing.endpoint", false, &t->endpoint) && t->endpoint) {
        const char *why = NULL;
        if (!endpoint_ok(t->endpoint, &why)) {
            sc_config_err(c, f[1], "tracing.endpoint",
                          "'%.64s' is not a collector URL (%s); expected e.g. " SC_TRACING_DEFAULT_ENDPOINT,
                          t->endpoint, why);
        } else if (!strchr(strchr(t->endpoint, ':') + 3, '/')) {
            /* no path: the protocol's default one */
            size_t n = strlen(t->endpoint) + sizeof("/v1/traces");
            char *u = sc_xcalloc(1, n);
            snprintf(u, n, "%s/v1/traces", t->endpoint);
            free(t->endpoint);
            t->endpoint = u;
        }
    }
    sc_config_rd_ratio(c, f[2], "tracing.sample_ratio", &t->sample_ratio);
    if (f[3]) {
        static const char *const pk[] = {"in", "out"};
        const sc_ynode *pf[2];
        if (sc_config_fields(c, f[3], "tracing.propagation", pk, 2, pf)) {
            rd_formats(c, pf[0], "tracing.propagation.in", &t->propagation_in);
            rd_formats(c, pf[1], "tracing.propagation.out", &t->propagation_out);
        }
    }
    rd_force_header(c, f[4], t);
    sc_config_rd_u32(c, f[5], "tracing.batch_size", 1, BATCH_SIZE_MAX, &t->batch_size);
    if (sc_config_rd_dur(c, f[6], "tracing.batch_interval", INTERVAL_MIN_MS, &t->batch_interval_ms) &&
        t->batch_interval_ms > INTERVAL_MAX_MS)
        sc_config_err(c, f[6], "tracing.batch_interval", "at most 1h: spans wait this long in memory");
    sc_config_rd_u32(c, f[7], "tracing.queue_size", QUEUE_SIZE_MIN, QUEUE_SIZE_MAX, &t->queue_size);
    if (sc_config_rd_dur(c, f[8], "tracing.timeout", TIMEOUT_MIN_MS, &t->timeout_ms) && t->timeout_ms > TIMEOUT_MAX_MS)
        sc_config_err(c, f[8], "tracing.timeout", "at most 1m");
}

static json_t *fmt_list(unsigned bits)
{
    json_t *a = json_array();
    for (size_t k = 0; k < SC_ARRAY_LEN(formats); k++)
        if (bits & formats[k].bit)
            json_array_append_new(a, json_string(formats[k].name));
    return a;
}

static json_t *dur(uint64_t ms)
{
    char b[64];
    sc_duration_format(ms, b, sizeof(b));
    return json_string(b);
}

json_t *sc_config_tracing_to_json(const sc_tracing_config *t)
{
    json_t *o = json_object();
    json_object_set_new(o, "enabled", json_boolean(t->enabled));
    json_object_set_new(o, "endpoint", json_string(t->endpoint ? t->endpoint : SC_TRACING_DEFAULT_ENDPOINT));
    json_object_set_new(o, "sample_ratio", json_real(t->sample_ratio));
    json_object_set_new(o, "propagation", json_pack("{s:o, s:o}", "in", fmt_list(t->propagation_in), "out",
                                                    fmt_list(t->propagation_out)));
    json_object_set_new(o, "force_header", t->force_header ? json_string(t->force_header) : json_null());
    json_object_set_new(o, "batch_size", json_integer(t->batch_size));
    json_object_set_new(o, "batch_interval", dur(t->batch_interval_ms));
    json_object_set_new(o, "queue_size", json_integer(t->queue_size));
    json_object_set_new(o, "timeout", dur(t->timeout_ms));
    return o;
}
