#include "core/dynload.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* start-up only */

int sc_dynload_table(const char *const *sonames, const char *const *names, void **slots, size_t n, bool *loaded,
                     char *err, size_t errlen)
{
    pthread_mutex_lock(&g_lock);
    int rv = 0;
    if (*loaded)
        goto out;
    void *h = NULL;
    const char *tried = "";
    for (const char *const *s = sonames; *s && !h; s++) {
        h = dlopen(*s, RTLD_NOW | RTLD_LOCAL);
        tried = *s;
    }
    if (!h) {
        snprintf(err, errlen, "cannot load %s: %s", tried, dlerror());
        rv = -ENOENT;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        slots[i] = dlsym(h, names[i]);
        if (!slots[i]) {
            snprintf(err, errlen, "%s has no symbol %s", tried, names[i]);
            rv = -ENOENT;
            goto out; /* the handle stays open: harmless, and the table stays unloaded */
        }
    }
    *loaded = true;
out:
    pthread_mutex_unlock(&g_lock);
    return rv;
}
