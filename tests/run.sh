#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds the normal, the
# ASan+UBSan and the ThreadSanitizer configurations, runs every unit test,
# fuzz-corpus replay and integration test under ctest in the first two and
# the thread hand-off modules in the third, and the deployment test
# (container image, Kubernetes, Compose, .deb with podman) as a step of its
# own. The last line is ctest's summary of the normal build; the exit code
# covers every step.
set -uo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh || exit 1
bash tests/install-test-deps.sh || exit 1
jobs=$(nproc)
# Under ThreadSanitizer: drain and stop hand-offs (shutdown), Consul answers
# reaching workers (authorize), endpoint publication (consul), bulkhead slots
# freed on one worker and taken on another (bulkhead).
TSAN_TESTS='^integration\.(test_shutdown|test_authorize|test_consul|test_bulkhead)$'
set -e
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs" 2>&1 | grep -vE '^\[ *[0-9]+%\]' || true
test -x build/sidecar
CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSC_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs" 2>&1 | grep -vE '^\[ *[0-9]+%\]' || true
set +e
echo "== sanitizer build (ASan+UBSan): unit tests, fuzz corpus replays and every integration test against the sanitized binary"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 SC_READY_TIMEOUT=30 \
   ctest --output-on-failure --timeout 900 -E '^integration\.test_container$')
asan_rc=$?
[ $asan_rc -ne 0 ] && echo "== sanitizer build had failures (see above); the run will fail"
echo "== ThreadSanitizer build: the integration modules that exercise the threads' hand-offs"
CC=clang cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSC_TSAN=ON -DBUILD_TESTING=ON >/dev/null
cmake --build build-tsan -j"$jobs" --target sidecar 2>&1 | grep -vE '^\[ *[0-9]+%\]' || true
(cd build-tsan && TSAN_OPTIONS="halt_on_error=1 exitcode=66 suppressions=$PWD/../tests/tsan.supp" SC_READY_TIMEOUT=30 \
   ctest --output-on-failure --timeout 900 -R "$TSAN_TESTS")
tsan_rc=$?
[ $tsan_rc -ne 0 ] && echo "== ThreadSanitizer build had failures (see above); the run will fail"
# Deployment (its own step, before the full suite so that the last line
# stays the suite's summary): the container image, the Kubernetes manifests
# (podman kube play; the Compose file is checked as data and with --check)
# and the .deb. Installs
# podman & co. here, not in install-deps.sh, so the quick start never pulls
# them. About 5 minutes on a cold 2-core machine (debootstrap base, image
# builds), 2-3 minutes once the base and build layers are cached; ctest's
# TIMEOUT bounds it.
echo "== deployment: container image, Kubernetes manifests, Compose, .deb (podman)"
if bash deploy/container/install-tools.sh; then
  (cd build && ctest --output-on-failure -R '^integration\.test_container$')
  container_rc=$?
else
  echo "== deployment: could not install podman and its tools"; container_rc=1
fi
[ $container_rc -ne 0 ] && echo "== deployment test had failures (see above); the run will fail"
echo "== full suite: unit, fuzz replays, integration"
(cd build && ctest --output-on-failure --timeout 600 -E '^integration\.test_container$')
rc=$?
[ $rc -eq 0 ] && rc=$asan_rc
[ $rc -eq 0 ] && rc=$tsan_rc
[ $rc -eq 0 ] && rc=$container_rc
exit $rc
