#!/usr/bin/env bash
# Copies every shared library the given executables load (as ldd resolves them here) into
# LIB_DIR, except the C library family, which the target system provides (built on Debian 12,
# so any glibc >= 2.36 runs them). The CUDA driver (libcuda) is never bundled: the host's
# driver, or the NVIDIA container toolkit, provides it; the CUDA runtime is linked statically.
#   scripts/collect-libs.sh LIB_DIR EXECUTABLE...
set -euo pipefail
lib_dir=$1
shift
mkdir -p "$lib_dir"
for exe in "$@"; do
  if ldd "$exe" | grep -q "not found"; then
    echo "collect-libs: $exe has unresolved libraries:" >&2
    ldd "$exe" | grep "not found" >&2
    exit 1
  fi
  ldd "$exe" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libresolv.so*|libcuda.so*) ;;
      *) cp -nL "$lib" "$lib_dir/" ;;
    esac
  done
done
