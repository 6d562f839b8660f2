/*
 * ratelimit.c: the admission step of rate limits, the process's runtime
 * and each worker's part (ratelimit.h).
 */
#include "ratelimit/ratelimit.h"
#include "core/log.h"
#include "tls/tls.h"

#include <jansson.h>
#include <stdlib.h>

struct sc_rl_runtime {
    const sc_config *cfg;
    sc_rl_set inbound;
    sc_rl_set *upstreams;           /* one per cfg->policies entry */
    size_t n_upstreams;
    bool has_global;
    sc_tls_ctx *redis_tls;
    sc_rl_redis_stats stats;
};

struct sc_rl_worker {
    sc_rl_runtime *rt;
    sc_rl_redis *redis;             /* NULL without global limits */
};

/* One global limit's question in a parked request. */
typedef struct ask {
    sc_rl_limit *limit;
    sc_rl_redis_call call;
    sc_rl_decision d;
    bool done;
    size_t klen;
    char key[SC_RL_KEY_MAX];
} ask;

struct sc_rl_admission {
    size_t n, pending;
    sc_rl_resume_cb resume;
    void *arg;
    ask a[];
};

sc_rl_runtime *sc_rl_runtime_new(const sc_config *cfg, char *err, size_t errlen)
{
    sc_rl_runtime *rt = calloc(1, sizeof(*rt));
    if (!rt) {
        snprintf(err, errlen, "no memory for rate limits");
        return NULL;
    }
    rt->cfg = cfg;
    const char *pfx = cfg->redis.enabled ? cfg->redis.key_prefix : NULL;
    int rc = sc_rl_set_init(&rt->inbound, cfg->inbound.rate_limits, cfg->inbound.n_rate_limits,
                            "inbound", pfx);
    rt->upstreams = cfg->n_policies ? calloc(cfg->n_policies, sizeof(sc_rl_set)) : NULL;
    if (rc < 0 || (cfg->n_policies && !rt->upstreams)) {
        snprintf(err, errlen, "no memory for rate limits");
        sc_rl_runtime_free(rt);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_policies; i++) {
        const sc_policy *p = &cfg->policies[i];
        if (sc_rl_set_init(&rt->upstreams[i], p->rate_limits, p->n_rate_limits, p->name, pfx) < 0) {
            snprintf(err, errlen, "no memory for the rate limits of upstream %s", p->name);
            sc_rl_runtime_free(rt);
            return NULL;
        }
        rt->n_upstreams = i + 1;
        rt->has_global |= rt->upstreams[i].n_global > 0;
    }
    rt->has_global |= rt->inbound.n_global > 0;
    if (rt->has_global && cfg->redis.tls) {
        char e[512];
        rt->redis_tls = sc_tls_ctx_new_client(cfg->redis.tls_cert_file, cfg->redis.tls_key_file,
                                              cfg->redis.tls_ca_file, e, sizeof(e));
        if (!rt->redis_tls) {
            snprintf(err, errlen, "redis.tls: %s", e);
            sc_rl_runtime_free(rt);
            return NULL;
        }
    }
    return rt;
}

void sc_rl_runtime_free(sc_rl_runtime *rt)
{
    if (!rt)
        return;
    sc_rl_set_clear(&rt->inbound);
    for (size_t i = 0; i < rt->n_upstreams; i++)
        sc_rl_set_clear(&rt->upstreams[i]);
    free(rt->upstreams);
    sc_tls_ctx_unref(rt->redis_tls);
    free(rt);
}

sc_rl_set *sc_rl_runtime_inbound(sc_rl_runtime *rt)
{
    return &rt->inbound;
}

sc_rl_set *sc_rl_runtime_upstream(sc_rl_runtime *rt, size_t i)
{
    return i < rt->n_upstreams ? &rt->upstreams[i] : NULL;
}

bool sc_rl_runtime_has_global(const sc_rl_runtime *rt)
{
    return rt->has_global;
}

sc_rl_redis_stats *sc_rl_runtime_redis_stats(sc_rl_runtime *rt)
{
    return &rt->stats;
}

sc_rl_worker *sc_rl_worker_new(sc_rl_runtime *rt, struct ev_loop *loop)
{
    sc_rl_worker *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->rt = rt;
    if (rt->has_global) {
        const sc_config *c = rt->cfg;
        sc_rl_redis_opts o = {
            .address = &c->redis.address,
            .user = c->redis.user,
            .password = c->redis.password,
            .db = c->redis.db,
            .tls = rt->redis_tls,
            .tls_server_name = c->redis.tls_server_name,
            .connect_timeout_ms = c->redis.connect_timeout_ms,
        };
        w->redis = sc_rl_redis_new(loop, &o, &rt->stats);
        if (!w->redis) {
            free(w);
            return NULL;
        }
    }
    return w;
}

void sc_rl_worker_free(sc_rl_worker *w)
{
    if (!w)
        return;
    sc_rl_redis_free(w->redis);
    free(w);
}

/* ---- one request ---- */

