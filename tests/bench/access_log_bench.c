/*
 * access_log_bench.c: what the access log adds to the CPU a request costs,
 * measured against logging off in the same run.
 *
 *   build/tests/access_log_bench [--requests N] [--per-request-us US] [--out PATH] [--check]
 *
 * The calling thread plays a worker: each request is --per-request-us of
 * CPU work (a calibrated busy loop standing in for parsing, proxying and
 * the rest; default 12 us, the closed-loop HTTP/1 figure in
 * tests/bench/README.md: use the one tests/bench/run.sh measures on the
 * machine at hand) followed, when the log is on, by sc_access_log_emit
 * with a typical outbound gRPC record. The real writer thread drains into
 * a real file (default: a temporary file in /tmp, removed afterwards) and
 * wakes as it does in the sidecar (its flush timer, or a ring half full).
 *
 * Four runs: off, select all, sample 1%, errors (none failing). For each:
 * the worker thread's CPU per request, the whole process's (worker and
 * writer, the writes into the file included), what the log added, lines
 * written and dropped; then the ratios to off. The target is at most 1.1
 * with every line logged; with --check the exit status is 1 when it is
 * missed. Also printed: one line formatted back to back, without the rest.
 */
#include "obs/access_log.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t process_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A typical outbound gRPC call, as the request path fills it. */
static sc_access_record typical(uint64_t i, char *rid)
{
    sc_access_record r;
    memset(&r, 0, sizeof(r));
    r.start_mono_ns = sc_now_ns(); /* the wall clock is derived per line, as in the sidecar */
    r.duration_ns = 1234567 + i;
    r.upstream_ns = 1100000;
    r.upstream = sc_obs_cstr("payments");
    r.method = sc_obs_cstr("POST");
    r.authority = sc_obs_cstr("127.0.0.1:9191");
    r.path = sc_obs_cstr("/shop.v1.Payments/Charge");
    r.status = 200;
    r.grpc_status = 0;
    r.attempts = 1;
    r.instance = sc_obs_cstr("10.0.0.7:15443");
    r.bytes_in = 21;
    r.bytes_out = 64;
    r.request_id = (sc_obs_str){rid, 36};
    r.trace_id = sc_obs_cstr("4bf92f3577b34da6a3ce929d0e0e4736");
    r.span_id = sc_obs_cstr("00f067aa0ba902b7");
    r.direction = SC_OBS_OUTBOUND;
    r.down_proto = SC_OBS_PROTO_HTTP2;
    r.up_proto = SC_OBS_PROTO_HTTP2;
    r.grpc = true;
    return r;
}

