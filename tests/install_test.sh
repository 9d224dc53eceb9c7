#!/bin/sh
# An installed kiln works from wherever its prefix ends up: `cmake --install` into a temporary
# prefix, the prefix moved, then `kiln demo --quick` run from there, and the full demo's base found
# in the moved prefix (share/kiln/demo-base), not in the source tree.
# usage: install_test.sh BUILD_DIR
set -eu
build="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
mv "$work/prefix" "$work/moved"
test -x "$work/moved/bin/kiln"
test -f "$work/moved/share/kiln/demo-base/model_index.json"
cd "$work"
"$work/moved/bin/kiln" demo --quick --out "$work/quick" --cache "$work/cache" >"$work/quick.log" 2>&1 ||
  { cat "$work/quick.log"; exit 1; }
test -f "$work/quick/report.html"
# --base-only stops once the base is ready: it must be the moved prefix's shipped one.
"$work/moved/bin/kiln" demo --base-only --out "$work/full" --cache "$work/cache" >"$work/full.log" 2>&1 ||
  { cat "$work/full.log"; exit 1; }
grep -F "base model: $work/moved/share/kiln/demo-base (shipped" "$work/full.log" >/dev/null ||
  { echo "the moved install did not use its own demo base:"; cat "$work/full.log"; exit 1; }
echo "installed, moved and ran: $work/moved/bin/kiln"
