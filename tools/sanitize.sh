#!/usr/bin/env bash
# tools/sanitize.sh: build gasca_core._C with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option GASCA_SANITIZE=ON) and run the kernel test suites and the hostile-argument
# suite against that build.
#
#   tools/sanitize.sh                          # build into build/asan, run every suite
#   HYPOTHESIS_PROFILE=thorough tools/sanitize.sh   # thousands of fuzz examples per kernel
#   tools/sanitize.sh tests/test_kernels_conv.py     # only these test files
#
# Environment: PYTHON (default: python3 on PATH, which must have numpy, pytest, hypothesis,
# pybind11 and cmake/ninja), BUILD_DIR (default build/asan), JOBS (default 2).
#
# How the sanitized build is used without touching the normal (editable) install: the
# pure-Python package is copied next to the sanitized _C into $BUILD_DIR/stage, and a small
# pytest plugin, loaded before any test module, removes the editable-install import hook,
# puts the stage first on sys.path, and hides torch and cupy (their own native code is not
# what we are checking, and loading it under ASan is slow).  libasan is LD_PRELOADed, since
# the Python interpreter itself is not built with it.  Leak detection is off: CPython keeps
# objects alive until exit by design, which LeakSanitizer would report as leaks.
#
# A sanitizer finding aborts that test file's process with a report naming file:line; every
# file runs in its own process, so one finding does not hide the others.  Reports are also
# collected in $BUILD_DIR/reports/.  The exit status is non-zero if any file failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-$ROOT/build/asan}
JOBS=${JOBS:-2}
STAGE=$BUILD_DIR/stage
REPORTS=$BUILD_DIR/reports

if [[ $# -gt 0 ]]; then
  SUITES=("$@")
else
  SUITES=(tests/test_kernels_gemm.py tests/test_kernels_conv.py tests/test_kernels_optim.py
          tests/test_kernels_eltwise.py tests/test_bindings_errors.py
          tests/test_robustness_kernels.py)
fi

# ------------------------------------------------------------------ 1. build
echo "== configuring and building the sanitized extension in $BUILD_DIR"
PYBIND11_DIR=$("$PYTHON" -m pybind11 --cmakedir)
GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD_DIR" "${GENERATOR[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGASCA_SANITIZE=ON -DGASCA_CUDA=OFF \
  -DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dpybind11_DIR="$PYBIND11_DIR" >/dev/null
cmake --build "$BUILD_DIR" --target _C -j "$JOBS"

EXT=$(find "$BUILD_DIR" -maxdepth 1 -name '_C*.so' | head -n 1)
[[ -n "$EXT" ]] || { echo "sanitize.sh: no _C*.so in $BUILD_DIR" >&2; exit 2; }

# ------------------------------------------------------------------ 2. stage the package
rm -rf "$STAGE"
mkdir -p "$STAGE" "$REPORTS"
cp -r "$ROOT/src/gasca_core" "$STAGE/gasca_core"
find "$STAGE/gasca_core" \( -name '_C*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
cp "$EXT" "$STAGE/gasca_core/"

cat > "$STAGE/gasca_sanitize_plugin.py" <<'EOF'
"""pytest plugin for tools/sanitize.sh: import gasca_core from the sanitized stage."""
import os
import sys

STAGE = os.path.dirname(os.path.abspath(__file__))
# The editable install redirects `import gasca_core` to build/dev; drop that hook.
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
sys.path.insert(0, STAGE)
for name in ("torch", "cupy"):
    sys.modules[name] = None  # `import torch` raises ImportError: oracle tests skip

import gasca_core._C as _C  # noqa: E402

if not os.path.abspath(_C.__file__).startswith(STAGE):
    raise RuntimeError(f"sanitize.sh: gasca_core._C came from {_C.__file__}, not {STAGE}")


def pytest_report_header(config):
    return f"gasca_core._C (sanitized): {_C.__file__}"
EOF

# ------------------------------------------------------------------ 3. run
CXX_BIN=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")
LIBASAN=$("${CXX_BIN:-c++}" -print-file-name=libasan.so)
[[ -f "$LIBASAN" ]] || { echo "sanitize.sh: libasan not found ($LIBASAN)" >&2; exit 2; }

# libstdc++ too: python itself does not link it, and ASan's __cxa_throw interceptor must find
# the real one when the first C++ exception is thrown ("CHECK failed ... real___cxa_throw").
LIBSTDCXX=$("${CXX_BIN:-c++}" -print-file-name=libstdc++.so)
export LD_PRELOAD=$LIBASAN${LIBSTDCXX:+:$LIBSTDCXX}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=0:print_summary=1:symbolize=1:log_path=$REPORTS/asan}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan}
export PYTHONPATH=$STAGE${PYTHONPATH:+:$PYTHONPATH}
export GASCA_FUZZ_CHILD=1          # the hostile-argument suite runs in this process
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rm -f "$REPORTS"/*

status=0
cd "$ROOT"
for suite in "${SUITES[@]}"; do
  echo "== $suite"
  if "$PYTHON" -X faulthandler -m pytest -q -p no:cacheprovider -p gasca_sanitize_plugin "$suite"; then
    echo "-- $suite: passed under ASan/UBSan"
  else
    echo "-- $suite: FAILED (exit $?)"
    status=1
  fi
done

unset LD_PRELOAD
echo
if compgen -G "$REPORTS/*" >/dev/null; then
  echo "== sanitizer reports ($REPORTS):"
  for f in "$REPORTS"/*; do
    echo "--- $f"
    grep -E "ERROR: |runtime error:|SUMMARY:|#[0-9]+ .*(cpp|\.h):[0-9]+" "$f" | head -n 20 || true
  done
  status=1
else
  echo "== no sanitizer reports"
fi
exit $status
