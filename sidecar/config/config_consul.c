/*
 * config_consul.c: the consul: section of sidecar.yaml and the CONSUL_*
 * environment variables the Consul CLI reads too (CONSUL_HTTP_ADDR,
 * CONSUL_HTTP_TOKEN[_FILE], CONSUL_HTTP_SSL[_VERIFY], CONSUL_CACERT, ...),
 * which fill in what the file leaves unset; then the agent address is
 * checked (config.c calls both, see parse_config).
 */
#include "config/config_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static const char *const check_names[] = {"http", "ttl", "grpc", "none"};

const char *sc_config_check_name(int check)
{
    return (unsigned)check < SC_ARRAY_LEN(check_names) ? check_names[check] : "?";
}

/* A TLS server name goes into SNI, which carries DNS names only. */
static void check_server_name(sc_cx *c, unsigned line, const char *v, const char *var)
{
    struct in_addr a4;
    if (!v || (sc_config_is_host(v) && !strchr(v, ':') && inet_pton(AF_INET, v, &a4) != 1 &&
               strlen(v) < 254))
        return;
    sc_config_err_line(c, line, "consul.tls_server_name", "'%.64s'%s%s%s is not a DNS name", v,
                       var ? " (from $" : "", var ? var : "", var ? ")" : "");
}

/* Consul Enterprise namespace and partition names are DNS labels (at most
 * 64 characters for a namespace, 32 for a partition in current releases;
 * 64 is the bound checked here, the agent has the last word). */
static void check_ent_name(sc_cx *c, unsigned line, const char *field, const char *v,
                           const char *var)
{
    size_t n = v ? strlen(v) : 0;
    bool ok = n > 0 && n <= 64 && isalnum((unsigned char)v[0]) && isalnum((unsigned char)v[n - 1]);
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)v[i]) || v[i] == '-';
    if (!ok)
        sc_config_err_line(c, line, field,
                           "'%.64s'%s%s%s is not a valid name: 1..64 letters, digits and '-', "
                           "starting and ending with a letter or digit",
                           v ? v : "", var ? " (from $" : "", var ? var : "", var ? ")" : "");
}

