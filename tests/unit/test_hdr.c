/* Unit tests for http/hdr.h: header-name aliasing the way CGI-style apps
 * read names; and core/common.h's name sets (SC_LIT_SET), which the codecs
 * use for their hop-by-hop lists. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "core/common.h"
#include "http/hdr.h"

static bool al(const char *n, const char *canon) { return sc_hdr_aliases(n, strlen(n), canon); }

static void test_aliases(void **state)
{
    (void)state;
    assert_true(al("x-sidecar-caller", "x-sidecar-caller"));
    assert_true(al("X-Sidecar-Caller", "x-sidecar-caller"));
    assert_true(al("X_Sidecar_Caller", "x-sidecar-caller"));
    assert_true(al("x_sidecar-caller", "x-sidecar-caller"));
    assert_true(al("X_SIDECAR_CALLER", "x-sidecar-caller"));
    assert_false(al("x-sidecar-callers", "x-sidecar-caller"));
    assert_false(al("x-sidecar-calle", "x-sidecar-caller"));
    assert_false(al("x.sidecar.caller", "x-sidecar-caller"));
    assert_false(al("", "x-sidecar-caller"));
    /* a configured canonical name may itself use either spelling */
    assert_true(al("x-my-id", "X_My_Id"));
    assert_true(al("", ""));
    assert_false(al("a", ""));
    /* a name with a NUL byte where canon ends: not equal, and nothing past canon is read */
    assert_false(sc_hdr_aliases("ab\0c", 4, "ab"));
    assert_false(sc_hdr_aliases("ab\0", 3, "ab"));
    assert_true(sc_hdr_aliases("abX", 2, "ab")); /* only the first len bytes */
}

#define TEST_SET(X) X("te") X("host") X("connection") X("keep-alive") X("grpc-previous-rpc-attempts")
SC_LIT_SET(test_set, TEST_SET);

static bool in_set(const char *n) { return sc_lit_set_has(&test_set, n, strlen(n)); }

static void test_lit_set(void **state)
{
    (void)state;
    assert_int_equal(test_set.n, 5);
    /* one bit per length present: 2, 4, 10 (two names), 26 */
    assert_int_equal(test_set.lens, (1u << 2) | (1u << 4) | (1u << 10) | (1u << 26));
    assert_true(in_set("te"));
    assert_true(in_set("host"));
    assert_true(in_set("connection"));
    assert_true(in_set("keep-alive"));
    assert_true(in_set("grpc-previous-rpc-attempts"));
    /* a length the set has, other bytes */
    assert_false(in_set("tx"));
    assert_false(in_set("user-agent"));
    assert_false(in_set("Connection")); /* exact bytes: callers hand over lower-case names */
    /* lengths it has not, the empty name, and names longer than the mask */
    assert_false(in_set(""));
    assert_false(in_set("content-type"));
    assert_false(in_set("x-a-header-name-far-longer-than-sixty-three-bytes-which-no-set-entry-can-be"));
    assert_false(sc_lit_set_has(&test_set, "host", 3)); /* the length is honoured, not the NUL */
}

static void test_ascii_ieq(void **state)
{
    (void)state;
    assert_true(sc_ascii_ieq_n("Content-Length", "content-length", 14));
    assert_true(sc_ascii_ieq_n("CONTENT-LENGTH", "content-length", 14));
    assert_true(sc_ascii_ieq_n("content-length", "Content-Length", 14)); /* either side folded */
    assert_true(sc_ascii_ieq_n("", "", 0));
    assert_true(sc_ascii_ieq_n("abX", "abY", 2)); /* only the first n bytes */
    assert_false(sc_ascii_ieq_n("content-lengtH", "content-lengts", 14));
    /* letters only: '@' and '`', '[' and '{' differ by the same bit */
    assert_false(sc_ascii_ieq_n("@", "`", 1));
    assert_false(sc_ascii_ieq_n("[", "{", 1));
    assert_false(sc_ascii_ieq_n("\xc9", "\xe9", 1)); /* not ASCII: not folded */
    assert_int_equal(sc_ascii_lower('A'), 'a');
    assert_int_equal(sc_ascii_lower('Z'), 'z');
    assert_int_equal(sc_ascii_lower('a'), 'a');
    assert_int_equal(sc_ascii_lower('-'), '-');
}

static void test_underscore(void **state)
{
    (void)state;
    assert_true(sc_hdr_has_underscore("a_b", 3));
    assert_false(sc_hdr_has_underscore("a-b", 3));
    assert_false(sc_hdr_has_underscore("a_b", 1)); /* only the first len bytes */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_underscore),
        cmocka_unit_test(test_lit_set),
        cmocka_unit_test(test_ascii_ieq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
