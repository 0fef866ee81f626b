"""Board tops (the UART bridge and the core on a real board) and their builds (``psc build``).

Boards (:data:`BOARDS`): the iCEBreaker (iCE40 UP5K, 12 MHz oscillator,
FTDI UART) and the ULX3S 25F (ECP5 LFE5U-25F, 25 MHz oscillator, FTDI UART),
both from amaranth-boards. The design runs on the FPGA's PLL
(:mod:`psc.hw.pll`), fed by the oscillator: each :class:`Board` asks for a
core clock for each mode (``core_hz`` and ``network_hz``, chosen with margin
below the Fmax its builds reach) and runs at the nearest frequency the PLL
makes (:meth:`Board.clk_hz_for`). The UART divisor is ``round(clk_hz / baud)`` of
that achieved frequency. LED 0 shows the core's ``busy``, LED 1 its
``error``.

Each board runs the preset of its synthesis target (:data:`psc.presets.BOARDS`).

Build flow: amaranth-boards' own build script, with the YoWASP tools
(:func:`psc.flow.toolchain.tool_env`) and the synthesis and nextpnr options of
``psc synth`` (:mod:`psc.flow.toolchain`: ``synth_<family>`` options, the
iCE40 read-port setting after reading the design, ``--timing-allow-fail`` so
that a missed clock gives a figure, not an error, and a JSON report). The
PLL output is constrained to its achieved frequency, so nextpnr times the
design against the clock it runs at. The build directory must not be under
``/tmp`` (YoWASP cannot see it). The report (:func:`build`) gives the PLL
clock (requested, achieved and the dividers), the utilisation and the Fmax
nextpnr reports, FAIL when it is below the PLL clock; on iCE40 also how
many SB_MAC16 are fully registered (nextpnr-ice40 does not time through
the DSP) and, when ``icetime`` is installed, its Fmax, which does.
"""

import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from psc.hw.link.board_top import BoardTop
from psc.hw.link.bridge import BridgeConfig
from psc.hw.link.network_bridge import NetworkBridgeConfig
from psc.build_dir import build_root, check_not_tmp
from psc.config import CoreConfig
from psc.model.checks import BadTypeError, check_int, show
from psc.flow import toolchain
from psc.presets import DEFAULT_BAUD, board_engine, preset
from psc.hw.link.uart import divisor_for
from psc.hw.pll import pll_settings

__all__ = ["BOARDS", "DEFAULT_BAUD", "BoardTop", "Board", "build", "format_report",
           "bridge_config", "board_pll"]

#: Base name of every file of a board build (``psc_bridge.bin``, ``psc_bridge.report.json``, ...).
NAME = "psc_bridge"


@dataclass(frozen=True)
class Board:
    """How to build for one board.

    ``osc_hz`` is the board oscillator (the platform's default clock, the
    PLL's reference), ``core_hz`` the clock asked of the PLL for the
    tile-mode design and ``network_hz`` for the network-mode one (default
    ``core_hz``); :attr:`pll` holds the tile mode's settings and
    :attr:`clk_hz` the frequency its design really runs at,
    :meth:`pll_for` and :meth:`clk_hz_for` those of either mode.
    ``seeds`` maps a mode to its default nextpnr placer seed (1 when absent):
    one whose build meets the board's clock with the current design.
    """
    name: str
    platform: str          # "module:Class" in amaranth_boards
    osc_hz: float
    core_hz: float
    family: str
    device: str
    capacity_cells: tuple  # nextpnr cell types shown in the report
    network_hz: float | None = None
    seeds: tuple = ()      # (mode, seed) pairs

    def default_seed(self, mode="tile"):
        """The placer seed a build in ``mode`` uses unless told another."""
        _check_mode(mode)
        return dict(self.seeds).get(mode, 1)

    def requested_hz(self, mode="tile"):
        """The clock asked of the PLL in ``mode`` (:data:`MODES`)."""
        _check_mode(mode)
        return self.network_hz if mode == "network" and self.network_hz else self.core_hz

    def pll_for(self, mode="tile"):
        """The PLL settings of ``mode`` (:func:`psc.hw.pll.pll_settings`)."""
        return self.pll if self.requested_hz(mode) == self.core_hz else self._network_pll

    def clk_hz_for(self, mode="tile"):
        """The design's clock in ``mode``: the PLL's achieved output frequency."""
        return self.pll_for(mode).out_hz

    @cached_property
    def pll(self):
        """The PLL settings for ``core_hz`` (:func:`psc.hw.pll.pll_settings`)."""
        return pll_settings(self.family, self.osc_hz, self.core_hz)

    @cached_property
    def _network_pll(self):
        return pll_settings(self.family, self.osc_hz, self.network_hz)

    @property
    def clk_hz(self):
        """The tile-mode design's clock: the PLL's achieved output frequency."""
        return self.pll.out_hz


