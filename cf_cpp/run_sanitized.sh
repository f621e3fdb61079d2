#!/usr/bin/env bash
# The cf_cpp tests under AddressSanitizer and UndefinedBehaviorSanitizer: the core and its Python extension are
# built once with both (cf_cpp/build/sanitize), then the doctest unit tests run under ctest and the Python tests
# that drive the engine run against that extension. Any invalid memory access, leak (C++ tests) or undefined
# operation fails the run.
# Usage: cf_cpp/run_sanitized.sh [PYTHON] (default .venv/bin/python; needs pytest, numpy, nanobind and this
# checkout's test dependencies, as `make setup` installs them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${1:-$root/.venv/bin/python}"
[[ "$python" = /* ]] || python="$PWD/$python"
build="$here/build/sanitize"
cmake -S "$here" -B "$build" -DCF_CPP_TESTS=ON -DCF_CPP_PYTHON=ON -DPython_EXECUTABLE="$python" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCF_CPP_NATIVE=OFF -DCF_CPP_SANITIZE=address,undefined >/dev/null
cmake --build "$build" --parallel 2
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir "$build" --output-on-failure

# The extension beside a copy of the package's Python files, ahead of the installed cf_cpp on the path.
pkg="$build/python"
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r "$here/python/cf_cpp" "$pkg/"
cp "$build"/_core*.so "$pkg/cf_cpp/"
# The sanitizer runtimes Python must load first (GCC's names; the build above links the same ones).
runtime=""
for lib in libasan.so libubsan.so; do
  path="$(${CXX:-c++} -print-file-name=$lib)"
  if [[ "$path" != /* || ! -e "$path" ]]; then
    echo "run_sanitized.sh: ${CXX:-c++} has no $lib (GCC's sanitizer runtime; Debian: libgcc-12-dev)" >&2
    exit 1
  fi
  runtime="$runtime $path"
done
cd "$root"
# Python itself is not leak-free at exit: leaks are checked by the C++ tests only.
LD_PRELOAD="$runtime" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$pkg" "$python" - <<'PY'
import os
import sys

import cf_cpp

assert cf_cpp.__file__.startswith(os.environ["PYTHONPATH"]), f"not the sanitized build: {cf_cpp.__file__}"
import pytest

tests = ["tests/test_cf_engine.py", "tests/test_cf_edge_cases.py", "tests/test_cf_fold_in_reference.py",
         "tests/test_cf_tools.py", "tests/test_predictions_review.py", "tests/test_server_profiles.py"]
# ASan's operator new aborts the process when memory runs out instead of throwing std::bad_alloc: the tests of a
# fold-in, a fit or a load that runs out of memory run in the normal build only.
oom = [f"tests/test_cf_engine.py::{name}" for name in ("test_a_fold_in_that_runs_out_of_memory_changes_nothing",
                                                       "test_sizes_past_the_memory_say_what_ran_out")]
oom.append("tests/test_cf_edge_cases.py::test_load_refuses_a_residual_table_past_its_budget_or_the_memory")
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow", *(f"--deselect={t}" for t in oom), *tests]))
PY
