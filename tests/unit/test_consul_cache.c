/*
 * test_consul_cache.c: writing the Consul cache file (consul.cache_file):
 * through a new path.tmp that nothing planted there can redirect, mode 0600,
 * a stale temporary file from an interrupted write replaced, a symbolic link
 * refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "discovery/consul.h"

typedef struct dir {
    char path[64];
    char cache[128], tmp[128], victim[128];
} dir;

static void mkdir_fixture(dir *d)
{
    snprintf(d->path, sizeof(d->path), "/tmp/sc-cache-XXXXXX");
    assert_non_null(mkdtemp(d->path));
    snprintf(d->cache, sizeof(d->cache), "%s/instances.json", d->path);
    snprintf(d->tmp, sizeof(d->tmp), "%s/instances.json.tmp", d->path);
    snprintf(d->victim, sizeof(d->victim), "%s/victim", d->path);
}

static void rm_fixture(dir *d)
{
    unlink(d->cache);
    unlink(d->tmp);
    unlink(d->victim);
    rmdir(d->path);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *read_file(const char *path)
{
    static char buf[4096];
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_save(void **state)
{
    (void)state;
    dir d;
    mkdir_fixture(&d);
    char err[600] = "";
    assert_int_equal(sc_consul_cache_save(d.cache, "{\"v\":1}\n", 8, err, sizeof(err)), 0);
    assert_string_equal(read_file(d.cache), "{\"v\":1}\n");
    struct stat st;
    assert_int_equal(lstat(d.cache, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_not_equal(access(d.tmp, F_OK), 0); /* renamed away */
    /* again: replaces */
    assert_int_equal(sc_consul_cache_save(d.cache, "{\"v\":2}\n", 8, err, sizeof(err)), 0);
    assert_string_equal(read_file(d.cache), "{\"v\":2}\n");
    rm_fixture(&d);
}

/* A regular path.tmp left by an interrupted write (maybe readable by others,
 * maybe hard-linked elsewhere) is removed and a new one created, never
 * written through. */
static void test_stale_tmp_replaced(void **state)
{
    (void)state;
    dir d;
    mkdir_fixture(&d);
    write_file(d.victim, "precious\n");
    assert_int_equal(link(d.victim, d.tmp), 0); /* same inode as the victim */
    char err[600] = "";
    assert_int_equal(sc_consul_cache_save(d.cache, "{}\n", 3, err, sizeof(err)), 0);
    assert_string_equal(read_file(d.victim), "precious\n");
    assert_string_equal(read_file(d.cache), "{}\n");
    struct stat st;
    assert_int_equal(lstat(d.cache, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    rm_fixture(&d);
}

/* The defect: a symbolic link planted at path.tmp redirected the write. */
static void test_symlink_refused(void **state)
{
    (void)state;
    dir d;
    mkdir_fixture(&d);
    write_file(d.victim, "precious\n");
    assert_int_equal(symlink(d.victim, d.tmp), 0);
    char err[600] = "";
    assert_int_equal(sc_consul_cache_save(d.cache, "{}\n", 3, err, sizeof(err)), -ELOOP);
    assert_non_null(strstr(err, "symbolic link"));
    assert_non_null(strstr(err, d.tmp));
    assert_string_equal(read_file(d.victim), "precious\n");
    assert_null(read_file(d.cache));
    /* a dangling link (to a file it would create) is refused as well */
    unlink(d.victim);
    assert_int_equal(sc_consul_cache_save(d.cache, "{}\n", 3, err, sizeof(err)), -ELOOP);
    assert_int_not_equal(access(d.victim, F_OK), 0);
    rm_fixture(&d);
}

static void test_not_a_file(void **state)
{
    (void)state;
    dir d;
    mkdir_fixture(&d);
    assert_int_equal(mkdir(d.tmp, 0700), 0);
    char err[600] = "";
    assert_int_equal(sc_consul_cache_save(d.cache, "{}\n", 3, err, sizeof(err)), -EEXIST);
    assert_non_null(strstr(err, "not a regular file"));
    rmdir(d.tmp);
    /* a directory that cannot be written: a clear error, nothing left behind */
    char sub[160];
    snprintf(sub, sizeof(sub), "%s/missing/instances.json", d.path);
    assert_int_equal(sc_consul_cache_save(sub, "{}\n", 3, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "missing"));
    rm_fixture(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save),
        cmocka_unit_test(test_stale_tmp_replaced),
        cmocka_unit_test(test_symlink_refused),
        cmocka_unit_test(test_not_a_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
