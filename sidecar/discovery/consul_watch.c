/*
 * consul_watch.c: the health watches of the Consul agent client (see
 * consul.h) and its cache file. One blocking query loop per upstream with
 * `discovery: consul`, paced by a token bucket; an answer that differs from
 * the instances in use is published through the route. On errors the last
 * known instances stay in use, marked stale, or (first query failing after
 * a restart) those saved in consul.cache_file are used. The cache file is
 * written atomically, coalesced, and at stop.
 */
#include "discovery/consul_internal.h"

#include "core/log.h"
#include "core/prom.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CACHE_WRITE_DELAY_S 2.0        /* coalesce cache file writes */

/* ---- cache file ---- */

/* fsync of the directory holding path, so the rename survives a crash;
 * best effort (some file systems refuse it). */
static void sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[PATH_MAX];
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else if ((size_t)(slash - path) < sizeof(dir))
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    else
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

int sc_consul_cache_save(const char *path, const char *doc, size_t len, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        snprintf(err, errlen, "%s: the path is too long", path);
        return -ENAMETOOLONG;
    }
    struct stat st;
    if (lstat(tmp, &st) == 0) {
        if (S_ISLNK(st.st_mode)) {
            snprintf(err, errlen,
                     "%s is a symbolic link, which would redirect the write elsewhere; not "
                     "writing (remove it if it is meant to be there)",
                     tmp);
            return -ELOOP;
        }
        if (!S_ISREG(st.st_mode)) {
            snprintf(err, errlen, "%s exists and is not a regular file; not writing", tmp);
            return -EEXIST;
        }
        /* Left by an interrupted write: remove it, then create anew below. */
        if (unlink(tmp) < 0 && errno != ENOENT) {
            int e = errno;
            snprintf(err, errlen, "cannot remove the stale %s: %s", tmp, strerror(e));
            return -e;
        }
    } else if (errno != ENOENT) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", tmp, strerror(e));
        return -e;
    }
    /* O_EXCL: a file or symlink that appears at tmp in the meantime makes
     * this fail instead of being written through (O_NOFOLLOW as well). */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot create %s: %s%s", tmp, strerror(e),
                 e == EEXIST ? " (it appeared while the stale one was removed: another writer?)" : "");
        return -e;
    }
    size_t off = 0;
    int e = 0;
    while (off < len) {
        ssize_t n = write(fd, doc + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            e = n < 0 ? errno : EIO;
            break;
        }
        off += (size_t)n;
    }
    if (!e && fsync(fd) < 0)
        e = errno;
    if (close(fd) < 0 && !e)
        e = errno;
    if (!e && rename(tmp, path) < 0)
        e = errno;
    if (e) {
        unlink(tmp);
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    sync_parent_dir(path);
    return 0;
}

static void cache_write(sc_consul *c)
{
    const char *path = c->cfg->consul.cache_file;
    if (!path || !c->cache_dirty)
        return;
    c->cache_dirty = false;
    sc_consul_cache_entry *ents = calloc(c->n_watches ? c->n_watches : 1, sizeof(*ents));
    if (!ents)
        return;
    size_t n = 0;
    for (size_t i = 0; i < c->n_watches; i++) {
        watch *w = &c->watches[i];
        if (!w->have_data)
            continue;
        ents[n++] = (sc_consul_cache_entry){
            .upstream = w->route->name, .service = w->service, .tag = w->tag, .dc = w->dc,
            .endpoints = sc_endpoints_current(&w->route->endpoints),
            .saved_unix = w->from_cache ? w->saved_unix : w->last_success_unix};
    }
    char *doc = sc_consul_cache_dump(ents, n);
    free(ents);
    if (!doc)
        return;
    char why[600];
    if (sc_consul_cache_save(path, doc, strlen(doc), why, sizeof(why)) == 0)
        SC_DEBUG("consul: saved the last known instances to %s", path);
    else
        SC_WARN("consul: cannot write the cache file: %s", why);
    free(doc);
}

static void cache_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    cache_write(SC_CONTAINER_OF(t, sc_consul, cache_timer));
}

static void cache_touch(sc_consul *c)
{
    if (!c->cfg->consul.cache_file)
        return;
    c->cache_dirty = true;
    if (!ev_is_active(&c->cache_timer)) {
        ev_timer_set(&c->cache_timer, CACHE_WRITE_DELAY_S, 0);
        ev_timer_start(c->loop, &c->cache_timer);
    }
}

static void cache_load(sc_consul *c)
{
    const char *path = c->cfg->consul.cache_file;
    if (!path)
        return;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno != ENOENT)
            SC_WARN("consul: cannot read the cache file %s: %s", path, strerror(errno));
        return;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            if (cap >= BODY_LIMIT)
                break;
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                break;
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    fclose(f);
    if (!buf)
        return;
    buf[len] = 0;
    c->cache_doc = buf;
    c->cache_len = len;
}

