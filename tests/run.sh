#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds the normal and the
# ASan+UBSan configurations, runs every unit test, fuzz-corpus replay and
# integration test under ctest. The last line is ctest's summary.
set -uo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh || exit 1
jobs=$(nproc)
set -e
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs" 2>&1 | grep -vE '^\[ *[0-9]+%\]' || true
test -x build/sidecar
CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSC_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs" 2>&1 | grep -vE '^\[ *[0-9]+%\]' || true
set +e
echo "== sanitizer build: unit tests and fuzz corpus replays (ASan+UBSan)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -E '^integration\.' --timeout 300)
asan_rc=$?
[ $asan_rc -ne 0 ] && echo "== sanitizer build had failures (see above); the run will fail"
echo "== full suite: unit, fuzz replays, integration"
(cd build && ctest --output-on-failure --timeout 600)
rc=$?
[ $rc -eq 0 ] && rc=$asan_rc
exit $rc
