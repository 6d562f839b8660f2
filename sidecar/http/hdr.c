/*
 * hdr.c: header-name rules shared by every codec (hdr.h).
 */
#include "http/hdr.h"

#include <string.h>

/* Called for every header line against the identity and JWT header names,
 * so no strlen: the walk stops at the first difference (usually the first
 * byte) or at the end of canon, and equal bytes skip the folding. */
bool sc_hdr_aliases(const char *name, size_t len, const char *canon)
{
    for (size_t i = 0; i < len; i++) {
        char a = name[i], b = canon[i];
        if (!b)
            return false; /* canon is shorter */
        if (a == b)
            continue;
        if (a >= 'A' && a <= 'Z')
            a = (char)(a + 32);
        if (a == '_')
            a = '-';
        if (b >= 'A' && b <= 'Z')
            b = (char)(b + 32);
        if (b == '_')
            b = '-';
        if (a != b)
            return false;
    }
    return canon[len] == '\0';
}

bool sc_hdr_has_underscore(const char *name, size_t len)
{
    return memchr(name, '_', len) != NULL;
}
