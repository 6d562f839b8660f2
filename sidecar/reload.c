/*
 * reload.c: configuration reload on the control thread (reload.h): the
 * triggers (SIGHUP, POST /reload, the inotify watch), validation as
 * `--check` does it, the comparison with the configuration in use, what
 * applies live, the effective configuration and its hash, and the record of
 * the last attempt for /config and /stats.
 */
#include "reload.h"

#include "config/config_diff.h"
#include "core/log.h"
#include "discovery/consul.h"
#include "core/prom.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

/* The parts of an upstream's policy a new version of its route applies
 * live (route.h sc_route_update); a new listen address applies live too
 * (apply_routes). An upstream with a change in any other part (protocol,
 * discovery, tls, a field not named), an added upstream discovered through
 * Consul without consul: settings, and a change of the inbound listener
 * wait for a restart like the process-wide settings that do. So does a
 * change of rate_limits: the limits, their shared buckets and their Redis
 * keys are built once from the configuration the process started with. */
#define LIVE_PARTS                                                                                              \
    (SC_PART_TIMEOUTS | SC_PART_RETRIES | SC_PART_RETRY_BUDGET | SC_PART_BULKHEAD | SC_PART_BREAKER |             \
     SC_PART_FALLBACK | SC_PART_OUTLIER | SC_PART_LB)

/* A change that keeps coming (a file written in a loop) still reloads
 * after this many debounce periods. */
#define WATCH_MAX_DELAY_PERIODS 10

struct sc_reload {
    sidecar *sc;
    ev_signal sighup;
    sc_cfg_hold *loaded;            /* last valid configuration a reload loaded; NULL: sc->cfg
                                     * (shared with the route versions made from it) */
    json_t *effective;              /* what /config shows */
    json_t *needs_restart;          /* array of paths the file says and the process does not run */
    char hash[SC_CONFIG_HASH_LEN + 1];      /* of `effective` */
    char file_hash[SC_CONFIG_HASH_LEN + 1]; /* of the configuration last loaded */
    json_t *last;                   /* the last attempt, NULL before the first */
    uint64_t n_applied, n_unchanged, n_failed;
    uint64_t last_success_unix_ms;  /* last reload that loaded a valid configuration, 0 = none */
    /* the file watch (reload.watch) */
    int ino_fd;                     /* -1 when off */
    ev_io ino_io;
    ev_timer debounce;
    int wd_dir, wd_pol;             /* -1 when not watched */
    char *dir, *base;               /* sidecar.yaml's directory and file name */
    char *pol_dir;                  /* the policies directory watched, NULL = none */
    uint64_t first_event_ms;        /* of the changes the debounce timer waits on, 0 = none */
};

const char *sc_reload_outcome_name(sc_reload_outcome o)
{
    static const char *const names[] = {"applied", "unchanged", "failed"};
    return (unsigned)o < SC_ARRAY_LEN(names) ? names[o] : "?";
}

static const sc_config *current(const sc_reload *r)
{
    return r->loaded ? r->loaded->cfg : r->sc->cfg;
}

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static json_t *iso_time(uint64_t ms)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    char b[64];
    gmtime_r(&s, &tm);
    size_t n = strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(b + n, sizeof(b) - n, ".%03uZ", (unsigned)(ms % 1000));
    return json_string(b);
}

/* ---- the effective configuration ---- */

/* Sets path ("section" or "section.member") of `dst` to its value in `src`,
 * or removes it when src has none. */
static void copy_path(json_t *dst, const json_t *src, const char *path)
{
    const char *dot = strchr(path, '.');
    if (!dot) {
        json_t *v = json_object_get(src, path);
        if (v)
            json_object_set(dst, path, v);
        else
            json_object_del(dst, path);
        return;
    }
    char section[128];
    snprintf(section, sizeof(section), "%.*s", (int)(dot - path), path);
    json_t *ds = json_object_get(dst, section), *ss = json_object_get(src, section);
    if (!json_is_object(ds) || !json_is_object(ss)) {
        copy_path(dst, src, section);
        return;
    }
    copy_path(ds, ss, dot + 1);
}

static sc_route *running_route(sidecar *sc, const char *name)
{
    for (size_t i = 0; i < sc->n_routes; i++)
        if (!sc->routes[i].inbound && sc_route_active(&sc->routes[i]) && strcmp(sc->routes[i].name, name) == 0)
            return &sc->routes[i];
    return NULL;
}