# core_hz and network_hz: clocks that each mode's build meets with its default seed (psc
# build --seeds 3 gives the spread over seeds; the README has the figures), and
# frequencies the PLL makes exactly in whole MHz, so that the DEFAULT_BAUD divisor is
# exact too.
BOARDS = {
    "icebreaker": Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform",
                        12e6, 33e6, "ice40", "iCE40UP5K-SG48",
                        ("ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_DSP", "ICESTORM_SPRAM",
                         "ICESTORM_PLL", "SB_IO")),
    "ulx3s": Board("ulx3s", "amaranth_boards.ulx3s:ULX3S_25F_Platform", 25e6, 100e6,
                   "ecp5", "LFE5U-25F-CABGA381",
                   ("TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "MULT18X18D", "EHXPLLL",
                    "TRELLIS_IO")),
}


def _check_board(board):
    if not isinstance(board, str) or board not in BOARDS:
        raise ValueError(f"board must be one of {', '.join(BOARDS)}, not {show(board)}")
    return BOARDS[board]


#: Bridges a board is built with: ``tile`` (:mod:`psc.hw.link.bridge`, the host sends every
#: tile) and ``network`` (:mod:`psc.hw.link.network_bridge`, the network kept on chip).
MODES = ("tile", "network")


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {show(mode)}")


def board_pll(board, core_hz=None, mode="tile"):
    """The PLL settings of ``board`` for ``core_hz`` (default: the board's clock of ``mode``,
    :meth:`Board.requested_hz`)."""
    b = _check_board(board)
    _check_mode(mode)
    return b.pll_for(mode) if core_hz is None else pll_settings(b.family, b.osc_hz, core_hz)


def bridge_config(board, baud=DEFAULT_BAUD, config=None, core_hz=None, mode="tile"):
    """The bridge configuration of ``board`` at ``baud`` in ``mode`` (:data:`MODES`): a
    :class:`~psc.hw.link.bridge.BridgeConfig` (core from the board's preset, or
    ``config``) or a :class:`~psc.hw.link.network_bridge.NetworkBridgeConfig` (the board's
    engine, :func:`psc.presets.board_engine`), its UART divisor from the PLL's achieved
    frequency for ``core_hz`` (default: the board's clock of ``mode``)."""
    _check_mode(mode)
    pll = board_pll(board, core_hz, mode)
    if config is not None and not isinstance(config, CoreConfig):
        raise BadTypeError(f"config must be a psc.config.CoreConfig or None, not {show(config)}")
    divisor = divisor_for(pll.out_hz, baud)
    if mode == "network":
        engine = board_engine(board)
        if config is not None:
            engine = replace(engine, core=config)
        return NetworkBridgeConfig(engine, divisor=divisor)
    return BridgeConfig(core=preset(board) if config is None else config, divisor=divisor)


def _platform(board):
    import importlib
    mod, cls = board.platform.split(":")
    return getattr(importlib.import_module(mod), cls)()


def _build_options(board, core, seed):
    """The overrides of amaranth's build script for ``core`` on ``board`` (a :class:`Board`)."""
    synth = toolchain.synth_options(board.family, core.pe.hand_dsps)
    # amaranth's script runs `synth_<family> <synth_opts> -top <name>`: its first half, then
    # `script_after_synth` the rest (toolchain.synth_in_halves)
    rest = toolchain.synth_in_halves(board.family, synth, NAME)[1:]
    opts = {"synth_opts": f"{synth} -run :map_luts", "script_after_synth": "\n".join(rest),
            "nextpnr_opts": " ".join(toolchain.nextpnr_options(seed, f"{NAME}.report.json"))}
    after_read = toolchain.script_after_read(board.family)
    if board.family == "ecp5":
        # the hard multipliers are the MAC array's (the network engine's add and pooling
        # multiplies would take two more than the 25F has)
        after_read += toolchain.lut_multiplies(core.pe.act_width)
    if after_read:
        opts["script_after_read"] = "\n".join(after_read)
    return opts


