#!/usr/bin/env bash
# Long random soak of the core: the default suite's tests/test_soak.py with more and larger
# layers, on both simulators and the tiny, ice40-up5k and ecp5-25k builds.
#   scripts/soak.sh [LAYERS [SEED [MAX_CYCLES [PYTEST ARGS...]]]]   e.g. scripts/soak.sh 100 7 20000 -k icarus
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
layers="${1:-40}" seed="${2:-1}" cycles="${3:-20000}"
for v in "$layers" "$seed" "$cycles"; do
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "soak.sh: LAYERS, SEED and MAX_CYCLES must be integers, not '$v'" >&2; exit 2; }
done
shift $(( $# < 3 ? $# : 3 ))
export PSC_SOAK_LAYERS="$layers" PSC_SOAK_SEED="$seed" PSC_SOAK_MAX_CYCLES="$cycles"
exec bash scripts/env.sh pytest tests/test_soak.py "$@"
