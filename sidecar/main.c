/*
 * sidecar: a service sidecar proxy.
 *
 *   sidecar --config sidecar.yaml           run
 *   sidecar --config sidecar.yaml --check   validate config and policies, print problems, exit
 *   sidecar                                  run the built-in example (no Consul needed)
 */
#include "config/config.h"
#include "core/log.h"
#include "sidecar.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sidecar [--config FILE] [--check] [--log-level LEVEL] [--version]\n"
            "  --config FILE     sidecar.yaml (policies from its `policies:` directory and `upstreams:`)\n"
            "                    without it, the built-in example runs (see README)\n"
            "  --check           validate the configuration and every policy, print each problem, exit\n"
            "                    (0: valid, 1: problems found, 2: usage)\n"
            "  --print-example   print the built-in example configuration and exit\n"
            "  --log-level LEVEL debug, info, warn or error (overrides log.level)\n");
}

int main(int argc, char **argv)
{
    const char *config = NULL, *level = NULL;
    bool check = false;
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'k'},
        {"log-level", required_argument, NULL, 'l'}, {"version", no_argument, NULL, 'v'},
        {"print-example", no_argument, NULL, 'p'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "c:l:hv", opts, NULL)) != -1) {
        switch (o) {
        case 'c': config = optarg; break;
        case 'k': check = true; break;
        case 'l': level = optarg; break;
        case 'v': printf("sidecar %s\n", SC_VERSION); return 0;
        case 'p': fputs(sc_config_example_yaml, stdout); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sidecar: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    sc_diags diags = {0};
    sc_config *cfg = NULL;
    int rv;
    if (config) {
        rv = sc_config_load(config, &cfg, &diags);
    } else {
        if (!check)
            fprintf(stderr, "sidecar: no --config given; running the built-in example (sidecar --print-example)\n");
        rv = sc_config_load_string(sc_config_example_yaml, strlen(sc_config_example_yaml), "<built-in example>", ".",
                                   &cfg, &diags);
    }
    sc_diags_print(&diags, stderr);
    size_t nproblems = diags.n;
    sc_diags_free(&diags);
    if (rv < 0 || !cfg) {
        fprintf(stderr, "sidecar: configuration invalid: %zu problem%s\n", nproblems, nproblems == 1 ? "" : "s");
        return 1;
    }
    if (check) {
        printf("configuration OK: %s%zu upstream%s\n", cfg->inbound.enabled ? "inbound listener, " : "",
               cfg->n_policies, cfg->n_policies == 1 ? "" : "s");
        sc_config_free(cfg);
        return 0;
    }
    sc_log_set_level(cfg->log_level);
    if (level) {
        sc_log_level l;
        if (sc_log_level_parse(level, &l) < 0) {
            fprintf(stderr, "sidecar: --log-level must be debug, info, warn or error\n");
            sc_config_free(cfg);
            return 2;
        }
        sc_log_set_level(l);
    }
    sidecar *sc = sc_sidecar_new(cfg);
    sc->config_path = config; /* reloads read it again (NULL: the built-in example) */
    rv = sc_sidecar_run(sc);
    sc_sidecar_free(sc);
    return rv < 0 ? 1 : 0;
}
