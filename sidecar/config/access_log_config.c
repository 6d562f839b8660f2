/*
 * access_log_config.c: the `access_log:` section of sidecar.yaml (fields in
 * docs/configuration.md, the lines themselves in docs/observability.md).
 * Every combination that cannot mean what it says is refused by name: a
 * threshold without `select: slow`, a ratio without `sample`, a path without
 * `destination: file`, `all` combined with anything.
 */
#include "config/config_internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FIELDS(c, m, path, keys, out) \
    sc_config_fields((c), (m), (path), (keys), SC_ARRAY_LEN(keys), (out))

static const char *const dest_names[] = {"stdout", "stderr", "file"};
static const struct {
    const char *name;
    uint32_t bit;
} select_names[] = {
    {"all", SC_ACCESS_SELECT_ALL},
    {"errors", SC_ACCESS_SELECT_ERRORS},
    {"slow", SC_ACCESS_SELECT_SLOW},
    {"sample", SC_ACCESS_SELECT_SAMPLE},
};

void sc_config_access_log_defaults(sc_access_log_config *a)
{
    memset(a, 0, sizeof(*a));
    a->destination = SC_ACCESS_LOG_STDOUT;
    a->select = SC_ACCESS_SELECT_ALL;
    a->buffer_bytes = 1u << 20;
    a->flush_interval_ms = 100;
}

void sc_config_access_log_free(sc_access_log_config *a)
{
    free(a->path);
    a->path = NULL;
}

/* One name of `select` into *bits; false (reported) when unknown or repeated. */
static bool select_one(sc_cx *c, const sc_ynode *v, const char *field, uint32_t *bits)
{
    if (v->kind != SC_YN_SCALAR) {
        if (v->kind != SC_YN_BAD)
            sc_config_err(c, v, field, "expected one of all, errors, slow, sample");
        return false;
    }
    for (size_t i = 0; i < SC_ARRAY_LEN(select_names); i++)
        if (strcmp(v->str, select_names[i].name) == 0) {
            if (*bits & select_names[i].bit) {
                sc_config_err(c, v, field, "'%s' is listed twice", v->str);
                return false;
            }
            *bits |= select_names[i].bit;
            return true;
        }
    sc_config_err(c, v, field, "'%.64s' is not a selection; expected all, errors, slow or sample", v->str);
    return false;
}

/* `select`: one name or a list of names (a line is written when any matches). */
static bool parse_select(sc_cx *c, const sc_ynode *v, uint32_t *out)
{
    uint32_t bits = 0;
    bool ok = true;
    if (v->kind == SC_YN_SEQ) {
        if (v->n == 0) {
            sc_config_err(c, v, "access_log.select", "the list is empty; use all, errors, slow or sample");
            return false;
        }
        for (size_t i = 0; i < v->n; i++) {
            char f[64];
            sc_config_path_idx(f, sizeof(f), "access_log.select", i);
            ok &= select_one(c, v->items[i], f, &bits);
        }
    } else {
        ok = select_one(c, v, "access_log.select", &bits);
    }
    if (!ok)
        return false;
    if ((bits & SC_ACCESS_SELECT_ALL) && bits != SC_ACCESS_SELECT_ALL) {
        sc_config_err(c, v, "access_log.select",
                      "'all' already selects every request; list only errors, slow or sample with others");
        return false;
    }
    *out = bits;
    return true;
}

/* The directory a log file will be created in must exist now: found by
 * `sidecar --check`, not at the first SIGHUP. */
static void check_path(sc_cx *c, const sc_ynode *at, const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            sc_config_err(c, at, "access_log.path", "%s is a directory; name a file in it", path);
        return;
    }
    char *dir = sc_xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = 0;
    else if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    if (stat(dir, &st) < 0)
        sc_config_err(c, at, "access_log.path", "the directory %s does not exist (%s)", dir, strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        sc_config_err(c, at, "access_log.path", "%s is not a directory", dir);
    free(dir);
}

