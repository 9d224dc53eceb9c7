#!/usr/bin/env bash
# CI smoke test for the fuzz targets (see README.md): configures a clang build dir with
# -DKILN_BUILD_FUZZ=ON, builds every fuzz target and the sanitizer (ASan + UBSan) builds of the
# torch-free unit tests, runs those tests, then runs each fuzz target for FUZZ_SECONDS (default 30)
# on a copy of its corpus, two at a time. Exits non-zero on a build failure, a failing test, or any
# fuzz finding (crash, sanitizer report, leak, timeout, or a file written to artifacts/).
#   tests/fuzz/ci_smoke.sh [BUILD_DIR]     (default /tmp/kiln-fuzz-ci)
set -euo pipefail

BUILD=$(realpath -m "${1:-/tmp/kiln-fuzz-ci}")  # absolute: the tests run from inside it
SECONDS_EACH=${FUZZ_SECONDS:-30}
JOBS=${JOBS:-2}
FUZZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$FUZZ_DIR/../.." && pwd)
TARGETS=(fuzz_safetensors_header fuzz_run_config fuzz_captions fuzz_prompt_weights fuzz_tokenizer)
TESTS=(asan_test_spelling asan_test_sha256 asan_test_lr_schedule asan_test_clip_tokenizer asan_test_prompt_weights)
start=$(date +%s)
stamp() { echo "[ci_smoke $(( $(date +%s) - start ))s] $*"; }

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
stamp "configure $BUILD"
cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DKILN_BUILD_FUZZ=ON -DKILN_BUILD_TESTS=OFF -DKILN_BUILD_BENCH=OFF >/dev/null
stamp "build"
cmake --build "$BUILD" --parallel "$JOBS" --target "${TARGETS[@]}" "${TESTS[@]}"

for t in "${TESTS[@]}"; do
  stamp "run $t"
  (cd "$BUILD" && "$BUILD/tests/fuzz/$t" --gtest_brief=1 --gtest_color=no)
done

corpus_of() { [[ $1 == fuzz_safetensors_header ]] && echo "$FUZZ_DIR/corpus" || echo "$FUZZ_DIR/corpus-$1"; }
dict_of() {
  case $1 in
    fuzz_safetensors_header) echo "-dict=$FUZZ_DIR/safetensors.dict" ;;
    fuzz_run_config) echo "-dict=$FUZZ_DIR/run_config.dict" ;;
  esac
}
run_fuzzer() {  # target: 0 when the run ended cleanly and left no artifact
  local t=$1 d="$BUILD/ci-runs/$1"
  rm -rf "$d" && mkdir -p "$d/corpus" "$d/artifacts"
  cp "$(corpus_of "$t")"/* "$d/corpus/"
  local rc=0
  # shellcheck disable=SC2046
  "$BUILD/tests/fuzz/$t" -max_total_time="$SECONDS_EACH" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$d/artifacts/" $(dict_of "$t") "$d/corpus" >"$d/log.txt" 2>&1 || rc=$?
  local runs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$d/log.txt")
  if [[ $rc -ne 0 || -n "$(ls -A "$d/artifacts")" ]]; then
    stamp "FINDING in $t (exit $rc); log $d/log.txt, artifacts:"
    ls -l "$d/artifacts"
    grep -E 'ERROR|SUMMARY|runtime error|#[0-9]+ 0x' "$d/log.txt" | head -40
    return 1
  fi
  stamp "$t: ${runs:-?} executions in ${SECONDS_EACH}s, no finding"
}

failed=0
for ((i = 0; i < ${#TARGETS[@]}; i += 2)); do
  pids=()
  for t in "${TARGETS[@]:i:2}"; do
    run_fuzzer "$t" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
done

stamp "done ($( ((failed)) && echo FAILED || echo ok ))"
exit $failed
