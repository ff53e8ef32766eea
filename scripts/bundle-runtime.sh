#!/usr/bin/env bash
# Packs a built framepipe binary with the shared libraries it loads into one relocatable folder:
# what the container images ship (docker/Dockerfile, docker/Dockerfile.cpu), and what the
# `deploy` tests run here to check that the images' entrypoint and health check work.
#   scripts/bundle-runtime.sh BUILD_DIR OUT_DIR
# OUT_DIR/framepipe is the entrypoint: it runs OUT_DIR/bin/framepipe with OUT_DIR/lib first on
# the library path (for this program only: the base image's own tools keep their libraries).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$1
out=$2
exe="$build/bin/framepipe"
[ -x "$exe" ] || { echo "bundle-runtime: no $exe (build the framepipe target first)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
cp "$exe" "$out/bin/framepipe"
strip --strip-unneeded "$out/bin/framepipe" 2>/dev/null || true
"$here/collect-libs.sh" "$out/lib" "$out/bin/framepipe"
cat > "$out/framepipe" <<'LAUNCHER'
#!/bin/sh
# framepipe launcher: the bundled libraries for this program only; exec keeps signals direct.
d=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/bin/framepipe" "$@"
LAUNCHER
chmod 755 "$out/framepipe"
echo "bundle-runtime: $out ($(du -sh "$out" | cut -f1), $(ls "$out/lib" | wc -l) libraries)"
