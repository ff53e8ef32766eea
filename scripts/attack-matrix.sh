#!/usr/bin/env bash
# What each defence buys: every hostile-client attack once against the front door, against
# gRPC's own listener (--guard off), and optionally an older binary (--old PATH). Not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh default --target framepipe framepipe_py_proto >/dev/null
export PYTHONPATH="$PWD/build/default/python${PYTHONPATH:+:$PYTHONPATH}"
export FRAMEPIPE_BINARY="${FRAMEPIPE_BINARY:-$PWD/build/default/bin/framepipe}"
exec /usr/bin/python3 scripts/attack_matrix.py "$@"
