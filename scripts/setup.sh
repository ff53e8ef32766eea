#!/usr/bin/env bash
# Installs every Debian 12 package framepipe needs to build, test, run the demo and the
# benchmarks (--build-only: just what building the binary needs). Idempotent: packages already
# present are not reinstalled. Root, apt-get only.
set -euo pipefail

# What building the framepipe binary needs (the container images' build stage installs only
# these: scripts/setup.sh --build-only).
BUILD_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config ca-certificates
  libtbb-dev libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev libopencv-features2d-dev
  libopencv-videoio-dev libjpeg62-turbo-dev libpng-dev prometheus-cpp-dev libcli11-dev
  libssl-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libnghttp2-dev
)
# Tests, sanitizers, fuzzing, tools, plots, the Python client, the demo and the benchmarks.
DEV_PACKAGES=(
  git clang libclang-rt-14-dev clang-format libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-grpcio python3-grpc-tools python3-protobuf python3-numpy python3-opencv
  python3-matplotlib python3-pytest python3-yaml python3-setuptools python3-h2 python3-av openssl ffmpeg
  prometheus util-linux
  curl procps
)

PACKAGES=("${BUILD_PACKAGES[@]}")
case "${1:-}" in
  --build-only) ;;
  --list) printf '%s\n' "${BUILD_PACKAGES[@]}" "${DEV_PACKAGES[@]}"; exit 0 ;;
  --list-build) printf '%s\n' "${BUILD_PACKAGES[@]}"; exit 0 ;;
  "") PACKAGES+=("${DEV_PACKAGES[@]}") ;;
  *) echo "usage: $0 [--build-only | --list | --list-build]" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages: ${missing[*]}" >&2
  echo "setup: run as root (or: sudo $0)" >&2
  exit 1
fi

echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The prometheus package starts a system service on install; framepipe's tests start their own
# instance on a loopback port, so keep the system one from occupying 9090 where it can be stopped.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
echo "setup: done"
