/*
 * example.c: the configuration `sidecar` runs without --config. It must
 * load cleanly (tests/unit/test_config.c checks it) and stay a useful
 * starting point: every line is something a user would keep.
 */
#include "config/config.h"

const char sc_config_example_yaml[] =
    "# The sidecar's built-in example: copy it to sidecar.yaml and edit.\n"
    "# Every field is described in docs/configuration.md.\n"
    "service:\n"
    "  name: example\n"
    "inbound:                       # callers reach our app through here\n"
    "  listen: 127.0.0.1:15001\n"
    "  app: 127.0.0.1:8080          # the local app\n"
    "  app_protocol: http1\n"
    "admin:\n"
    "  listen: 127.0.0.1:19000      # /ready, /metrics, /config (loopback only)\n"
    "log:\n"
    "  level: info\n"
    "upstreams:                     # or one file per upstream: policies: policies/\n"
    "  - upstream: demo\n"
    "    protocol: http1\n"
    "    listen: 127.0.0.1:9191     # the app calls http://127.0.0.1:9191/\n"
    "    discovery:\n"
    "      static: [127.0.0.1:8080]\n"
    "    timeouts: { connect: 1s, request: 15s }\n"
    "    retries:\n"
    "      max_attempts: 2\n"
    "      on: [connect-failure, refused-stream]\n"
    "    load_balancer: round_robin\n";
