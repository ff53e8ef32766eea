#!/usr/bin/env bash
# Builds the container images with Docker or Podman.
#   scripts/docker-build.sh [cpu|gpu|all|cpu-host|gpu-host] [extra docker build args]
#     cpu, gpu     from source inside the engine (docker/Dockerfile.cpu; docker/Dockerfile installs
#                  the CUDA toolkit from NVIDIA's repository: internet needed)
#     cpu-host     the cpu preset built on this machine, bundled (docker/Dockerfile.runtime)
#     gpu-host     the default preset built on this machine with its own nvcc (the CUDA runtime
#                  linked in), bundled (docker/Dockerfile.runtime); no registry or NVIDIA
#                  repository needed. Pass --build-arg BASE_IMAGE=... for a local base image.
# Tags framepipe:cpu and framepipe:gpu (override with FRAMEPIPE_IMAGE=registry/name).
# scripts/container-test.sh builds the *-host variants and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
shift || true
engine=${DOCKER:-$(command -v docker || command -v podman || true)}
if [ -z "$engine" ]; then
  echo "docker-build: no docker or podman on this machine (Debian: apt-get install docker.io)" >&2
  exit 1
fi
image=${FRAMEPIPE_IMAGE:-framepipe}
build() {  # build <tag> <dockerfile> [args]
  local tag=$1 file=$2
  shift 2
  echo "== $engine build $image:$tag ($file)"
  "$engine" build -f "$file" -t "$image:$tag" "$@" .
}
from_host() {  # from_host <tag> <preset> <backend> [args]
  local tag=$1 preset=$2 backend=$3 bundle
  shift 3
  scripts/build.sh "$preset" --target framepipe
  bundle=$(mktemp -d)
  scripts/bundle-runtime.sh "build/$preset" "$bundle"
  echo "== $engine build $image:$tag (docker/Dockerfile.runtime, build/$preset)"
  "$engine" build -f docker/Dockerfile.runtime --build-arg "BACKEND=$backend" -t "$image:$tag" \
    "$@" "$bundle"
  rm -rf "$bundle"
}
case "$which" in
  cpu) build cpu docker/Dockerfile.cpu "$@" ;;
  gpu) build gpu docker/Dockerfile "$@" ;;
  all) build cpu docker/Dockerfile.cpu "$@"; build gpu docker/Dockerfile "$@" ;;
  cpu-host) from_host cpu cpu cpu "$@" ;;
  gpu-host) from_host gpu default auto "$@" ;;
  *) echo "usage: $0 [cpu|gpu|all|cpu-host|gpu-host] [docker build args]" >&2; exit 2 ;;
esac
