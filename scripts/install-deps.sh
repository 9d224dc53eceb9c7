#!/usr/bin/env bash
# Installs the Debian 12 packages kiln builds against. Safe to re-run: apt skips what is present.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git
  libtorch-dev                       # libtorch 1.13 (CPU) and its CMake config
  libgloo-dev                        # gloo headers for c10d ProcessGroupGloo (kiln train --nproc)
  libdnnl-dev                        # oneDNN headers: fast CPU attention under libtorch 1.13
  libopenblas0-pthread               # fast BLAS behind libtorch (the reference ran on OpenBLAS 0.3.21)
  nlohmann-json3-dev libcli11-dev libfmt-dev libtomlplusplus-dev
  libssl-dev                         # SHA-256 for the AUTOMATIC1111 model hashes
  libicu-dev                         # Unicode normalisation and categories for the CLIP tokenizer
  libpng-dev libgif-dev libstb-dev
  libopencv-imgcodecs-dev libopencv-imgproc-dev libopencv-core-dev  # decoding and resizing training pictures
  fonts-dejavu-core                  # the TrueType font of grid labels
  libgtest-dev libgmock-dev libbenchmark-dev
  time                               # GNU time: peak memory in bench/surgery.sh
  chromium                           # headless browser for the report screenshot test
  clang libclang-rt-14-dev           # libFuzzer target for the safetensors header parser
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "kiln: installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
