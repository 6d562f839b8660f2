/*
 * grpc_health_pb.c: the two grpc.health.v1 messages, encoded and decoded by
 * hand (see grpc_health.h). Pure functions over caller-owned bytes, apart
 * from the gRPC server in grpc_health.c so that unit tests and the fuzz
 * target link them without gRPC core.
 */
#include "discovery/grpc_health.h"

#include <string.h>

static int varint(const uint8_t *p, size_t n, size_t *off, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*off >= n)
            return -EPROTO;
        uint8_t b = p[(*off)++];
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -EPROTO;
}

int sc_grpc_health_decode_request(const uint8_t *p, size_t n, char *service, size_t cap)
{
    if (cap == 0)
        return -ENOSPC;
    service[0] = 0;
    size_t off = 0;
    while (off < n) {
        uint64_t key, len;
        if (varint(p, n, &off, &key) < 0 || (key >> 3) == 0)
            return -EPROTO;
        switch (key & 7) {
        case 0:
            if (varint(p, n, &off, &len) < 0 || (key >> 3) == 1)
                return -EPROTO;
            break;
        case 1:
            if (n - off < 8 || (key >> 3) == 1)
                return -EPROTO;
            off += 8;
            break;
        case 5:
            if (n - off < 4 || (key >> 3) == 1)
                return -EPROTO;
            off += 4;
            break;
        case 2:
            if (varint(p, n, &off, &len) < 0 || len > n - off)
                return -EPROTO;
            if ((key >> 3) == 1) {
                if (len >= cap)
                    return -ENOSPC;
                if (memchr(p + off, 0, (size_t)len))
                    return -EPROTO;
                memcpy(service, p + off, (size_t)len);
                service[len] = 0;
            }
            off += (size_t)len;
            break;
        default:
            return -EPROTO;
        }
    }
    return 0;
}

size_t sc_grpc_health_encode_response(unsigned status, uint8_t *out)
{
    if (status == 0)
        return 0;
    size_t n = 0;
    out[n++] = 0x08;
    uint64_t v = status;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        out[n++] = v ? (b | 0x80) : b;
    } while (v);
    return n;
}
