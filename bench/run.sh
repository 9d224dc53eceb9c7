#!/usr/bin/env bash
# Runs kiln's benchmarks and writes bench/results/<date>-<host>.md naming the machine.
# usage: bench/run.sh [BUILD_DIR]   (builds first; makes a full-size SD 1.5 fp16 file in $TMPDIR if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
cmake --build "$build" --target kiln_cli bench_networks bench_load bench_sampling bench_train bench_optimizers bench_profile -j "$(nproc)"
tmp="${TMPDIR:-/tmp}"
sd15="$tmp/kiln-bench-sd15-fp16.safetensors"
[ -f "$sd15" ] || "$build/kiln" init "$sd15" --arch sd15 --dtype fp16 --seed 0

stamp="$(date -u +%Y-%m-%d)"
out="bench/results/$stamp-$(hostname -s).md"
mkdir -p bench/results
cpu="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
{
  echo "# kiln benchmarks, $stamp"
  echo
  echo "- machine: $(hostname -s), $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM"
  echo "- libtorch: $(dpkg-query -W -f='${Version}' libtorch-dev 2>/dev/null || echo unknown), threads: torch on every core (KILN_THREADS overrides), OpenBLAS 1 thread inside it"
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
  echo
  echo "## Open and load a full-size SD 1.5 fp16 file ($(du -h "$sd15" | cut -f1)) into fp32 modules"
  echo
  echo '```'
  "$build/bench/bench_load" "$sd15"
  echo '```'
  echo
  echo "## Forward passes (full-size SD 1.5, batch 1, 512x512 / 64x64 latent) and fp32 matmul rate"
  echo
  echo '```'
  "$build/bench/bench_networks" --benchmark_counters_tabular=true 2>&1
  echo '```'
  echo
  echo "## txt2img with the full-size SD 1.5 networks (DPM++ 2M Karras, CFG 7: UNet batch 2), one process per row"
  echo
  echo "| size | attention | steps | s/step | VAE decode s | total s | RSS after weights GiB | peak RSS GiB |"
  echo "|---|---|---|---|---|---|---|---|"
  for size in 256 512; do
    for attention in plain chunked; do
      "$build/bench/bench_sampling" "$size" "$attention" 2
    done
  done
  echo
  echo "## Training step: text encoder + UNet both training, one process per row"
  echo
  echo "Tiny model at 128² against diffusers' 435 ms (batch 2) / 1125 ms (batch 8) on this machine type"
  echo "(shared/docs/targets.md). SD 1.5 at 512² under a 23 GB address-space limit; the 16 GB target"
  echo "is the row with 8-bit AdamW and gradient checkpointing."
  echo
  echo "| model | size | batch | gradient checkpointing | optimizer | mixed precision | s/step | peak RSS GiB |"
  echo "|---|---|---|---|---|---|---|---|"
  "$build/bench/bench_train" tiny 128 2 0 5
  "$build/bench/bench_train" tiny 128 8 0 5
  "$build/bench/bench_train" tiny 128 8 0 5 adamw bf16
  prlimit --as=23000000000 "$build/bench/bench_train" sd15 512 1 1 2 adamw8bit
  for c in 1 0; do prlimit --as=23000000000 "$build/bench/bench_train" sd15 512 1 "$c" 2; done
  echo
  echo "## Where the time goes: one SD 1.5 UNet forward at 512² under libtorch's profiler"
  echo
  for layout in contiguous channels_last; do
    "$build/bench/bench_profile" forward 64 "$layout"
    echo
  done
  echo
  echo "## Optimizer step and state on the SD 1.5 UNet parameters (random gradients), one process per row"
  echo
  echo "| optimizer | parameters | s/step | state bytes/param | state GiB | peak RSS GiB |"
  echo "|---|---|---|---|---|---|"
  for o in adamw adamw8bit lion sgd dadapt_adam prodigy; do
    prlimit --as=23000000000 "$build/bench/bench_optimizers" "$o" 3 || echo "| $o | failed (memory limit) |||||"
  done
  echo
  echo "## Model surgery on full-size SD 1.5 fp16 files (bench/surgery.sh)"
  echo
  bench/surgery.sh "$build"
} | tee "$out"
echo "wrote $out"
