/*
 * grpc_api.h: gRPC core through a table loaded on first use (core/dynload.h),
 * so a sidecar without `health.grpc_listen` never maps libgrpc, its C++
 * runtime and their static initialisers. Include this instead of the
 * <grpc/...> headers; call sc_grpc_api_load() before the first grpc call.
 */
#ifndef SC_GRPC_API_H
#define SC_GRPC_API_H

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#define SC_GRPC_FUNCS(X)                                                                                         \
    X(gpr_inf_future) X(gpr_now) X(gpr_time_add) X(gpr_time_from_millis) X(grpc_byte_buffer_destroy)              \
    X(grpc_byte_buffer_reader_destroy) X(grpc_byte_buffer_reader_init) X(grpc_byte_buffer_reader_readall)         \
    X(grpc_call_details_destroy) X(grpc_call_details_init) X(grpc_call_start_batch) X(grpc_call_unref)            \
    X(grpc_completion_queue_create_for_next) X(grpc_completion_queue_destroy) X(grpc_completion_queue_next)       \
    X(grpc_completion_queue_shutdown) X(grpc_init) X(grpc_insecure_server_credentials_create)                     \
    X(grpc_metadata_array_destroy) X(grpc_metadata_array_init) X(grpc_raw_byte_buffer_create)                     \
    X(grpc_server_add_http2_port) X(grpc_server_cancel_all_calls) X(grpc_server_create)                           \
    X(grpc_server_credentials_release) X(grpc_server_destroy) X(grpc_server_register_completion_queue)            \
    X(grpc_server_request_call) X(grpc_server_shutdown_and_notify) X(grpc_server_start) X(grpc_shutdown)          \
    X(grpc_slice_from_copied_buffer) X(grpc_slice_from_copied_string) X(grpc_slice_str_cmp) X(grpc_slice_unref)

typedef struct sc_grpc_api {
#define SC_X(f) __typeof__(f) *f;
    SC_GRPC_FUNCS(SC_X)
#undef SC_X
} sc_grpc_api;

extern sc_grpc_api sc_grpcapi;

/* Loads gRPC core (0, or -ENOENT with the reason in err). */
int sc_grpc_api_load(char *err, size_t errlen);

#ifndef SC_GRPC_API_IMPL
#define gpr_inf_future sc_grpcapi.gpr_inf_future
#define gpr_now sc_grpcapi.gpr_now
#define gpr_time_add sc_grpcapi.gpr_time_add
#define gpr_time_from_millis sc_grpcapi.gpr_time_from_millis
#define grpc_byte_buffer_destroy sc_grpcapi.grpc_byte_buffer_destroy
#define grpc_byte_buffer_reader_destroy sc_grpcapi.grpc_byte_buffer_reader_destroy
#define grpc_byte_buffer_reader_init sc_grpcapi.grpc_byte_buffer_reader_init
#define grpc_byte_buffer_reader_readall sc_grpcapi.grpc_byte_buffer_reader_readall
#define grpc_call_details_destroy sc_grpcapi.grpc_call_details_destroy
#define grpc_call_details_init sc_grpcapi.grpc_call_details_init
#define grpc_call_start_batch sc_grpcapi.grpc_call_start_batch
#define grpc_call_unref sc_grpcapi.grpc_call_unref
#define grpc_completion_queue_create_for_next sc_grpcapi.grpc_completion_queue_create_for_next
#define grpc_completion_queue_destroy sc_grpcapi.grpc_completion_queue_destroy
#define grpc_completion_queue_next sc_grpcapi.grpc_completion_queue_next
#define grpc_completion_queue_shutdown sc_grpcapi.grpc_completion_queue_shutdown
#define grpc_init sc_grpcapi.grpc_init
#define grpc_insecure_server_credentials_create sc_grpcapi.grpc_insecure_server_credentials_create
#define grpc_metadata_array_destroy sc_grpcapi.grpc_metadata_array_destroy
#define grpc_metadata_array_init sc_grpcapi.grpc_metadata_array_init
#define grpc_raw_byte_buffer_create sc_grpcapi.grpc_raw_byte_buffer_create
#define grpc_server_add_http2_port sc_grpcapi.grpc_server_add_http2_port
#define grpc_server_cancel_all_calls sc_grpcapi.grpc_server_cancel_all_calls
#define grpc_server_create sc_grpcapi.grpc_server_create
#define grpc_server_credentials_release sc_grpcapi.grpc_server_credentials_release
#define grpc_server_destroy sc_grpcapi.grpc_server_destroy
#define grpc_server_register_completion_queue sc_grpcapi.grpc_server_register_completion_queue
#define grpc_server_request_call sc_grpcapi.grpc_server_request_call
#define grpc_server_shutdown_and_notify sc_grpcapi.grpc_server_shutdown_and_notify
#define grpc_server_start sc_grpcapi.grpc_server_start
#define grpc_shutdown sc_grpcapi.grpc_shutdown
#define grpc_slice_from_copied_buffer sc_grpcapi.grpc_slice_from_copied_buffer
#define grpc_slice_from_copied_string sc_grpcapi.grpc_slice_from_copied_string
#define grpc_slice_str_cmp sc_grpcapi.grpc_slice_str_cmp
#define grpc_slice_unref sc_grpcapi.grpc_slice_unref
#endif

#endif
