#!/usr/bin/env bash
# Containers that have actually run: builds framepipe's images on this machine and runs them.
#   scripts/container-test.sh            (as root; ctest -L container runs it)
#   FRAMEPIPE_CONTAINER_FROM_SOURCE=1 scripts/container-test.sh   also builds docker/Dockerfile.cpu
#       from source inside the engine (apt in the build stage, a full compile: ~10 min here) and
#       runs the stream test on it too
#
#  1. Engine: installs docker.io, debootstrap, docker-compose (Debian packages) if missing; starts
#     a dockerd of its own (data root /var/lib/framepipe-docker, socket in $work) unless one
#     answers already, and stops it again at the end.
#  2. Base image: debian:12-slim if a registry answers, else a Debian 12 image made here
#     (debootstrap --variant=minbase bookworm from this machine's own apt source | docker import),
#     reused from then on.
#  3. Images: the CPU image from the cpu preset (no CUDA) and the GPU image from the default preset
#     (the CUDA runtime linked in where nvcc is), each bundled with scripts/bundle-runtime.sh and
#     built with docker/Dockerfile.runtime; a Prometheus image from Debian's prometheus package.
#  4. tests/container/test_containers.py: run -> health -> 300 frames through the container's
#     port with the host client (count, order) -> /metrics scraped -> docker stop during a stream
#     (every admitted frame answered, exit code 0); non-root with a read-only root filesystem and
#     no capabilities; the GPU image in CPU-fallback mode; compose (docker-compose 1.29 and
#     `docker compose` where present) up with Prometheus scraping framepipe; the Kubernetes
#     manifests rendered (kubectl kustomize) and validated against the Kubernetes schemas (npm
#     kubernetes-models). Image sizes and start-up times are printed.
# Ends with pytest's summary ("N passed, N failed").
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=${FRAMEPIPE_CONTAINER_WORK:-/var/tmp/framepipe-container}
mkdir -p "$work"
say() { echo "== container-test: $*"; }

# ---- 1. engine
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
started_daemon=0
if ! docker info >/dev/null 2>&1; then
  export DOCKER_HOST="unix://$work/docker.sock"
  if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (data root /var/lib/framepipe-docker)"
    mkdir -p /var/lib/framepipe-docker
    dockerd --data-root /var/lib/framepipe-docker --host "$DOCKER_HOST" \
      --pidfile "$work/docker.pid" --exec-root "$work/docker-exec" >"$work/dockerd.log" 2>&1 &
    started_daemon=1
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log"; say "dockerd did not start"; exit 1; }
  fi
fi
stop_daemon() {
  if [ "$started_daemon" = 1 ]; then
    say "stopping dockerd"
    kill "$(cat "$work/docker.pid")" 2>/dev/null || true
    for _ in $(seq 1 40); do [ -e "$work/docker.pid" ] || break; sleep 0.25; done
  fi
}
trap stop_daemon EXIT
say "engine: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"

# ---- 2. base image
base=${FRAMEPIPE_BASE_IMAGE:-}
if [ -z "$base" ]; then
  if docker image inspect debian:12-slim >/dev/null 2>&1 ||
     timeout 60 docker pull -q debian:12-slim >/dev/null 2>&1; then
    base=debian:12-slim
  else
    base=framepipe-base:bookworm
    if ! docker image inspect "$base" >/dev/null 2>&1; then
      # This machine's own Debian source (deb822 or one-line format), never a written-in mirror.
      mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
               grep -v security | head -1)
      [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
      [ -n "$mirror" ] || { say "no Debian apt source on this machine to bootstrap from"; exit 1; }
      say "no registry: making $base with debootstrap from $mirror"
      rootfs="$work/rootfs"
      rm -rf "$rootfs"
      debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log"; exit 1; }
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$base" >/dev/null
      rm -rf "$rootfs"
    fi
  fi
fi
say "base image: $base"

# ---- 3. images
scripts/build.sh cpu --target framepipe >/dev/null
scripts/build.sh default --target framepipe >/dev/null
image() {  # image <tag> <build dir> <backend>
  local tag=$1 dir=$2 backend=$3 bundle="$work/bundle-$1"
  scripts/bundle-runtime.sh "$dir" "$bundle" >/dev/null
  local t0=$SECONDS
  docker build -q -f docker/Dockerfile.runtime --build-arg "BASE_IMAGE=$base" \
    --build-arg "BACKEND=$backend" -t "framepipe:$tag" "$bundle" >/dev/null
  say "framepipe:$tag built in $((SECONDS - t0)) s ($(docker image inspect -f '{{.Size}}' "framepipe:$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}
image cpu build/cpu cpu
image gpu build/default auto
if [ "${FRAMEPIPE_CONTAINER_FROM_SOURCE:-0}" = 1 ]; then
  t0=$SECONDS
  docker build -q -f docker/Dockerfile.cpu --build-arg "BUILD_IMAGE=$base" \
    --build-arg "RUNTIME_IMAGE=$base" -t framepipe:cpu-source . >/dev/null
  say "framepipe:cpu-source built from source in $((SECONDS - t0)) s ($(docker image inspect -f '{{.Size}}' framepipe:cpu-source | awk '{printf "%.0f MB", $1/1e6}'))"
  export FRAMEPIPE_SOURCE_IMAGE=framepipe:cpu-source
fi
prom=$(command -v prometheus || true)
if [ -n "$prom" ]; then
  ctx="$work/prometheus-image"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$prom" "$ctx/prometheus"
  printf 'FROM %s\nCOPY prometheus /bin/prometheus\nRUN mkdir -p /prometheus && chown 65534:65534 /prometheus\nUSER 65534:65534\nWORKDIR /prometheus\nENTRYPOINT ["/bin/prometheus"]\nCMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]\n' \
    "$base" >"$ctx/Dockerfile"
  docker build -q -t framepipe-prometheus:local "$ctx" >/dev/null
  export PROMETHEUS_IMAGE=framepipe-prometheus:local
  say "Prometheus image from Debian's prometheus package: $PROMETHEUS_IMAGE"
fi

# ---- 4. the tests
export FRAMEPIPE_BINARY="$repo/build/default/bin/framepipe" FRAMEPIPE_CONTAINER_WORK="$work"
export FRAMEPIPE_BASE_IMAGE="$base"
/usr/bin/python3 -m pytest -v -s -p no:cacheprovider tests/container/test_containers.py "$@"
