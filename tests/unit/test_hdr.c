/* Unit tests for http/hdr.h: header-name aliasing the way CGI-style apps read names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
