/*
 * admin_page.h: the admin page served at GET / (sidecar/admin/ui/page.html,
 * compiled in by sidecar/admin/ui/embed.cmake at build time), and the
 * Content-Security-Policy that lets exactly its own inline script and style
 * run.
 *
 * Memory: static, read-only, lives as long as the process.
 */
#ifndef SC_ADMIN_PAGE_H
#define SC_ADMIN_PAGE_H

#include <stddef.h>

extern const char sc_admin_page_html[];    /* NUL terminated */
extern const size_t sc_admin_page_html_len; /* without the NUL */

/*
 * Writes into out a Content-Security-Policy for `html`: nothing may load
 * but connections to the page's own origin, and only the page's first
 * <script> and first <style> element (pinned by their SHA-256, so nothing
 * injected could run even if the page were to insert markup). Returns 0, or
 * -ENOSPC when out is too small, -EINVAL when an element is missing.
 */
int sc_admin_page_csp(const char *html, char *out, size_t cap);

#endif