def default_build_dir(board, mode="tile"):
    """Where :func:`build` builds ``board`` in ``mode`` by default."""
    return build_root() / "board" / (board if mode == "tile" else f"{board}-{mode}")


def build(board, *, baud=DEFAULT_BAUD, build_dir=None, seed=None, config=None, core_hz=None,
          log=None, mode="tile"):
    """Build the bitstream of ``board`` in ``mode`` (:data:`MODES`) with its PLL at
    ``core_hz`` (default: the board's clock of ``mode``); returns a report dict.

    Keys: ``board``, ``mode``, ``seed`` (the placer seed, by default the board's for
    ``mode``: :meth:`Board.default_seed`), ``device``, ``config`` (repr of the core configuration, or in
    network mode of the engine's),
    ``baud``, ``divisor``, ``osc_mhz`` (the board oscillator),
    ``pll_requested_mhz``, ``clk_mhz`` (the PLL's achieved frequency, the
    design's clock), ``pll`` (the settings,
    :meth:`psc.hw.pll.ICE40PLLSettings.to_dict` or the ECP5 one),
    ``fmax_mhz``, ``timing_met`` (nextpnr's Fmax at least ``clk_mhz``),
    ``fmax_by_clock`` (clock -> ``(mhz, passed, constraint_mhz)``), ``util``
    (nextpnr cell -> ``(used, total)``), ``shown_cells``, ``bitstream``
    (path), ``dsp_registered`` (iCE40: ``(fully registered, total)``
    SB_MAC16), ``icetime_mhz`` and ``icetime_met`` (iCE40, when ``icetime``
    is on PATH, else None), ``build_dir``, ``seconds``.
    """
    b = _check_board(board)
    bc = bridge_config(board, baud, config, core_hz, mode)
    pll = board_pll(board, core_hz, mode)
    seed = b.default_seed(mode) if seed is None else seed
    options = _build_options(b, bc.core, seed)
    build_dir = check_not_tmp("build_dir", build_dir or default_build_dir(board, mode))
    build_dir.mkdir(parents=True, exist_ok=True)
    platform = _platform(b)
    clk_mhz = pll.out_hz / 1e6
    if log:
        log(f"building {board} ({b.device}), {mode} mode: "
            f"{bc.engine if mode == 'network' else bc.core!r}, PLL {b.osc_hz / 1e6:g} -> "
            f"{clk_mhz:g} MHz ({pll.describe()}), baud {baud} (divisor {bc.divisor}) "
            f"in {build_dir}")
    start = time.monotonic()
    plan = platform.build(BoardTop(bc, pll), name=NAME, build_dir=str(build_dir),
                          do_build=False, **options)
    plan.execute_local(str(build_dir), env=toolchain.tool_env())
    seconds = time.monotonic() - start
    parsed = toolchain.parse_nextpnr_report(
        json.loads((build_dir / f"{NAME}.report.json").read_text()))
    ext = "bin" if b.family == "ice40" else "bit"
    bitstream = build_dir / f"{NAME}.{ext}"
    if not bitstream.exists():
        raise RuntimeError(f"no bitstream {bitstream} after the build")
    fmax = toolchain.design_fmax(parsed["fmax"])
    # nextpnr's log prints two decimals; the report's extra digits are noise
    fmax = round(fmax, 2) if fmax is not None else None
    dsp = icetime = None
    if b.family == "ice40":
        check = toolchain.check_dsp(
            b.family, toolchain.read_netlist(build_dir / f"{NAME}.json").values())
        dsp = (check.registered, check.total)
        found = toolchain.icetime(build_dir, f"{NAME}.asc", pcf=f"{NAME}.pcf", clk_mhz=clk_mhz)
        icetime = found.mhz if found else None
    return {"board": board, "mode": mode, "seed": seed, "device": b.device,
            "config": repr(bc.engine if mode == "network" else bc.core), "baud": baud,
            "dsp_registered": dsp, "icetime_mhz": icetime,
            "icetime_met": None if icetime is None else icetime >= clk_mhz,
            "divisor": bc.divisor, "osc_mhz": b.osc_hz / 1e6,
            "pll_requested_mhz": pll.requested_hz / 1e6, "clk_mhz": clk_mhz,
            "pll": pll.to_dict(), "fmax_mhz": fmax,
            "timing_met": fmax is not None and fmax >= clk_mhz,
            "fmax_by_clock": parsed["fmax"], "util": parsed["util"],
            "shown_cells": b.capacity_cells, "bitstream": str(bitstream),
            "build_dir": str(build_dir), "seconds": round(seconds, 1)}


