#!/usr/bin/env bash
# Long random soak of the core on both simulators (opt-in, not part of CI).
#   scripts/soak.sh [LAYERS [SEED]]     e.g. scripts/soak.sh 200 7
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PSC_SOAK_LAYERS="${1:-40}" PSC_SOAK_SEED="${2:-1}"
exec bash scripts/env.sh pytest -m soak tests/test_soak.py
