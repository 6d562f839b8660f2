/*
 * reload.h: reloading sidecar.yaml and the policies while running
 * (docs/configuration.md, "Reloading").
 *
 * Triggers: SIGHUP, POST /reload on the admin endpoint, and with
 * `reload: {watch: true}` a change of sidecar.yaml or of a policy file
 * (inotify on their directories, debounced by reload.debounce).
 *
 * A reload loads the configuration exactly as `sidecar --check` does (a new
 * sc_config, from the file named by --config). Any problem: the
 * configuration in use stays, every problem is logged as file:line: field:
 * message, counted, and kept for /config. Otherwise the new configuration is
 * compared with the one in use (config/config_diff.h); what can apply live
 * does, what needs a restart is reported (and the rest still applies).
 *
 * The process keeps the configuration it started with (sidecar.cfg): the
 * modules that read settings needing a restart hold it. The effective
 * configuration, what /config shows and the hash names, is the last one
 * loaded with those settings as the process runs them.
 *
 * Control thread only. The state is owned by the sidecar (sidecar.reload)
 * and released by sc_reload_stop().
 */
#ifndef SC_RELOAD_H
#define SC_RELOAD_H

#include "sidecar.h"

struct json_t;

typedef struct sc_reload sc_reload;

typedef enum {
    SC_RELOAD_APPLIED = 0,          /* a valid configuration that differs: what can apply live did */
    SC_RELOAD_UNCHANGED,            /* a valid configuration equal to the one in use */
    SC_RELOAD_FAILED,               /* not loaded (problems) or not applied: nothing changed */
} sc_reload_outcome;

const char *sc_reload_outcome_name(sc_reload_outcome o);

/* Starts the SIGHUP watcher and, when configured, the file watch on the
 * control loop; computes the hash of the configuration in use. Returns 0 or
 * -ENOMEM (the sidecar then runs without reloads; the caller logs). */
int sc_reload_start(sidecar *sc);
/* Stops the watchers and frees every configuration the reloads loaded
 * (after the workers have stopped). Safe when never started. */
void sc_reload_stop(sidecar *sc);

/* Reloads now; `trigger` names the cause in logs and /config ("SIGHUP",
 * "admin", "watch"). */
sc_reload_outcome sc_reload_run(sidecar *sc, const char *trigger);

/* The reload state (caller owns the JSON):
 *   {"hash", "file_hash", "needs_restart": [paths], "reloads": {applied, unchanged, failed},
 *    "watch": {"enabled", "paths"}, "last": null | {"trigger", "time", "duration_ms", "outcome",
 *    "problems": [lines], "changes": diff | null, "applied_live": [paths]}} */
struct json_t *sc_reload_json(const sidecar *sc);
/* GET /config: the effective configuration with "reload" (the state above)
 * as its last member. NULL when out of memory. */
struct json_t *sc_reload_config_json(const sidecar *sc);
/* Prometheus families of /stats (sidecar_config_*). */
void sc_reload_render_stats(const sidecar *sc, FILE *f);

#endif
