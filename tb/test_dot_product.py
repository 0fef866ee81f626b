"""cocotb bench of psc.hw.dot_product.DotProduct (rtl/dot_product.v and friends).

Configuration from the environment (tb.psc_model.config_env): PSC_CONFIG,
PSC_COMPONENT (the class whose layouts describe the ports), PSC_LATENCY.
``PSC_BREAK=swap_weights`` feeds W+ and W- swapped (a stimulus bug on purpose)
so a test can show that the bench fails, and how the failure reads.
"""

import os

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from psc.model import packing
from tb.bench import STALL_PATTERNS, BaseTB, bench_rng, first_in_out
from tb.psc_model import Stimulus, component_from_env, config_from_env
from tb.scoreboard import Scoreboard
from psc.host.cocotb_stream import StreamDriver, StreamMonitor, random_pause


class TB(BaseTB):
    """DotProduct bench: stream source on ``i``, monitor + scoreboard on ``o``."""

    def __init__(self, dut, salt=0):
        super().__init__(dut)
        self.cfg = config_from_env()
        component = component_from_env(self.cfg)
        self.layout = component.signature.members["i"].signature.members["payload"].shape
        self.latency = int(os.environ.get("PSC_LATENCY", getattr(component, "latency", 1)))
        self.break_weights = os.environ.get("PSC_BREAK") == "swap_weights"
        self.rng = bench_rng(salt)
        self.stim = Stimulus(self.cfg, self.rng)
        width = len(dut.i__payload)
        assert width == data_size(self.layout), (
            f"i__payload is {width} bits; the {type(component).__name__} layout has {data_size(self.layout)}")
        self.source = StreamDriver(dut.clk, dut.i__valid, dut.i__payload, dut.i__ready, reset=dut.rst,
                                   idle=lambda: int.from_bytes(self.rng.bytes((width + 7) // 8)) % (1 << width),
                                   name="i")
        self.scoreboard = Scoreboard(f"dot_product o ({_cfg_name(self.cfg)})", element="row")
        if self.cfg.depthwise == "pixels":
            dut.dw.value = 0   # the dot product of other layers; depthwise mode has its own tests
        self.sink = StreamMonitor(dut.clk, dut.o__valid, dut.o__payload, dut.o__ready, reset=dut.rst,
                                  callback=self._output, name="o")

    def _output(self, word):
        self.scoreboard.check(packing.unpack_lanes(word, self.cfg.rows, self.cfg.acc_width))

    def send(self, reduction):
        self.scoreboard.expect(reduction.expected(self.cfg), reduction)
        self.source.send_many(reduction.dot_product_beats(self.cfg, self.layout, self.rng,
                                                          break_weights=self.break_weights))


def data_size(layout):
    return layout.size


def _cfg_name(cfg):
    return (f"{'psc' if cfg.psc else 'baseline'} lanes={cfg.lanes} rows={cfg.rows} "
            f"act={cfg.act_width} w={cfg.weight_width} acc={cfg.acc_width}")


@cocotb.test()
async def dot_random(dut):
    """Random reductions of random lengths under every stall pattern."""
    tb = TB(dut, salt=1)
    await tb.reset()
    for pattern in STALL_PATTERNS:
        tb.use_pattern(pattern)
        for _ in range(25):
            tb.send(tb.stim.random())
        await tb.finish()
    assert tb.sink.stalls > 0, "backpressure never stalled the output"


@cocotb.test()
async def dot_corners(dut):
    """Most negative values, zeros, single-sign lanes, length 1, accumulator at its limits."""
    tb = TB(dut, salt=2)
    await tb.reset()
    tb.set_idle_generator(random_pause(0.2))
    tb.set_backpressure_generator(random_pause(0.4))
    for reduction in tb.stim.corners():
        tb.log.info("corner: %s (%d beats)", reduction.label, reduction.beats)
        tb.send(reduction)
    await tb.finish(timeout=20 * tb.stim.max_beats + 2000)


@cocotb.test()
async def dot_throughput_and_latency(dut):
    """One beat per cycle without stalls; the first output after ``latency`` cycles."""
    tb = TB(dut, salt=3)
    await tb.reset()
    # Cycles from the one taking the beat (valid & ready sampled) to the one showing o.valid.
    taken, seen = await first_in_out(dut.clk, dut.i__valid, dut.i__ready, dut.o__valid,
                                     lambda: tb.send(tb.stim.random(beats=1)))
    assert seen - taken == tb.latency, (
        f"o.valid rose {seen - taken} cycles after the input beat was taken; "
        f"the component's latency property says {tb.latency}")
    await tb.finish()
    # Throughput: back-to-back beats (many one-beat reductions, so outputs
    # come every cycle too) must never see i.ready low while o is not stalled.
    for beats in [1] * 24 + [3] * 8:
        tb.send(tb.stim.random(beats=beats))
    stalled = busy = 0
    while not tb.source.idle:
        await RisingEdge(dut.clk)
        await ReadOnly()
        if int(dut.i__valid.value):
            busy += 1
            stalled += not int(dut.i__ready.value)
    assert stalled == 0, f"i.ready was low on {stalled} of {busy} cycles with no output backpressure"
    await tb.finish()


@cocotb.test()
async def dot_reset_in_flight(dut):
    """Reset in the middle of a reduction with results in flight; a clean reduction after it."""
    tb = TB(dut, salt=4)
    await tb.reset()
    for stall in (None, random_pause(0.5), random_pause(1.0)):
        tb.set_backpressure_generator(stall)
        tb.send(tb.stim.random(beats=2))      # complete: its result is in the pipeline or stalled
        tb.send(tb.stim.random(beats=12))     # cut off by the reset
        await tb.reset_in_flight(6)
        tb.set_backpressure_generator(random_pause(0.3))
        tb.send(tb.stim.random(beats=3))
        tb.send(tb.stim.random(beats=1))
        await tb.finish()
