#include "proxy/stats.h"

const uint64_t sc_lat_bounds_us[SC_LAT_BUCKETS] = {
    250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 10000000,
};

const char *const sc_bad_req_names[SC_BAD_REQ_KINDS] = {
    "syntax", "header_too_large", "request_line_too_long", "unsupported", "bad_body",
    "header_timeout", "h2_protocol", "h2_flood",
};

void sc_stats_observe_latency(sc_route_stats *rs, uint64_t us)
{
    unsigned i = 0;
    while (i < SC_LAT_BUCKETS && us > sc_lat_bounds_us[i])
        i++;
    SC_STAT_INC(rs->lat_buckets[i]);
    SC_STAT_ADD(rs->lat_sum_us, us);
}
