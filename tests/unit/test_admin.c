/*
 * test_admin.c: the pure parts of the admin endpoint: the query-string
 * parser, the Host check against DNS rebinding, the cross-site checks of
 * state-changing requests and the bearer token; the admin page's
 * Content-Security-Policy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "admin/admin_http.h"
#include "admin/admin_page.h"

#include <errno.h>

#define T(s) (s), strlen(s)

/* ---- query string ---- */

static void test_query_basic(void **state)
{
    (void)state;
    sc_admin_query q;
    const char *why = NULL;
    assert_int_equal(sc_admin_query_parse(T("/breaker?upstream=pay&action=open"), &q, &why), 0);
    assert_int_equal(q.n, 2);
    assert_string_equal(sc_admin_query_get(&q, "upstream"), "pay");
    assert_string_equal(sc_admin_query_get(&q, "action"), "open");
    assert_null(sc_admin_query_get(&q, "level"));

    /* no '?': no parameters */
    assert_int_equal(sc_admin_query_parse(T("/log"), &q, &why), 0);
    assert_int_equal(q.n, 0);
    /* empty segments are skipped; a flag without '=' has an empty value */
    assert_int_equal(sc_admin_query_parse(T("/x?&a=1&&flag&b=&"), &q, &why), 0);
    assert_int_equal(q.n, 3);
    assert_string_equal(sc_admin_query_get(&q, "a"), "1");
    assert_string_equal(sc_admin_query_get(&q, "flag"), "");
    assert_string_equal(sc_admin_query_get(&q, "b"), "");
    /* only the first '=' splits */
    assert_int_equal(sc_admin_query_parse(T("/x?a=b=c"), &q, &why), 0);
    assert_string_equal(sc_admin_query_get(&q, "a"), "b=c");
}

/* The defect: strstr found "level=" inside another parameter's value. */
static void test_query_value_is_not_a_name(void **state)
{
    (void)state;
    sc_admin_query q;
    assert_int_equal(sc_admin_query_parse(T("/log?x=level=debug"), &q, NULL), 0);
    assert_null(sc_admin_query_get(&q, "level"));
    assert_string_equal(sc_admin_query_get(&q, "x"), "level=debug");
    assert_int_equal(sc_admin_query_parse(T("/log?xlevel=debug"), &q, NULL), 0);
    assert_null(sc_admin_query_get(&q, "level"));
    static const char *const allowed[] = {"level"};
    assert_string_equal(sc_admin_query_unknown(&q, allowed, 1), "xlevel");
    assert_int_equal(sc_admin_query_parse(T("/log?level=warn"), &q, NULL), 0);
    assert_null(sc_admin_query_unknown(&q, allowed, 1));
}

static void test_query_decoding(void **state)
{
    (void)state;
    sc_admin_query q;
    assert_int_equal(sc_admin_query_parse(T("/b?upstream=a%2Fb%20c+d&act%69on=open"), &q, NULL), 0);
    assert_string_equal(sc_admin_query_get(&q, "upstream"), "a/b c d");
    assert_string_equal(sc_admin_query_get(&q, "action"), "open");
    /* encoded separators are data, not separators */
    assert_int_equal(sc_admin_query_parse(T("/b?a=1%262%3D3"), &q, NULL), 0);
    assert_int_equal(q.n, 1);
    assert_string_equal(sc_admin_query_get(&q, "a"), "1&2=3");
    assert_int_equal(sc_admin_query_parse(T("/b?a=%7e%7E"), &q, NULL), 0);
    assert_string_equal(sc_admin_query_get(&q, "a"), "~~");
}