/* ---- watches ---- */

static void watch_start(watch *w);

static void publish(watch *w, sc_endpoints *snap)
{
    /* Through the route: instances get their shared state (outlier ejection,
     * in-flight counts for least_request) and leavers give back their slot. */
    sc_route_publish(w->route, snap);
}

static void watch_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    watch_start(SC_CONTAINER_OF(t, watch, timer));
}

static void watch_fail(watch *w, const creq *r, const char *err)
{
    sc_consul *c = w->c;
    w->errors_total++;
    w->failures++;
    /* the next answer must come at once (no index: no blocking) so that the
     * stale flag clears as soon as the agent is back */
    w->index = 0;
    bool same = strcmp(err, w->last_error) == 0;
    snprintf(w->last_error, sizeof(w->last_error), "%s", err);
    w->last_error_unix = (int64_t)time(NULL);
    const sc_endpoints *cur = sc_endpoints_current(&w->route->endpoints);
    const char *what = "keeping";
    if (w->have_data) {
        if (cur && !cur->stale) {
            sc_endpoints *s = sc_consul_endpoints_copy(cur, true);
            if (s)
                publish(w, s);
        }
    } else if (c->cache_doc) {
        sc_endpoints *s = NULL;
        int64_t saved = 0;
        if (sc_consul_cache_find(c->cache_doc, c->cache_len, w->route->name, w->service, w->tag,
                                 w->dc, &s, &saved) == 0) {
            char t[32];
            sc_consul_iso_time(saved, t, sizeof(t));
            SC_WARN("upstream %s: Consul is unreachable; using %zu instance(s) from the cache file "
                    "%s (saved %s)", w->route->name, s->n, c->cfg->consul.cache_file, t);
            publish(w, s);
            w->have_data = w->from_cache = true;
            w->saved_unix = saved;
            what = "using";
        }
    }
    cur = sc_endpoints_current(&w->route->endpoints);
    uint64_t ms = sc_consul_backoff(c, w->failures);
    if ((w->failures == 1 || !same) && !w->have_data)
        SC_WARN("upstream %s: watching Consul service '%s' failed: %s%s; no instances known yet "
                "(requests get 'no healthy instance'), retrying in %llums", w->route->name,
                w->service, err, r ? sc_consul_req_hint(r) : "", (unsigned long long)ms);
    else if (w->failures == 1 || !same)
        SC_WARN("upstream %s: watching Consul service '%s' failed: %s%s; %s %zu last known "
                "instance(s) (stale), retrying in %llums", w->route->name, w->service, err,
                r ? sc_consul_req_hint(r) : "", what, cur ? cur->n : 0, (unsigned long long)ms);
    else
        SC_DEBUG("upstream %s: watch failed again (%u in a row): %s", w->route->name, w->failures,
                 err);
    sc_consul_timer_again(c, &w->timer, ms);
}

static void log_change(const watch *w, const sc_endpoints *old, const sc_endpoints *nw)
{
    size_t added = 0, removed = 0;
    for (size_t i = 0; i < nw->n; i++) {
        bool found = false;
        for (size_t k = 0; old && k < old->n && !found; k++)
            found = strcmp(nw->inst[i].addr.text, old->inst[k].addr.text) == 0;
        added += !found;
    }
    for (size_t k = 0; old && k < old->n; k++) {
        bool found = false;
        for (size_t i = 0; i < nw->n && !found; i++)
            found = strcmp(nw->inst[i].addr.text, old->inst[k].addr.text) == 0;
        removed += !found;
    }
    SC_INFO("upstream %s: Consul service '%s' has %zu healthy instance(s) (+%zu -%zu, index %llu)",
            w->route->name, w->service, nw->n, added, removed,
            (unsigned long long)w->last_index);
}