/* consul.check_http: what the agent's HTTP check polls. */
static bool is_http_url(const char *u)
{
    size_t n = strlen(u);
    const char *rest = strncmp(u, "http://", 7) == 0 ? u + 7 : strncmp(u, "https://", 8) == 0 ? u + 8 : NULL;
    if (!rest || n > 512 || !*rest || *rest == '/' || *rest == ':' || *rest == '?' || *rest == '#')
        return false;
    for (const unsigned char *p = (const unsigned char *)u; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            return false;
    return true;
}

void sc_config_parse_consul(sc_loader *L, const sc_ynode *m)
{
    static const char *const keys[] = {
        "address", "token", "token_file", "ssl", "ssl_verify", "ca_file", "cert_file",
        "key_file", "datacenter", "register_service", "check", "check_interval", "check_ttl",
        "deregister_after", "wait", "cache_file", "ca_path", "tls_server_name", "namespace",
        "partition", "check_http"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_cx *c = &L->c;
    sc_config *cfg = L->cfg;
    cfg->consul.enabled = true;
    L->consul_line = m ? m->line : 0;
    if (!FIELDS(c, m, "consul", keys, f))
        return;
    L->set_address = f[0] != NULL;
    L->address_line = f[0] ? f[0]->line : 0;
    L->set_token = f[1] != NULL;
    L->token_line = f[1] ? f[1]->line : 0;
    L->set_token_file = f[2] != NULL;
    L->token_file_line = f[2] ? f[2]->line : 0;
    L->set_ssl = f[3] != NULL;
    L->ssl_line = f[3] ? f[3]->line : 0;
    L->set_ssl_verify = f[4] != NULL;
    L->set_ca = f[5] != NULL;
    L->set_cert = f[6] != NULL;
    L->set_key = f[7] != NULL;
    sc_config_rd_str(c, f[0], "consul.address", false, &cfg->consul.address);
    sc_config_rd_str(c, f[1], "consul.token", false, &cfg->consul.token);
    sc_config_rd_path(c, f[2], "consul.token_file", &cfg->consul.token_file);
    if (f[1] && f[2])
        sc_config_err(c, f[2], "consul.token_file", "set either token or token_file, not both");
    sc_config_rd_bool(c, f[3], "consul.ssl", &cfg->consul.ssl);
    sc_config_rd_bool(c, f[4], "consul.ssl_verify", &cfg->consul.ssl_verify);
    sc_config_rd_path(c, f[5], "consul.ca_file", &cfg->consul.ca_file);
    sc_config_rd_path(c, f[6], "consul.cert_file", &cfg->consul.cert_file);
    sc_config_rd_path(c, f[7], "consul.key_file", &cfg->consul.key_file);
    if (sc_config_rd_str(c, f[8], "consul.datacenter", false, &cfg->consul.datacenter) &&
        cfg->consul.datacenter && !sc_config_is_name(cfg->consul.datacenter, 64))
        sc_config_err(c, f[8], "consul.datacenter", "'%.64s' is not a datacenter name",
                      cfg->consul.datacenter);
    sc_config_rd_bool(c, f[9], "consul.register_service", &cfg->consul.register_service);
    int check = SC_CHECK_HTTP;
    if (sc_config_rd_enum(c, f[10], "consul.check", check_names, SC_ARRAY_LEN(check_names),
                          &check))
        cfg->consul.check = check;
    L->check_line = f[10] ? f[10]->line : m->line;
    sc_config_rd_dur(c, f[11], "consul.check_interval", 1000, &cfg->consul.check_interval_ms);
    sc_config_rd_dur(c, f[12], "consul.check_ttl", 1000, &cfg->consul.check_ttl_ms);
    if (sc_config_rd_dur(c, f[13], "consul.deregister_after", 0,
                         &cfg->consul.deregister_after_ms) &&
        cfg->consul.deregister_after_ms && cfg->consul.deregister_after_ms < 60000)
        sc_config_err(c, f[13], "consul.deregister_after",
                      "Consul's minimum is 1m; use 0 to never deregister");
    if (sc_config_rd_dur(c, f[14], "consul.wait", 1000, &cfg->consul.wait_ms) &&
        cfg->consul.wait_ms > 600000)
        sc_config_err(c, f[14], "consul.wait", "Consul caps blocking queries at 10m");
    sc_config_rd_path(c, f[15], "consul.cache_file", &cfg->consul.cache_file);
    L->set_ca_path = f[16] != NULL;
    L->set_server_name = f[17] != NULL;
    L->server_name_line = f[17] ? f[17]->line : 0;
    L->set_ns = f[18] != NULL;
    L->set_partition = f[19] != NULL;
    sc_config_rd_path(c, f[16], "consul.ca_path", &cfg->consul.ca_path);
    if (sc_config_rd_str(c, f[17], "consul.tls_server_name", false, &cfg->consul.tls_server_name) &&
        f[17])
        check_server_name(c, f[17]->line, cfg->consul.tls_server_name, NULL);
    if (sc_config_rd_str(c, f[18], "consul.namespace", false, &cfg->consul.ns) && f[18])
        check_ent_name(c, f[18]->line, "consul.namespace", cfg->consul.ns, NULL);
    if (sc_config_rd_str(c, f[19], "consul.partition", false, &cfg->consul.partition) && f[19])
        check_ent_name(c, f[19]->line, "consul.partition", cfg->consul.partition, NULL);
    if (sc_config_rd_str(c, f[20], "consul.check_http", false, &cfg->consul.check_http) && f[20]) {
        if (!is_http_url(cfg->consul.check_http))
            sc_config_err(c, f[20], "consul.check_http",
                          "'%.64s' is not an http:// or https:// URL with a host (at most 512 "
                          "characters, no spaces)",
                          cfg->consul.check_http);
        else if (cfg->consul.check != SC_CHECK_HTTP)
            sc_config_err(c, f[20], "consul.check_http", "only with check: http (the agent polls this URL)");
    }
}

/* ---- Consul environment ---- */

static int parse_go_bool(const char *s, bool *out)
{
    static const char *const t[] = {"1", "t", "T", "true", "TRUE", "True"};
    static const char *const f[] = {"0", "f", "F", "false", "FALSE", "False"};
    for (size_t i = 0; i < SC_ARRAY_LEN(t); i++) {
        if (strcmp(s, t[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, f[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static void env_path(char **dst, bool set_in_file, const char *var)
{
    const char *v = env(var);
    if (!set_in_file && v) {
        free(*dst);
        *dst = sc_xstrdup(v);
    }
}

static void env_bool(sc_loader *L, bool *dst, bool set_in_file, const char *var, const char *field)
{
    const char *v = env(var);
    if (set_in_file || !v)
        return;
    if (parse_go_bool(v, dst) < 0)
        sc_config_err_line(&L->c, 0, field, "$%s='%.32s' is not a boolean; expected true or false",
                           var, v);
}

static void read_token_file(sc_loader *L, const char *from_env)
{
    sc_config_read_secret_file(L, L->cfg->consul.token_file, L->token_file_line, "consul.token_file",
                     from_env ? " (from $CONSUL_HTTP_TOKEN_FILE)" : NULL, &L->cfg->consul.token);
}

static void check_consul_address(sc_loader *L, bool from_env)
{
    sc_config *cfg = L->cfg;
    const char *a = cfg->consul.address;
    const char *rest = a;
    bool https = false;
    if (strncmp(a, "http://", 7) == 0)
        rest = a + 7;
    else if (strncmp(a, "https://", 8) == 0) {
        rest = a + 8;
        https = true;
    } else if (strncmp(a, "unix://", 7) == 0) {
        if (!a[7])
            sc_config_err_line(&L->c, L->address_line, "consul.address",
                               "unix:// needs a socket path, e.g. unix:///run/consul.sock");
        return;
    } else if (strstr(a, "://")) {
        sc_config_err_line(&L->c, L->address_line, "consul.address",
                           "'%.64s'%s: expected http://, https://, unix:// or host:port", a,
                           from_env ? " (from $CONSUL_HTTP_ADDR)" : "");
        return;
    }
    size_t n = strlen(rest);
    while (n && rest[n - 1] == '/')
        n--;
    bool ok = n > 0 && n < 256 && !memchr(rest, '/', n) && !memchr(rest, ' ', n);
    if (ok) {
        /* host[:port] where host is a name, IPv4 or [IPv6] */
        char host[256];
        memcpy(host, rest, n);
        host[n] = 0;
        char *port = NULL;
        if (host[0] == '[') {
            char *close = strchr(host, ']');
            ok = close && (close[1] == 0 || close[1] == ':');
            if (ok) {
                port = close[1] == ':' ? close + 2 : NULL;
                *close = 0;
                ok = sc_config_is_host(host + 1) && strchr(host + 1, ':');
            }
        } else {
            char *colon = strrchr(host, ':');
            if (colon) {
                *colon = 0;
                port = colon + 1;
            }
            ok = sc_config_is_host(host) && !strchr(host, ':');
        }
        if (ok && port) {
            size_t pl = strlen(port);
            ok = pl > 0 && pl <= 5 && strspn(port, "0123456789") == pl && atoi(port) > 0 &&
                 atoi(port) <= 65535;
        }
    }
    if (!ok) {
        sc_config_err_line(&L->c, L->address_line, "consul.address",
                           "'%.64s'%s is not a Consul address; expected host:port, "
                           "http(s)://host:port or unix:///path",
                           a, from_env ? " (from $CONSUL_HTTP_ADDR)" : "");
        return;
    }
    if (https) {
        if (L->set_ssl && !cfg->consul.ssl)
            sc_config_err_line(&L->c, L->ssl_line, "consul.ssl",
                               "ssl is false but the address is https://");
        cfg->consul.ssl = true;
    }
}

void sc_config_apply_consul_env(sc_loader *L)
{
    sc_config *cfg = L->cfg;
    bool addr_from_env = false;
    if (!L->set_address) {
        const char *v = env("CONSUL_HTTP_ADDR");
        free(cfg->consul.address);
        cfg->consul.address = sc_xstrdup(v ? v : "127.0.0.1:8500");
        addr_from_env = v != NULL;
    }
    env_bool(L, &cfg->consul.ssl, L->set_ssl, "CONSUL_HTTP_SSL", "consul.ssl");
    env_bool(L, &cfg->consul.ssl_verify, L->set_ssl_verify, "CONSUL_HTTP_SSL_VERIFY",
             "consul.ssl_verify");
    env_path(&cfg->consul.ca_file, L->set_ca, "CONSUL_CACERT");
    env_path(&cfg->consul.cert_file, L->set_cert, "CONSUL_CLIENT_CERT");
    env_path(&cfg->consul.key_file, L->set_key, "CONSUL_CLIENT_KEY");
    env_path(&cfg->consul.ca_path, L->set_ca_path, "CONSUL_CAPATH");
    if (!L->set_server_name && env("CONSUL_TLS_SERVER_NAME")) {
        env_path(&cfg->consul.tls_server_name, false, "CONSUL_TLS_SERVER_NAME");
        check_server_name(&L->c, 0, cfg->consul.tls_server_name, "CONSUL_TLS_SERVER_NAME");
    }
    if (!L->set_ns && env("CONSUL_NAMESPACE")) {
        env_path(&cfg->consul.ns, false, "CONSUL_NAMESPACE");
        check_ent_name(&L->c, 0, "consul.namespace", cfg->consul.ns, "CONSUL_NAMESPACE");
    }
    if (!L->set_partition && env("CONSUL_PARTITION")) {
        env_path(&cfg->consul.partition, false, "CONSUL_PARTITION");
        check_ent_name(&L->c, 0, "consul.partition", cfg->consul.partition, "CONSUL_PARTITION");
    }
    if (cfg->consul.address)
        check_consul_address(L, addr_from_env);
    /* The server name only means something for TLS. From the file it is a
     * mistake to set it for a plain agent; from the environment (shared by
     * every Consul client on the host) it is ignored then, as the Consul CLI
     * does. */
    if (cfg->consul.tls_server_name && cfg->consul.address &&
        (!cfg->consul.ssl || strncmp(cfg->consul.address, "unix://", 7) == 0)) {
        if (L->set_server_name)
            sc_config_err_line(&L->c, L->server_name_line, "consul.tls_server_name",
                               "only for an https agent (https:// address or ssl: true)");
        free(cfg->consul.tls_server_name);
        cfg->consul.tls_server_name = NULL;
    }
    if (!L->set_token && !L->set_token_file) {
        const char *tf = env("CONSUL_HTTP_TOKEN_FILE");
        const char *t = env("CONSUL_HTTP_TOKEN");
        if (tf) {
            cfg->consul.token_file = sc_xstrdup(tf);
            read_token_file(L, tf);
        } else if (t) {
            cfg->consul.token = sc_xstrdup(t);
        }
    } else if (L->set_token_file && cfg->consul.token_file && !L->set_token) {
        read_token_file(L, NULL);
    }
    if ((cfg->consul.cert_file != NULL) != (cfg->consul.key_file != NULL))
        sc_config_err_line(&L->c, L->consul_line,
                           cfg->consul.cert_file ? "consul.key_file" : "consul.cert_file",
                           "a Consul client certificate needs both cert_file and key_file "
                           "(or $CONSUL_CLIENT_CERT and $CONSUL_CLIENT_KEY)");
}
