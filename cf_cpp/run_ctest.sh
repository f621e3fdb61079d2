#!/usr/bin/env bash
# Builds the cf_cpp core and its doctest unit tests into cf_cpp/build/ctest and runs them under ctest.
# Needs cmake, a C++17 compiler and doctest (Debian: apt-get install -y doctest-dev).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="$here/build/ctest"
cmake -S "$here" -B "$build" -DCF_CPP_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --parallel 2
ctest --test-dir "$build" --output-on-failure
