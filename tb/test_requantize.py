"""cocotb bench of psc.hw.requantize.Requantizer, for the builds the Amaranth simulator
cannot run: those with hand-instantiated DSP cells (``requant_multiplier="ice40_mac16"``,
simulated with Yosys's SB_MAC16 model).

Configuration from the environment (tb.psc_model.config_env): PSC_CONFIG,
PSC_COMPONENT, PSC_LATENCY. Every output beat is compared, in order, with
:func:`psc.model.golden.requantize` of its input beat (:func:`tb.psc_model.requant_expected`);
the first mismatch names the beat's sums, multipliers and shifts.
"""

import os

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from psc.host.cocotb_stream import StreamDriver, StreamMonitor, random_pause
from psc.model import packing
from tb.bench import STALL_PATTERNS, BaseTB, bench_rng, first_in_out
from tb.psc_model import component_from_env, config_from_env, requant_expected, requant_vectors
from tb.scoreboard import Scoreboard


class TB(BaseTB):
    """Requantizer bench: stream source on ``i``, monitor + scoreboard on ``o``."""

    def __init__(self, dut, salt=0):
        super().__init__(dut)
        self.cfg = config_from_env()
        component = component_from_env(self.cfg)
        self.layout = component.signature.members["i"].signature.members["payload"].shape
        self.latency = int(os.environ.get("PSC_LATENCY", component.latency))
        self.cycles_per_beat = component.cycles_per_beat
        self.rng = bench_rng(salt)
        self.seed = int(self.rng.integers(1 << 31))
        self.relu = 0
        dut.relu.value = 0
        self.source = StreamDriver(dut.clk, dut.i__valid, dut.i__payload, dut.i__ready,
                                   reset=dut.rst, name="i")
        self.scoreboard = Scoreboard("requantizer o", element="row")
        self.sink = StreamMonitor(dut.clk, dut.o__valid, dut.o__payload, dut.o__ready,
                                  reset=dut.rst, callback=self._output, name="o")

    def _output(self, word):
        self.scoreboard.check(packing.unpack_lanes(word, self.cfg.rows, self.cfg.act_width))

    def set_relu(self, relu):
        """Rectify from now on (only between batches: the port is held during a layer)."""
        self.relu = int(relu)
        self.dut.relu.value = self.relu

    def send(self, n):
        """``n`` beats of :func:`requant_vectors` (corners first), each expected as the model
        requantises it."""
        self.seed += 1
        acc, mult, shift = requant_vectors(self.cfg, n, self.seed)
        want = requant_expected(self.cfg, acc, mult, shift, bool(self.relu))
        for b in range(n):
            beat = {"acc": acc[b].tolist(), "mult": mult[b].tolist(), "shift": shift[b].tolist()}
            self.scoreboard.expect(want[b], f"acc={beat['acc']} M={beat['mult']} "
                                            f"S={beat['shift']} relu={self.relu}")
            self.source.send(self.layout.const(beat).as_value().value)


@cocotb.test()
async def requant_random(dut):
    """Corners and random beats, with and without relu, under every stall pattern."""
    tb = TB(dut, salt=1)
    await tb.reset()
    for relu in (0, 1):
        tb.set_relu(relu)
        for pattern in STALL_PATTERNS:
            tb.use_pattern(pattern)
            tb.send(60)
            await tb.finish()
    assert tb.sink.stalls > 0, "backpressure never stalled the output"


@cocotb.test()
async def requant_throughput_and_latency(dut):
    """The first output ``latency`` cycles after its beat was taken; with no stalls a beat
    taken every ``cycles_per_beat`` cycles."""
    tb = TB(dut, salt=2)
    await tb.reset()
    taken, seen = await first_in_out(dut.clk, dut.i__valid, dut.i__ready, dut.o__valid,
                                     lambda: tb.send(1))
    assert seen - taken == tb.latency, (
        f"o.valid rose {seen - taken} cycles after the input beat was taken; "
        f"the component's latency property says {tb.latency}")
    await tb.finish()
    tb.send(24)
    takes = []
    cycle = 0
    while not tb.source.idle:
        await RisingEdge(dut.clk)
        await ReadOnly()
        cycle += 1
        if int(dut.i__valid.value) and int(dut.i__ready.value):
            takes.append(cycle)
    gaps = [b - a for a, b in zip(takes, takes[1:])]
    assert gaps[1:] == [tb.cycles_per_beat] * (len(gaps) - 1), (
        f"beats taken {gaps} cycles apart; cycles_per_beat says {tb.cycles_per_beat}")
    await tb.finish()


@cocotb.test()
async def requant_reset_in_flight(dut):
    """Reset with beats in the pipeline and stalled at the output; clean beats after it."""
    tb = TB(dut, salt=3)
    await tb.reset()
    for stall in (None, random_pause(0.5), random_pause(1.0)):
        tb.set_backpressure_generator(stall)
        tb.send(20)
        await tb.reset_in_flight(6)
        tb.set_backpressure_generator(random_pause(0.3))
        tb.send(8)
        await tb.finish()