static void add_pending(json_t *pending, const char *name)
{
    char path[200];
    snprintf(path, sizeof(path), "upstreams.%s", name);
    json_array_append_new(pending, json_string(path));
}

static bool listed(const json_t *ups, const char *name)
{
    size_t i;
    json_t *u;
    json_array_foreach(ups, i, u) {
        const char *n = json_string_value(json_object_get(u, "upstream"));
        if (n && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

/* e's upstreams become the policies the routes run: an upstream the
 * process does not run (added) goes, one it still runs (removed, or with a
 * change that did not apply) shows as it runs; each such is pending. */
static void running_upstreams(sidecar *sc, json_t *e, json_t *pending)
{
    json_t *ups = json_object_get(e, "upstreams"), *out = json_array();
    size_t i;
    json_t *u;
    json_array_foreach(ups, i, u) {
        const char *name = json_string_value(json_object_get(u, "upstream"));
        sc_route *rt = name ? running_route(sc, name) : NULL;
        if (!rt) {
            if (name)
                add_pending(pending, name);
            continue;
        }
        json_t *rj = sc_policy_to_json(rt->policy);
        if (!json_equal(rj, u))
            add_pending(pending, name);
        json_array_append_new(out, rj);
    }
    for (size_t k = 0; k < sc->n_routes; k++) {
        sc_route *rt = &sc->routes[k];
        if (rt->inbound || !sc_route_active(rt) || listed(ups, rt->name))
            continue;
        add_pending(pending, rt->name);
        json_array_append_new(out, sc_policy_to_json(rt->policy));
    }
    json_object_set_new(e, "upstreams", out);
}

/* Recomputes what the process runs: the configuration last loaded, with
 * every setting that needs a restart (and every route change that cannot
 * apply) as the process started with it. */
static int refresh(sc_reload *r)
{
    const sc_config *boot = r->sc->cfg;
    json_t *e = sc_config_to_json(current(r)), *pending = json_array();
    int rc = e && pending ? sc_config_hash_json(e, r->file_hash) : -ENOMEM;
    if (rc == 0 && r->loaded) {
        json_t *b = sc_config_to_json(boot);
        sc_config_diff d;
        rc = b ? sc_config_diff_build(boot, r->loaded->cfg, &d) : -ENOMEM;
        for (size_t i = 0; rc == 0 && i < d.n_settings; i++) {
            const sc_setting_diff *s = &d.settings[i];
            if (s->apply == SC_APPLY_RESTART) {
                copy_path(e, b, s->path);
                json_array_append_new(pending, json_string(s->path));
            }
        }
        for (size_t i = 0; rc == 0 && i < d.n_routes; i++) {
            const sc_route_diff *rd = &d.routes[i];
            if (!rd->inbound || rd->change == SC_ROUTE_UNCHANGED)
                continue;
            json_array_append_new(pending, json_string("inbound"));
            copy_path(e, b, "inbound");
        }
        if (rc == 0)
            running_upstreams(r->sc, e, pending);
        if (rc == 0)
            sc_config_diff_free(&d);
        json_decref(b);
    }
    if (rc == 0)
        rc = sc_config_hash_json(e, r->hash);
    if (rc < 0) {
        json_decref(e);
        json_decref(pending);
        return rc;
    }
    json_decref(r->effective);
    json_decref(r->needs_restart);
    r->effective = e;
    r->needs_restart = pending;
    return 0;
}

/* ---- the file watch ---- */

static void watch_off(sc_reload *r)
{
    if (r->ino_fd < 0)
        return;
    ev_io_stop(r->sc->loop, &r->ino_io);
    ev_timer_stop(r->sc->loop, &r->debounce);
    close(r->ino_fd); /* drops every watch */
    r->ino_fd = r->wd_dir = r->wd_pol = -1;
    free(r->pol_dir);
    r->pol_dir = NULL;
    r->first_event_ms = 0;
}

static bool is_policy_name(const char *n)
{
    size_t l = strlen(n);
    return n[0] != '.' && ((l > 5 && strcmp(n + l - 5, ".yaml") == 0) || (l > 4 && strcmp(n + l - 4, ".yml") == 0));
}

/* A name whose change may change the configuration: sidecar.yaml in its
 * directory, a policy file in the policies directory, and in either the
 * "..data" link of a Kubernetes ConfigMap volume (its files are symbolic
 * links through it, swapped at once on an update). */
static bool relevant(const sc_reload *r, const struct inotify_event *ev)
{
    if (ev->mask & IN_Q_OVERFLOW)
        return true;
    if (!ev->len)
        return (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) != 0;
    if (strncmp(ev->name, "..", 2) == 0)
        return true;
    return (ev->wd == r->wd_dir && strcmp(ev->name, r->base) == 0) ||
           (ev->wd == r->wd_pol && is_policy_name(ev->name));
}

static void watch_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    sc_reload *r = w->data;
    _Alignas(struct inotify_event) char buf[4096];
    bool any = false;
    for (;;) {
        ssize_t n = read(r->ino_fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            if (relevant(r, ev)) {
                any = true;
                SC_DEBUG("reload: watch: %s%s%s changed (mask %#x)", ev->wd == r->wd_pol ? r->pol_dir : r->dir,
                         ev->len ? "/" : "", ev->len ? ev->name : "", ev->mask);
            }
            if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
                /* the directory itself went: watched again at the next reload */
                if (ev->wd == r->wd_dir)
                    r->wd_dir = -1;
                if (ev->wd == r->wd_pol)
                    r->wd_pol = -1;
            }
            p += sizeof(struct inotify_event) + ev->len;
        }
    }
    if (!any)
        return;
    uint64_t now = sc_now_ms(), period = current(r)->reload.debounce_ms;
    if (!r->first_event_ms)
        r->first_event_ms = now;
    uint64_t waited = now - r->first_event_ms;
    double after = waited >= period * WATCH_MAX_DELAY_PERIODS ? 0.0 : (double)period / 1000.0;
    ev_timer_stop(loop, &r->debounce);
    ev_timer_set(&r->debounce, after, 0.0);
    ev_timer_start(loop, &r->debounce);
}

static void debounce_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_reload *r = t->data;
    r->first_event_ms = 0;
    sc_reload_run(r->sc, "watch");
}

