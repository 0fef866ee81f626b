"""Board tops and ``psc build`` (psc.flow.board).

Fast: both board tops elaborate with amaranth-boards (pins, UART resource,
build script with the options TOOLCHAIN.md asks for), the nextpnr log parser,
the configuration checks. Slow (``-m slow``, a few minutes each on 2 cores):
the two bitstreams really build with YoWASP, and the report says they fit
and meet the board clock.
"""

import pytest

from psc.flow import board
from psc.hw.link.board_top import BoardTop
from psc.hw.link.bridge import ID_BYTES, id_frame
from psc.hw.link.uart import divisor_for

LOG = """
Info: Device utilisation:
Info: 	         ICESTORM_LC:    5034/   5280    95%
Info: 	        ICESTORM_RAM:      11/     30    36%
Info: 	        ICESTORM_DSP:       7/      8    87%
Info: Max frequency for clock '$PACKER_GND_NET_$glb_clk': 213.81 MHz (PASS at 12.00 MHz)
Info: Max frequency for clock               'bridge.clk': 18.02 MHz (PASS at 12.00 MHz)
Info: Max frequency for clock               'bridge.clk': 18.60 MHz (PASS at 12.00 MHz)
"""


def test_parse_nextpnr_log():
    rep = board.parse_nextpnr_log(LOG)
    assert rep["util"]["ICESTORM_LC"] == (5034, 5280)
    assert rep["util"]["ICESTORM_DSP"] == (7, 8)
    assert rep["fmax"]["bridge.clk"] == (18.60, True, 12.0)   # the last (post-route) figure


@pytest.mark.parametrize("name", sorted(board.BOARDS))
def test_board_top_elaborates(name):
    """The top uses the board's UART and LEDs, and the build script carries the synthesis
    options (DSP inference on iCE40, no read/write check) and --timing-allow-fail."""
    b = board.BOARDS[name]
    platform = board._platform(b)
    bc = board.bridge_config(name)
    assert bc.divisor == divisor_for(b.clk_hz, board.DEFAULT_BAUD)
    opts = board.synth_opts(name, bc.core)
    assert "-no-rw-check" in opts
    # -dsp infers SB_MAC16, but would rewrite the hand-instantiated dual 8x8 ones
    assert ("-dsp" in opts.split()) == (b.family == "ice40"
                                        and bc.core.pe.multiplier != "ice40_dual8x8")
    plan = platform.prepare(BoardTop(bc), name=board.NAME, synth_opts=opts,
                            nextpnr_opts="--timing-allow-fail")
    files = plan.files
    ys = files[f"{board.NAME}.ys"]
    assert f"synth_{b.family} {opts}" in ys
    assert "--timing-allow-fail" in files[f"build_{board.NAME}.sh"]
    constraints = files[f"{board.NAME}.pcf" if b.family == "ice40" else f"{board.NAME}.lpf"]
    assert "uart_0__rx" in constraints and "uart_0__tx" in constraints
    # the ID frame the bridge answers PING with fits its fields (u8 widths, u32 depths)
    assert len(id_frame(bc.core, bc.divisor)) == ID_BYTES


def test_board_checks():
    with pytest.raises(ValueError, match="board must be one of icebreaker, ulx3s, not 'arty'"):
        board.bridge_config("arty")
    with pytest.raises(ValueError, match="baud must be at most 3000000"):
        board.bridge_config("icebreaker", baud=4_000_000)
    with pytest.raises(ValueError, match="build_dir must not be under /tmp"):
        board.build("icebreaker", build_dir="/tmp/x")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(board.BOARDS))
def test_bitstream_builds(name):
    """``psc build --board NAME``: a bitstream, within the device, at the board clock."""
    out = board.ROOT / "build" / "board" / f"test_{name}"
    rep = board.build(name, build_dir=out)
    print(board.format_report(rep))
    assert rep["bitstream"].endswith(".bin" if name == "icebreaker" else ".bit")
    assert (out / rep["bitstream"].rsplit("/", 1)[1]).stat().st_size > 1000
    for cell, (used, total) in rep["util"].items():
        assert used <= total, f"{cell}: {used} of {total}"
    assert rep["timing_met"], f"Fmax {rep['fmax_mhz']} MHz < {rep['clk_mhz']} MHz"


def test_dsp_registers(tmp_path):
    """The SB_MAC16 check counts only cells with A/B input registers and a registered output."""
    import json

    def mac(a, b, sel, mreg="0"):
        return {"type": "SB_MAC16", "parameters": {
            "A_REG": a, "B_REG": b, "TOPOUTPUT_SELECT": sel, "BOTOUTPUT_SELECT": sel,
            "TOP_8x8_MULT_REG": mreg, "BOT_8x8_MULT_REG": mreg}}
    cells = {"full": mac("1", "1", "01"), "mult_reg": mac("1", "1", "10", "1"),
             "no_a": mac("0", "1", "01"), "comb_out": mac("1", "1", "00"),
             "lut": {"type": "SB_LUT4", "parameters": {}}}
    path = tmp_path / "n.json"
    path.write_text(json.dumps({"modules": {"top": {"cells": cells}}}))
    assert board.dsp_registers(path) == (2, 4)
