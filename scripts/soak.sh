#!/usr/bin/env bash
# Soak test (not part of CI): builds framepipe and runs scripts/soak.py against a real server on
# loopback for N minutes with mixed misbehaving clients.
#   scripts/soak.sh --minutes 10 [--csv samples.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh default --target framepipe
exec /usr/bin/python3 scripts/soak.py --framepipe build/default/bin/framepipe "$@"
