#!/usr/bin/env bash
# Long random soak of the core: `psc soak` (psc.flow.soak), random layers on both simulators
# and the tiny, ice40-up5k and ecp5-25k builds, in parallel batches on a local Dask cluster.
#   scripts/soak.sh [LAYERS [SEED [MAX_CYCLES [PSC SOAK OPTIONS...]]]]   e.g. scripts/soak.sh 100 7 20000 --simulators icarus
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
layers="${1:-40}" seed="${2:-1}" cycles="${3:-20000}"
for v in "$layers" "$seed" "$cycles"; do
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "soak.sh: LAYERS, SEED and MAX_CYCLES must be integers, not '$v'" >&2; exit 2; }
done
shift $(( $# < 3 ? $# : 3 ))
exec bash scripts/env.sh psc soak --layers "$layers" --seed "$seed" --max-cycles "$cycles" "$@"
