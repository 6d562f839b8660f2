/*
 * curl_loop.h: libcurl's multi interface driven by a libev loop, for
 * clients on the control thread. CURLMOPT_SOCKETFUNCTION keeps one ev_io
 * per socket curl wants watched, CURLMOPT_TIMERFUNCTION one ev_timer; both
 * call curl_multi_socket_action and then hand every finished transfer to
 * the loop's `done` callback, after the easy handle left the multi handle
 * (so the callback may reuse or free it). The multi handle keeps its
 * connections alive between transfers.
 *
 * libcurl must be loaded (sc_curl_api_load) and initialised before
 * sc_curl_loop_new. Everything runs on the thread of the ev loop.
 * Ownership: the caller owns its easy handles and removes those still
 * running (sc_curl_loop_remove) before sc_curl_loop_free.
 */
#ifndef SC_CURL_LOOP_H
#define SC_CURL_LOOP_H

#include "core/common.h"
#include "discovery/curl_api.h"

struct ev_loop;
typedef struct sc_curl_loop sc_curl_loop;

/* A finished transfer: `priv` is what the caller set as CURLOPT_PRIVATE. */
typedef void (*sc_curl_done_cb)(CURL *easy, CURLcode result, void *priv, void *arg);

/* NULL when libcurl cannot create a multi handle (or out of memory). */
sc_curl_loop *sc_curl_loop_new(struct ev_loop *loop, sc_curl_done_cb done, void *arg);
/* Starts a transfer; 0 or -EIO. */
int sc_curl_loop_add(sc_curl_loop *cl, CURL *easy);
/* Stops a transfer without calling `done`. */
void sc_curl_loop_remove(sc_curl_loop *cl, CURL *easy);
void sc_curl_loop_free(sc_curl_loop *cl);

#endif