static void watch_done(creq *r)
{
    watch *w = r->owner;
    sc_consul *c = w->c;
    w->req = NULL;
    char err[300];
    sc_consul_req_error(r, err, sizeof(err));
    if (!err[0] && !r->has_index)
        snprintf(err, sizeof(err), "the answer has %s X-Consul-Index header",
                 r->bad_index ? "an invalid" : "no");
    sc_endpoints *snap = NULL;
    sc_consul_parse_stats st;
    if (!err[0]) {
        char perr[200];
        int rc = sc_consul_parse_health(r->body, r->len, NULL, &snap, &st, perr, sizeof(perr));
        if (rc < 0)
            snprintf(err, sizeof(err), "%s", rc == -ENOMEM ? "out of memory" : perr);
    }
    if (err[0]) {
        watch_fail(w, r, err);
        return;
    }
    w->answers_total++;
    if (w->failures)
        SC_INFO("upstream %s: the Consul watch works again after %u failure(s)", w->route->name,
                w->failures);
    w->failures = 0;
    w->last_index = r->index;
    w->index = sc_consul_index_next(w->sent_index, r->index);
    if (w->index == 0)
        SC_INFO("upstream %s: the Consul index went backwards (%llu after %llu): fetching again",
                w->route->name, (unsigned long long)r->index, (unsigned long long)w->sent_index);
    w->last_success_unix = (int64_t)time(NULL);
    if (st.skipped && (st.skipped != w->skipped || strcmp(st.first_skip, w->skip_reason) != 0))
        SC_WARN("upstream %s: %zu of %zu Consul entries unusable; first: %s", w->route->name,
                st.skipped, st.entries, st.first_skip);
    w->skipped = st.skipped;
    snprintf(w->skip_reason, sizeof(w->skip_reason), "%s", st.first_skip);
    const sc_endpoints *cur = sc_endpoints_current(&w->route->endpoints);
    bool changed = !w->have_data || w->from_cache || !cur || !sc_consul_endpoints_same(cur, snap);
    if (changed || (cur && cur->stale)) {
        if (changed) {
            log_change(w, w->have_data ? cur : NULL, snap);
            w->changes_total++;
            w->last_change_unix = w->last_success_unix;
        }
        publish(w, snap);
    } else {
        free(snap);
    }
    w->have_data = true;
    w->from_cache = false;
    cache_touch(c);
    uint64_t wait = sc_consul_bucket_take(&w->bucket, sc_now_ms());
    if (wait)
        sc_consul_timer_again(c, &w->timer, wait);
    else
        watch_start(w);
}

static void watch_start(watch *w)
{
    sc_consul *c = w->c;
    if (w->req)
        return;
    char path[2600];
    w->sent_index = w->index;
    int n = sc_consul_health_path(path, sizeof(path), w->service, w->tag, w->dc, w->index,
                                  c->cfg->consul.wait_ms);
    if (n < 0) {
        watch_fail(w, NULL, "the query is too long");
        return;
    }
    uint64_t timeout = w->index ? sc_consul_read_timeout_ms(c->cfg->consul.wait_ms)
                                : WRITE_TIMEOUT_MS;
    w->req = sc_consul_req_start(c, "GET", path, true, NULL, timeout, watch_done, w);
    if (!w->req)
        watch_fail(w, NULL, "cannot start a request (out of memory?)");
}


static watch *watch_setup(sc_consul *c, size_t r)
{
    const sc_policy *p = c->sc->routes[r].policy;
    watch *w = &c->watches[c->n_watches++];
    w->c = c;
    w->route_index = r;
    w->route = &c->sc->routes[r];
    w->service = p->consul.service ? p->consul.service : p->name;
    w->tag = p->consul.tag;
    w->dc = p->consul.dc ? p->consul.dc : c->cfg->consul.datacenter;
    sc_consul_bucket_init(&w->bucket, BUCKET_BURST, BUCKET_PER_S, sc_now_ms());
    ev_init(&w->timer, watch_timer_cb);
    c->by_route[r] = w;
    return w;
}

int sc_consul_watch_init(sc_consul *c)
{
    sidecar *sc = c->sc;
    ev_init(&c->cache_timer, cache_timer_cb);
    /* every slot a reload may fill */
    size_t slots = sc->routes_cap > sc->n_routes ? sc->routes_cap : sc->n_routes;
    c->by_route = calloc(slots ? slots : 1, sizeof(*c->by_route));
    size_t nw = 0;
    for (size_t r = 0; r < sc->n_routes; r++)
        if (sc->routes[r].policy && sc->routes[r].policy->discovery == SC_DISCOVERY_CONSUL)
            nw++;
    c->watches_cap = nw + (slots - sc->n_routes);
    c->watches = calloc(c->watches_cap ? c->watches_cap : 1, sizeof(*c->watches));
    if (!c->by_route || !c->watches)
        return -ENOMEM;
    /* one connection per blocking query, plus a few for writes */
    sc_consul_http_max_connects(c, (long)(nw + 10));
    cache_load(c);
    for (size_t r = 0; r < sc->n_routes; r++) {
        const sc_policy *p = sc->routes[r].policy;
        if (p && p->discovery == SC_DISCOVERY_CONSUL)
            watch_setup(c, r);
    }
    return 0;
}

