/* Unit tests for values the HTTP/2 codecs read off the wire: grpc-status
 * as received (proxy.h) and header-list accounting (conns.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "http/grpc.h"
#include "proxy/conns.h"

static int gs(const char *v) { return sc_grpc_status_wire((const uint8_t *)v, strlen(v)); }

static void test_grpc_status_wire(void **state)
{
    (void)state;
    assert_int_equal(gs("0"), 0);
    assert_int_equal(gs("7"), 7);
    assert_int_equal(gs("14"), 14);
    assert_int_equal(gs("16"), 16);
    assert_int_equal(gs("01"), 1);
    /* anything else is no valid status: UNKNOWN, never outside 0..16 */
    const char *garbage[] = {"17", "99", "abc", "1a", "a1", "-1", "+1", " 1", "1 ", "017", "", "9999999999", "1.0"};
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
        assert_int_equal(gs(garbage[i]), SC_GRPC_UNKNOWN);
    assert_int_equal(sc_grpc_status_wire((const uint8_t *)"1\0", 2), SC_GRPC_UNKNOWN);
}

static void test_hdr_list_add(void **state)
{
    (void)state;
    uint32_t total = 0;
    assert_int_equal(sc_hdr_list_add(&total, 4, 3), 39);   /* RFC 7541 4.1: name + value + 32 */
    assert_int_equal(sc_hdr_list_add(&total, 0, 0), 71);
    total = UINT32_MAX - 10;
    assert_int_equal(sc_hdr_list_add(&total, 100, 100), UINT32_MAX); /* saturates */
    assert_int_equal(sc_hdr_list_add(&total, SIZE_MAX / 2, 1), UINT32_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grpc_status_wire),
        cmocka_unit_test(test_hdr_list_add),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
