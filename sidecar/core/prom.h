/*
 * prom.h: the Prometheus text exposition format (version 0.0.4) as the
 * admin /stats page writes it: one "# HELP" and one "# TYPE" line per
 * metric family, then its samples. Every module that renders metrics uses
 * these, so the page has one spelling. Control thread (admin), any FILE.
 */
#ifndef SC_PROM_H
#define SC_PROM_H

#include <stdint.h>
#include <stdio.h>

/* The two header lines of a family; samples follow (labelled ones by hand). */
static inline void sc_prom_head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family with one unlabelled sample: counters and unsigned gauges. */
static inline void sc_prom_u64(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
    sc_prom_head(f, name, type, help);
    fprintf(f, "%s %llu\n", name, (unsigned long long)v);
}

/* The same for gauges that can be negative (or are a bool). */
static inline void sc_prom_i64(FILE *f, const char *name, const char *type, const char *help, int64_t v)
{
    sc_prom_head(f, name, type, help);
    fprintf(f, "%s %lld\n", name, (long long)v);
}

#endif
