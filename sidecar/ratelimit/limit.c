/*
 * limit.c: a route's rate limits at run time (limit.h).
 */
#include "ratelimit/limit.h"
#include "core/prom.h"

#include <jansson.h>
#include <stdlib.h>

static const char *const result_names[SC_RL_N_RESULTS] = {"allowed", "refused", "error_allowed",
                                                          "error_refused"};

const char *sc_rl_result_name(sc_rl_result r)
{
    return (unsigned)r < SC_RL_N_RESULTS ? result_names[r] : "?";
}

int sc_rl_set_init(sc_rl_set *s, const sc_rate_limit *cfg, size_t n, const char *route,
                   const char *redis_prefix)
{
    memset(s, 0, sizeof(*s));
    s->route = route;
    if (n == 0)
        return 0;
    s->v = calloc(n, sizeof(*s->v));
    if (!s->v)
        return -ENOMEM;
    s->n = n;
    for (size_t i = 0; i < n; i++) {
        sc_rl_limit *l = &s->v[i];
        const sc_rate_limit *c = &cfg[i];
        l->cfg = c;
        l->route = route;
        sc_rl_gcra_init(&l->gcra, c->count, c->period_ms, c->burst);
        l->single = c->n_key == 1 && c->key[0].kind == SC_RL_KEY_ROUTE;
        if (c->global) {
            s->n_global++;
            const char *pfx = redis_prefix ? redis_prefix : "";
            size_t len = strlen(pfx) + strlen(route) + strlen(c->name) + 3;
            l->redis_prefix = malloc(len);
            if (!l->redis_prefix) {
                sc_rl_set_clear(s);
                return -ENOMEM;
            }
            l->redis_prefix_len = (size_t)snprintf(l->redis_prefix, len, "%s%s:%s:", pfx, route,
                                                   c->name);
        } else if (!l->single) {
            l->table = sc_rl_table_new(c->max_keys);
            if (!l->table) {
                sc_rl_set_clear(s);
                return -ENOMEM;
            }
        }
    }
    return 0;
}

void sc_rl_set_clear(sc_rl_set *s)
{
    for (size_t i = 0; i < s->n && s->v; i++) {
        sc_rl_table_free(s->v[i].table);
        free(s->v[i].redis_prefix);
    }
    free(s->v);
    memset(s, 0, sizeof(*s));
}

void sc_rl_limit_count(sc_rl_limit *l, sc_rl_result r)
{
    atomic_fetch_add_explicit(&l->decisions[r], 1, memory_order_relaxed);
}

void sc_rl_limit_take_local(sc_rl_limit *l, const char *key, size_t klen, uint64_t now_ns,
                            sc_rl_decision *d)
{
    d->limit = l;
    if (l->single) {
        sc_rl_cell_take(&l->cell, &l->gcra, now_ns, &d->out);
    } else if (sc_rl_table_take(l->table, &l->gcra, key, klen, now_ns, &d->out) < 0) {
        /* No memory for a new key: admitted, and counted apart. */
        atomic_fetch_add_explicit(&l->untracked, 1, memory_order_relaxed);
    }
    d->result = d->out.allowed ? SC_RL_ALLOWED : SC_RL_REFUSED;
    sc_rl_limit_count(l, d->result);
}

sc_rl_result sc_rl_set_check_local(sc_rl_set *s, sc_rl_request *r, uint64_t now_ns,
                                   sc_rl_decision *d, sc_rl_todo *todo, size_t *n_todo,
                                   char (*keys)[SC_RL_KEY_MAX])
{
    *n_todo = 0;
    memset(d, 0, sizeof(*d));
    d->result = SC_RL_ALLOWED;
    char local[SC_RL_KEY_MAX];
    for (size_t i = 0; i < s->n; i++) {
        sc_rl_limit *l = &s->v[i];
        char *key = l->cfg->global ? keys[*n_todo] : local;
        size_t klen = 0;
        if (sc_rl_descriptor(l->cfg, r, key, &klen) == 0) {
            atomic_fetch_add_explicit(&l->skipped, 1, memory_order_relaxed);
            continue;
        }
        if (l->cfg->global) {
            todo[*n_todo] = (sc_rl_todo){.limit = i, .klen = klen, .key = key};
            (*n_todo)++;
            continue;
        }
        sc_rl_limit_take_local(l, key, klen, now_ns, d);
        if (d->result == SC_RL_REFUSED)
            return SC_RL_REFUSED;
    }
    return SC_RL_ALLOWED;
}

/* ---- admin ---- */

static void labels(FILE *f, const char *name, const sc_rl_limit *l)
{
    fprintf(f, "%s{route=\"%s\",limit=\"%s\",scope=\"%s\"", name, l->route, l->cfg->name,
            l->cfg->global ? "global" : "local");
}

