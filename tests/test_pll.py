"""PLL settings and the PLL clock domain (psc.hw.pll).

The expected dividers are the ones ``icepll -i 12 -o F`` (icestorm, SIMPLE
feedback) and ``ecppll -i 25 -o F`` (prjtrellis) print: both tools keep the
first setting nearest the request in their loop order, ecppll preferring
the VCO nearest 600 MHz among equal outputs, and the search here follows
them. The primitive's parameters are read from the RTLIL of a board build's
plan (amaranth-boards' iCEBreaker and ULX3S), and the lock reset is
simulated.
"""

import re

import pytest
from amaranth.back import rtlil
from amaranth.hdl import ClockDomain, Elaboratable, Fragment, IOPort, Module, Signal
from amaranth.lib import io
from amaranth.sim import Simulator

from psc.hw import pll


# icepll -i 12 -o F: (DIVR, DIVF, DIVQ, FILTER_RANGE, achieved MHz)
ICEPLL_12 = {
    30e6: (0, 79, 5, 1, 30.0),
    33e6: (0, 87, 5, 1, 33.0),
    24e6: (0, 63, 5, 1, 24.0),
    36e6: (0, 47, 4, 1, 36.0),
    48e6: (0, 63, 4, 1, 48.0),
    # not a multiple of the 0.375 MHz step at DIVQ=5: the nearest, first found
    28e6: (0, 74, 5, 1, 28.125),
}

# ecppll -i 25 -o F: (CLKI_DIV, CLKFB_DIV, CLKOP_DIV, achieved MHz, VCO MHz)
ECPPLL_25 = {
    100e6: (1, 4, 6, 100.0, 600.0),
    75e6: (1, 3, 8, 75.0, 600.0),
    50e6: (1, 2, 12, 50.0, 600.0),
    90e6: (5, 18, 7, 90.0, 630.0),
    125e6: (1, 5, 5, 125.0, 625.0),
}


@pytest.mark.parametrize("out_hz", sorted(ICEPLL_12))
def test_ice40_settings_are_icepll(out_hz):
    divr, divf, divq, filter_range, mhz = ICEPLL_12[out_hz]
    s = pll.ice40_pll(12e6, out_hz)
    assert (s.divr, s.divf, s.divq, s.filter_range) == (divr, divf, divq, filter_range)
    assert s.out_hz == mhz * 1e6 and s.requested_hz == out_hz and s.in_hz == 12e6
    assert s.pfd_hz == 12e6 and 533e6 <= s.vco_hz <= 1066e6
    assert s.describe() == f"DIVR={divr} DIVF={divf} DIVQ={divq} FILTER_RANGE={filter_range}"


def test_output_stays_within_the_limits():
    """Where icepll would print an output outside the range it checks the request against,
    the nearest setting within it."""
    # icepll: DIVF=45, DIVQ=1, 276 MHz
    s = pll.ice40_pll(12e6, 275e6, tolerance=0.02)
    assert (s.divr, s.divf, s.divq, s.out_hz) == (0, 44, 1, 270e6)
    # icepll: DIVF=84, DIVQ=6, 15.9375 MHz
    s = pll.ice40_pll(12e6, 16e6)
    assert (s.divr, s.divf, s.divq, s.out_hz) == (0, 85, 6, 16.125e6)


def test_ice40_filter_range_follows_the_pfd():
    # 100 MHz reference: DIVR=0 keeps the PFD at 100 MHz, range 5 in icepll's table
    s = pll.ice40_pll(100e6, 200e6)
    assert (s.divr, s.filter_range, s.out_hz) == (0, 5, 200e6)