void sc_config_parse_access_log(sc_cx *c, const sc_ynode *m, sc_access_log_config *a)
{
    static const char *const keys[] = {"destination", "path", "select", "slow_threshold", "sample_ratio",
                                       "buffer", "flush_interval"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    if (!FIELDS(c, m, "access_log", keys, f))
        return;
    a->enabled = true;
    int dest = (int)a->destination;
    bool dest_ok = sc_config_rd_enum(c, f[0], "access_log.destination", dest_names, SC_ARRAY_LEN(dest_names), &dest);
    a->destination = (sc_access_log_dest)dest;
    if (f[1] && sc_config_rd_path(c, f[1], "access_log.path", &a->path)) {
        if (dest_ok && a->destination != SC_ACCESS_LOG_FILE)
            sc_config_err(c, f[1], "access_log.path", "a path is used only with destination: file (destination is %s)",
                          dest_names[a->destination]);
        else
            check_path(c, f[1], a->path);
    }
    if (dest_ok && a->destination == SC_ACCESS_LOG_FILE && !f[1])
        sc_config_err(c, f[0], "access_log.path", "destination: file needs a path");
    bool sel_ok = !f[2] || parse_select(c, f[2], &a->select);
    if (sc_config_rd_dur(c, f[3], "access_log.slow_threshold", 1, &a->slow_ms) && f[3] && sel_ok &&
        !(a->select & SC_ACCESS_SELECT_SLOW))
        sc_config_err(c, f[3], "access_log.slow_threshold", "only used with select: slow (add slow to select)");
    if (sel_ok && (a->select & SC_ACCESS_SELECT_SLOW) && !f[3])
        sc_config_err(c, f[2], "access_log.slow_threshold", "select: slow needs a slow_threshold, e.g. 500ms");
    if (f[4] && sc_config_rd_ratio(c, f[4], "access_log.sample_ratio", &a->sample_ratio)) {
        if (a->sample_ratio <= 0)
            sc_config_err(c, f[4], "access_log.sample_ratio",
                          "0 logs nothing; use a ratio above 0 (0.01 = one request in 100)");
        else if (sel_ok && !(a->select & SC_ACCESS_SELECT_SAMPLE))
            sc_config_err(c, f[4], "access_log.sample_ratio", "only used with select: sample (add sample to select)");
    }
    if (sel_ok && (a->select & SC_ACCESS_SELECT_SAMPLE) && !f[4])
        sc_config_err(c, f[2], "access_log.sample_ratio", "select: sample needs a sample_ratio, e.g. 0.01");
    sc_config_rd_size(c, f[5], "access_log.buffer", 64u << 10, 256u << 20, &a->buffer_bytes);
    if (sc_config_rd_dur(c, f[6], "access_log.flush_interval", 10, &a->flush_interval_ms) &&
        a->flush_interval_ms > 10000)
        sc_config_err(c, f[6], "access_log.flush_interval", "longer than 10s; lines would wait that long");
}

struct json_t *sc_config_access_log_json(const sc_access_log_config *a)
{
    if (!a->enabled)
        return json_null();
    json_t *o = json_object();
    json_object_set_new(o, "destination", json_string(dest_names[a->destination]));
    json_object_set_new(o, "path", a->path ? json_string(a->path) : json_null());
    json_t *sel = json_array();
    for (size_t i = 0; i < SC_ARRAY_LEN(select_names); i++)
        if (a->select & select_names[i].bit)
            json_array_append_new(sel, json_string(select_names[i].name));
    json_object_set_new(o, "select", sel);
    char b[64];
    if (a->select & SC_ACCESS_SELECT_SLOW) {
        sc_duration_format(a->slow_ms, b, sizeof(b));
        json_object_set_new(o, "slow_threshold", json_string(b));
    }
    if (a->select & SC_ACCESS_SELECT_SAMPLE)
        json_object_set_new(o, "sample_ratio", json_real(a->sample_ratio));
    json_object_set_new(o, "buffer", json_integer((json_int_t)a->buffer_bytes));
    sc_duration_format(a->flush_interval_ms, b, sizeof(b));
    json_object_set_new(o, "flush_interval", json_string(b));
    return o;
}
