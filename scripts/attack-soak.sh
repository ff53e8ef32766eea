#!/usr/bin/env bash
# Attack-mix soak (not in CI): every hostile-client attack of tests/security against one server
# while honest clients stream; reports honest throughput/p99 attacked vs unattacked and the
# server's RSS, descriptors and threads over time. Builds the default preset first.
#   scripts/attack-soak.sh [--minutes 10] [--csv trend.csv] [--attackers 4] [--only a,b]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh default --target framepipe framepipe_py_proto >/dev/null
export PYTHONPATH="$PWD/build/default/python${PYTHONPATH:+:$PYTHONPATH}"
export FRAMEPIPE_BINARY="$PWD/build/default/bin/framepipe"
exec /usr/bin/python3 scripts/attack_soak.py "$@"