static void test_query_bad(void **state)
{
    (void)state;
    static const struct {
        const char *target;
        int err;
        const char *why;
    } cases[] = {
        {"/b?a=%", -EINVAL, "two hex digits"},
        {"/b?a=%4", -EINVAL, "two hex digits"},
        {"/b?a=%zz", -EINVAL, "two hex digits"},
        {"/b?a%=1", -EINVAL, "two hex digits"},
        {"/b?a=x%00y", -EINVAL, "NUL"},
        {"/b?=1", -EINVAL, "no name"},
        {"/b?a=1&a=2", -EINVAL, "twice"},
        {"/b?a=1&%61=2", -EINVAL, "twice"},
        {"/b?a=1#frag", -EINVAL, "'#'"},
        {"/b?a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9&j=10&k=11&l=12&m=13&n=14&o=15&p=16&q=17", -E2BIG,
         "too many"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sc_admin_query q;
        const char *why = NULL;
        int rv = sc_admin_query_parse(T(cases[i].target), &q, &why);
        if (rv != cases[i].err || !why || !strstr(why, cases[i].why))
            fail_msg("%s: rv %d why %s", cases[i].target, rv, why ? why : "(null)");
        assert_int_equal(q.n, 0);
    }
    /* long: refused, never written past the buffer */
    static char big[SC_ADMIN_QUERY_MAX_TEXT * 4];
    memcpy(big, "/b?a=", 5);
    memset(big + 5, 'x', sizeof(big) - 6);
    big[sizeof(big) - 1] = 0;
    sc_admin_query q;
    const char *why = NULL;
    assert_int_equal(sc_admin_query_parse(big, strlen(big), &q, &why), -E2BIG);
    /* just over the decoded limit, under the raw one */
    char mid[SC_ADMIN_QUERY_MAX_TEXT + 200];
    memcpy(mid, "/b?a=", 5);
    memset(mid + 5, 'y', sizeof(mid) - 6);
    mid[sizeof(mid) - 1] = 0;
    assert_int_equal(sc_admin_query_parse(mid, strlen(mid), &q, &why), -E2BIG);
    /* the limit itself fits */
    char ok[SC_ADMIN_QUERY_MAX_TEXT];
    memcpy(ok, "/b?a=", 5);
    memset(ok + 5, 'z', sizeof(ok) - 6 - 5);
    ok[sizeof(ok) - 6] = 0;
    assert_int_equal(sc_admin_query_parse(ok, strlen(ok), &q, &why), 0);
    assert_int_equal(strlen(sc_admin_query_get(&q, "a")), strlen(ok) - 5);
}

/* The parser reads only target[0..len): no NUL is needed and none is read past. */
static void test_query_unterminated(void **state)
{
    (void)state;
    char buf[32];
    memcpy(buf, "/log?level=debugXXXXXXXXXXXXXXXX", 32);
    sc_admin_query q;
    assert_int_equal(sc_admin_query_parse(buf, 16, &q, NULL), 0);
    assert_string_equal(sc_admin_query_get(&q, "level"), "debug");
}

/* ---- Host ---- */

static void test_host(void **state)
{
    (void)state;
    const uint16_t port = 19000;
    static const struct {
        const char *host;
        bool ok;
    } cases[] = {
        {"127.0.0.1:19000", true},
        {"127.1.2.3:19000", true},
        {"localhost:19000", true},
        {"LocalHost:19000", true},
        {"[::1]:19000", true},
        {"[::ffff:127.0.0.1]:19000", true},
        {"127.0.0.1:19001", false},       /* another port */
        {"127.0.0.1", false},             /* port 80 */
        {"localhost", false},
        {"evil.example:19000", false},    /* DNS rebinding */
        {"localhost.evil.example:19000", false},
        {"127.0.0.1.evil.example:19000", false},
        {"10.0.0.5:19000", false},        /* a pod address: not by default */
        {"[::1]", false},
        {"[::1:19000", false},
        {"127.0.0.1:", false},
        {"127.0.0.1:0", false},
        {"127.0.0.1:x", false},
        {"127.0.0.1:1900000", false},
        {"", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (sc_admin_host_allowed(T(cases[i].host), port, NULL, NULL, 0) != cases[i].ok)
            fail_msg("Host '%s' should be %s", cases[i].host, cases[i].ok ? "allowed" : "refused");
    assert_false(sc_admin_host_allowed(NULL, 0, port, NULL, NULL, 0));
    assert_true(sc_admin_host_allowed(T("localhost"), 80, NULL, NULL, 0));

    /* the listener's own specific address */
    struct sockaddr_in own = {.sin_family = AF_INET};
    inet_pton(AF_INET, "10.0.0.5", &own.sin_addr);
    assert_true(sc_admin_host_allowed(T("10.0.0.5:19000"), port, (struct sockaddr *)&own, NULL, 0));
    assert_false(sc_admin_host_allowed(T("10.0.0.6:19000"), port, (struct sockaddr *)&own, NULL, 0));
    assert_false(sc_admin_host_allowed(T("10.0.0.5:80"), port, (struct sockaddr *)&own, NULL, 0));

    /* admin.allowed_hosts */
    char *allowed[] = {"admin.internal", "ops.example:8443", "[fd00::1]"};
    assert_true(sc_admin_host_allowed(T("admin.internal:19000"), port, NULL, allowed, 3));
    assert_true(sc_admin_host_allowed(T("ADMIN.internal:19000"), port, NULL, allowed, 3));
    assert_false(sc_admin_host_allowed(T("admin.internal:19001"), port, NULL, allowed, 3));
    assert_false(sc_admin_host_allowed(T("admin.internal"), port, NULL, allowed, 3));
    assert_true(sc_admin_host_allowed(T("ops.example:8443"), port, NULL, allowed, 3));
    assert_false(sc_admin_host_allowed(T("ops.example:19000"), port, NULL, allowed, 3));
    assert_true(sc_admin_host_allowed(T("[fd00::1]:19000"), port, NULL, allowed, 3));
    assert_false(sc_admin_host_allowed(T("evil.example:19000"), port, NULL, allowed, 3));

    assert_null(sc_admin_host_entry_problem("admin.internal"));
    assert_null(sc_admin_host_entry_problem("admin.internal:8443"));
    assert_null(sc_admin_host_entry_problem("10.0.0.5"));
    assert_null(sc_admin_host_entry_problem("[fd00::1]:19000"));
    assert_non_null(sc_admin_host_entry_problem(""));
    assert_non_null(sc_admin_host_entry_problem("a b"));
    assert_non_null(sc_admin_host_entry_problem("http://admin"));
    assert_non_null(sc_admin_host_entry_problem("admin:0"));
    assert_non_null(sc_admin_host_entry_problem("admin:99999"));
    assert_non_null(sc_admin_host_entry_problem("[nope]:1"));
    assert_non_null(sc_admin_host_entry_problem("fd00::1"));
}

/* ---- state-changing requests ---- */

static sc_admin_hval HV(const char *s)
{
    return (sc_admin_hval){s, s ? strlen(s) : 0};
}

static const char *csrf(const char *host, const char *origin, const char *sfs, const char *marker,
                        const char *ctype)
{
    return sc_admin_csrf_problem(HV(host), HV(origin), HV(sfs), HV(marker), HV(ctype));
}

static void test_csrf(void **state)
{
    (void)state;
    const char *h = "127.0.0.1:19000";
    /* tools: marker, no Origin */
    assert_null(csrf(h, NULL, NULL, "1", NULL));
    assert_null(csrf(h, NULL, NULL, NULL, "application/json"));
    assert_null(csrf(h, NULL, NULL, NULL, "Application/JSON; charset=utf-8"));
    assert_null(csrf(h, "http://127.0.0.1:19000", "same-origin", "1", NULL));
    assert_null(csrf(h, NULL, "none", "1", NULL));
    /* what a web page can send without a preflight */
    assert_non_null(csrf(h, "http://evil.example", NULL, NULL, "text/plain"));
    assert_non_null(csrf(h, NULL, NULL, NULL, "text/plain"));
    assert_non_null(csrf(h, NULL, NULL, NULL, "application/x-www-form-urlencoded"));
    assert_non_null(csrf(h, NULL, NULL, NULL, NULL));
    assert_non_null(csrf(h, NULL, NULL, "", NULL));
    assert_non_null(csrf(h, NULL, NULL, NULL, "application/jsonx"));
    /* a foreign Origin is refused even with the marker */
    assert_non_null(csrf(h, "http://evil.example", NULL, "1", NULL));
    assert_non_null(csrf(h, "null", NULL, "1", NULL));
    assert_non_null(csrf(h, "https://127.0.0.1:19000", NULL, "1", NULL));
    assert_non_null(csrf(h, "http://127.0.0.1:19000.evil", NULL, "1", NULL));
    assert_non_null(csrf(NULL, "http://127.0.0.1:19000", NULL, "1", NULL));
    assert_non_null(csrf(h, NULL, "cross-site", "1", NULL));
    assert_non_null(csrf(h, NULL, "same-site", "1", NULL));
    assert_true(strstr(csrf(h, NULL, NULL, NULL, "text/plain"), "X-Sidecar-Admin") != NULL);
}

static void test_token(void **state)
{
    (void)state;
    const char *tok = "s3cret-token";
    assert_true(sc_admin_token_ok(HV("Bearer s3cret-token"), tok));
    assert_true(sc_admin_token_ok(HV("bearer s3cret-token"), tok));
    assert_false(sc_admin_token_ok(HV("Bearer s3cret-tokeN"), tok));
    assert_false(sc_admin_token_ok(HV("Bearer s3cret-token2"), tok));
    assert_false(sc_admin_token_ok(HV("Bearer s3cret"), tok));
    assert_false(sc_admin_token_ok(HV("Bearer "), tok));
    assert_false(sc_admin_token_ok(HV("Basic czNjcmV0LXRva2Vu"), tok));
    assert_false(sc_admin_token_ok(HV("s3cret-token"), tok));
    assert_false(sc_admin_token_ok(HV(NULL), tok));
    /* the value is taken by its length, not up to a NUL */
    const char with_nul[] = "Bearer s3cret-token\0x";
    assert_false(sc_admin_token_ok((sc_admin_hval){with_nul, sizeof(with_nul) - 1}, tok));
}

/* ---- the admin page's Content-Security-Policy ---- */

static void test_page_csp(void **state)
{
    (void)state;
    char csp[400];
    /* SHA-256 of "" and of "abc", base64 (the text between the tags) */
    assert_int_equal(sc_admin_page_csp("<p><script></script><style>abc</style>", csp, sizeof(csp)), 0);
    assert_non_null(strstr(csp, "default-src 'none'; "));
    assert_non_null(strstr(csp, "script-src 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='; "));
    assert_non_null(strstr(csp, "style-src 'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='; "));
    assert_non_null(strstr(csp, "connect-src 'self'"));
    assert_non_null(strstr(csp, "frame-ancestors 'none'"));
    /* missing or unterminated elements, a short buffer */
    assert_int_equal(sc_admin_page_csp("<style>a</style>", csp, sizeof(csp)), -EINVAL);
    assert_int_equal(sc_admin_page_csp("<script>x</script>", csp, sizeof(csp)), -EINVAL);
    assert_int_equal(sc_admin_page_csp("<script>x<style></style>", csp, sizeof(csp)), -EINVAL);
    assert_int_equal(sc_admin_page_csp("<script></script><style></style>", csp, 60), -ENOSPC);
    /* the built-in page has both, and they fit */
    assert_int_equal(sc_admin_page_csp(sc_admin_page_html, csp, sizeof(csp)), 0);
    assert_int_equal(strlen(sc_admin_page_html), sc_admin_page_html_len);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_basic),
        cmocka_unit_test(test_query_value_is_not_a_name),
        cmocka_unit_test(test_query_decoding),
        cmocka_unit_test(test_query_bad),
        cmocka_unit_test(test_query_unterminated),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_csrf),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_page_csp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
