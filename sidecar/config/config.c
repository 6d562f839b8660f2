/*
 * config.c: sidecar.yaml (schema and defaults; the consul: section and the
 * Consul environment variables are in config_consul.c), the policies
 * directory, inline `upstreams:`, and the checks that span files (duplicate
 * upstream names, clashing listeners, TLS and Consul prerequisites).
 */
#include "config/config_internal.h"
#include "admin/admin_http.h"
#include "jwt/jwt_config.h"
#include "tls/spiffe.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const proto_names[] = {"http1", "http2", "grpc"};
static const char *const probe_names[] = {"tcp", "http", "none"};

const char *sc_config_probe_name(int probe)
{
    return (unsigned)probe < SC_ARRAY_LEN(probe_names) ? probe_names[probe] : "?";
}

char *sc_config_read_file(const char *path, size_t *len, int *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *err = -errno;
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        *err = -errno;
        close(fd);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        *err = -EISDIR;
        close(fd);
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        *err = -ENOMEM;
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= SC_CFG_MAX_FILE) {
                free(buf);
                close(fd);
                *err = -EFBIG;
                return NULL;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                close(fd);
                *err = -ENOMEM;
                return NULL;
            }
            buf = nb;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            *err = -errno;
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    *err = 0;
    return buf;
}

static sc_policy *add_policy(sc_loader *L, sc_pmeta **m)
{
    sc_config *cfg = L->cfg;
    if (cfg->n_policies == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 8;
        sc_policy *np = realloc(cfg->policies, cap * sizeof(*np));
        sc_pmeta *nm = np ? realloc(L->meta, cap * sizeof(*nm)) : NULL;
        if (!np || !nm) {
            fputs("sidecar: out of memory during setup\n", stderr);
            abort();
        }
        cfg->policies = np;
        L->meta = nm;
        L->cap = cap;
    }
    sc_policy *p = &cfg->policies[cfg->n_policies];
    *m = &L->meta[cfg->n_policies];
    cfg->n_policies++;
    memset(p, 0, sizeof(*p));
    memset(*m, 0, sizeof(**m));
    return p;
}

static void config_defaults(sc_config *cfg)
{
    cfg->inbound.app_protocol = SC_PROTO_HTTP1;
    cfg->inbound.timeouts = (sc_timeouts){.connect_ms = 1000, .request_ms = 15000,
                                          .per_try_ms = 0, .idle_ms = 60000,
                                          .header_read_ms = 10000};
    sc_addr_parse("127.0.0.1:19000", &cfg->admin.listen, false);
    cfg->workers = 0;
    cfg->drain_timeout_ms = 10000;
    cfg->limits.max_header_bytes = 65536;
    cfg->limits.max_request_line = 8192;
    cfg->limits.stream_buffer = 65536;
    cfg->limits.max_connections = 10000;
    cfg->limits.h2_max_concurrent_streams = 256;
    cfg->log_level = SC_LOG_INFO;
    cfg->consul.ssl_verify = true;
    cfg->consul.register_service = true;
    cfg->consul.check = SC_CHECK_HTTP;
    cfg->consul.check_interval_ms = 10000;
    cfg->consul.check_ttl_ms = 15000;
    cfg->consul.deregister_after_ms = 0;
    cfg->consul.wait_ms = 300000;
    cfg->health.app_probe = SC_APP_PROBE_TCP;
    cfg->health.interval_ms = 2000;
    cfg->health.timeout_ms = 1000;
    cfg->tls.identity_header = sc_xstrdup("x-sidecar-caller");
    cfg->tls.authorize = SC_AUTHORIZE_NONE;
    cfg->tls.authorize_cache_ms = 30000;
    sc_config_tracing_defaults(&cfg->tracing);
    sc_config_access_log_defaults(&cfg->access_log);
    cfg->reload.debounce_ms = 200;
}

/* ---- sections ---- */