/* Distinct request IDs, made before timing. */
static char (*make_ids(size_t n))[37]
{
    char (*ids)[37] = malloc(n * sizeof(*ids));
    if (!ids) {
        fputs("out of memory\n", stderr);
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        snprintf(ids[i], sizeof(ids[i]), "%08zx-0b7d-4e59-a2c4-9d8e7f6a%04zx", i * 2654435761u, i & 0xffff);
    return ids;
}

/* A stand-in for the rest of a request's work: a calibrated busy loop. */
static volatile uint64_t sink;
static double iters_per_us;

static void work(double us)
{
    uint64_t n = (uint64_t)(us * iters_per_us), x = sink;
    for (uint64_t i = 0; i < n; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    sink = x;
}

static void calibrate(void)
{
    iters_per_us = 100;
    for (int round = 0; round < 3; round++) {
        uint64_t t0 = thread_cpu_ns();
        work(20000);
        double ns = (double)(thread_cpu_ns() - t0);
        iters_per_us = iters_per_us * 20000.0 * 1000.0 / ns;
    }
}

typedef struct result {
    double worker_ns;               /* the worker thread's CPU per request */
    double process_ns;              /* the whole process (worker and writer) per request */
    uint64_t written, dropped;
} result;

/*
 * `requests` requests, each `per_req_us` of work and then (log != NULL)
 * the access log call, as a worker does them; the writer thread wakes as
 * it would in the sidecar (its timer, or a ring half full).
 */
static result run(const sc_access_log_config *cfg, const char *path, size_t requests, double per_req_us,
                  char (*ids)[37])
{
    sc_access_log *log = NULL;
    if (cfg) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        if (fd < 0) {
            perror(path);
            exit(1);
        }
        if (sc_access_log_new_fd(cfg, 1, fd, &log) < 0 || sc_access_log_start(log) < 0) {
            fputs("cannot start the access log\n", stderr);
            exit(1);
        }
    }
    sc_access_producer *p = sc_access_log_producer(log, 0);
    uint64_t t0 = thread_cpu_ns(), p0 = process_cpu_ns();
    for (size_t i = 0; i < requests; i++) {
        work(per_req_us);
        if (p) {
            sc_access_record r = typical(i, ids[i]);
            sc_access_log_emit(p, &r);
        }
    }
    uint64_t worker = thread_cpu_ns() - t0;
    sc_access_log_stats st;
    sc_access_log_get_stats(log, &st);
    sc_access_log_free(log); /* the writer's last lines count too */
    uint64_t proc = process_cpu_ns() - p0;
    return (result){(double)worker / (double)requests, (double)proc / (double)requests, st.lines, st.dropped};
}

int main(int argc, char **argv)
{
    size_t requests = 200000;
    double per_req_us = 12.0;
    char path[256];
    snprintf(path, sizeof(path), "/tmp/access_log_bench.%d.log", (int)getpid());
    bool temp = true, check = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--requests") && i + 1 < argc)
            requests = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            snprintf(path, sizeof(path), "%s", argv[++i]);
            temp = false;
        } else if (!strcmp(argv[i], "--per-request-us") && i + 1 < argc)
            per_req_us = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--check"))
            check = true;
        else {
            fprintf(stderr, "usage: %s [--requests N] [--per-request-us US] [--out PATH] [--check]\n", argv[0]);
            return 2;
        }
    }
    if (requests < 1000)
        requests = 1000;
    char (*ids)[37] = make_ids(requests);
    calibrate();

    /* the line alone, back to back */
    char line[SC_ACCESS_LINE_MAX];
    size_t bytes = 0;
    uint64_t t0 = thread_cpu_ns();
    for (size_t i = 0; i < requests; i++) {
        sc_access_record r = typical(i, ids[i]);
        bytes += sc_access_format(&r, line, sizeof(line));
    }
    double fmt_ns = (double)(thread_cpu_ns() - t0) / (double)requests;

    sc_access_log_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.enabled = true;
    cfg.buffer_bytes = 1u << 20; /* the defaults */
    cfg.flush_interval_ms = 100;
    result off = run(NULL, path, requests, per_req_us, ids);
    cfg.select = SC_ACCESS_SELECT_ALL;
    result all = run(&cfg, path, requests, per_req_us, ids);
    cfg.select = SC_ACCESS_SELECT_SAMPLE;
    cfg.sample_ratio = 0.01;
    result sample = run(&cfg, path, requests, per_req_us, ids);
    cfg.select = SC_ACCESS_SELECT_ERRORS;
    result errors = run(&cfg, path, requests, per_req_us, ids);
    if (temp)
        unlink(path);
    free(ids);

    printf("access log: %zu requests of %.1f us of work each, lines of %zu bytes, written to %s\n", requests,
           per_req_us, bytes / requests, temp ? "a file in /tmp" : path);
    printf("  format one line (back to back)          %7.0f ns\n", fmt_ns);
    printf("  %-10s %10s %10s %12s %10s %9s\n", "select", "worker ns", "process ns", "added ns/req", "written",
           "dropped");
    const struct {
        const char *name;
        const result *r;
    } rows[] = {{"off", &off}, {"all", &all}, {"sample 1%", &sample}, {"errors", &errors}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        printf("  %-10s %10.0f %10.0f %12.0f %10llu %9llu\n", rows[i].name, rows[i].r->worker_ns,
               rows[i].r->process_ns, rows[i].r->process_ns - off.process_ns,
               (unsigned long long)rows[i].r->written, (unsigned long long)rows[i].r->dropped);
    double ratio_all = all.process_ns / off.process_ns;
    printf("CPU per request against logging off (same run): every line %.3fx, sample 1%% %.3fx, "
           "errors only %.3fx (target: at most 1.1x)\n",
           ratio_all, sample.process_ns / off.process_ns, errors.process_ns / off.process_ns);
    return check && ratio_all > 1.1 ? 1 : 0;
}
