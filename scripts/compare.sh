#!/usr/bin/env bash
# PSC against the plain and naive datapaths on both targets: the README's
# comparison tables. Each target takes tens of minutes on two cores (Yosys on the
# whole core, then nextpnr over 3 seeds per variant).
#
#   bash scripts/compare.sh                 # both targets, 3 seeds
#   SEEDS=1 bash scripts/compare.sh ecp5-25k
#
# Writes build/synth/compare-<target>.md (the table) and .json (everything).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seeds=${SEEDS:-3}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ice40-up5k ecp5-25k)
mkdir -p build/synth
for t in "${targets[@]}"; do
    bash scripts/env.sh psc compare --target "$t" --seeds "$seeds" --json > "build/synth/compare-$t.json"
    bash scripts/env.sh python -c '
import json, sys
from psc.flow.synth import format_compare
print(f"`psc compare --target {sys.argv[2]} --seeds {sys.argv[3]}`\n")
print(format_compare(json.load(open(sys.argv[1]))))' \
        "build/synth/compare-$t.json" "$t" "$seeds" > "build/synth/compare-$t.md"
    cat "build/synth/compare-$t.md"
done
