/*
 * whole.c: links every object of scpure, used by a test or not, into one
 * program (tests/CMakeLists.txt, sc_pure_whole, built with everything). A
 * pure module that calls into libev, nghttp2, libssl, libcurl or one of the
 * project's I/O modules breaks the build here even when no unit test pulls
 * that module in.
 */
int main(void)
{
    return 0;
}
