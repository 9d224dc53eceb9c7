#!/bin/sh
# Opens a kiln report in headless Chromium and checks that it renders to a non-blank screenshot:
# the report must work from a plain file with nothing fetched. Exit 77 (CTest "skipped") when no
# Chromium is installed.
# Usage: report_screenshot.sh REPORT.html OUT.png
set -eu
if [ $# -ne 2 ]; then
  echo "usage: $0 REPORT.html OUT.png" >&2
  exit 2
fi
report=$1
out=$2
browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then
    browser=$b
    break
  fi
done
if [ -z "$browser" ]; then
  echo "report_screenshot: chromium not installed, skipping" >&2
  exit 77
fi
[ -f "$report" ] || { echo "report_screenshot: no report at $report" >&2; exit 1; }
abs=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
rm -f "$out"
# A throwaway profile so a user's browser state neither leaks in nor gets written.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 120 "$browser" --headless --disable-gpu --no-sandbox --user-data-dir="$profile" \
  --screenshot="$out" --window-size=1280,2000 "file://$abs" >/dev/null 2>&1 || true
if [ ! -f "$out" ]; then
  echo "report_screenshot: $browser wrote no screenshot to $out" >&2
  exit 1
fi
size=$(wc -c <"$out")
# A blank 1280x2000 page compresses to a few KB; plots, text and pictures take far more.
if [ "$size" -le 20000 ]; then
  echo "report_screenshot: $out is only $size bytes: the page looks blank" >&2
  exit 1
fi
echo "report_screenshot: $out ($size bytes)"