def _verdict(mhz, met, clk_mhz):
    return (f"{mhz:.2f} MHz, meets the {clk_mhz:g} MHz PLL clock" if met
            else f"{mhz:.2f} MHz, FAIL: below the {clk_mhz:g} MHz PLL clock")


def format_report(rep):
    """Readable text of a :func:`build` report."""
    pll = rep["pll"]
    dividers = (f"DIVR={pll['divr']} DIVF={pll['divf']} DIVQ={pll['divq']} "
                f"FILTER_RANGE={pll['filter_range']}" if pll["family"] == "ice40" else
                f"CLKI_DIV={pll['clki_div']} CLKFB_DIV={pll['clkfb_div']} "
                f"CLKOP_DIV={pll['clkop_div']}")
    lines = [f"psc build --board {rep['board']} --mode {rep.get('mode', 'tile')}  "
             f"({rep['device']}, "
             f"{rep['baud']} baud = {rep['divisor']} clocks/bit)",
             f"  clock: PLL {rep['clk_mhz']:g} MHz achieved, {rep['pll_requested_mhz']:g} MHz "
             f"requested, from the {rep['osc_mhz']:g} MHz oscillator ({dividers})",
             f"  core: {rep['config']}"]
    lines.append("  utilisation (nextpnr):")
    for cell in rep["shown_cells"]:
        if cell in rep["util"]:
            used, total = rep["util"][cell]
            lines.append(f"    {cell:<16} {used:>6} / {total:<6} {100 * used / total:5.1f}%")
    fmax = rep["fmax_mhz"]
    lines.append(f"  Fmax (nextpnr): {_verdict(fmax, rep['timing_met'], rep['clk_mhz'])}"
                 if fmax is not None else "  Fmax (nextpnr): not reported, FAIL")
    if rep.get("dsp_registered"):
        ok, n = rep["dsp_registered"]
        lines.append(f"  SB_MAC16 fully registered: {ok}/{n}"
                     + ("" if ok == n else " (nextpnr does not time through the others)"))
    if rep.get("icetime_mhz") is not None:
        lines.append("  Fmax (icetime, times through the DSPs): "
                     + _verdict(rep["icetime_mhz"], rep["icetime_met"], rep["clk_mhz"]))
    lines.append(f"  bitstream: {rep['bitstream']}   ({rep['seconds']:.0f} s)")
    return "\n".join(lines)


def _build_task(board, seed, build_dir, kwargs):
    """One seed's :func:`build`, as an :class:`~psc.flow.executor.Executor` task."""
    return build(board, seed=seed, build_dir=build_dir, log=_log, **kwargs)


def _log(msg):
    print(f"[psc build] {msg}", file=sys.stderr, flush=True)