@pytest.mark.parametrize("out_hz", sorted(ECPPLL_25))
def test_ecp5_settings_are_ecppll(out_hz):
    clki, clkfb, clkop, mhz, vco = ECPPLL_25[out_hz]
    s = pll.ecp5_pll(25e6, out_hz)
    assert (s.clki_div, s.clkfb_div, s.clkop_div) == (clki, clkfb, clkop)
    assert s.out_hz == mhz * 1e6 and s.vco_hz == vco * 1e6
    # half an output period in VCO cycles (ecppll's float arithmetic prints 2 for 100 MHz)
    assert (s.clkop_cphase, s.clkop_fphase) == (clkop // 2, 0)


def test_pll_settings_dispatch_and_dict():
    assert pll.pll_settings("ice40", 12e6, 24e6) == pll.ice40_pll(12e6, 24e6)
    d = pll.pll_settings("ecp5", 25e6, 75e6).to_dict()
    assert d["family"] == "ecp5" and d["feedback_path"] == "CLKOP" and d["out_hz"] == 75e6
    with pytest.raises(ValueError, match="family must be one of 'ice40', 'ecp5', not 'gowin'"):
        pll.pll_settings("gowin", 12e6, 24e6)


@pytest.mark.parametrize("call, message", [
    (lambda: pll.ice40_pll(12e6, 300e6),
     r"out_hz must be in \[16 MHz, 275 MHz\] for the iCE40 PLL, not 300000000.0 \(300 MHz\)"),
    (lambda: pll.ice40_pll(12e6, 8e6), r"out_hz must be in \[16 MHz, 275 MHz\].*\(8 MHz\)"),
    (lambda: pll.ice40_pll(5e6, 24e6),
     r"in_hz must be in \[10 MHz, 133 MHz\] for the iCE40 PLL, not 5000000.0 \(5 MHz\)"),
    (lambda: pll.ecp5_pll(25e6, 500e6),
     r"out_hz must be in \[10 MHz, 400 MHz\] for the ECP5 PLL, not 500000000.0 \(500 MHz\)"),
    (lambda: pll.ecp5_pll(4e6, 50e6), r"in_hz must be in \[8 MHz, 400 MHz\] for the ECP5 PLL"),
    (lambda: pll.ecp5_pll(25e6, float("nan")), r"out_hz must be in \[10 MHz, 400 MHz\]"),
    # 12 MHz / 2**6 steps near 16 MHz: 16.1 is 0.0375 MHz from the nearest
    (lambda: pll.ice40_pll(12e6, 16.1e6, tolerance=0.001),
     r"out_hz 16100000.0 \(16.1 MHz\) is not reachable within 0.001 of it on the iCE40 PLL "
     r"from this input: the nearest is 16.125 MHz \(DIVR=0 DIVF=85 DIVQ=6 FILTER_RANGE=1\)"),
    (lambda: pll.ice40_pll(12e6, 24e6, tolerance=1.5), r"tolerance must be a number in \[0, 1\)"),
])
def test_refused_requests(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_refused_types():
    with pytest.raises(TypeError, match="out_hz must be a frequency in Hz"):
        pll.ice40_pll(12e6, "24MHz")
    with pytest.raises(TypeError, match="settings must be a psc.hw.pll.ICE40PLLSettings"):
        pll.ICE40PLL(pll.ecp5_pll(25e6, 75e6), Signal())
    with pytest.raises(TypeError, match="settings must be a psc.hw.pll.ICE40PLLSettings or "
                                        "ECP5PLLSettings, not 24000000.0"):
        pll.PLLDomain(24e6)
    with pytest.raises(ValueError, match="settle must be a non-negative integer, not -1"):
        pll.LockReset(-1)


class _Counter(Elaboratable):
    """A PLLDomain and a counter in ``sync`` on LED 0: a design that needs the domain."""

    def __init__(self, settings):
        self.settings = settings

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()
        m.submodules.clock = pll.PLLDomain(self.settings)
        count = Signal(8)
        m.d.sync += count.eq(count + 1)
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(count[-1])
        return m


def _cell(text, kind):
    """The parameters of the one cell of type ``kind`` in RTLIL ``text``."""
    cells = re.findall(rf"cell \\{kind} .*?\n(.*?)\n\s*end\n", text, flags=re.S)
    assert len(cells) == 1, f"{len(cells)} {kind} cells"
    return dict(re.findall(r"parameter \\(\w+) (\S+)", cells[0])), cells[0]


def test_ice40_pll_on_the_icebreaker():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    settings = pll.ice40_pll(12e6, 30e6)
    files = ICEBreakerPlatform().prepare(_Counter(settings), name="top").files
    params, cell = _cell(files["top.il"], "SB_PLL40_PAD")
    assert params == {"FEEDBACK_PATH": '"SIMPLE"', "PLLOUT_SELECT": '"GENCLK"', "DIVR": "0",
                      "DIVF": "79", "DIVQ": "5", "FILTER_RANGE": "1"}
    # the pad feeds the PLL directly: the one SB_IO is the LED's, none is the platform's
    # default domain's on clk12
    assert re.search(r"connect \\PACKAGEPIN \\clk12_0__io", cell)
    assert files["top.il"].count("cell \\SB_IO ") == 1
    pcf = files["top.pcf"]
    assert "set_frequency clock.ice40.pll_clk 30.0" in pcf and "set_io clk12_0__io 35" in pcf


def test_ecp5_pll_on_the_ulx3s():
    from amaranth_boards.ulx3s import ULX3S_25F_Platform
    settings = pll.ecp5_pll(25e6, 100e6)
    files = ULX3S_25F_Platform().prepare(_Counter(settings), name="top").files
    params, cell = _cell(files["top.il"], "EHXPLLL")
    assert {k: params[k] for k in ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV", "CLKOP_CPHASE",
                                   "CLKOP_FPHASE", "FEEDBK_PATH")} == {
        "CLKI_DIV": "1", "CLKFB_DIV": "4", "CLKOP_DIV": "6", "CLKOP_CPHASE": "3",
        "CLKOP_FPHASE": "0", "FEEDBK_PATH": '"CLKOP"'}
    lpf = files["top.lpf"]
    assert 'FREQUENCY NET "clock.ecp5.pll_clk" 100000000.0 HZ;' in lpf
    assert 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ;' in lpf
    # the design's sync domain is the PLL's: no GSR reset synchroniser of the platform's own
    assert "\\GSR" not in files["top.il"]


def test_platform_clock_must_match():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    with pytest.raises(ValueError, match=r"settings.in_hz must be the platform's clk12 "
                                         r"frequency 12 MHz, not 25 MHz"):
        Fragment.get(pll.PLLDomain(pll.ice40_pll(25e6, 50e6)), ICEBreakerPlatform())
    with pytest.raises(ValueError, match="PLLDomain needs a platform with a default clock"):
        Fragment.get(pll.PLLDomain(pll.ice40_pll(12e6, 24e6)), None)


def _with_sync(pll_part):
    m = Module()
    m.domains.sync = ClockDomain()
    m.submodules.pll = pll_part
    return m


def test_primitives_elaborate_without_a_platform():
    pin, clk_in = IOPort(1, name="pin"), Signal()
    text = rtlil.convert(_with_sync(pll.ECP5PLL(pll.ecp5_pll(25e6, 75e6), clk_in)),
                         ports=[clk_in])
    assert _cell(text, "EHXPLLL")[0]["CLKFB_DIV"] == "3"
    text = rtlil.convert(_with_sync(pll.ICE40PLL(pll.ice40_pll(12e6, 24e6), pin)), ports=[])
    assert _cell(text, "SB_PLL40_PAD")[0]["DIVF"] == "63"


class _Reset(Elaboratable):
    """LockReset and a register in its domain that counts while out of reset."""

    def __init__(self, settle):
        self.lock_reset = pll.LockReset(settle)
        self.clk, self.lock, self.count = Signal(), Signal(), Signal(8)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()
        m.submodules.reset = r = self.lock_reset
        m.d.comb += [r.clk.eq(self.clk), r.lock.eq(self.lock)]
        m.d.sync += self.count.eq(self.count + 1)
        return m


@pytest.mark.parametrize("settle", [0, 5])
def test_lock_reset_holds_the_domain_until_lock_and_settle(settle):
    dut = _Reset(settle)
    sim = Simulator(dut)
    before, after, dropped = [], [], []

    async def bench(ctx):
        async def edge():
            ctx.set(dut.clk, 1)
            await ctx.delay(1e-9)
            ctx.set(dut.clk, 0)
            await ctx.delay(1e-9)
        for _ in range(20):
            await edge()
            before.append(ctx.get(dut.count))
        ctx.set(dut.lock, 1)
        for _ in range(settle + 8):
            await edge()
            after.append(ctx.get(dut.count))
        ctx.set(dut.lock, 0)
        await edge()
        dropped.append(ctx.get(dut.count))

    sim.add_testbench(bench)
    sim.run()
    assert before == [0] * 20                    # no lock, no release
    # released settle + 3 edges after lock rises (two synchroniser stages, the
    # settle count, the ready register), counting from the next edge
    assert after == [0] * (settle + 3) + list(range(1, 6))
    assert dropped == [0]                        # losing lock resets at the next edge
