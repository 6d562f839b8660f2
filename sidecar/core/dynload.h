/*
 * dynload.h: loading an optional library only when the feature that needs
 * it is configured. libcurl (Consul) and gRPC core (the grpc.health.v1
 * server) bring tens of shared objects, C++ runtime and static initialisers
 * with them; a sidecar that uses neither should not pay their memory. Each
 * user declares a table of function pointers (see discovery/curl_api.h) and
 * fills it with sc_dynload_table() before its first call.
 */
#ifndef SC_DYNLOAD_H
#define SC_DYNLOAD_H

#include "core/common.h"

/*
 * Opens the first library of `sonames` that loads and resolves `n` symbols
 * named by `names` into `slots` (void* sized function pointers). Idempotent
 * per table (a loaded table returns 0 at once). Returns 0, or -ENOENT with
 * the reason in err (library missing, symbol missing).
 */
int sc_dynload_table(const char *const *sonames, const char *const *names, void **slots, size_t n, bool *loaded,
                     char *err, size_t errlen);

#endif
