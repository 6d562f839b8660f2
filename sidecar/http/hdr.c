/*
 * hdr.c: header-name rules shared by every codec (hdr.h).
 */
#include "http/hdr.h"

#include <string.h>

bool sc_hdr_aliases(const char *name, size_t len, const char *canon)
{
    size_t cl = strlen(canon);
    if (len != cl)
        return false;
    for (size_t i = 0; i < len; i++) {
        char a = name[i], b = canon[i];
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
    return true;
}

bool sc_hdr_has_underscore(const char *name, size_t len)
{
    return memchr(name, '_', len) != NULL;
}
