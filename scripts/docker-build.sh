#!/usr/bin/env bash
# Builds the container images (on a machine with Docker or Podman; the development machines have
# neither, so the `deploy` tests check the Dockerfiles' pieces instead).
#   scripts/docker-build.sh [cpu|gpu|all] [extra docker build args, e.g. --build-arg CUDA_ARCHS=90]
# Tags framepipe:cpu and framepipe:gpu (override with FRAMEPIPE_IMAGE=registry/name).
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
shift || true
engine=${DOCKER:-$(command -v docker || command -v podman || true)}
if [ -z "$engine" ]; then
  echo "docker-build: no docker or podman on this machine" >&2
  exit 1
fi
image=${FRAMEPIPE_IMAGE:-framepipe}
build() {  # build <tag> <dockerfile> [args]
  local tag=$1 file=$2
  shift 2
  echo "== $engine build $image:$tag ($file)"
  "$engine" build -f "$file" -t "$image:$tag" "$@" .
}
case "$which" in
  cpu) build cpu docker/Dockerfile.cpu "$@" ;;
  gpu) build gpu docker/Dockerfile "$@" ;;
  all) build cpu docker/Dockerfile.cpu "$@"; build gpu docker/Dockerfile "$@" ;;
  *) echo "usage: $0 [cpu|gpu|all] [docker build args]" >&2; exit 2 ;;
esac
