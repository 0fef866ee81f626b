#!/usr/bin/env bash
# PSC against the plain and naive datapaths on both targets: the README's
# comparison tables. Each target takes tens of minutes on two cores (Yosys on the
# whole core, then nextpnr over 3 seeds per variant).
#
#   bash scripts/compare.sh                 # both targets, 3 seeds
#   SEEDS=1 bash scripts/compare.sh ecp5-25k
#
# Writes compare-<target>.md (the table) and .json (everything) beside the
# synthesis builds: build/synth/, or $PSC_BUILD_DIR/synth when that is set.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seeds=${SEEDS:-3}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ice40-up5k ecp5-25k)
out=$(bash scripts/env.sh python -c 'from psc.build_dir import build_root; print(build_root() / "synth")')
mkdir -p "$out"
for t in "${targets[@]}"; do
    bash scripts/env.sh psc compare --target "$t" --seeds "$seeds" --json > "$out/compare-$t.json"
    # The table from the JSON just written: psc compare's text without a second run.
    bash scripts/env.sh python -c '
import json, sys
from psc.flow.synth import format_compare
print(f"`psc compare --target {sys.argv[2]} --seeds {sys.argv[3]}`\n")
print(format_compare(json.load(open(sys.argv[1]))))' \
        "$out/compare-$t.json" "$t" "$seeds" > "$out/compare-$t.md"
    cat "$out/compare-$t.md"
done
