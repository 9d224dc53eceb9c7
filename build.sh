#!/usr/bin/env bash
# kiln's one entry point for a fresh Debian 12 machine:
#   ./build.sh demo   install what is missing, build, and run the main job
#   ./build.sh test   install what is missing, build, and run the whole test suite (CTest, then the
#                     sanitizer build of the torch-free tests and a short run of every fuzz target)
#   ./build.sh build  install and build only
# BUILD_DIR (default build/) and JOBS (default: all cores) may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-build}"
build_dir="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc)}"

bash scripts/install-deps.sh
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
# The demo needs only the kiln binary; the tests (about 40 more targets) are built by `test`.
if [ "$what" = demo ]; then
  cmake --build "$build_dir" -j "$jobs" --target kiln_cli
else
  cmake --build "$build_dir" -j "$jobs"
fi

case "$what" in
  build) ;;
  demo)
    # The main job: kiln demo on the built-in synthetic world and the shipped tiny base model —
    # healthy and burnt fine-tunes, diagnoses, merges, a LoRA; ends with the report's path.
    "$build_dir/kiln" demo --out demo-out
    ;;
  test)
    (cd "$build_dir" && ctest --output-on-failure -j "$jobs" --timeout 900)
    # Then the parsers of untrusted input under AddressSanitizer + UndefinedBehaviorSanitizer: the
    # torch-free unit tests and 30 s of each libFuzzer target (tests/fuzz/README.md).
    JOBS="$jobs" tests/fuzz/ci_smoke.sh "$build_dir-fuzz"
    ;;
  *)
    echo "usage: $0 [build|demo|test]" >&2
    exit 2
    ;;
esac
