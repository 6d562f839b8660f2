/*
 * file_id.h: whether a file changed since it was last looked at, by what
 * stat(2) says about it (device, inode, size, modification and change
 * times). A replaced file (rename over it, a Kubernetes Secret's symlink
 * swap) has another inode; an edit in place changes size or times. Used by
 * every module that reloads files while the process runs (TLS material,
 * JWKS files). Pure, any thread.
 */
#ifndef SC_FILE_ID_H
#define SC_FILE_ID_H

#include "core/common.h"

#include <sys/stat.h>
#include <time.h>

typedef struct sc_file_id {
    bool present;
    int err;                        /* errno of stat, when !present */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim, ctim;
} sc_file_id;

static inline bool sc_file_id_eq(const sc_file_id *a, const sc_file_id *b)
{
    if (a->present != b->present)
        return false;
    if (!a->present)
        return a->err == b->err;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtim.tv_sec == b->mtim.tv_sec &&
           a->mtim.tv_nsec == b->mtim.tv_nsec && a->ctim.tv_sec == b->ctim.tv_sec &&
           a->ctim.tv_nsec == b->ctim.tv_nsec;
}

/* What stat(path) says now; a NULL path is "absent" with err 0. */
static inline void sc_file_id_of(const char *path, sc_file_id *id)
{
    memset(id, 0, sizeof(*id));
    if (!path)
        return;
    struct stat st;
    if (stat(path, &st) < 0) {
        id->err = errno;
        return;
    }
    id->present = true;
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->size = st.st_size;
    id->mtim = st.st_mtim;
    id->ctim = st.st_ctim;
}

#endif