int sc_consul_watch_route(sc_consul *c, size_t route_index)
{
    if (!c || c->n_watches >= c->watches_cap || c->by_route[route_index])
        return -ENOSPC;
    watch *w = watch_setup(c, route_index);
    const char **f[3] = {&w->service, &w->tag, &w->dc};
    for (int i = 0; i < 3; i++)
        if (*f[i])
            *f[i] = w->owned[i] = sc_xstrdup(*f[i]);
    sc_consul_http_max_connects(c, (long)(c->n_watches + 10));
    watch_start(w);
    return 0;
}

void sc_consul_watch_start_all(sc_consul *c)
{
    for (size_t i = 0; i < c->n_watches; i++)
        watch_start(&c->watches[i]);
}

void sc_consul_watch_retry_now(sc_consul *c)
{
    for (size_t i = 0; i < c->n_watches; i++) {
        watch *w = &c->watches[i];
        if (w->failures && !w->req)
            sc_consul_timer_again(c, &w->timer, 0);
    }
}

void sc_consul_watch_stop(sc_consul *c)
{
    ev_timer_stop(c->loop, &c->cache_timer);
    for (size_t i = 0; i < c->n_watches; i++)
        ev_timer_stop(c->loop, &c->watches[i].timer);
    cache_write(c);
    for (size_t i = 0; i < c->n_watches; i++)
        for (int k = 0; k < 3; k++)
            free(c->watches[i].owned[k]);
    free(c->watches);
    free(c->by_route);
    free(c->cache_doc);
    c->watches = NULL;
    c->by_route = NULL;
    c->cache_doc = NULL;
    c->n_watches = 0;
}

json_t *sc_consul_route_json(const sc_consul *c, size_t route_index)
{
    if (!c || route_index >= c->sc->n_routes || !c->by_route[route_index])
        return NULL;
    const watch *w = c->by_route[route_index];
    const sc_endpoints *cur = sc_endpoints_current(&w->route->endpoints);
    json_t *o = json_object();
    json_object_set_new(o, "service", json_string(w->service));
    json_object_set_new(o, "tag", sc_consul_jstr(w->tag));
    json_object_set_new(o, "dc", sc_consul_jstr(w->dc));
    json_object_set_new(o, "stale", json_boolean(!cur || cur->stale));
    json_object_set_new(o, "from_cache", json_boolean(w->from_cache));
    json_object_set_new(o, "last_index", json_integer((json_int_t)w->last_index));
    json_object_set_new(o, "last_error", sc_consul_jstr(w->last_error));
    json_object_set_new(o, "last_error_at", sc_consul_jtime(w->last_error_unix));
    json_object_set_new(o, "last_update", sc_consul_jtime(w->last_change_unix));
    json_object_set_new(o, "last_success", sc_consul_jtime(w->last_success_unix));
    json_object_set_new(o, "failures_in_a_row", json_integer(w->failures));
    json_object_set_new(o, "errors_total", json_integer((json_int_t)w->errors_total));
    json_object_set_new(o, "changes_total", json_integer((json_int_t)w->changes_total));
    json_object_set_new(o, "skipped_entries", json_integer((json_int_t)w->skipped));
    json_object_set_new(o, "skip_reason", sc_consul_jstr(w->skip_reason));
    return o;
}


void sc_consul_watch_render_stats(const sc_consul *c, FILE *f)
{
    if (!c->n_watches)
        return;
    static const char *const heads[][3] = {
        {"sidecar_consul_watch_errors_total", "counter", "Failed watch queries."},
        {"sidecar_consul_watch_changes_total", "counter", "Instance set changes published."},
        {"sidecar_consul_watch_stale", "gauge", "1 when the instances are last known data (Consul unreachable or failing)."},
        {"sidecar_consul_watch_last_index", "gauge", "Last X-Consul-Index seen."},
        {"sidecar_consul_watch_last_success_timestamp_seconds", "gauge", "Unix time of the last good answer."},
    };
    for (size_t m = 0; m < SC_ARRAY_LEN(heads); m++) {
        sc_prom_head(f, heads[m][0], heads[m][1], heads[m][2]);
        for (size_t i = 0; i < c->n_watches; i++) {
            const watch *w = &c->watches[i];
            if (!sc_route_active(w->route))
                continue; /* removed by a reload: its watch goes on for a later addition */
            const sc_endpoints *cur = sc_endpoints_current(&w->route->endpoints);
            unsigned long long v = m == 0   ? w->errors_total
                                   : m == 1 ? w->changes_total
                                   : m == 2 ? (unsigned long long)(!cur || cur->stale)
                                   : m == 3 ? w->last_index
                                            : (unsigned long long)w->last_success_unix;
            fprintf(f, "%s{upstream=\"%s\",service=\"%s\"} %llu\n", heads[m][0], w->route->name,
                    w->service, v);
        }
    }
}

