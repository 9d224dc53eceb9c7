#!/usr/bin/env bash
# Wall time and peak memory of model surgery on full-size SD 1.5 fp16 files, printed as markdown rows:
# an add-difference merge of three models, a rank-32 LoRA extraction and a LoRA merge.
# usage: bench/surgery.sh BUILD_DIR
set -euo pipefail
build="$1"
tmp="${TMPDIR:-/tmp}"
for seed in 0 1 2; do
  f="$tmp/kiln-bench-sd15-fp16-$seed.safetensors"
  [ -f "$f" ] || "$build/kiln" init "$f" --arch sd15 --dtype fp16 --seed "$seed" >/dev/null
done
measure() {  # label, command...
  local label="$1"; shift
  local log; log="$(mktemp)"
  /usr/bin/time -f "%e %M" -o "$log" "$@" >/dev/null 2>&1 || { echo "| $label | failed |  |"; return; }
  read -r seconds kib < "$log"
  printf '| %s | %.1f | %.1f |\n' "$label" "$seconds" "$(awk -v k="$kib" 'BEGIN { print k / 1048576 }')"
  rm -f "$log"
}
a="$tmp/kiln-bench-sd15-fp16-0.safetensors" b="$tmp/kiln-bench-sd15-fp16-1.safetensors" c="$tmp/kiln-bench-sd15-fp16-2.safetensors"
echo "| operation | wall s | peak RSS GiB |"
echo "|---|---|---|"
measure "merge A + 1.0·(B − C), three SD 1.5 fp16 files → fp16" \
  "$build/kiln" merge "$a" "$b" "$c" --add-difference --multiplier 1.0 --dtype fp16 --out "$tmp/kiln-bench-merged.safetensors"
measure "extract a rank-32 LoRA (B − A)" \
  "$build/kiln" lora extract "$b" "$a" --rank 32 --out "$tmp/kiln-bench-lora32.safetensors"
measure "merge a rank-32 LoRA into A at 0.8" \
  "$build/kiln" lora merge "$a" "$tmp/kiln-bench-lora32.safetensors:0.8" --dtype fp16 --out "$tmp/kiln-bench-lora-merged.safetensors"
rm -f "$tmp/kiln-bench-merged.safetensors" "$tmp/kiln-bench-lora-merged.safetensors"