static bool is_meta_key(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

static void parse_service(sc_loader *L, const sc_ynode *m)
{
    static const char *const keys[] = {"name", "id", "address", "tags", "meta"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    if (!FIELDS(c, m, "service", keys, f))
        return;
    sc_config_require(c, m, "service", "name", f[0]);
    if (sc_config_rd_str(c, f[0], "service.name", false, &cfg->service.name) &&
        cfg->service.name && !sc_config_is_name(cfg->service.name, 128))
        sc_config_err(c, f[0], "service.name",
                      "'%.64s' is not a valid service name; use letters, digits, '_', '.' and "
                      "'-' (at most 128)",
                      cfg->service.name);
    if (sc_config_rd_str(c, f[1], "service.id", false, &cfg->service.id) && cfg->service.id &&
        !sc_config_is_name(cfg->service.id, 128))
        sc_config_err(c, f[1], "service.id",
                      "'%.64s' is not a valid service id; use letters, digits, '_', '.' and '-'",
                      cfg->service.id);
    if (sc_config_rd_str(c, f[2], "service.address", false, &cfg->service.address) &&
        cfg->service.address && !sc_config_is_host(cfg->service.address))
        sc_config_err(c, f[2], "service.address",
                      "'%.64s' is not an IP address or hostname (no port here)",
                      cfg->service.address);
    if (sc_config_rd_str_list(c, f[3], "service.tags", &cfg->service.tags,
                              &cfg->service.n_tags)) {
        for (size_t i = 0; i < cfg->service.n_tags; i++)
            for (size_t j = 0; j < i; j++)
                if (strcmp(cfg->service.tags[i], cfg->service.tags[j]) == 0) {
                    char fp[64];
                    sc_config_path_idx(fp, sizeof(fp), "service.tags", i);
                    sc_config_err(c, f[3]->items[i], fp, "tag '%.64s' is listed twice",
                                  cfg->service.tags[i]);
                }
    }
    const sc_ynode *mm = f[4];
    if (!mm || sc_config_yaml_is_null(mm) || mm->kind == SC_YN_BAD)
        return;
    if (mm->kind != SC_YN_MAP) {
        sc_config_err(c, mm, "service.meta", "expected a mapping of key: value strings");
        return;
    }
    if (mm->n / 2 > 64) {
        sc_config_err(c, mm, "service.meta", "too many entries (%zu, Consul allows 64)",
                      mm->n / 2);
        return;
    }
    cfg->service.meta = sc_xcalloc(mm->n / 2 + 1, sizeof(sc_kv));
    for (size_t k = 0; k + 1 < mm->n; k += 2) {
        const sc_ynode *key = mm->items[k], *val = mm->items[k + 1];
        if (key->kind != SC_YN_SCALAR)
            continue;
        char fp[256];
        sc_config_path(fp, sizeof(fp), "service.meta", key->str);
        if (!is_meta_key(key->str) || strncmp(key->str, "consul-", 7) == 0) {
            sc_config_err(c, key, fp,
                          "'%.64s' is not a valid meta key; use 1-128 letters, digits, '_' "
                          "and '-', not starting with 'consul-'",
                          key->str);
            continue;
        }
        bool dup = false;
        for (size_t j = 0; j < k; j += 2)
            if (mm->items[j]->kind == SC_YN_SCALAR && strcmp(mm->items[j]->str, key->str) == 0) {
                sc_config_err(c, key, fp, "duplicate key '%s' (first set at line %u)", key->str,
                              mm->items[j]->line);
                dup = true;
                break;
            }
        if (dup)
            continue;
        char *v = NULL;
        if (!sc_config_rd_str(c, val, fp, true, &v))
            continue;
        if (strlen(v) > 512) {
            sc_config_err(c, val, fp, "value longer than 512 characters (Consul's limit)");
            free(v);
            continue;
        }
        cfg->service.meta[cfg->service.n_meta].key = sc_xstrdup(key->str);
        cfg->service.meta[cfg->service.n_meta].value = v;
        cfg->service.n_meta++;
    }
}

/* Reads a one-line secret (a token) from `path` into *dst (replacing it);
 * surrounding whitespace is dropped; an empty, multi-line or unreadable file
 * is a problem reported at `line` under `field`. */
void sc_config_read_secret_file(sc_loader *L, const char *path, unsigned line,
                                const char *field, const char *from_env, char **dst)
{
    size_t len;
    int err;
    char *buf = sc_config_read_file(path, &len, &err);
    if (!buf) {
        sc_config_err_line(&L->c, line, field, "cannot read the token file %s%s: %s", path,
                           from_env ? from_env : "", strerror(-err));
        if (!L->io_err)
            L->io_err = err;
        return;
    }
    size_t a = 0, b = len;
    while (a < b && strchr(" \t\r\n", buf[a]) && buf[a])
        a++;
    while (b > a && strchr(" \t\r\n", buf[b - 1]) && buf[b - 1])
        b--;
    free(*dst);
    *dst = NULL;
    if (memchr(buf + a, 0, b - a) || memchr(buf + a, '\n', b - a))
        sc_config_err_line(&L->c, line, field, "the token file %s holds more than one line", path);
    else if (b > a)
        *dst = sc_xstrndup(buf + a, b - a);
    else
        sc_config_err_line(&L->c, line, field, "the token file %s is empty", path);
    free(buf);
}

/* Most admin.allowed_hosts entries. */
#define ADMIN_MAX_ALLOWED_HOSTS 32

static void parse_admin(sc_loader *L, const sc_ynode *m)
{
    static const char *const keys[] = {"listen", "allow_remote", "allowed_hosts", "token_file"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    if (!FIELDS(c, m, "admin", keys, f))
        return;
    L->admin_line = f[0] ? f[0]->line : m->line;
    bool listen_ok = sc_config_rd_addr(c, f[0], "admin.listen", false, &cfg->admin.listen);
    sc_config_rd_bool(c, f[1], "admin.allow_remote", &cfg->admin.allow_remote);
    if (listen_ok && f[0] && !cfg->admin.allow_remote && !sc_addr_is_loopback(&cfg->admin.listen))
        sc_config_err(c, f[0], "admin.listen",
                      "%s is not a loopback address; anyone who reaches the admin endpoint can "
                      "trip circuit breakers and drain the sidecar. Keep it on 127.0.0.1, or "
                      "set admin.allow_remote: true (and admin.token_file) to mean it",
                      cfg->admin.listen.text);
    if (sc_config_rd_str_list(c, f[2], "admin.allowed_hosts", &cfg->admin.allowed_hosts,
                              &cfg->admin.n_allowed_hosts)) {
        if (cfg->admin.n_allowed_hosts > ADMIN_MAX_ALLOWED_HOSTS)
            sc_config_err(c, f[2], "admin.allowed_hosts", "too many entries (%zu, at most %d)",
                          cfg->admin.n_allowed_hosts, ADMIN_MAX_ALLOWED_HOSTS);
        for (size_t i = 0; i < cfg->admin.n_allowed_hosts; i++) {
            const char *why = sc_admin_host_entry_problem(cfg->admin.allowed_hosts[i]);
            if (why) {
                char fp[64];
                sc_config_path_idx(fp, sizeof(fp), "admin.allowed_hosts", i);
                sc_config_err(c, f[2]->items[i], fp, "'%.64s': %s", cfg->admin.allowed_hosts[i],
                              why);
            }
        }
    }
    if (sc_config_rd_path(c, f[3], "admin.token_file", &cfg->admin.token_file) &&
        cfg->admin.token_file)
        sc_config_read_secret_file(L, cfg->admin.token_file, f[3]->line, "admin.token_file", NULL,
                         &cfg->admin.token);
}

static void parse_inbound(sc_loader *L, const sc_ynode *m)
{
    static const char *const keys[] = {"listen", "app", "app_protocol", "timeouts",
                                       "max_concurrent", "rate_limits", "jwt"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    cfg->inbound.enabled = true;
    if (!FIELDS(c, m, "inbound", keys, f))
        return;
    sc_config_require(c, m, "inbound", "listen", f[0]);
    sc_config_require(c, m, "inbound", "app", f[1]);
    L->inbound_listen_line = f[0] ? f[0]->line : 0;
    L->inbound_app_line = f[1] ? f[1]->line : 0;
    sc_config_rd_addr(c, f[0], "inbound.listen", false, &cfg->inbound.listen);
    sc_config_rd_addr(c, f[1], "inbound.app", true, &cfg->inbound.app);
    int proto = SC_PROTO_HTTP1;
    if (sc_config_rd_enum(c, f[2], "inbound.app_protocol", proto_names,
                          SC_ARRAY_LEN(proto_names), &proto))
        cfg->inbound.app_protocol = (sc_proto)proto;
    if (f[3]) {
        static const char *const tk[] = {"connect", "request", "idle", "header_read", "per_try"};
        const sc_ynode *tf[SC_ARRAY_LEN(tk)];
        sc_timeouts *t = &cfg->inbound.timeouts;
        if (FIELDS(c, f[3], "inbound.timeouts", tk, tf)) {
            sc_config_rd_dur(c, tf[0], "inbound.timeouts.connect", 1, &t->connect_ms);
            sc_config_rd_dur(c, tf[1], "inbound.timeouts.request", 0, &t->request_ms);
            sc_config_rd_dur(c, tf[2], "inbound.timeouts.idle", 0, &t->idle_ms);
            sc_config_rd_dur(c, tf[3], "inbound.timeouts.header_read", 1, &t->header_read_ms);
            if (tf[4])
                sc_config_err(c, tf[4], "inbound.timeouts.per_try",
                              "inbound requests are not retried, so per_try does not apply "
                              "here; use request");
        }
    }
    sc_config_rd_u32(c, f[4], "inbound.max_concurrent", 0, 1000000,
                     &cfg->inbound.max_concurrent);
    sc_config_parse_rate_limits(c, f[5], "inbound.rate_limits", &cfg->inbound.rate_limits,
                                &cfg->inbound.n_rate_limits);
    L->jwt = f[6];
    if (cfg->inbound.listen.len && cfg->inbound.app.len &&
        cfg->inbound.listen.len == cfg->inbound.app.len &&
        memcmp(&cfg->inbound.listen.ss, &cfg->inbound.app.ss, cfg->inbound.app.len) == 0)
        sc_config_err(c, f[1], "inbound.app",
                      "the app address is the inbound listener itself; requests would loop");
}

static void parse_limits(sc_loader *L, const sc_ynode *m)
{
    static const char *const keys[] = {"max_header_bytes", "max_request_line", "stream_buffer",
                                       "max_connections", "h2_max_concurrent_streams",
                                       "header_underscores"};
    static const char *const us_names[] = {"allow", "drop", "reject"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    if (!FIELDS(c, m, "limits", keys, f))
        return;
    bool a = sc_config_rd_size32(c, f[0], "limits.max_header_bytes", 1024, 16u << 20,
                                 &cfg->limits.max_header_bytes);
    bool b = sc_config_rd_size32(c, f[1], "limits.max_request_line", 256, 1u << 20,
                                 &cfg->limits.max_request_line);
    sc_config_rd_size32(c, f[2], "limits.stream_buffer", 4096, 64u << 20,
                        &cfg->limits.stream_buffer);
    sc_config_rd_u32(c, f[3], "limits.max_connections", 1, 10000000,
                     &cfg->limits.max_connections);
    sc_config_rd_u32(c, f[4], "limits.h2_max_concurrent_streams", 1, 1000000,
                     &cfg->limits.h2_max_concurrent_streams);
    sc_config_rd_enum(c, f[5], "limits.header_underscores", us_names, SC_ARRAY_LEN(us_names),
                      &cfg->limits.header_underscores);
    if (a && b && cfg->limits.max_request_line > cfg->limits.max_header_bytes)
        sc_config_err(c, f[1] ? f[1] : f[0], f[1] ? "limits.max_request_line"
                                                   : "limits.max_header_bytes",
                      "max_request_line (%u) is larger than max_header_bytes (%u), which "
                      "includes the request line",
                      cfg->limits.max_request_line, cfg->limits.max_header_bytes);
}

static void parse_health(sc_loader *L, const sc_ynode *m)
{
    static const char *const keys[] = {"app_probe", "app_path", "interval", "timeout",
                                       "grpc_listen"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    L->health_line = m->line;
    if (!FIELDS(c, m, "health", keys, f))
        return;
    int probe = SC_APP_PROBE_TCP;
    if (sc_config_rd_enum(c, f[0], "health.app_probe", probe_names, SC_ARRAY_LEN(probe_names),
                          &probe))
        cfg->health.app_probe = probe;
    if (sc_config_rd_str(c, f[1], "health.app_path", false, &cfg->health.app_path) &&
        cfg->health.app_path &&
        (cfg->health.app_path[0] != '/' || strlen(cfg->health.app_path) > 1024 ||
         strpbrk(cfg->health.app_path, " \t\r\n")))
        sc_config_err(c, f[1], "health.app_path",
                      "'%.64s' is not a request path; expected e.g. /healthz", cfg->health.app_path);
    if (cfg->health.app_probe == SC_APP_PROBE_HTTP && !cfg->health.app_path && f[0])
        sc_config_err(c, f[0], "health.app_path", "the http probe needs app_path, e.g. /healthz");
    if (cfg->health.app_probe != SC_APP_PROBE_HTTP && cfg->health.app_path && f[1])
        sc_config_err(c, f[1], "health.app_path", "app_path is used only with app_probe: http");
    bool iv = sc_config_rd_dur(c, f[2], "health.interval", 100, &cfg->health.interval_ms);
    bool to = sc_config_rd_dur(c, f[3], "health.timeout", 10, &cfg->health.timeout_ms);
    if (iv && to && cfg->health.timeout_ms > cfg->health.interval_ms)
        sc_config_err(c, f[3] ? f[3] : f[2], f[3] ? "health.timeout" : "health.interval",
                      "the probe timeout is longer than its interval");
    if (f[4]) {
        L->grpc_listen_line = f[4]->line;
        if (sc_config_rd_addr(c, f[4], "health.grpc_listen", false, &cfg->health.grpc_listen))
            cfg->health.grpc_enabled = true;
    }
}

/* tls.authorize and tls.authorize_cache; runs after the rest of tls: (the
 * certificate fields decide whether the inbound listener has mutual TLS). */
static void parse_authorize(sc_loader *L, const sc_ynode *mode, const sc_ynode *ttl)
{
    static const char *const names[] = {"none", "consul"};
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    int m = SC_AUTHORIZE_NONE;
    if (!sc_config_rd_enum(c, mode, "tls.authorize", names, SC_ARRAY_LEN(names), &m))
        return;
    cfg->tls.authorize = (sc_authorize_mode)m;
    if (ttl && sc_config_rd_dur(c, ttl, "tls.authorize_cache", SC_AUTHORIZE_CACHE_MIN_MS,
                                &cfg->tls.authorize_cache_ms)) {
        if (cfg->tls.authorize_cache_ms > SC_AUTHORIZE_CACHE_MAX_MS)
            sc_config_err(c, ttl, "tls.authorize_cache",
                          "%s is too long; expected 1s to 1h (an intention change takes effect "
                          "within this time)",
                          ttl->str ? ttl->str : "?");
        else if (cfg->tls.authorize != SC_AUTHORIZE_CONSUL)
            sc_config_err(c, ttl, "tls.authorize_cache",
                          "only with tls.authorize: consul (it is how long Consul's answers "
                          "are kept)");
    }
    if (cfg->tls.authorize != SC_AUTHORIZE_CONSUL)
        return;
    if (!cfg->consul.enabled)
        sc_config_err(c, mode, "tls.authorize",
                      "consul needs a consul: section (consul: {} for the defaults) to ask the "
                      "agent's /v1/agent/connect/authorize");
    if (!cfg->inbound.enabled)
        sc_config_err(c, mode, "tls.authorize",
                      "consul authorizes inbound callers: it needs an inbound: section");
    bool mtls = cfg->tls.source == SC_TLS_SOURCE_CONSUL ||
                (cfg->tls.cert_file && cfg->tls.key_file && cfg->tls.ca_file);
    if (!mtls)
        sc_config_err(c, mode, "tls.authorize",
                      "consul needs inbound mutual TLS to know who calls: set tls.source: "
                      "consul, or tls.cert, tls.key and tls.ca");
}

static void parse_tls(sc_loader *L, const sc_ynode *m)
{
    static const char *const keys[] = {"cert", "key", "ca", "allow", "identity_header", "source",
                                       "authorize", "authorize_cache"};
    static const char *const source_names[] = {"files", "consul"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    L->tls_line = m ? m->line : 0;
    if (!FIELDS(c, m, "tls", keys, f))
        return;
    int source = SC_TLS_SOURCE_FILES;
    if (sc_config_rd_enum(c, f[5], "tls.source", source_names, SC_ARRAY_LEN(source_names), &source))
        cfg->tls.source = (sc_tls_source)source;
    if (cfg->tls.source == SC_TLS_SOURCE_CONSUL) {
        static const char *const file_keys[] = {"tls.cert", "tls.key", "tls.ca"};
        for (int i = 0; i < 3; i++)
            if (f[i])
                sc_config_err(c, f[i], file_keys[i],
                              "not allowed with tls.source: consul (Consul Connect hands out the "
                              "certificate, its key and the roots); remove it or use tls.source: files");
        if (!cfg->consul.enabled)
            sc_config_err(c, f[5], "tls.source",
                          "consul needs a consul: section (consul: {} for the defaults) to fetch "
                          "the Connect certificate from the agent");
        if (!cfg->service.name)
            sc_config_err(c, f[5], "tls.source",
                          "consul needs service.name: the Connect certificate is issued for it");
        if (f[0] || f[1] || f[2]) {
            parse_authorize(L, f[6], f[7]);
            return;
        }
    }
    bool connect = cfg->tls.source == SC_TLS_SOURCE_CONSUL;
    sc_config_rd_path(c, f[0], "tls.cert", &cfg->tls.cert_file);
    sc_config_rd_path(c, f[1], "tls.key", &cfg->tls.key_file);
    sc_config_rd_path(c, f[2], "tls.ca", &cfg->tls.ca_file);
    if (f[0] && !f[1])
        sc_config_err(c, f[0], "tls.key", "tls.cert needs tls.key (the certificate's key)");
    if (f[1] && !f[0])
        sc_config_err(c, f[1], "tls.cert", "tls.key needs tls.cert");
    if (sc_config_rd_str_list(c, f[3], "tls.allow", &cfg->tls.allow, &cfg->tls.n_allow)) {
        for (size_t i = 0; i < cfg->tls.n_allow; i++) {
            const char *a = cfg->tls.allow[i];
            const char *why = NULL;
            /* The same rule the listener applies, so --check and run time agree. */
            if (sc_tls_pattern_valid(a, &why) < 0) {
                char fp[64];
                sc_config_path_idx(fp, sizeof(fp), "tls.allow", i);
                sc_config_err(c, f[3]->items[i], fp, "'%.64s': %s (e.g. spiffe://example.org/ns/default/dc/dc1/svc/*)",
                              a, why ? why : "not a valid identity pattern");
            }
        }
        if (cfg->tls.n_allow && !f[2] && !connect)
            sc_config_err(c, f[3], "tls.allow",
                          "checking caller identities needs tls.ca to verify client "
                          "certificates");
        if (cfg->tls.n_allow && !f[0] && !connect)
            sc_config_err(c, f[3], "tls.allow",
                          "checking caller identities needs tls.cert and tls.key (inbound "
                          "TLS)");
    }
    if (sc_config_rd_str(c, f[4], "tls.identity_header", false, &cfg->tls.identity_header)) {
        const char *h = cfg->tls.identity_header;
        if (strspn(h, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(h) || !*h)
            sc_config_err(c, f[4], "tls.identity_header",
                          "'%.64s' is not a header name; use lower-case letters, digits and "
                          "'-'",
                          h);
    }
    parse_authorize(L, f[6], f[7]);
}

static void load_inline_upstreams(sc_loader *L, const sc_ynode *v)
{
    sc_cx *c = &L->c;
    if (!v || v->kind == SC_YN_BAD || sc_config_yaml_is_null(v))
        return;
    if (v->kind != SC_YN_SEQ) {
        sc_config_err(c, v, "upstreams",
                      "expected a list of policies (- upstream: name ...), got %s",
                      v->kind == SC_YN_MAP ? "a mapping" : "a single value");
        return;
    }
    for (size_t i = 0; i < v->n; i++) {
        sc_pmeta *m;
        sc_policy *p = add_policy(L, &m);
        sc_config_path_idx(m->prefix, sizeof(m->prefix), "upstreams", i);
        p->file = sc_xstrdup(c->file);
        sc_config_parse_policy(c, v->items[i], m->prefix, p, &m->w);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_suffix(const char *s, const char *sfx)
{
    size_t n = strlen(s), m = strlen(sfx);
    return n > m && strcmp(s + n - m, sfx) == 0;
}

static void load_policy_dir(sc_loader *L, const sc_ynode *at)
{
    sc_cx *c = &L->c;
    const char *dir = L->cfg->policies_dir;
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        sc_config_err(c, at, "policies", "cannot open the policies directory %s: %s", dir,
                      strerror(e));
        if (!L->io_err)
            L->io_err = -e;
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !(has_suffix(e->d_name, ".yaml") || has_suffix(e->d_name, ".yml")))
            continue;
        if (n == 10000) {
            sc_config_err(c, at, "policies", "more than 10000 policy files in %s", dir);
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof(*nn));
            if (!nn) {
                fputs("sidecar: out of memory during setup\n", stderr);
                abort();
            }
            names = nn;
        }
        names[n++] = sc_xstrdup(e->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof(*names), cmp_str);
    for (size_t i = 0; i < n; i++) {
        char *path = sc_config_resolve_path(dir, names[i]);
        size_t len;
        int err;
        struct stat st;
        char *buf = NULL;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            free(path); /* a directory that happens to be named x.yaml */
            free(names[i]);
            continue;
        }
        if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
            err = -EINVAL; /* never block on a FIFO or a device */
        else
            buf = sc_config_read_file(path, &len, &err);
        if (!buf) {
            sc_diags_add(c->d, path, 0, "", "cannot read the policy file: %s",
                         err == -EINVAL ? "not a regular file" : strerror(-err));
            c->n_errors++;
            if (!L->io_err)
                L->io_err = err;
        } else {
            sc_cx pc = {.d = c->d, .file = path, .base_dir = dir};
            sc_ynode *root = NULL;
            size_t before = c->d->n;
            if (sc_config_yaml_parse(buf, len, path, c->d, &root) == 0) {
                sc_pmeta *m;
                sc_policy *p = add_policy(L, &m);
                p->file = sc_xstrdup(path);
                sc_config_parse_policy(&pc, root, "", p, &m->w);
                sc_config_yaml_free(root);
            }
            c->n_errors += c->d->n - before;
            free(buf);
        }
        free(path);
        free(names[i]);
    }
    free(names);
}

/* ---- checks across files ---- */

static bool addr_conflict(const sc_addr *a, const sc_addr *b)
{
    if (!a->len || !b->len || sc_addr_port(a) != sc_addr_port(b))
        return false;
    if (a->ss.ss_family == b->ss.ss_family) {
        if (sc_addr_is_wildcard(a) || sc_addr_is_wildcard(b))
            return true;
        return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
    }
    /* [::] is dual-stack on Linux by default and takes the IPv4 port too. */
    return (a->ss.ss_family == AF_INET6 && sc_addr_is_wildcard(a)) ||
           (b->ss.ss_family == AF_INET6 && sc_addr_is_wildcard(b));
}

typedef struct lst {
    const sc_addr *addr;
    const char *file;
    unsigned line;
    char field[64];
    char what[160];
} lst;

static void cross_checks(sc_loader *L)
{
    sc_config *cfg = L->cfg;
    sc_cx *c = &L->c;
    size_t n = cfg->n_policies;

    for (size_t i = 0; i < n; i++) {
        sc_policy *p = &cfg->policies[i];
        sc_pmeta *m = &L->meta[i];
        char fp[96];
        for (size_t j = 0; j < i && p->name; j++) {
            if (cfg->policies[j].name && strcmp(cfg->policies[j].name, p->name) == 0) {
                sc_config_path(fp, sizeof(fp), m->prefix, "upstream");
                sc_diags_add(c->d, p->file, m->w.name_line, fp,
                             "upstream '%s' is already defined in %s:%u", p->name,
                             cfg->policies[j].file, L->meta[j].w.name_line);
                c->n_errors++;
                break;
            }
        }
        if (p->discovery == SC_DISCOVERY_CONSUL && !cfg->consul.enabled && m->w.discovery_line) {
            sc_config_path(fp, sizeof(fp), m->prefix, "discovery.consul");
            sc_diags_add(c->d, p->file, m->w.discovery_line, fp,
                         "Consul discovery needs a consul: section in %s (consul: {} for the "
                         "defaults)",
                         cfg->file);
            c->n_errors++;
        }
        if (p->tls.mode == SC_TLS_MUTUAL && cfg->tls.source == SC_TLS_SOURCE_FILES &&
            (!cfg->tls.cert_file || !cfg->tls.key_file)) {
            sc_config_path(fp, sizeof(fp), m->prefix, "tls.mode");
            sc_diags_add(c->d, p->file, m->w.tls_line, fp,
                         "mutual TLS needs this sidecar's certificate: set tls.cert and tls.key "
                         "(or tls.source: consul) in %s",
                         cfg->file);
            c->n_errors++;
        }
        sc_config_rl_cross_check(c, cfg, p->file, m->prefix, p->rate_limits, p->n_rate_limits,
                                 false);
    }
    sc_config_rl_cross_check(c, cfg, cfg->file, "inbound", cfg->inbound.rate_limits,
                             cfg->inbound.n_rate_limits, true);

    if (cfg->health.app_probe != SC_APP_PROBE_NONE && !cfg->inbound.enabled && L->health_line &&
        (cfg->health.app_probe == SC_APP_PROBE_HTTP || cfg->health.app_path)) {
        sc_diags_add(c->d, cfg->file, L->health_line, "health.app_probe",
                     "probing the local app needs an inbound: section with the app's address");
        c->n_errors++;
    }
    if (cfg->consul.enabled && cfg->consul.register_service && cfg->consul.check == SC_CHECK_GRPC &&
        !cfg->health.grpc_enabled) {
        sc_diags_add(c->d, cfg->file, L->check_line, "consul.check",
                     "a grpc check needs the sidecar's gRPC health server: set health.grpc_listen");
        c->n_errors++;
    }

    lst *ls = sc_xcalloc(n + 3, sizeof(*ls));
    size_t k = 0;
    ls[k] = (lst){.addr = &cfg->admin.listen, .file = cfg->file, .line = L->admin_line};
    snprintf(ls[k].field, sizeof(ls[k].field), "admin.listen");
    snprintf(ls[k++].what, sizeof(ls[0].what), "the admin listener");
    if (cfg->inbound.enabled) {
        ls[k] = (lst){.addr = &cfg->inbound.listen, .file = cfg->file,
                      .line = L->inbound_listen_line};
        snprintf(ls[k].field, sizeof(ls[k].field), "inbound.listen");
        snprintf(ls[k++].what, sizeof(ls[0].what), "the inbound listener");
    }
    if (cfg->health.grpc_enabled) {
        ls[k] = (lst){.addr = &cfg->health.grpc_listen, .file = cfg->file,
                      .line = L->grpc_listen_line};
        snprintf(ls[k].field, sizeof(ls[k].field), "health.grpc_listen");
        snprintf(ls[k++].what, sizeof(ls[0].what), "the gRPC health listener");
    }
    for (size_t i = 0; i < n; i++) {
        sc_policy *p = &cfg->policies[i];
        ls[k] = (lst){.addr = &p->listen, .file = p->file, .line = L->meta[i].w.listen_line};
        sc_config_path(ls[k].field, sizeof(ls[k].field), L->meta[i].prefix, "listen");
        snprintf(ls[k++].what, sizeof(ls[0].what), "upstream '%.64s'",
                 p->name ? p->name : "?");
    }
    for (size_t i = 0; i < k; i++)
        for (size_t j = 0; j < i; j++)
            if (addr_conflict(ls[i].addr, ls[j].addr)) {
                char at[300];
                if (ls[j].line)
                    snprintf(at, sizeof(at), "%s:%u", ls[j].file, ls[j].line);
                else
                    snprintf(at, sizeof(at), "its default");
                sc_diags_add(c->d, ls[i].file, ls[i].line, ls[i].field,
                             "%s is already used by %s (%s)", ls[i].addr->text, ls[j].what, at);
                c->n_errors++;
                break;
            }
    free(ls);
}

/* ---- the document ---- */

static void parse_config(sc_loader *L, const sc_ynode *root)
{
    static const char *const keys[] = {"service", "inbound", "admin", "workers", "drain_timeout",
                                       "policies", "upstreams", "limits", "log", "consul", "tls",
                                       "health", "redis", "tracing", "access_log", "reload"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    if (!root || sc_config_yaml_is_null(root)) {
        sc_config_err_line(c, root ? root->line : 0, "service.name",
                           "the configuration is empty; it needs at least service: {name: ...}");
        return;
    }
    if (!FIELDS(c, root, "", keys, f))
        return;
    sc_config_require(c, root, "", "service", f[0]);
    if (f[0])
        parse_service(L, f[0]);
    if (f[1])
        parse_inbound(L, f[1]);
    if (f[2])
        parse_admin(L, f[2]);
    sc_config_rd_u32(c, f[3], "workers", 0, 1024, &cfg->workers);
    sc_config_rd_dur(c, f[4], "drain_timeout", 0, &cfg->drain_timeout_ms);
    if (f[5]) {
        L->policies_line = f[5]->line;
        sc_config_rd_path(c, f[5], "policies", &cfg->policies_dir);
    }
    if (f[7])
        parse_limits(L, f[7]);
    if (f[8]) {
        static const char *const lk[] = {"level"};
        const sc_ynode *lf[1];
        if (FIELDS(c, f[8], "log", lk, lf) && lf[0]) {
            char *lv = NULL;
            if (sc_config_rd_str(c, lf[0], "log.level", false, &lv) &&
                sc_log_level_parse(lv, &cfg->log_level) < 0)
                sc_config_err(c, lf[0], "log.level",
                              "'%.64s' is not a log level; expected debug, info, warn or error",
                              lv);
            free(lv);
        }
    }
    if (f[9])
        sc_config_parse_consul(L, f[9]);
    if (f[10])
        parse_tls(L, f[10]);
    if (f[11])
        parse_health(L, f[11]);
    if (f[12])
        sc_config_parse_redis(c, f[12], cfg);
    if (f[13])
        sc_config_parse_tracing(c, f[13], &cfg->tracing);
    if (f[14])
        sc_config_parse_access_log(c, f[14], &cfg->access_log);
    if (f[15]) {
        static const char *const rk[] = {"watch", "debounce"};
        const sc_ynode *rf[2];
        if (FIELDS(c, f[15], "reload", rk, rf)) {
            sc_config_rd_bool(c, rf[0], "reload.watch", &cfg->reload.watch);
            if (sc_config_rd_dur(c, rf[1], "reload.debounce", 10, &cfg->reload.debounce_ms) &&
                cfg->reload.debounce_ms > 60000)
                sc_config_err(c, rf[1], "reload.debounce", "at most 1m; a change waits this long before it applies");
        }
    }
    if (L->jwt)
        sc_config_parse_jwt(c, L->jwt, cfg);
    if (cfg->service.name && !cfg->service.id)
        cfg->service.id = sc_xstrdup(cfg->service.name);
    if (cfg->consul.enabled)
        sc_config_apply_consul_env(L);
    load_inline_upstreams(L, f[6]);
    if (cfg->policies_dir)
        load_policy_dir(L, f[5]);
    cross_checks(L);
}

static int load_text(const char *yaml, size_t len, const char *name, const char *base_dir,
                     sc_config **out, sc_diags *diags, int io_err)
{
    sc_diags local = {0};
    sc_diags *d = diags ? diags : &local;
    size_t before = d->n;
    sc_loader L = {0};
    L.c = (sc_cx){.d = d, .file = name ? name : "<string>", .base_dir = base_dir};
    L.io_err = io_err;
    *out = NULL;
    sc_config *cfg = sc_xcalloc(1, sizeof(*cfg));
    L.cfg = cfg;
    cfg->file = sc_xstrdup(L.c.file);
    config_defaults(cfg);

    sc_ynode *root = NULL;
    if (sc_config_yaml_parse(yaml ? yaml : "", yaml ? len : 0, L.c.file, d, &root) == 0) {
        parse_config(&L, root);
        sc_config_yaml_free(root);
    }
    free(L.meta);
    int rc = 0;
    if (d->n != before) {
        sc_config_free(cfg);
        rc = L.io_err ? L.io_err : -EINVAL;
    } else {
        *out = cfg;
    }
    sc_diags_free(&local);
    return rc;
}

int sc_config_load_string(const char *yaml, size_t len, const char *name, const char *base_dir,
                          sc_config **out, sc_diags *diags)
{
    return load_text(yaml, len, name, base_dir, out, diags, 0);
}

int sc_config_load(const char *path, sc_config **out, sc_diags *diags)
{
    sc_diags local = {0};
    sc_diags *d = diags ? diags : &local;
    size_t len;
    int err;
    *out = NULL;
    if (!path || !*path) {
        sc_diags_add(d, "", 0, "", "no configuration file given");
        sc_diags_free(&local);
        return -EINVAL;
    }
    char *buf = sc_config_read_file(path, &len, &err);
    if (!buf) {
        sc_diags_add(d, path, 0, "", "cannot read the configuration: %s", strerror(-err));
        sc_diags_free(&local);
        return err;
    }
    char *dir = sc_xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = 0;
    else if (slash)
        *slash = 0;
    else {
        free(dir);
        dir = sc_xstrdup(".");
    }
    int rc = load_text(buf, len, path, dir, out, d, 0);
    free(dir);
    free(buf);
    sc_diags_free(&local);
    return rc;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void sc_config_free(sc_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->file);
    free(cfg->service.name);
    free(cfg->service.id);
    free(cfg->service.address);
    free_strv(cfg->service.tags, cfg->service.n_tags);
    for (size_t i = 0; i < cfg->service.n_meta; i++) {
        free(cfg->service.meta[i].key);
        free(cfg->service.meta[i].value);
    }
    free(cfg->service.meta);
    free(cfg->policies_dir);
    free_strv(cfg->admin.allowed_hosts, cfg->admin.n_allowed_hosts);
    free(cfg->admin.token_file);
    free(cfg->admin.token);
    free(cfg->consul.address);
    free(cfg->consul.token);
    free(cfg->consul.token_file);
    free(cfg->consul.ca_file);
    free(cfg->consul.cert_file);
    free(cfg->consul.key_file);
    free(cfg->consul.datacenter);
    free(cfg->consul.cache_file);
    free(cfg->consul.ca_path);
    free(cfg->consul.tls_server_name);
    free(cfg->consul.ns);
    free(cfg->consul.partition);
    free(cfg->consul.check_http);
    free(cfg->health.app_path);
    free(cfg->tls.cert_file);
    free(cfg->tls.key_file);
    free(cfg->tls.ca_file);
    free_strv(cfg->tls.allow, cfg->tls.n_allow);
    free(cfg->tls.identity_header);
    sc_config_rate_limits_free(cfg->inbound.rate_limits, cfg->inbound.n_rate_limits);
    sc_config_redis_free(cfg);
    sc_config_tracing_free(&cfg->tracing);
    sc_config_access_log_free(&cfg->access_log);
    sc_jwt_config_free(cfg->inbound.jwt);
    for (size_t i = 0; i < cfg->n_policies; i++)
        sc_policy_clear(&cfg->policies[i]);
    free(cfg->policies);
    free(cfg);
}
