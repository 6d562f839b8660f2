/*
 * breaker.c: see breaker.h.
 *
 * The word: bits 0-1 state, 2-3 forced mode, 4-13 probes issued in this
 * half-open period, 14-23 probes that succeeded, 24-63 the episode (starts
 * at 1 and grows by one with every transition). A probe id is the episode
 * of its half-open period; the number of a transition is the episode it
 * created minus one. Because every transition changes the episode, a CAS
 * can never succeed against a word read before another transition.
 */
#include "resilience/breaker.h"

#include "http/grpc.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define W_STATE(w) ((sc_breaker_state)((w)&3u))
#define W_FORCED(w) ((int)(((w) >> 2) & 3u))
#define W_ISSUED(w) ((uint32_t)(((w) >> 4) & 0x3FFu))
#define W_OK(w) ((uint32_t)(((w) >> 14) & 0x3FFu))
#define W_EP(w) ((w) >> 24)
#define W_ONE_ISSUED (1ull << 4)
#define W_ONE_OK (1ull << 14)
#define EP_MASK ((1ull << 40) - 1)

static uint64_t mkword(sc_breaker_state s, int forced, uint32_t issued, uint32_t ok, uint64_t ep)
{
    return (uint64_t)s | (uint64_t)forced << 2 | (uint64_t)issued << 4 | (uint64_t)ok << 14 |
           (ep & EP_MASK) << 24;
}

static const char *const state_names[] = {"closed", "open", "half-open"};

const char *sc_breaker_state_name(sc_breaker_state s)
{
    return (unsigned)s < SC_ARRAY_LEN(state_names) ? state_names[s] : "?";
}

static uint64_t percent_to_ppm(double pct)
{
    if (!(pct > 0))
        return 0;
    if (pct >= 100)
        return 1000000;
    return (uint64_t)llround(pct * 10000.0);
}

void sc_breaker_init(sc_breaker *b, const sc_breaker_policy *p, uint64_t now_ms)
{
    memset(b, 0, sizeof(*b));
    b->enabled = p->enabled;
    b->open_for_ms = p->open_for_ms;
    b->slow_call_ms = p->slow_call_ms;
    b->min_calls = p->min_calls ? p->min_calls : 1;
    uint32_t h = p->half_open_calls ? p->half_open_calls : 1;
    b->half_open_calls = h > SC_BREAKER_MAX_PROBES ? SC_BREAKER_MAX_PROBES : h;
    b->consecutive_failures = p->consecutive_failures;
    b->failure_ppm = percent_to_ppm(p->failure_rate);
    b->slow_ppm = percent_to_ppm(p->slow_call_rate);
    b->failure_rate = p->failure_rate;
    b->slow_call_rate = p->slow_call_rate;
    atomic_init(&b->word, mkword(SC_BREAKER_CLOSED, 0, 0, 0, 1));
    atomic_init(&b->opened_at_ms, now_ms);
    atomic_init(&b->consecutive, 0);
    atomic_init(&b->to_open, 0);
    atomic_init(&b->to_half_open, 0);
    atomic_init(&b->to_closed, 0);
    sc_window_init(&b->window, p->window_ms);
    atomic_init(&b->last_lock, 0);
    atomic_init(&b->last_seq, 0);
    atomic_init(&b->last_at_ms, 0);
    atomic_init(&b->last_fromto, 0);
    for (size_t i = 0; i < SC_ARRAY_LEN(b->last_reason); i++)
        atomic_init(&b->last_reason[i], 0);
}

sc_breaker_state sc_breaker_state_now(const sc_breaker *b)
{
    return W_STATE(atomic_load_explicit(&b->word, memory_order_acquire));
}

