#!/usr/bin/env bash
# Long random soak of the core on both simulators (opt-in, not part of CI).
#   scripts/soak.sh [LAYERS [SEED [PYTEST ARGS...]]]   e.g. scripts/soak.sh 200 7 -k icarus
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
layers="${1:-40}" seed="${2:-1}"
for v in "$layers" "$seed"; do
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "soak.sh: LAYERS and SEED must be integers, not '$v'" >&2; exit 2; }
done
shift $(( $# < 2 ? $# : 2 ))
export PSC_SOAK_LAYERS="$layers" PSC_SOAK_SEED="$seed"
exec bash scripts/env.sh pytest -m soak tests/test_soak.py "$@"