static int add_dir_watch(sc_reload *r, const char *dir)
{
    uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MODIFY |
                    IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
    int wd = inotify_add_watch(r->ino_fd, dir, mask);
    if (wd < 0)
        SC_WARN("reload: cannot watch %s: %s; changes there are applied by SIGHUP or POST /reload", dir,
                strerror(errno));
    return wd;
}

/* Makes the watch match the configuration in use: on or off, and the
 * policies directory it names (sidecar.yaml's directory does not move). */
static void watch_update(sc_reload *r)
{
    const sc_config *cfg = current(r);
    if (!cfg->reload.watch || !r->sc->config_path) {
        if (r->ino_fd >= 0)
            SC_INFO("reload: no longer watching the configuration files");
        watch_off(r);
        return;
    }
    bool was_on = r->ino_fd >= 0;
    if (!was_on) {
        r->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (r->ino_fd < 0) {
            SC_WARN("reload: cannot watch the configuration files (inotify: %s); reload with SIGHUP or POST /reload",
                    strerror(errno));
            return;
        }
        ev_io_init(&r->ino_io, watch_read_cb, r->ino_fd, EV_READ);
        r->ino_io.data = r;
        ev_io_start(r->sc->loop, &r->ino_io);
    }
    bool pol_moved = (r->pol_dir == NULL) != (cfg->policies_dir == NULL) ||
                     (r->pol_dir && strcmp(r->pol_dir, cfg->policies_dir) != 0);
    if (pol_moved || r->wd_pol < 0) {
        /* the same directory as sidecar.yaml's shares its watch descriptor: keep that one */
        if (r->wd_pol >= 0 && r->wd_pol != r->wd_dir)
            inotify_rm_watch(r->ino_fd, r->wd_pol);
        r->wd_pol = -1;
        free(r->pol_dir);
        r->pol_dir = cfg->policies_dir ? sc_xstrdup(cfg->policies_dir) : NULL;
        if (r->pol_dir)
            r->wd_pol = add_dir_watch(r, r->pol_dir);
    }
    if (r->wd_dir < 0)
        r->wd_dir = add_dir_watch(r, r->dir);
    if (!was_on)
        SC_INFO("reload: watching %s%s%s (debounce %llums)", r->sc->config_path, r->pol_dir ? " and " : "",
                r->pol_dir ? r->pol_dir : "", (unsigned long long)cfg->reload.debounce_ms);
}

