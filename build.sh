#!/usr/bin/env bash
# kiln's one entry point for a fresh Debian 12 machine:
#   ./build.sh demo   install what is missing, build, and run the main job
#   ./build.sh test   install what is missing, build, and run the whole test suite
#   ./build.sh build  install and build only
# BUILD_DIR (default build/) and JOBS (default: all cores) may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-build}"
build_dir="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc)}"

bash scripts/install-deps.sh
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build_dir" -j "$jobs"

case "$what" in
  build) ;;
  demo)
    # The main job until `kiln demo` exists: fine-tune the tiny reference model on the generated
    # shapes of examples/tiny-data, compare the base model and its checkpoints in a grid and a GIF,
    # diagnose the run and draw its report (demo-out/run/report.html).
    rm -rf demo-out
    "$build_dir/kiln" train examples/tiny.toml --out demo-out/run
    "$build_dir/kiln" grid --models tests/golden/tiny-sd/model.safetensors demo-out/run/checkpoints/e000{2,4,6}.safetensors \
      --config tests/golden/tiny-sd/diffusers-configs --labels base "epoch 2" "epoch 4" "epoch 6" \
      -p "a red circle, white background" "black and white circles" --seeds 1 -W 128 -H 128 --steps 12 \
      --gif --out demo-out/run/grid
    "$build_dir/kiln" diagnose demo-out/run --seeds 1 2 3 --steps 12 -W 128 -H 128
    "$build_dir/kiln" report demo-out/run
    ;;
  test)
    cd "$build_dir"
    ctest --output-on-failure -j "$jobs" --timeout 900
    ;;
  *)
    echo "usage: $0 [build|demo|test]" >&2
    exit 2
    ;;
esac
