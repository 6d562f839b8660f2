/*
 * request_id.c: x-request-id validation and generation (request_id.h).
 */
#include "obs/request_id.h"
#include "obs/digits.h"

#include <pthread.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

bool sc_request_id_char_ok(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    switch (c) {
    case '-': case '_': case '.': case ':': case '+': case '/': case '=': case '@': case '~':
        return true;
    default:
        return false;
    }
}

bool sc_request_id_valid(const char *p, size_t len)
{
    if (!p || len == 0 || len > SC_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!sc_request_id_char_ok((unsigned char)p[i]))
            return false;
    return true;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sc_request_id_rng_seed(sc_request_id_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

int sc_request_id_rng_init(sc_request_id_rng *r)
{
    uint64_t buf[4];
    size_t got = 0;
    while (got < sizeof(buf)) {
        ssize_t n = getrandom((char *)buf + got, sizeof(buf) - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int err = -errno;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
            x ^= (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)pthread_self() ^ (uint64_t)(uintptr_t)r;
            x ^= sc_now_ns();
            sc_request_id_rng_seed(r, x);
            return err;
        }
        got += (size_t)n;
    }
    /* xoshiro must not start from all zeroes; mixing through splitmix also
     * spreads a weak seed. */
    uint64_t x = buf[0] ^ buf[1] ^ buf[2] ^ buf[3];
    for (int i = 0; i < 4; i++)
        r->s[i] = buf[i] ^ splitmix64(&x);
    if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3]))
        r->s[0] = 1;
    return 0;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t sc_request_id_rng_next(sc_request_id_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[0] + s[3], 23) + s[0];
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* The 8-4-4-4-12 layout: where each of the 16 bytes' two digits go. */
static const uint8_t id_pos[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};

void sc_request_id_format(const uint8_t id[16], char *out)
{
    for (int i = 0; i < 16; i++)
        memcpy(out + id_pos[i], sc_hex_pairs + 2 * id[i], 2);
    out[8] = out[13] = out[18] = out[23] = '-';
    out[SC_REQUEST_ID_LEN] = 0;
}

/* Straight from the two 64-bit outputs into the text, byte i of the ID
 * being byte i % 8 (little end first) of the first or second output; four
 * bytes at a time (sc_hex_word), split where the dashes go. */
size_t sc_request_id_generate(sc_request_id_rng *r, char *out)
{
    uint64_t a = sc_request_id_rng_next(r), c = sc_request_id_rng_next(r);
    char w[4][8];
    uint64_t v[4] = {sc_hex_word(__builtin_bswap32((uint32_t)a)), sc_hex_word(__builtin_bswap32((uint32_t)(a >> 32))),
                     sc_hex_word(__builtin_bswap32((uint32_t)c)), sc_hex_word(__builtin_bswap32((uint32_t)(c >> 32)))};
    memcpy(w, v, sizeof(w));
    memcpy(out, w[0], 8);
    memcpy(out + 9, w[1], 4);
    memcpy(out + 14, w[1] + 4, 4);
    memcpy(out + 19, w[2], 4);
    memcpy(out + 24, w[2] + 4, 4);
    memcpy(out + 28, w[3], 8);
    out[8] = out[13] = out[18] = out[23] = '-';
    out[SC_REQUEST_ID_LEN] = 0;
    return SC_REQUEST_ID_LEN;
}