/* ---- applying ---- */

static const sc_policy *find_policy(const sc_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_policies; i++)
        if (strcmp(c->policies[i].name, name) == 0)
            return &c->policies[i];
    return NULL;
}

static bool same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* A removed route of this name and protocol, to take again: with static
 * discovery one that had static discovery; with Consul one the watch of
 * the same service, tag and datacenter still feeds (a watch is never
 * stopped). */
static sc_route *removed_route(sidecar *sc, const sc_policy *p)
{
    for (size_t i = 0; i < sc->n_routes; i++) {
        sc_route *rt = &sc->routes[i];
        if (rt->inbound || sc_route_active(rt) || rt->protocol != p->protocol || strcmp(rt->name, p->name) != 0)
            continue;
        const sc_policy *o = rt->policy;
        if (o->discovery != p->discovery)
            continue;
        if (p->discovery == SC_DISCOVERY_STATIC ||
            (same_str(o->consul.service, p->consul.service) && same_str(o->consul.tag, p->consul.tag) &&
             same_str(o->consul.dc, p->consul.dc)))
            return rt;
    }
    return NULL;
}

/* Listening sockets on p's address, one per worker, into *fds (freed by
 * the caller). false (logged) when the address cannot be bound. */
static bool bind_listeners(sc_reload *r, const sc_policy *p, bool probe, int **fds)
{
    char err[256];
    *fds = sc_xcalloc(r->sc->n_workers ? r->sc->n_workers : 1, sizeof(int));
    if (sc_workers_bind(r->sc, &p->listen, probe, *fds, err, sizeof(err)) == 0)
        return true;
    SC_ERROR("reload: upstream %s: %s; the change waits", p->name, err);
    free(*fds);
    *fds = NULL;
    return false;
}

/* An added upstream gets a route and its listeners: a removed route of the
 * same name and protocol again, or a free slot (with Consul discovery, a
 * watch of its own from now on). */
static bool add_route(sc_reload *r, sc_cfg_hold *nh, const sc_policy *p)
{
    sidecar *sc = r->sc;
    if (p->discovery != SC_DISCOVERY_STATIC && !sc->consul)
        return false;
    /* A route taken again on its old address: the workers may not have
     * closed its listeners yet (a removal just before); those are no
     * reason to refuse, and the handover replaces them. */
    sc_route *rt = removed_route(sc, p);
    const sc_addr *was = rt ? &rt->policy->listen : NULL;
    bool own = was && was->len == p->listen.len && memcmp(&was->ss, &p->listen.ss, was->len) == 0;
    int *fds;
    if (!bind_listeners(r, p, !own, &fds))
        return false;
    if (rt) {
        sc_route_update(rt, p, SC_PART_BREAKER | SC_PART_BULKHEAD | SC_PART_RETRY_BUDGET | SC_PART_OUTLIER, nh, sc);
        if (p->discovery == SC_DISCOVERY_STATIC)
            sc_sidecar_route_publish_static(rt, p); /* a Consul route keeps what its watch found */
        atomic_store(&rt->removed, false);
    } else if ((rt = sc_sidecar_route_prepare(sc, p, nh))) {
        atomic_store(&sc->n_routes, (size_t)rt->index + 1);
        int rc = p->discovery == SC_DISCOVERY_CONSUL ? sc_consul_watch_route(sc->consul, rt->index) : 0;
        if (rc < 0) /* not expected: there is a watch slot for every route slot */
            SC_ERROR("reload: upstream %s: cannot watch it in Consul: %s", p->name, strerror(-rc));
    } else {
        SC_ERROR("reload: upstream %s: no free route slot (%zu in use); it waits for a restart", p->name,
                 sc->routes_cap);
        for (unsigned i = 0; i < sc->n_workers; i++)
            close(fds[i]);
        free(fds);
        return false;
    }
    sc_workers_hand(sc, rt->index, fds);
    free(fds);
    SC_INFO("reload: upstream %s added, listening on %s", p->name, p->listen.text);
    return true;
}

/* Upstreams whose policy changed only in parts that apply live get a new
 * version of their route (the requests that start from now on run under
 * it); a new listen address is bound before the old one closes. Upstreams
 * added start, removed ones stop accepting and drain.
 * Compared with what the routes run (the effective configuration), not
 * with the file last loaded: a change that waited for a restart is not
 * taken for applied. */