def build_seeds(board, seeds, *, build_dir=None, executor=None, **kwargs):
    """:func:`build` ``board`` for placer seeds ``1..seeds``, each in ``<build_dir>/seed<N>``
    (``build_dir`` default :func:`default_build_dir`), as tasks of ``executor`` (a
    :class:`~psc.flow.executor.Executor`; None: one after the other, here); ``kwargs``
    are :func:`build`'s. Returns the reports in seed order; a seed whose build raised
    gives its :class:`~psc.flow.executor.Failure`."""
    check_int("seeds", seeds, 1)
    _check_board(board)
    mode = kwargs.get("mode", "tile")
    _check_mode(mode)
    base = check_not_tmp("build_dir", build_dir or default_build_dir(board, mode))
    dirs = {seed: str(Path(base) / f"seed{seed}") for seed in range(1, seeds + 1)}
    if executor is None:
        return [_build_task(board, seed, d, kwargs) for seed, d in dirs.items()]
    tasks = [executor.submit(_build_task, board, seed, d, kwargs, label=f"{board} seed {seed}",
                             cache=False) for seed, d in dirs.items()]
    return executor.gather(tasks)


def format_seeds(reports):
    """Readable text of :func:`build_seeds`' reports: each seed's Fmax and the median."""
    from psc.flow.executor import Failure
    built = [r for r in reports if not isinstance(r, Failure)]
    lines = [f"psc build --board {built[0]['board']} --mode {built[0]['mode']}, seeds "
             f"1-{len(reports)} ({built[0]['device']}, PLL {built[0]['clk_mhz']:g} MHz)"
             if built else "psc build: every seed failed"]
    for seed, r in enumerate(reports, 1):
        if isinstance(r, Failure):
            lines.append(f"  seed {seed}: the build failed: {r.error}")
            continue
        fmax = "not reported" if r["fmax_mhz"] is None else f"{r['fmax_mhz']:.2f} MHz"
        extra = ("" if r.get("icetime_mhz") is None
                 else f", icetime {r['icetime_mhz']:.2f} MHz")
        lines.append(f"  seed {seed}: Fmax (nextpnr) {fmax}{extra}, "
                     f"{'meets' if r['timing_met'] else 'FAIL'}; {r['bitstream']} "
                     f"({r['seconds']:.0f} s)")
    for key, tool in (("fmax_mhz", "nextpnr"), ("icetime_mhz", "icetime")):
        values = [r[key] for r in built if r.get(key) is not None]
        if values and len(values) == len(reports):
            mhz = statistics.median(values)
            clk = built[0]["clk_mhz"]
            lines.append(f"  median Fmax ({tool}): " + _verdict(mhz, mhz >= clk, clk))
    return "\n".join(lines)


def main(board, config=None, *, baud=DEFAULT_BAUD, build_dir=None, seed=None, as_json=False,
         core_hz=None, mode="tile", seeds=None, scheduler=None, workers=None):
    """``psc build`` (parser in :mod:`psc.cli`): build ``board`` with ``config`` (default: its
    preset) and its PLL at ``core_hz`` (default: the board's), print the report (JSON with
    ``as_json``; a missed PLL clock is its FAIL, not an exit status, as for ``psc synth``);
    returns the exit status. With ``seeds``, :func:`build_seeds` for seeds ``1..seeds`` on
    an :class:`~psc.flow.executor.Executor` (``scheduler``, ``workers`` as it takes them;
    ``workers`` 0 without a scheduler: one after the other, here), and their median."""
    kwargs = dict(baud=baud, config=config, core_hz=core_hz, mode=mode)
    try:
        if seeds is not None:
            if workers == 0 and scheduler is None:
                reports = build_seeds(board, seeds, build_dir=build_dir, **kwargs)
            else:
                from psc.flow.executor import Executor
                with Executor(scheduler, workers, log=_log) as executor:
                    reports = build_seeds(board, seeds, build_dir=build_dir,
                                          executor=executor, **kwargs)
        else:
            reports = [build(board, build_dir=build_dir, seed=seed, log=_log, **kwargs)]
    except ValueError as e:
        print(f"psc build: {e}", file=sys.stderr)
        return 2
    if as_json:
        from psc.flow.executor import Failure
        out = [{"failed": r.error} if isinstance(r, Failure) else r for r in reports]
        out = [dict(r, fmax_by_clock={k: list(v) for k, v in r["fmax_by_clock"].items()},
                    util={k: list(v) for k, v in r["util"].items()}) if "util" in r else r
               for r in out]
        print(json.dumps(out if seeds is not None else out[0], indent=1))
    elif seeds is not None:
        print(format_seeds(reports))
    else:
        print(format_report(reports[0]))
    return 0
