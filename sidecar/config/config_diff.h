/*
 * config_diff.h: what changed between two loaded configurations, how each
 * change can be applied to a running sidecar, and a stable hash of a
 * configuration. Used by the reload (reload.h); pure: no I/O.
 *
 * The comparison works on the effective configuration as JSON
 * (sc_config_to_json, which prints every field with its default), so a field
 * added to the JSON is compared without a change here; an upstream field this
 * file does not name is reported as the part "other". On top of the JSON,
 * sc_config_diff_build() compares what the JSON cannot show: the secrets
 * (admin.token, consul.token, redis.password: named, never printed) and the
 * resolved addresses behind host names (static instances, inbound.app are
 * resolved again at each load; a new answer is a change of "discovery").
 *
 * Routes: the inbound listener (when configured) and one per upstream,
 * matched by name. Process-wide settings: every other field of sidecar.yaml,
 * reported as "section.field" (or "section" when a whole section appears or
 * goes), each either applied live or needing a restart
 * (sc_config_setting_apply).
 *
 * Ownership: a diff owns its strings and arrays; release it with
 * sc_config_diff_free(). The policy pointers in a route entry point into the
 * configurations given to sc_config_diff_build() and live as long as they do.
 */
#ifndef SC_CONFIG_DIFF_H
#define SC_CONFIG_DIFF_H

#include "config/config.h"

struct json_t;

typedef enum {
    SC_ROUTE_UNCHANGED = 0,
    SC_ROUTE_ADDED,
    SC_ROUTE_REMOVED,
    SC_ROUTE_CHANGED,
} sc_route_change;

/* The parts of a route (bits of sc_route_diff.parts). The inbound route's
 * fields map to the same parts: inbound.app is its discovery, app_protocol
 * its protocol, max_concurrent its bulkhead. */
enum {
    SC_PART_PROTOCOL = 1u << 0,
    SC_PART_LISTEN = 1u << 1,
    SC_PART_DISCOVERY = 1u << 2,
    SC_PART_TLS = 1u << 3,
    SC_PART_TIMEOUTS = 1u << 4,
    SC_PART_RETRIES = 1u << 5,       /* retries.* but the budget */
    SC_PART_RETRY_BUDGET = 1u << 6,  /* retries.budget */
    SC_PART_BULKHEAD = 1u << 7,
    SC_PART_BREAKER = 1u << 8,       /* circuit_breaker.* but the fallback */
    SC_PART_FALLBACK = 1u << 9,      /* circuit_breaker.fallback (and whether there is one) */
    SC_PART_OUTLIER = 1u << 10,
    SC_PART_LB = 1u << 11,
    SC_PART_RATE_LIMITS = 1u << 12,
    SC_PART_OTHER = 1u << 13,        /* a field not named above (a newer field of the JSON) */
};
#define SC_PART_COUNT 14

/* "timeouts", "retries.budget", "circuit_breaker.fallback", ...; for the
 * inbound route the names of its own fields ("app", "app_protocol",
 * "max_concurrent"). NULL for a bit out of range. */
const char *sc_config_part_name(uint32_t part_bit, bool inbound);

typedef struct sc_route_diff {
    char *name;                     /* upstream name, or "inbound" */
    bool inbound;                   /* the inbound listener's route */
    sc_route_change change;
    uint32_t parts;                 /* SC_PART_* that differ (SC_ROUTE_CHANGED) */
    size_t old_index, new_index;    /* into cfg->policies, SIZE_MAX when absent (and for inbound) */
    const sc_policy *old_p, *new_p; /* set by sc_config_diff_build(); NULL when absent or inbound */
} sc_route_diff;

typedef enum {
    SC_APPLY_LIVE = 0,              /* the running sidecar takes the new value at once */
    SC_APPLY_RESTART,               /* the running sidecar keeps the old value until it restarts */
} sc_apply_kind;

typedef struct sc_setting_diff {
    char *path;                     /* "workers", "admin.listen", "inbound.jwt", "consul.token" */
    sc_apply_kind apply;
} sc_setting_diff;

typedef struct sc_config_diff {
    sc_route_diff *routes;          /* the new configuration's order (inbound first), then removed ones */
    size_t n_routes;
    sc_setting_diff *settings;      /* in sidecar.yaml's key order */
    size_t n_settings;
} sc_config_diff;

/* How a process-wide setting applies (the table in config_diff.c, documented
 * in docs/configuration.md "Reloading"); a path not in the table needs a
 * restart. */
sc_apply_kind sc_config_setting_apply(const char *path);

/* Compares two configurations. Returns 0, or -ENOMEM (out is then empty). */
int sc_config_diff_build(const sc_config *old_cfg, const sc_config *new_cfg, sc_config_diff *out);
/* The same from two documents of sc_config_to_json's shape (tests; no
 * secrets or resolved addresses to compare, policy pointers left NULL). */
int sc_config_diff_build_json(const struct json_t *old_j, const struct json_t *new_j, sc_config_diff *out);
void sc_config_diff_free(sc_config_diff *d);

/* Counts: routes with each change, settings with each kind. */
size_t sc_config_diff_count_routes(const sc_config_diff *d, sc_route_change change);
size_t sc_config_diff_count_settings(const sc_config_diff *d, sc_apply_kind apply);
/* The route entry of an upstream (or the inbound one), NULL when neither
 * configuration has it. */
const sc_route_diff *sc_config_diff_route(const sc_config_diff *d, const char *name, bool inbound);
/* True when nothing differs. */
bool sc_config_diff_empty(const sc_config_diff *d);

/*
 * The diff as JSON (caller owns it):
 *   {"upstreams": {"added": [names], "removed": [names], "unchanged": [names],
 *                  "changed": {name: [part names]}},
 *    "inbound": null | "added" | "removed" | [part names] (changed) | "unchanged",
 *    "settings": [paths]}
 */
struct json_t *sc_config_diff_to_json(const sc_config_diff *d);

/* Hash of a configuration: the first 64 bits of the SHA-256 of its JSON
 * (sc_config_to_json) with sorted keys and no white space, in 16 lower-case
 * hex digits. Equal configurations hash the same whatever the order of keys in
 * their files; secrets do not enter it (they show as "<set>"). */
#define SC_CONFIG_HASH_LEN 16
int sc_config_hash(const sc_config *cfg, char out[SC_CONFIG_HASH_LEN + 1]);
int sc_config_hash_json(const struct json_t *j, char out[SC_CONFIG_HASH_LEN + 1]);

#endif