static void apply_routes(sc_reload *r, sc_cfg_hold *nh, json_t *done)
{
    json_t *nj = sc_config_to_json(nh->cfg);
    sc_config_diff d;
    if (!nj || !r->effective || sc_config_diff_build_json(r->effective, nj, &d) < 0) {
        SC_WARN("reload: out of memory while comparing the upstreams; their policies stay");
        json_decref(nj);
        return;
    }
    for (size_t i = 0; i < d.n_routes; i++) {
        const sc_route_diff *rd = &d.routes[i];
        if (rd->inbound)
            continue;
        sc_route *rt = running_route(r->sc, rd->name);
        const sc_policy *p = find_policy(nh->cfg, rd->name);
        if (rd->change == SC_ROUTE_ADDED && p && !rt) {
            if (add_route(r, nh, p))
                add_pending(done, rd->name);
            continue;
        }
        if (rd->change == SC_ROUTE_REMOVED && rt) {
            atomic_store(&rt->removed, true);
            sc_workers_wake(r->sc, SC_WAKE_ROUTES);
            SC_INFO("reload: upstream %s removed: its listener closes, its connections drain", rd->name);
            add_pending(done, rd->name);
            continue;
        }
        if (rd->change != SC_ROUTE_CHANGED || (rd->parts & ~(uint32_t)(LIVE_PARTS | SC_PART_LISTEN)) || !rt ||
            !p)
            continue;
        int *fds = NULL;
        if ((rd->parts & SC_PART_LISTEN) && !bind_listeners(r, p, true, &fds))
            continue;
        sc_route_update(rt, p, rd->parts, nh, r->sc);
        if (fds) {
            sc_workers_hand(r->sc, rt->index, fds);
            free(fds);
            SC_INFO("reload: upstream %s now listens on %s", p->name, p->listen.text);
        }
        add_pending(done, rd->name);
    }
    sc_config_diff_free(&d);
    json_decref(nj);
}

/* The live settings that need an action (the others are read where they are
 * used), and the upstreams' policies. Returns the paths applied, as JSON. */
static json_t *apply_live(sc_reload *r, sc_cfg_hold *nh, const sc_config_diff *d)
{
    const sc_config *nc = nh->cfg;
    json_t *done = json_array();
    apply_routes(r, nh, done);
    for (size_t i = 0; i < d->n_settings; i++) {
        const sc_setting_diff *s = &d->settings[i];
        if (s->apply != SC_APPLY_LIVE)
            continue;
        if (strcmp(s->path, "log.level") == 0) {
            sc_log_set_level(nc->log_level);
            SC_INFO("reload: log level now %s", sc_log_level_name(nc->log_level));
        }
        json_array_append_new(done, json_string(s->path));
    }
    return done;
}

/* "upstream d added; c removed; a changed (timeouts, retries); settings log.level" */
static void describe(const sc_config_diff *d, char *out, size_t cap)
{
    FILE *f = fmemopen(out, cap, "w");
    if (!f) {
        snprintf(out, cap, "?");
        return;
    }
    const char *sep = "";
    for (size_t i = 0; i < d->n_routes; i++) {
        const sc_route_diff *rd = &d->routes[i];
        if (rd->change == SC_ROUTE_UNCHANGED)
            continue;
        fprintf(f, "%s%s%s %s", sep, rd->inbound ? "" : "upstream ", rd->name,
                rd->change == SC_ROUTE_ADDED ? "added" : rd->change == SC_ROUTE_REMOVED ? "removed" : "changed (");
        if (rd->change == SC_ROUTE_CHANGED) {
            const char *psep = "";
            for (unsigned b = 0; b < SC_PART_COUNT; b++)
                if (rd->parts & (1u << b)) {
                    fprintf(f, "%s%s", psep, sc_config_part_name(1u << b, rd->inbound));
                    psep = ", ";
                }
            fputc(')', f);
        }
        sep = "; ";
    }
    for (size_t i = 0; i < d->n_settings; i++) {
        fprintf(f, "%s%s", i ? ", " : sep[0] ? "; settings " : "settings ", d->settings[i].path);
        sep = "; ";
    }
    fputc(0, f);
    fclose(f);
    out[cap - 1] = 0;
}

