#define SC_GRPC_API_IMPL 1
#include "discovery/grpc_api.h"

#include "core/dynload.h"

sc_grpc_api sc_grpcapi;
static bool g_loaded;

int sc_grpc_api_load(char *err, size_t errlen)
{
    static const char *const sonames[] = {"libgrpc.so.29", "libgrpc.so", NULL};
    static const char *const names[] = {
#define SC_X(f) #f,
        SC_GRPC_FUNCS(SC_X)
#undef SC_X
    };
    return sc_dynload_table(sonames, names, (void **)&sc_grpcapi, sizeof(names) / sizeof(names[0]), &g_loaded, err,
                            errlen);
}