static void store_max(_Atomic uint64_t *a, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(a, memory_order_relaxed);
    while (cur < v &&
           !atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

/* Seqlock writer that never waits long: a transition is rare and a writer
 * holds the lock for a few stores; after a bounded spin it gives up. Only a
 * newer transition replaces the record. The data words are stored with
 * release and loaded with acquire (instead of relaxed plus fences): a reader
 * that saw any word of a write then also sees that write's odd lock value,
 * and ThreadSanitizer understands it. */
static void publish_last(sc_breaker *b, const sc_breaker_transition *t)
{
    uint64_t words[SC_ARRAY_LEN(b->last_reason)];
    _Static_assert(sizeof(words) == sizeof(t->reason), "reason size");
    memcpy(words, t->reason, sizeof(words));
    for (int spin = 0; spin < 1000; spin++) {
        uint64_t s = atomic_load_explicit(&b->last_lock, memory_order_relaxed);
        if (s & 1)
            continue;
        if (!atomic_compare_exchange_weak_explicit(&b->last_lock, &s, s + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        if (atomic_load_explicit(&b->last_seq, memory_order_relaxed) < t->seq) {
            const memory_order rel = memory_order_release;
            atomic_store_explicit(&b->last_seq, t->seq, rel);
            atomic_store_explicit(&b->last_at_ms, t->at_ms, rel);
            atomic_store_explicit(&b->last_fromto, (uint64_t)t->from << 8 | (uint64_t)t->to, rel);
            for (size_t i = 0; i < SC_ARRAY_LEN(words); i++)
                atomic_store_explicit(&b->last_reason[i], words[i], rel);
        }
        atomic_store_explicit(&b->last_lock, s + 2, memory_order_release);
        return;
    }
}

static bool read_last(const sc_breaker *b, sc_breaker_transition *t)
{
    uint64_t words[SC_ARRAY_LEN(b->last_reason)];
    const memory_order acq = memory_order_acquire;
    for (int tries = 0; tries < 1000; tries++) {
        uint64_t s1 = atomic_load_explicit(&b->last_lock, acq);
        if (s1 & 1)
            continue;
        uint64_t seq = atomic_load_explicit(&b->last_seq, acq);
        uint64_t at = atomic_load_explicit(&b->last_at_ms, acq);
        uint64_t ft = atomic_load_explicit(&b->last_fromto, acq);
        for (size_t i = 0; i < SC_ARRAY_LEN(words); i++)
            words[i] = atomic_load_explicit(&b->last_reason[i], acq);
        if (atomic_load_explicit(&b->last_lock, acq) != s1)
            continue;
        t->seq = seq;
        t->at_ms = at;
        t->from = (sc_breaker_state)((ft >> 8) & 3u);
        t->to = (sc_breaker_state)(ft & 3u);
        memcpy(t->reason, words, sizeof(t->reason));
        t->reason[sizeof(t->reason) - 1] = 0;
        return true;
    }
    return false;
}

/*
 * Tries to replace *cur with a word in state `to`. On success counts and
 * publishes the transition, fills *tr and returns true; on a lost CAS
 * returns false with *cur reloaded (the caller decides again).
 */
static bool move(sc_breaker *b, uint64_t *cur, sc_breaker_state to, int forced, uint32_t issued,
                 uint64_t now_ms, const char *reason, sc_breaker_transition *tr)
{
    uint64_t ep = (W_EP(*cur) + 1) & EP_MASK;
    uint64_t next = mkword(to, forced, issued, 0, ep);
    /* Written before the CAS so that whoever sees OPEN also sees its time;
     * a losing writer can only push it later by the time it took to lose. */
    if (to == SC_BREAKER_OPEN)
        store_max(&b->opened_at_ms, now_ms);
    if (!atomic_compare_exchange_strong_explicit(&b->word, cur, next, memory_order_acq_rel,
                                                 memory_order_acquire))
        return false;
    sc_breaker_state from = W_STATE(*cur);
    *cur = next;
    if (from != to) {
        _Atomic uint64_t *c = to == SC_BREAKER_OPEN        ? &b->to_open
                              : to == SC_BREAKER_HALF_OPEN ? &b->to_half_open
                                                           : &b->to_closed;
        atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
    }
    sc_breaker_transition t = {.seq = ep - 1, .at_ms = now_ms, .from = from, .to = to};
    snprintf(t.reason, sizeof(t.reason), "%s", reason);
    publish_last(b, &t);
    if (tr)
        *tr = t;
    return true;
}

bool sc_breaker_allow_ex(sc_breaker *b, uint64_t now_ms, uint64_t *probe_id,
                         sc_breaker_transition *tr)
{
    if (probe_id)
        *probe_id = 0;
    if (tr)
        tr->seq = 0;
    if (!b->enabled)
        return true;
    uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
    for (;;) {
        int forced = W_FORCED(w);
        if (forced == SC_BREAKER_FORCE_OPEN)
            return false;
        if (forced == SC_BREAKER_FORCE_CLOSED)
            return true;
        switch (W_STATE(w)) {
        case SC_BREAKER_CLOSED:
            return true;
        case SC_BREAKER_OPEN: {
            uint64_t at = atomic_load_explicit(&b->opened_at_ms, memory_order_relaxed);
            if (now_ms < at || now_ms - at < b->open_for_ms)
                return false;
            char reason[128];
            snprintf(reason, sizeof(reason), "open for %llu ms (open_for %llu ms)",
                     (unsigned long long)(now_ms - at), (unsigned long long)b->open_for_ms);
            if (move(b, &w, SC_BREAKER_HALF_OPEN, 0, 1, now_ms, reason, tr)) {
                if (probe_id)
                    *probe_id = W_EP(w);
                return true;
            }
            continue;
        }
        case SC_BREAKER_HALF_OPEN:
            if (W_ISSUED(w) >= b->half_open_calls)
                return false;
            if (atomic_compare_exchange_weak_explicit(&b->word, &w, w + W_ONE_ISSUED,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire)) {
                if (probe_id)
                    *probe_id = W_EP(w);
                return true;
            }
            continue;
        default:
            return false; /* not reached: the state has three values */
        }
    }
}

bool sc_breaker_allow(sc_breaker *b, uint64_t now_ms, bool *probe)
{
    uint64_t id;
    bool ok = sc_breaker_allow_ex(b, now_ms, &id, NULL);
    if (probe)
        *probe = id != 0;
    return ok;
}

/* Decides whether the closed breaker should open; fills reason when so. */
static bool should_trip(sc_breaker *b, uint64_t now_ms, bool failure, uint32_t consec,
                        char *reason, size_t cap)
{
    if (failure && b->consecutive_failures && consec >= b->consecutive_failures) {
        snprintf(reason, cap, "%u consecutive failures >= %u", consec, b->consecutive_failures);
        return true;
    }
    uint64_t s[4];
    sc_window_sum(&b->window, now_ms, NULL, s);
    uint64_t calls = s[0], fails = SC_MIN(s[1], calls), slow = SC_MIN(s[3], calls);
    if (calls == 0 || calls < b->min_calls)
        return false;
    if (fails && fails * 1000000u >= b->failure_ppm * calls) {
        snprintf(reason, cap, "failure rate %.3g%% >= %g%% over %llu calls",
                 100.0 * (double)fails / (double)calls, b->failure_rate,
                 (unsigned long long)calls);
        return true;
    }
    if (b->slow_call_ms && slow && slow * 1000000u >= b->slow_ppm * calls) {
        snprintf(reason, cap, "slow call rate %.3g%% >= %g%% over %llu calls (slow >= %llu ms)",
                 100.0 * (double)slow / (double)calls, b->slow_call_rate,
                 (unsigned long long)calls, (unsigned long long)b->slow_call_ms);
        return true;
    }
    return false;
}

sc_breaker_state sc_breaker_record_ex(sc_breaker *b, uint64_t now_ms, bool failure, bool slow,
                                      uint64_t probe_id, sc_breaker_transition *tr)
{
    if (tr)
        tr->seq = 0;
    slow = slow && b->slow_call_ms;
    sc_window_add(&b->window, now_ms, SC_WINDOW_HI(1) | SC_WINDOW_LO(failure ? 1 : 0),
                  slow ? SC_WINDOW_LO(1) : 0);
    uint32_t consec = 0;
    if (failure)
        consec = atomic_fetch_add_explicit(&b->consecutive, 1, memory_order_relaxed) + 1;
    else if (atomic_load_explicit(&b->consecutive, memory_order_relaxed) != 0)
        atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
    if (!b->enabled)
        return SC_BREAKER_CLOSED;

    char reason[128];
    uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
    for (;;) {
        if (W_FORCED(w))
            return W_STATE(w);
        switch (W_STATE(w)) {
        case SC_BREAKER_OPEN:
            return SC_BREAKER_OPEN;
        case SC_BREAKER_CLOSED:
            if (!failure && !slow)
                return SC_BREAKER_CLOSED;
            if (!should_trip(b, now_ms, failure, consec, reason, sizeof(reason)))
                return SC_BREAKER_CLOSED;
            if (move(b, &w, SC_BREAKER_OPEN, 0, 0, now_ms, reason, tr))
                return SC_BREAKER_OPEN;
            continue;
        case SC_BREAKER_HALF_OPEN: {
            bool is_probe = probe_id == SC_BREAKER_PROBE_CURRENT ||
                            (probe_id != 0 && probe_id == W_EP(w));
            if (!is_probe)
                return SC_BREAKER_HALF_OPEN;
            if (failure || slow) {
                if (failure)
                    snprintf(reason, sizeof(reason), "probe failed");
                else
                    snprintf(reason, sizeof(reason), "probe slow (>= %llu ms)",
                             (unsigned long long)b->slow_call_ms);
                if (move(b, &w, SC_BREAKER_OPEN, 0, 0, now_ms, reason, tr))
                    return SC_BREAKER_OPEN;
                continue;
            }
            uint32_t ok = W_OK(w);
            if (ok >= W_ISSUED(w)) /* a stale probe without an outstanding slot */
                return SC_BREAKER_HALF_OPEN;
            if (ok + 1 >= b->half_open_calls) {
                /* Cleared before the CAS: once CLOSED is visible no
                 * concurrent failure may trip on figures from before. */
                sc_window_clear(&b->window);
                atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
                snprintf(reason, sizeof(reason), "%u probe%s succeeded", ok + 1,
                         ok ? "s" : "");
                if (move(b, &w, SC_BREAKER_CLOSED, 0, 0, now_ms, reason, tr))
                    return SC_BREAKER_CLOSED;
                continue;
            }
            if (atomic_compare_exchange_weak_explicit(&b->word, &w, w + W_ONE_OK,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire))
                return SC_BREAKER_HALF_OPEN;
            continue;
        }
        default:
            return W_STATE(w);
        }
    }
}

sc_breaker_state sc_breaker_record(sc_breaker *b, uint64_t now_ms, bool failure, bool slow,
                                   bool probe)
{
    return sc_breaker_record_ex(b, now_ms, failure, slow, probe ? SC_BREAKER_PROBE_CURRENT : 0,
                                NULL);
}

void sc_breaker_abandon(sc_breaker *b, uint64_t probe_id)
{
    if (!probe_id || !b->enabled)
        return;
    uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
    for (;;) {
        if (W_FORCED(w) || W_STATE(w) != SC_BREAKER_HALF_OPEN)
            return;
        if (probe_id != SC_BREAKER_PROBE_CURRENT && probe_id != W_EP(w))
            return;
        if (W_ISSUED(w) <= W_OK(w))
            return;
        if (atomic_compare_exchange_weak_explicit(&b->word, &w, w - W_ONE_ISSUED,
                                                  memory_order_acq_rel, memory_order_acquire))
            return;
    }
}

int sc_breaker_force_ex(sc_breaker *b, int mode, uint64_t now_ms, sc_breaker_transition *tr)
{
    if (tr)
        tr->seq = 0;
    if (mode != SC_BREAKER_RELEASE && mode != SC_BREAKER_FORCE_OPEN &&
        mode != SC_BREAKER_FORCE_CLOSED)
        return -EINVAL;
    uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
    for (;;) {
        int forced = W_FORCED(w);
        bool done;
        switch (mode) {
        case SC_BREAKER_FORCE_OPEN:
            if (forced == SC_BREAKER_FORCE_OPEN)
                return 0;
            done = move(b, &w, SC_BREAKER_OPEN, SC_BREAKER_FORCE_OPEN, 0, now_ms,
                        "forced open by operator", tr);
            break;
        case SC_BREAKER_FORCE_CLOSED:
            if (forced == SC_BREAKER_FORCE_CLOSED)
                return 0;
            done = move(b, &w, SC_BREAKER_CLOSED, SC_BREAKER_FORCE_CLOSED, 0, now_ms,
                        "forced closed by operator", tr);
            break;
        default:
            if (forced == 0)
                return 0;
            done = move(b, &w,
                        forced == SC_BREAKER_FORCE_OPEN ? SC_BREAKER_HALF_OPEN : SC_BREAKER_CLOSED,
                        0, 0, now_ms, "released by operator", tr);
            break;
        }
        if (done)
            return 0;
    }
}

void sc_breaker_force(sc_breaker *b, int mode, uint64_t now_ms)
{
    (void)sc_breaker_force_ex(b, mode, now_ms, NULL);
}

void sc_breaker_snapshot(const sc_breaker *b, uint64_t now_ms, sc_breaker_view *out)
{
    memset(out, 0, sizeof(*out));
    /* the record first: it is published after its transition, so
     * last.seq <= transitions always holds in the view */
    if (!read_last(b, &out->last))
        memset(&out->last, 0, sizeof(out->last));
    out->last_transition_ms = out->last.seq ? out->last.at_ms : 0;
    uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
    out->state = W_STATE(w);
    out->forced = W_FORCED(w);
    if (out->state == SC_BREAKER_HALF_OPEN) {
        out->probes_issued = W_ISSUED(w);
        out->probes_succeeded = W_OK(w);
    }
    uint64_t s[4];
    sc_window_sum(&b->window, now_ms, NULL, s);
    out->calls = s[0];
    out->failures = SC_MIN(s[1], s[0]);
    out->slow = SC_MIN(s[3], s[0]);
    if (out->calls) {
        out->failure_rate = 100.0 * (double)out->failures / (double)out->calls;
        out->slow_rate = 100.0 * (double)out->slow / (double)out->calls;
    }
    out->consecutive_failures = atomic_load_explicit(&b->consecutive, memory_order_relaxed);
    if (out->state == SC_BREAKER_OPEN && !out->forced) {
        uint64_t at = atomic_load_explicit(&b->opened_at_ms, memory_order_relaxed);
        uint64_t until = at + b->open_for_ms < at ? UINT64_MAX : at + b->open_for_ms;
        out->ms_until_half_open = until > now_ms ? until - now_ms : 0;
    }
    out->transitions = W_EP(w) - 1;
    out->to_open = atomic_load_explicit(&b->to_open, memory_order_relaxed);
    out->to_half_open = atomic_load_explicit(&b->to_half_open, memory_order_relaxed);
    out->to_closed = atomic_load_explicit(&b->to_closed, memory_order_relaxed);
}

bool sc_breaker_counts_as_failure(const sc_breaker_policy *p, int http_status, int grpc_status,
                                  uint32_t cond)
{
    if (cond & p->failure_on)
        return true;
    if (grpc_status > 0 && grpc_status <= SC_GRPC_STATUS_MAX &&
        (p->failure_on_grpc >> grpc_status) & 1u)
        return true;
    if (http_status >= 500 && http_status <= 599) {
        if (p->failure_on & SC_COND_5XX)
            return true;
        if ((p->failure_on & SC_COND_GATEWAY_ERROR) && http_status >= 502 && http_status <= 504)
            return true;
    }
    if (http_status >= 400 && http_status <= 499 && (p->failure_on & SC_COND_4XX))
        return true;
    return false;
}