/* Every problem of a failed load, one line each, into the log and `list`. */
static void report_problems(const sc_diags *dg, const char *trigger, json_t *list)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return;
    sc_diags_print(dg, f);
    fclose(f);
    for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        SC_ERROR("reload (%s): %s", trigger, line);
        json_array_append_new(list, json_string(line));
    }
    free(text);
}

sc_reload_outcome sc_reload_run(sidecar *sc, const char *trigger)
{
    sc_reload *r = sc->reload;
    if (!r)
        return SC_RELOAD_FAILED;
    uint64_t t0 = sc_now_ns(), when = unix_ms();
    json_t *att = json_pack("{s:s, s:o}", "trigger", trigger, "time", iso_time(when));
    json_t *problems = json_array(), *changes = json_null(), *live = json_array();
    sc_reload_outcome out = SC_RELOAD_FAILED;
    sc_diags dg = {0};
    sc_config *nc = NULL;
    if (!sc->config_path) {
        sc_diags_add(&dg, "<built-in example>", 0, "", "no --config file to reload: the sidecar runs the built-in example");
    } else if (atomic_load(&sc->draining)) {
        sc_diags_add(&dg, sc->config_path, 0, "", "the sidecar is draining: nothing changes any more");
    } else if (sc_config_load(sc->config_path, &nc, &dg) < 0 || !nc) {
        nc = NULL;
    }
    if (!nc) {
        report_problems(&dg, trigger, problems);
        SC_ERROR("reload (%s): the configuration is invalid (%zu problem%s); still running the one in use (hash %s)",
                 trigger, dg.n, dg.n == 1 ? "" : "s", r->hash);
        r->n_failed++;
    } else {
        sc_config_diff d;
        if (sc_config_diff_build(current(r), nc, &d) < 0) {
            sc_diags_add(&dg, sc->config_path, 0, "", "out of memory while comparing configurations");
            report_problems(&dg, trigger, problems);
            sc_config_free(nc);
            r->n_failed++;
        } else if (sc_config_diff_empty(&d)) {
            sc_config_diff_free(&d);
            sc_config_free(nc);
            out = SC_RELOAD_UNCHANGED;
            r->n_unchanged++;
            r->last_success_unix_ms = when;
            SC_INFO("reload (%s): the configuration is unchanged (hash %s)", trigger, r->hash);
        } else {
            sc_cfg_hold *nh = sc_cfg_hold_new(nc);
            json_decref(live);
            live = apply_live(r, nh, &d);
            json_decref(changes);
            changes = sc_config_diff_to_json(&d);
            char what[1024];
            describe(&d, what, sizeof(what));
            sc_config_diff_free(&d);
            sc_cfg_hold *old = r->loaded;
            r->loaded = nh;
            if (refresh(r) < 0)
                SC_WARN("reload (%s): out of memory while recomputing the effective configuration", trigger);
            sc_cfg_hold_put(old); /* freed with the last route version made from it */
            out = SC_RELOAD_APPLIED;
            r->n_applied++;
            r->last_success_unix_ms = when;
            size_t np = json_array_size(r->needs_restart);
            SC_INFO("reload (%s): applied in %.1fms, hash %s: %s", trigger, (double)(sc_now_ns() - t0) / 1e6,
                    r->hash, what);
            if (np) {
                char *list = json_dumps(r->needs_restart, JSON_COMPACT);
                SC_WARN("reload (%s): %zu change%s take%s effect only after a restart: %s", trigger, np,
                        np == 1 ? "" : "s", np == 1 ? "s" : "", list ? list : "?");
                free(list);
            }
        }
    }
    sc_diags_free(&dg);
    json_object_set_new(att, "duration_ms", json_real((double)(sc_now_ns() - t0) / 1e6));
    json_object_set_new(att, "outcome", json_string(sc_reload_outcome_name(out)));
    json_object_set_new(att, "problems", problems);
    json_object_set_new(att, "changes", changes);
    json_object_set_new(att, "applied_live", live);
    json_decref(r->last);
    r->last = att;
    watch_update(r);
    return out;
}

/* ---- SIGHUP, start and stop ---- */

static void sighup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    sidecar *sc = w->data;
    SC_INFO("reload: SIGHUP: loading %s", sc->config_path ? sc->config_path : "(built-in example)");
    sc_reload_run(sc, "SIGHUP");
}

