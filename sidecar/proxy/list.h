/*
 * list.h: the intrusive doubly linked list of the proxy (connections in
 * pools, streams in queues). A link not in a list has next == NULL;
 * removing it again does nothing. Nothing is owned.
 */
#ifndef SC_LIST_H
#define SC_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sc_link {
    struct sc_link *prev, *next;
} sc_link;

static inline void sc_list_init(sc_link *h) { h->prev = h->next = h; }
static inline bool sc_list_empty(const sc_link *h) { return h->next == h; }
static inline bool sc_link_linked(const sc_link *l) { return l->next != NULL && l->next != l; }
static inline void sc_list_push(sc_link *h, sc_link *l)
{
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}
static inline void sc_list_remove(sc_link *l)
{
    if (!l->next)
        return;
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = NULL;
}

#endif