static void on_error(ask *q)
{
    q->d.limit = q->limit;
    q->d.result = q->limit->cfg->on_error_deny ? SC_RL_ERROR_REFUSED : SC_RL_ERROR_ALLOWED;
    memset(&q->d.out, 0, sizeof(q->d.out));
    q->d.out.allowed = q->d.result == SC_RL_ERROR_ALLOWED;
    q->done = true;
    sc_rl_limit_count(q->limit, q->d.result);
}

/* The verdict once every question is answered: the first refusal in
 * configuration order, else the last answer (for RateLimit headers). */
static sc_rl_verdict verdict(const sc_rl_admission *adm, sc_rl_decision *d)
{
    for (size_t i = 0; i < adm->n; i++)
        if (!sc_rl_result_admits(adm->a[i].d.result)) {
            *d = adm->a[i].d;
            return SC_RL_DENY;
        }
    *d = adm->a[adm->n - 1].d;
    return SC_RL_GO;
}

static void on_answer(sc_rl_redis_call *call, const sc_rl_redis_answer *ans, void *arg)
{
    sc_rl_admission *adm = arg;
    ask *q = SC_CONTAINER_OF(call, ask, call);
    if (ans->ok) {
        q->d.limit = q->limit;
        q->d.out = ans->out;
        q->d.result = ans->out.allowed ? SC_RL_ALLOWED : SC_RL_REFUSED;
        q->done = true;
        sc_rl_limit_count(q->limit, q->d.result);
    } else {
        on_error(q);
    }
    if (--adm->pending)
        return;
    sc_rl_decision d;
    verdict(adm, &d);
    sc_rl_resume_cb resume = adm->resume;
    void *rarg = adm->arg;
    free(adm);
    resume(rarg, &d);
}

sc_rl_verdict sc_rl_admit(sc_rl_worker *w, sc_rl_set *s, sc_rl_request *r, uint64_t now_ns,
                          sc_rl_decision *d, sc_rl_admission **adm_out, sc_rl_resume_cb resume,
                          void *arg)
{
    *adm_out = NULL;
    if (s->n == 0) {
        memset(d, 0, sizeof(*d));
        return SC_RL_GO;
    }
    sc_rl_todo todo[SC_RL_MAX_LIMITS];
    size_t nt = 0;
    char keys[SC_RL_MAX_LIMITS][SC_RL_KEY_MAX];
    if (sc_rl_set_check_local(s, r, now_ns, d, todo, &nt, keys) == SC_RL_REFUSED)
        return SC_RL_DENY;
    if (nt == 0)
        return SC_RL_GO;

    sc_rl_admission *adm = malloc(sizeof(*adm) + nt * sizeof(ask));
    if (!adm) {
        /* No memory to wait: every global limit follows its on_error now. */
        ask q;
        sc_rl_verdict v = SC_RL_GO;
        for (size_t i = 0; i < nt; i++) {
            q.limit = &s->v[todo[i].limit];
            on_error(&q);
            if (v == SC_RL_GO && !sc_rl_result_admits(q.d.result)) {
                *d = q.d;
                v = SC_RL_DENY;
            }
        }
        if (v == SC_RL_GO)
            *d = q.d;
        return v;
    }
    adm->n = nt;
    adm->pending = 0;
    adm->resume = resume;
    adm->arg = arg;
    for (size_t i = 0; i < nt; i++) {
        ask *q = &adm->a[i];
        q->limit = &s->v[todo[i].limit];
        q->done = false;
        q->call.active = false;
        q->klen = todo[i].klen;
        memcpy(q->key, todo[i].key, todo[i].klen);
    }
    /* All questions leave together (one write, one round trip); those that
     * cannot be asked follow their on_error at once. */
    for (size_t i = 0; i < nt; i++) {
        ask *q = &adm->a[i];
        int rc = -ENOTCONN;
        if (w && w->redis)
            rc = sc_rl_redis_decide(w->redis, &q->call, &q->limit->gcra, q->limit->redis_prefix,
                                    q->limit->redis_prefix_len, q->key, q->klen,
                                    q->limit->cfg->timeout_ms, on_answer, adm);
        if (rc == 0)
            adm->pending++;
        else
            on_error(q);
    }
    if (adm->pending) {
        *adm_out = adm;
        return SC_RL_PARK;
    }
    sc_rl_verdict v = verdict(adm, d);
    free(adm);
    return v;
}

void sc_rl_admission_cancel(sc_rl_admission *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        sc_rl_redis_cancel(&a->a[i].call);
    free(a);
}

/* ---- admin ---- */

void sc_rl_runtime_render_prom(sc_rl_runtime *rt, FILE *f, uint64_t now_ns)
{
    const sc_rl_set **sets = malloc((1 + rt->n_upstreams) * sizeof(*sets));
    if (sets) {
        size_t n = 0;
        sets[n++] = &rt->inbound;
        for (size_t i = 0; i < rt->n_upstreams; i++)
            sets[n++] = &rt->upstreams[i];
        sc_rl_render_prom(f, sets, n, now_ns);
        free(sets);
    }
    if (rt->has_global)
        sc_rl_redis_render_prom(f, &rt->stats);
}

json_t *sc_rl_runtime_route_json(sc_rl_set *s, uint64_t now_ns)
{
    return sc_rl_set_json(s, now_ns, 10);
}
