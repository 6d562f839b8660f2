/*
 * span.c: span records and the SPSC ring (see span.h).
 */
#include "trace/span.h"

#include <stdlib.h>

static const char *const attr_names[SC_ATTR__COUNT] = {
    [SC_ATTR_HTTP_METHOD] = "http.request.method",
    [SC_ATTR_URL_PATH] = "url.path",
    [SC_ATTR_HTTP_STATUS] = "http.response.status_code",
    [SC_ATTR_RPC_SYSTEM] = "rpc.system",
    [SC_ATTR_RPC_SERVICE] = "rpc.service",
    [SC_ATTR_RPC_METHOD] = "rpc.method",
    [SC_ATTR_GRPC_STATUS] = "rpc.grpc.status_code",
    [SC_ATTR_SERVER_ADDRESS] = "server.address",
    [SC_ATTR_SERVER_PORT] = "server.port",
    [SC_ATTR_CLIENT_ADDRESS] = "client.address",
    [SC_ATTR_PROTOCOL_VERSION] = "network.protocol.version",
    [SC_ATTR_RESEND_COUNT] = "http.request.resend_count",
    [SC_ATTR_REQUEST_BODY_SIZE] = "http.request.body.size",
    [SC_ATTR_RESPONSE_BODY_SIZE] = "http.response.body.size",
    [SC_ATTR_ERROR_TYPE] = "error.type",
    [SC_ATTR_UPSTREAM] = "sidecar.upstream",
    [SC_ATTR_DIRECTION] = "sidecar.direction",
    [SC_ATTR_ATTEMPT] = "sidecar.attempt",
    [SC_ATTR_ATTEMPTS] = "sidecar.attempts",
    [SC_ATTR_OUTCOME] = "sidecar.outcome",
    [SC_ATTR_REASON] = "sidecar.reason",
    [SC_ATTR_CALLER] = "sidecar.caller",
    [SC_ATTR_REQUEST_ID] = "sidecar.request_id",
    [SC_ATTR_SAMPLED_BY] = "sidecar.sampled_by",
};

static const struct {
    const char *name, *value;
} event_names[SC_EV__COUNT] = {
    [SC_EV_BULKHEAD_QUEUED] = {"sidecar.bulkhead.queued", "sidecar.queue_length"},
    [SC_EV_BULKHEAD_ADMITTED] = {"sidecar.bulkhead.admitted", "sidecar.wait_ms"},
    [SC_EV_BREAKER_REJECTED] = {"sidecar.breaker.rejected", NULL},
    [SC_EV_BACKOFF] = {"sidecar.retry.backoff", "sidecar.backoff_ms"},
    [SC_EV_PUSHBACK] = {"sidecar.retry.pushback", "sidecar.pushback_ms"},
    [SC_EV_BUDGET_EXHAUSTED] = {"sidecar.retry.budget_exhausted", NULL},
    [SC_EV_FIRST_BYTE] = {"sidecar.response.first_byte", "http.response.status_code"},
};

const char *sc_span_attr_name(sc_span_attr_key k)
{
    return (unsigned)k < SC_ATTR__COUNT ? attr_names[k] : "sidecar.unknown";
}

const char *sc_span_event_name(sc_span_event_kind e)
{
    return (unsigned)e < SC_EV__COUNT ? event_names[e].name : "sidecar.unknown";
}

const char *sc_span_event_value_name(sc_span_event_kind e)
{
    return (unsigned)e < SC_EV__COUNT ? event_names[e].value : NULL;
}

void sc_span_init(sc_span *s, const uint8_t trace_id[SC_TRACE_ID_LEN], const uint8_t span_id[SC_SPAN_ID_LEN],
                  const uint8_t *parent_id, sc_span_kind kind, const char *name, size_t name_len,
                  uint64_t start_ns)
{
    if (!s)
        return;
    memcpy(s->trace_id, trace_id, SC_TRACE_ID_LEN);
    memcpy(s->span_id, span_id, SC_SPAN_ID_LEN);
    if (parent_id)
        memcpy(s->parent_id, parent_id, SC_SPAN_ID_LEN);
    else
        memset(s->parent_id, 0, SC_SPAN_ID_LEN);
    s->kind = (uint8_t)kind;
    s->status = SC_SPAN_STATUS_UNSET;
    s->trace_flags = SC_TRACE_FLAG_SAMPLED;
    s->parent_remote = false;
    s->n_attrs = s->n_events = s->dropped_attrs = s->dropped_events = 0;
    s->attr_set = 0;
    s->status_len = s->pool_used = 0;
    s->status_msg[0] = 0;
    s->name_len = (uint16_t)SC_MIN(name ? name_len : 0, sizeof(s->name));
    if (s->name_len)
        memcpy(s->name, name, s->name_len);
    s->start_ns = s->end_ns = start_ns;
}

static void count_drop(uint8_t *n)
{
    if (*n < 255)
        (*n)++;
}

/* The slot of key k: the existing one, or a new one; NULL when full. */
_Static_assert(SC_ATTR__COUNT <= 32, "sc_span.attr_set has a bit per attribute");

static sc_span_attr *slot(sc_span *s, sc_span_attr_key k)
{
    if (s->attr_set & (UINT32_C(1) << k)) {
        for (unsigned i = 0; i < s->n_attrs; i++)
            if (s->attrs[i].key == k)
                return &s->attrs[i];
    }
    if (s->n_attrs == SC_SPAN_MAX_ATTRS) {
        count_drop(&s->dropped_attrs);
        return NULL;
    }
    s->attr_set |= UINT32_C(1) << k;
    sc_span_attr *a = &s->attrs[s->n_attrs++];
    a->key = (uint8_t)k;
    return a;
}

