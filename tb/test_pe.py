"""cocotb bench of psc.hw.pe.PSCMac, the PE of one output row (rtl/pe.v).

The PE has no stream ports: ``valid`` marks a beat, ``en`` advances the whole
pipeline (every register holds while it is low), and ``acc``/``acc_valid`` is
the result. The bench treats ``en`` as the ready of both sides: an input beat
is taken on an edge with ``valid & en``, a result is delivered on an edge with
``acc_valid & en``; so the stream driver and monitor apply, with ``en`` stalls
as the backpressure, and the monitor checks that a stalled result holds.
"""

import os

import cocotb

from psc.model import packing
from tb.bench import BaseTB, bench_rng, first_in_out
from tb.psc_model import Stimulus, component_from_env, config_from_env
from tb.scoreboard import Scoreboard
from psc.host.cocotb_stream import StreamDriver, StreamMonitor, cycle_pause, random_pause

PORTS = ("x", "mask", "words", "bias", "first", "last")


class TB(BaseTB):
    def __init__(self, dut, salt=0):
        super().__init__(dut)
        self.cfg = config_from_env()
        component = component_from_env(self.cfg)
        members = component.signature.members
        self.layouts = {name: members[name].shape for name in PORTS}
        self.latency = int(os.environ.get("PSC_LATENCY", getattr(component, "latency", 1)))
        self.rng = bench_rng(salt)
        self.stim = Stimulus(self.cfg, self.rng, rows=1)
        handles = {name: getattr(dut, name) for name in PORTS}
        self.source = StreamDriver(dut.clk, dut.valid, handles, dut.en, reset=dut.rst,
                                   idle=self._garbage, name="pe in")
        self.scoreboard = Scoreboard(f"pe acc ({'psc' if self.cfg.psc else 'baseline'}, "
                                     f"lanes={self.cfg.lanes})")
        self.sink = StreamMonitor(dut.clk, dut.acc_valid, dut.acc, dut.en, reset=dut.rst,
                                  callback=self._output, name="pe acc")

    def _garbage(self):
        """Random values on every data/control input while valid is low: the PE must ignore them."""
        return {name: int.from_bytes(self.rng.bytes(8 + len(getattr(self.dut, name)) // 8))
                % (1 << len(getattr(self.dut, name))) for name in PORTS}

    def _output(self, word):
        self.scoreboard.check(packing.unpack_lanes(word, 1, self.cfg.acc_width))

    def send(self, reduction):
        self.scoreboard.expect(reduction.expected(self.cfg), reduction)
        self.source.send_many(reduction.pe_beats(self.cfg, self.layouts, self.rng))


@cocotb.test()
async def pe_random(dut):
    """Random reductions with random valid gaps and en stalls."""
    tb = TB(dut, salt=1)
    await tb.reset()
    for idle, stall in [(None, None), (random_pause(0.3), random_pause(0.3)),
                        (cycle_pause((0, 1)), random_pause(0.6)), (random_pause(0.5), None)]:
        tb.set_idle_generator(idle)
        tb.set_backpressure_generator(stall)
        for _ in range(30):
            tb.send(tb.stim.random())
        await tb.finish()
    assert tb.sink.stalls > 0, "en never stalled a result"


@cocotb.test()
async def pe_corners(dut):
    """Most negative values, zeros, single-sign lanes, length 1, accumulator at its limits."""
    tb = TB(dut, salt=2)
    await tb.reset()
    tb.set_idle_generator(random_pause(0.2))
    tb.set_backpressure_generator(random_pause(0.3))
    for reduction in tb.stim.corners():
        tb.send(reduction)
    await tb.finish(timeout=20 * tb.stim.max_beats + 2000)


@cocotb.test()
async def pe_latency(dut):
    """With en high, acc_valid rises ``latency`` cycles after a one-beat reduction is taken."""
    tb = TB(dut, salt=3)
    await tb.reset()
    taken, seen = await first_in_out(dut.clk, dut.valid, dut.en, dut.acc_valid,
                                     lambda: tb.send(tb.stim.random(beats=1)))
    assert seen - taken == tb.latency, (
        f"acc_valid rose {seen - taken} cycles after the beat was taken; "
        f"the component's latency property says {tb.latency}")
    await tb.finish()


@cocotb.test()
async def pe_reset_in_flight(dut):
    """Reset in the middle of a reduction with beats in the pipeline; a clean reduction after it."""
    tb = TB(dut, salt=4)
    await tb.reset()
    for stall in (None, random_pause(0.5)):
        tb.set_backpressure_generator(stall)
        tb.send(tb.stim.random(beats=2))
        tb.send(tb.stim.random(beats=10))
        await tb.reset_in_flight(5)
        tb.send(tb.stim.random(beats=3))
        tb.send(tb.stim.random(beats=1))
        await tb.finish()
