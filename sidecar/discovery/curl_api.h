/*
 * curl_api.h: libcurl through a table loaded on first use (core/dynload.h),
 * so a sidecar without a `consul:` section never maps libcurl and its
 * dependencies. Include this instead of <curl/curl.h>; call sc_curl_api_load()
 * before the first curl function.
 */
#ifndef SC_CURL_API_H
#define SC_CURL_API_H

#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

#define SC_CURL_FUNCS(X)                                                                                  \
    X(curl_global_init) X(curl_easy_init) X(curl_easy_cleanup) X(curl_easy_setopt) X(curl_easy_getinfo)   \
    X(curl_easy_strerror) X(curl_multi_init) X(curl_multi_cleanup) X(curl_multi_setopt)                   \
    X(curl_multi_socket_action) X(curl_multi_add_handle) X(curl_multi_remove_handle) X(curl_multi_info_read) \
    X(curl_multi_assign) X(curl_multi_strerror) X(curl_slist_append) X(curl_slist_free_all)   \
    X(curl_easy_perform)

typedef struct sc_curl_api {
#define SC_X(f) __typeof__(f) *f;
    SC_CURL_FUNCS(SC_X)
#undef SC_X
} sc_curl_api;

extern sc_curl_api sc_curl;

/* Loads libcurl (0, or -ENOENT with the reason in err). */
int sc_curl_api_load(char *err, size_t errlen);

#ifndef SC_CURL_API_IMPL
/* curl.h wraps these three in argument-count-checking macros: replace them. */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_multi_setopt
#define curl_global_init sc_curl.curl_global_init
#define curl_easy_init sc_curl.curl_easy_init
#define curl_easy_cleanup sc_curl.curl_easy_cleanup
#define curl_easy_setopt sc_curl.curl_easy_setopt
#define curl_easy_getinfo sc_curl.curl_easy_getinfo
#define curl_easy_strerror sc_curl.curl_easy_strerror
#define curl_multi_init sc_curl.curl_multi_init
#define curl_multi_cleanup sc_curl.curl_multi_cleanup
#define curl_multi_setopt sc_curl.curl_multi_setopt
#define curl_multi_socket_action sc_curl.curl_multi_socket_action
#define curl_multi_add_handle sc_curl.curl_multi_add_handle
#define curl_multi_remove_handle sc_curl.curl_multi_remove_handle
#define curl_multi_info_read sc_curl.curl_multi_info_read
#define curl_multi_assign sc_curl.curl_multi_assign
#define curl_multi_strerror sc_curl.curl_multi_strerror
#define curl_slist_append sc_curl.curl_slist_append
#define curl_slist_free_all sc_curl.curl_slist_free_all
#define curl_easy_perform sc_curl.curl_easy_perform
#endif

#endif
