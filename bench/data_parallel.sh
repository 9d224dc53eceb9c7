#!/usr/bin/env bash
# Data-parallel training on this machine's CPU cores: the tiny example run (examples/tiny.toml) at the
# same global batch, in one process with every core against `--nproc 2` (one core each, Gloo on
# loopback). Prints a markdown table row per configuration; wall time includes start-up and the
# latent cache.   usage: bench/data_parallel.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
common=(--set training.epochs=30 --set samples.prompts= --set validation.split=0.0
        --set validation.stabilize_items=0 --set checkpoints.every_epochs=0 --set logging.tensorboard=false
        --set data.resolution=128 --set data.min_bucket=128 --set data.max_bucket=128)
run() {  # label, extra args...
  local label="$1"; shift
  local start end
  start=$(date +%s.%N)
  "$build/kiln" train examples/tiny.toml --out "$tmp/$label" "${common[@]}" "$@" > /dev/null 2> "$tmp/$label.log"
  end=$(date +%s.%N)
  local steps
  steps=$(grep -c '"loss/step"' "$tmp/$label/metrics.jsonl")
  echo "| $label | $(printf "%.1f" "$(echo "$end - $start" | bc)") | $steps | $(tail -1 "$tmp/$label/metrics.jsonl" | sed -n 's/.*"loss\/epoch":\([0-9.]*\).*/\1/p') |"
}
echo "| configuration | wall s | optimizer steps | last epoch loss |"
echo "|---|---|---|---|"
run "1 process x batch 8, $(nproc) threads" --set data.batch_size=8
run "2 processes x batch 4, 1 thread each" --set data.batch_size=4 --nproc 2