void sc_rl_render_prom(FILE *f, const sc_rl_set *const *sets, size_t n_sets, uint64_t now_ns)
{
    SC_UNUSED(now_ns);
    size_t total = 0, tables = 0;
    for (size_t i = 0; i < n_sets; i++)
        for (size_t j = 0; j < sets[i]->n; j++) {
            total++;
            tables += sets[i]->v[j].table != NULL;
        }
    if (!total)
        return;
    sc_prom_head(f, "sidecar_rate_limit_decisions_total", "counter",
                 "Rate-limit decisions by route, limit and outcome (error_*: Redis could not "
                 "decide and on_error did)");
    for (size_t i = 0; i < n_sets; i++)
        for (size_t j = 0; j < sets[i]->n; j++) {
            const sc_rl_limit *l = &sets[i]->v[j];
            for (int r = 0; r < SC_RL_N_RESULTS; r++) {
                if (!l->cfg->global && (r == SC_RL_ERROR_ALLOWED || r == SC_RL_ERROR_REFUSED))
                    continue;
                labels(f, "sidecar_rate_limit_decisions_total", l);
                fprintf(f, ",outcome=\"%s\"} %llu\n", result_names[r],
                        (unsigned long long)atomic_load(&l->decisions[r]));
            }
        }
    sc_prom_head(f, "sidecar_rate_limit_skipped_total", "counter",
                 "Requests a limit did not apply to (match not met, or a missing key part with "
                 "missing: skip)");
    for (size_t i = 0; i < n_sets; i++)
        for (size_t j = 0; j < sets[i]->n; j++) {
            const sc_rl_limit *l = &sets[i]->v[j];
            labels(f, "sidecar_rate_limit_skipped_total", l);
            fprintf(f, "} %llu\n", (unsigned long long)atomic_load(&l->skipped));
        }
    if (!tables)
        return;
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"sidecar_rate_limit_keys", "gauge", "Keys held in a local limit's table (at most max_keys)"},
        {"sidecar_rate_limit_evictions_total", "counter",
         "Keys dropped from a full local table to make room for a new one"},
        {"sidecar_rate_limit_evictions_active_total", "counter",
         "Evicted keys whose bucket was not yet full again (they come back with a fresh burst; "
         "raise max_keys when this grows)"},
        {"sidecar_rate_limit_untracked_total", "counter",
         "Requests admitted because no memory was left to track their new key"},
    };
    for (size_t k = 0; k < SC_ARRAY_LEN(fam); k++) {
        sc_prom_head(f, fam[k].name, fam[k].type, fam[k].help);
        for (size_t i = 0; i < n_sets; i++)
            for (size_t j = 0; j < sets[i]->n; j++) {
                const sc_rl_limit *l = &sets[i]->v[j];
                if (!l->table)
                    continue;
                sc_rl_table_view v;
                sc_rl_table_snapshot(l->table, &v);
                uint64_t val = k == 0   ? v.keys
                               : k == 1 ? v.evictions
                               : k == 2 ? v.evictions_active
                                        : atomic_load(&l->untracked);
                labels(f, fam[k].name, l);
                fprintf(f, "} %llu\n", (unsigned long long)val);
            }
    }
}

json_t *sc_rl_set_json(const sc_rl_set *s, uint64_t now_ns, size_t top_n)
{
    json_t *a = json_array();
    sc_rl_busy_key *busy = top_n ? calloc(top_n, sizeof(*busy)) : NULL;
    for (size_t i = 0; i < s->n; i++) {
        const sc_rl_limit *l = &s->v[i];
        json_t *o = json_object();
        char rate[64], per[48];
        sc_duration_format(l->cfg->period_ms, per, sizeof(per));
        snprintf(rate, sizeof(rate), "%llu/%s", (unsigned long long)l->cfg->count, per);
        json_object_set_new(o, "name", json_string(l->cfg->name));
        json_object_set_new(o, "scope", json_string(l->cfg->global ? "global" : "local"));
        json_object_set_new(o, "rate", json_string(rate));
        json_object_set_new(o, "burst", json_integer((json_int_t)l->cfg->burst));
        json_t *dec = json_object();
        for (int r = 0; r < SC_RL_N_RESULTS; r++)
            json_object_set_new(dec, result_names[r],
                                json_integer((json_int_t)atomic_load(&l->decisions[r])));
        json_object_set_new(o, "decisions", dec);
        json_object_set_new(o, "skipped", json_integer((json_int_t)atomic_load(&l->skipped)));
        if (l->single && !l->cfg->global) {
            uint64_t tat = atomic_load(&((sc_rl_limit *)l)->cell.tat);
            sc_rl_outcome out;
            sc_rl_gcra_step(&l->gcra, tat, now_ns, &out);
            json_object_set_new(o, "available", json_integer(out.allowed ? (json_int_t)out.remaining + 1 : 0));
        }
        if (l->table) {
            sc_rl_table_view v;
            sc_rl_table_snapshot(l->table, &v);
            json_object_set_new(o, "keys", json_integer((json_int_t)v.keys));
            json_object_set_new(o, "max_keys", json_integer((json_int_t)v.max_keys));
            json_object_set_new(o, "evictions", json_integer((json_int_t)v.evictions));
            json_object_set_new(o, "evictions_active", json_integer((json_int_t)v.evictions_active));
            json_object_set_new(o, "untracked", json_integer((json_int_t)atomic_load(&l->untracked)));
            json_t *bk = json_array();
            size_t nb = busy ? sc_rl_table_busiest(l->table, now_ns, &l->gcra, busy, top_n) : 0;
            for (size_t k = 0; k < nb; k++) {
                char disp[3 * SC_RL_KEY_MAX + 8];
                sc_rl_key_display(busy[k].key, busy[k].klen, disp, sizeof(disp));
                json_array_append_new(
                    bk, json_pack("{s:s, s:I, s:I, s:I, s:I}", "key", disp, "recent",
                                  (json_int_t)busy[k].recent, "admitted",
                                  (json_int_t)busy[k].admitted, "refused",
                                  (json_int_t)busy[k].refused, "ms_until_full",
                                  (json_int_t)(busy[k].full_ns / 1000000)));
            }
            json_object_set_new(o, "busiest", bk);
        }
        json_array_append_new(a, o);
    }
    free(busy);
    return a;
}