int sc_reload_start(sidecar *sc)
{
    sc_reload *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->sc = sc;
    r->ino_fd = r->wd_dir = r->wd_pol = -1;
    if (sc->config_path) {
        char *slash = strrchr(sc->config_path, '/');
        r->dir = slash ? sc_xstrndup(sc->config_path, slash == sc->config_path ? 1 : (size_t)(slash - sc->config_path))
                       : sc_xstrdup(".");
        r->base = sc_xstrdup(slash ? slash + 1 : sc->config_path);
    }
    if (refresh(r) < 0) {
        free(r->dir);
        free(r->base);
        free(r);
        return -ENOMEM;
    }
    sc->reload = r;
    ev_signal_init(&r->sighup, sighup_cb, SIGHUP);
    r->sighup.data = sc;
    ev_signal_start(sc->loop, &r->sighup);
    ev_init(&r->debounce, debounce_cb);
    r->debounce.data = r;
    watch_update(r);
    return 0;
}

void sc_reload_stop(sidecar *sc)
{
    sc_reload *r = sc->reload;
    if (!r)
        return;
    ev_signal_stop(sc->loop, &r->sighup);
    watch_off(r);
    sc_cfg_hold_put(r->loaded);
    json_decref(r->effective);
    json_decref(r->needs_restart);
    json_decref(r->last);
    free(r->dir);
    free(r->base);
    free(r);
    sc->reload = NULL;
}

/* ---- what the admin endpoint shows ---- */

json_t *sc_reload_json(const sidecar *sc)
{
    const sc_reload *r = sc->reload;
    if (!r)
        return json_null();
    json_t *paths = json_array();
    if (r->ino_fd >= 0) {
        json_array_append_new(paths, json_string(sc->config_path));
        if (r->pol_dir)
            json_array_append_new(paths, json_string(r->pol_dir));
    }
    json_t *o = json_pack("{s:s, s:s, s:O, s:{s:I, s:I, s:I}, s:{s:b, s:o}}", "hash", r->hash, "file_hash",
                          r->file_hash, "needs_restart", r->needs_restart, "reloads", "applied",
                          (json_int_t)r->n_applied, "unchanged", (json_int_t)r->n_unchanged, "failed",
                          (json_int_t)r->n_failed, "watch", "enabled", r->ino_fd >= 0, "paths", paths);
    if (o) {
        json_object_set(o, "last", r->last ? r->last : json_null());
        json_object_set_new(o, "last_success",
                            r->last_success_unix_ms ? iso_time(r->last_success_unix_ms) : json_null());
    }
    return o;
}

json_t *sc_reload_config_json(const sidecar *sc)
{
    const sc_reload *r = sc->reload;
    json_t *j = r ? json_deep_copy(r->effective) : sc_config_to_json(sc->cfg);
    if (j)
        json_object_set_new(j, "reload", sc_reload_json(sc));
    return j;
}

void sc_reload_render_stats(const sidecar *sc, FILE *f)
{
    const sc_reload *r = sc->reload;
    if (!r)
        return;
    sc_prom_head(f, "sidecar_config_reloads_total", "counter",
                 "Configuration reloads by outcome (applied, unchanged, failed: the configuration in use stayed).");
    fprintf(f, "sidecar_config_reloads_total{outcome=\"applied\"} %llu\n", (unsigned long long)r->n_applied);
    fprintf(f, "sidecar_config_reloads_total{outcome=\"unchanged\"} %llu\n", (unsigned long long)r->n_unchanged);
    fprintf(f, "sidecar_config_reloads_total{outcome=\"failed\"} %llu\n", (unsigned long long)r->n_failed);
    sc_prom_u64(f, "sidecar_config_reload_failures_total", "counter",
                "Reloads refused (invalid configuration); the configuration in use stayed.", r->n_failed);
    sc_prom_head(f, "sidecar_config_last_reload_success_timestamp_seconds", "gauge",
                 "Unix time of the last reload that loaded a valid configuration, 0 = none yet.");
    fprintf(f, "sidecar_config_last_reload_success_timestamp_seconds %.3f\n",
            (double)r->last_success_unix_ms / 1000.0);
    sc_prom_u64(f, "sidecar_config_restart_pending", "gauge",
                "Changes in the configuration files that take effect only after a restart.",
                json_array_size(r->needs_restart));
    sc_prom_head(f, "sidecar_config_info", "gauge", "The hash of the configuration in use (as /config shows it).");
    fprintf(f, "sidecar_config_info{hash=\"%s\"} 1\n", r->hash);
}
