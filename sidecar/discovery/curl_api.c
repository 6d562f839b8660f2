#define SC_CURL_API_IMPL 1
#include "discovery/curl_api.h"

#include "core/dynload.h"

sc_curl_api sc_curl;
static bool g_loaded;

int sc_curl_api_load(char *err, size_t errlen)
{
    static const char *const sonames[] = {"libcurl.so.4", "libcurl.so", NULL};
    static const char *const names[] = {
#define SC_X(f) #f,
        SC_CURL_FUNCS(SC_X)
#undef SC_X
    };
    return sc_dynload_table(sonames, names, (void **)&sc_curl, sizeof(names) / sizeof(names[0]), &g_loaded, err,
                            errlen);
}