void sc_span_str(sc_span *s, sc_span_attr_key k, const char *v, size_t len)
{
    if (!s || (unsigned)k >= SC_ATTR__COUNT)
        return;
    if (!v)
        len = 0;
    bool cut = false;
    if (k == SC_ATTR_URL_PATH && len > SC_SPAN_PATH_MAX) {
        len = SC_SPAN_PATH_MAX - 3;
        cut = true;
    }
    size_t need = len + (cut ? 3 : 0);
    if (need > sizeof(s->pool) - s->pool_used) {
        count_drop(&s->dropped_attrs);
        return;
    }
    sc_span_attr *a = slot(s, k);
    if (!a)
        return;
    a->type = SC_ATTR_T_STR;
    a->off = s->pool_used;
    a->len = (uint16_t)need;
    if (len)
        memcpy(s->pool + s->pool_used, v, len);
    if (cut)
        memcpy(s->pool + s->pool_used + len, "...", 3);
    s->pool_used = (uint16_t)(s->pool_used + need);
}

void sc_span_cstr(sc_span *s, sc_span_attr_key k, const char *v)
{
    if (v)
        sc_span_str(s, k, v, strlen(v));
}

static void set_num(sc_span *s, sc_span_attr_key k, int type, int64_t v)
{
    if (!s || (unsigned)k >= SC_ATTR__COUNT)
        return;
    sc_span_attr *a = slot(s, k);
    if (!a)
        return;
    a->type = (uint8_t)type;
    a->len = a->off = 0;
    a->i = v;
}

void sc_span_int(sc_span *s, sc_span_attr_key k, int64_t v) { set_num(s, k, SC_ATTR_T_INT, v); }
void sc_span_bool(sc_span *s, sc_span_attr_key k, bool v) { set_num(s, k, SC_ATTR_T_BOOL, v); }

void sc_span_event_add(sc_span *s, sc_span_event_kind e, uint64_t t_ns, int64_t value)
{
    if (!s || (unsigned)e >= SC_EV__COUNT)
        return;
    if (s->n_events == SC_SPAN_MAX_EVENTS) {
        count_drop(&s->dropped_events);
        return;
    }
    s->events[s->n_events++] = (sc_span_event){.t_ns = t_ns, .value = value, .kind = (uint8_t)e};
}

void sc_span_set_status(sc_span *s, sc_span_status st, const char *msg)
{
    if (!s)
        return;
    s->status = (uint8_t)st;
    s->status_len = 0;
    if (st == SC_SPAN_STATUS_ERROR && msg) {
        size_t n = SC_MIN(strlen(msg), (size_t)SC_SPAN_STATUS_MAX);
        memcpy(s->status_msg, msg, n);
        s->status_len = (uint16_t)n;
    }
    s->status_msg[s->status_len] = 0;
}

void sc_span_end(sc_span *s, uint64_t end_ns)
{
    if (s)
        s->end_ns = end_ns < s->start_ns ? s->start_ns : end_ns;
}

/* ---- ring ---- */

int sc_span_ring_init(sc_span_ring *r, uint32_t capacity)
{
    uint32_t cap = 2;
    while (cap < capacity && cap < (UINT32_C(1) << 30))
        cap <<= 1;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->dropped, 0);
    atomic_init(&r->committed, 0);
    r->mask = cap - 1;
    r->slots = calloc(cap, sizeof(sc_span));
    return r->slots ? 0 : -ENOMEM;
}

void sc_span_ring_free(sc_span_ring *r)
{
    free(r->slots);
    r->slots = NULL;
}

uint32_t sc_span_ring_capacity(const sc_span_ring *r) { return r->mask + 1; }

sc_span *sc_span_ring_reserve(sc_span_ring *r)
{
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head - tail > r->mask) {
        atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
        return NULL;
    }
    return &r->slots[head & r->mask];
}

/* Asks for a span's memory ahead of its use: the ring is larger than the
 * core's caches and a slot comes round again only after the whole ring, so
 * each of the dozen lines a span writes or reads would otherwise miss when
 * it is touched. */
void sc_span_prefetch(const sc_span *s, bool write)
{
    const char *p = (const char *)s;
    for (size_t off = 0; off < sizeof(*s); off += 64) {
        if (write)
            __builtin_prefetch(p + off, 1, 3);
        else
            __builtin_prefetch(p + off, 0, 3);
    }
}

uint32_t sc_span_ring_commit(sc_span_ring *r)
{
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed) + 1;
    atomic_store_explicit(&r->head, head, memory_order_release);
    atomic_fetch_add_explicit(&r->committed, 1, memory_order_relaxed);
    uint32_t waiting = head - atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (waiting <= r->mask) /* the next slot is free: it is the next span's */
        sc_span_prefetch(&r->slots[head & r->mask], true);
    return waiting;
}

uint32_t sc_span_ring_pending(sc_span_ring *r)
{
    return atomic_load_explicit(&r->head, memory_order_acquire) -
           atomic_load_explicit(&r->tail, memory_order_relaxed);
}

const sc_span *sc_span_ring_peek(sc_span_ring *r, uint32_t i)
{
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    return &r->slots[(tail + i) & r->mask];
}

void sc_span_ring_release(sc_span_ring *r, uint32_t n)
{
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    atomic_store_explicit(&r->tail, tail + n, memory_order_release);
}
