/*
 * probe.c: what a pure module must not call, linked against scpure alone
 * (tests/CMakeLists.txt, test purity_probe). The link has to fail and name
 * every one of these: if it succeeds, or one of them resolves, scpure has
 * gained libev, nghttp2, libssl or libcurl, or one of the project's I/O
 * modules, and the pure tests no longer prove anything.
 *
 * Never run: the declarations are stand-ins with whatever prototype, only
 * the references matter.
 */
void ev_run(void);                      /* libev */
void nghttp2_session_client_new(void);  /* nghttp2 */
void SSL_new(void);                     /* libssl */
void curl_easy_init(void);              /* libcurl */
void sc_curl_api_load(void);            /* libcurl, loaded by discovery/curl_api.c */
void sc_tls_ctx_new(void);              /* tls/tls.c */
void sc_consul_start(void);             /* discovery/consul.c */
void sc_route_publish(void);            /* proxy/route.c */

int main(void)
{
    ev_run();
    nghttp2_session_client_new();
    SSL_new();
    curl_easy_init();
    sc_curl_api_load();
    sc_tls_ctx_new();
    sc_consul_start();
    sc_route_publish();
    return 0;
}
