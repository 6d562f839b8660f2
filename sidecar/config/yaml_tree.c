/*
 * yaml_tree.c: one YAML document -> an sc_ynode tree, from libyaml events.
 *
 * Why not libyaml's document API: it hides duplicate keys behind the same
 * shape and expands nothing we could bound. Building our own tree keeps every
 * node's line, lets us refuse aliases (a config has no use for them and they
 * are the classic "billion laughs" amplifier) and caps nesting depth.
 */
#include "config/config_internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

static sc_ynode *node_new(sc_yn_kind kind, unsigned line)
{
    sc_ynode *n = sc_xcalloc(1, sizeof(*n));
    n->kind = kind;
    n->line = line;
    return n;
}

static void node_push(sc_ynode *parent, sc_ynode *child)
{
    if (parent->n == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 8;
        sc_ynode **items = realloc(parent->items, cap * sizeof(*items));
        if (!items) {
            fputs("sidecar: out of memory during setup\n", stderr);
            abort();
        }
        parent->items = items;
        parent->cap = cap;
    }
    parent->items[parent->n++] = child;
}

void sc_config_yaml_free(sc_ynode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        sc_config_yaml_free(n->items[i]);
    free(n->items);
    free(n->str);
    free(n);
}

bool sc_config_yaml_is_null(const sc_ynode *n)
{
    if (!n || n->kind != SC_YN_SCALAR || !n->plain)
        return false;
    return n->len == 0 || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0 ||
           strcmp(n->str, "Null") == 0 || strcmp(n->str, "NULL") == 0;
}

static unsigned mark_line(const yaml_mark_t *m)
{
    return (unsigned)m->line + 1;
}

int sc_config_yaml_parse(const char *buf, size_t len, const char *file, sc_diags *d,
                         sc_ynode **rootp)
{
    yaml_parser_t p;
    sc_ynode *root = NULL;
    sc_ynode *stack[SC_CFG_MAX_DEPTH + 1];
    size_t depth = 0;
    int docs = 0;
    int rc = 0;
    bool done = false;

    *rootp = NULL;
    if (!yaml_parser_initialize(&p)) {
        sc_diags_add(d, file, 0, "", "cannot initialise the YAML parser");
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);

    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            unsigned line = (unsigned)p.problem_mark.line + 1;
            if (p.error == YAML_MEMORY_ERROR)
                sc_diags_add(d, file, 0, "", "out of memory while parsing YAML");
            else if (p.context)
                sc_diags_add(d, file, line, "", "YAML syntax error: %s %s that starts at line %u",
                             p.problem ? p.problem : "invalid document", p.context,
                             (unsigned)p.context_mark.line + 1);
            else
                sc_diags_add(d, file, line, "", "YAML syntax error: %s",
                             p.problem ? p.problem : "invalid document");
            rc = -EINVAL;
            break;
        }
        sc_ynode *n = NULL;
        bool open = false;
        switch (ev.type) {
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                sc_diags_add(d, file, mark_line(&ev.start_mark), "",
                             "only one YAML document is allowed per file (found a second "
                             "'---')");
                rc = -EINVAL;
                done = true;
            }
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_SCALAR_EVENT:
            n = node_new(SC_YN_SCALAR, mark_line(&ev.start_mark));
            n->str = sc_xstrndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
            n->len = ev.data.scalar.length;
            n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            if (strlen(n->str) != n->len) {
                sc_diags_add(d, file, n->line, "", "a string contains a NUL byte");
                n->kind = SC_YN_BAD;
            }
            break;
        case YAML_ALIAS_EVENT:
            n = node_new(SC_YN_BAD, mark_line(&ev.start_mark));
            sc_diags_add(d, file, n->line, "",
                         "YAML aliases (*%s) are not supported; write the value out",
                         (const char *)ev.data.alias.anchor);
            break;
        case YAML_SEQUENCE_START_EVENT:
            n = node_new(SC_YN_SEQ, mark_line(&ev.start_mark));
            open = true;
            break;
        case YAML_MAPPING_START_EVENT:
            n = node_new(SC_YN_MAP, mark_line(&ev.start_mark));
            open = true;
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0)
                depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        if (!n)
            continue;
        if (depth == 0) {
            if (root) /* cannot happen with one document; be safe */
                sc_config_yaml_free(root);
            root = n;
        } else {
            sc_ynode *parent = stack[depth - 1];
            if (parent->kind == SC_YN_MAP && parent->n % 2 == 0 && n->kind != SC_YN_SCALAR &&
                n->kind != SC_YN_BAD) {
                sc_diags_add(d, file, n->line, "",
                             "mapping keys must be plain strings, not lists or mappings");
            }
            if (parent->kind == SC_YN_MAP && parent->n % 2 == 1)
                n->key_line = parent->items[parent->n - 1]->line;
            node_push(parent, n);
        }
        if (open) {
            if (depth == SC_CFG_MAX_DEPTH) {
                sc_diags_add(d, file, n->line, "", "nesting deeper than %d levels",
                             SC_CFG_MAX_DEPTH);
                rc = -EINVAL;
                break;
            }
            stack[depth++] = n;
        }
    }
    yaml_parser_delete(&p);
    if (rc < 0) {
        sc_config_yaml_free(root);
        return rc;
    }
    *rootp = root;
    return 0;
}
