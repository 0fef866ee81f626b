#!/usr/bin/env bash
# Long property-based fuzz of the public API and the command line (opt-in, not part of CI).
#   scripts/fuzz.sh [EXAMPLES [PYTEST ARGS...]]   e.g. scripts/fuzz.sh 3000 -k cli
# EXAMPLES per test (default 1500); the simulated core runs a twenty-fifth of them.
# One process: the core's Verilator build is made once and reused.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
examples="${1:-1500}"
[[ "$examples" =~ ^[1-9][0-9]*$ ]] || {
    echo "fuzz.sh: EXAMPLES must be a positive integer, not '$examples'" >&2; exit 2; }
shift $(( $# < 1 ? $# : 1 ))
export PSC_FUZZ_EXAMPLES="$examples"
exec bash scripts/env.sh pytest -m fuzz -n 0 --hypothesis-show-statistics tests/test_fuzz.py "$@"
