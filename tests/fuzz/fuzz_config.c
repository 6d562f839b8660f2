/*
 * fuzz_config.c: arbitrary bytes as sidecar.yaml and as a policy file. The
 * loader must report problems, never crash, leak or hang. Name lookups are
 * off so a hostname in the input cannot make an iteration wait on DNS.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sc_addr_set_dns_enabled(false);

    sc_config *cfg = NULL;
    sc_diags d = {0};
    if (sc_config_load_string((const char *)data, size, "fuzz.yaml", NULL, &cfg, &d) == 0) {
        json_t *j = sc_config_to_json(cfg);
        json_decref(j);
        sc_config_free(cfg);
    }
    sc_diags_free(&d);

    sc_policy p;
    if (sc_policy_load_string((const char *)data, size, "fuzz-policy.yaml", &p, &d) == 0) {
        json_t *j = sc_policy_to_json(&p);
        json_decref(j);
    }
    sc_policy_clear(&p);
    sc_diags_free(&d);
    return 0;
}
