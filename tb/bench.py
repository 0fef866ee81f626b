"""Shared bench scaffolding: clock, reset, stall generators, end-of-test checks.

A DUT's ``TB`` (in the style of the verilog-axis tests) subclasses
:class:`BaseTB`, creates ``self.source`` (a :class:`~psc.host.cocotb_stream.StreamDriver`),
``self.sink`` (a :class:`~psc.host.cocotb_stream.StreamMonitor`) and ``self.scoreboard``,
and routes the sink's beats into the scoreboard.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["BaseTB", "bench_rng", "first_in_out", "STALL_PATTERNS"]


def _patterns():
    from psc.host.cocotb_stream import cycle_pause, random_pause
    return [
        ("no stalls", None, None),
        ("random 30%/30%", lambda: random_pause(0.3), lambda: random_pause(0.3)),
        ("heavy backpressure", lambda: random_pause(0.1), lambda: random_pause(0.8)),
        ("bursty input", lambda: cycle_pause((1, 1, 1, 0, 0, 0, 0, 0)),
         lambda: random_pause(0.2)),
    ]


#: ``(name, idle factory, backpressure factory)``: the input-gap and output-stall patterns a
#: stream bench runs (:meth:`BaseTB.use_pattern`); ``None`` is no pause.
STALL_PATTERNS = _patterns()


def bench_rng(salt=0):
    """numpy Generator seeded from ``PSC_SEED`` or cocotb's random seed (reported on failure)."""
    seed = int(os.environ.get("PSC_SEED", cocotb.RANDOM_SEED))
    return np.random.default_rng([seed, salt])


class BaseTB:
    """Clock, synchronous active-high reset and the common checks.

    Subclasses set ``self.source``, ``self.sink`` and ``self.scoreboard``
    after calling ``super().__init__``.
    """

    period_ns = 10

    def __init__(self, dut):
        self.dut = dut
        self.log = cocotb.log.getChild(type(self).__name__)
        self.dut.rst.value = 1
        cocotb.start_soon(Clock(dut.clk, self.period_ns, unit="ns").start())

    def set_idle_generator(self, generator=None):
        """Valid gaps on the input (``True`` = no new beat this cycle)."""
        self.source.set_pause_generator(generator)

    def set_backpressure_generator(self, generator=None):
        """Ready stalls on the output (``True`` = ready low this cycle)."""
        self.sink.set_pause_generator(generator)

    def use_pattern(self, pattern):
        """Input gaps and output stalls of one of :data:`STALL_PATTERNS` from now on."""
        name, idle, stall = pattern
        self.log.info("stall pattern: %s", name)
        self.set_idle_generator(idle() if idle else None)
        self.set_backpressure_generator(stall() if stall else None)

    async def reset_in_flight(self, beats_in):
        """Wait until ``beats_in`` input beats were taken (at most 100 cycles), then reset:
        the bench's queued beats are cut off with results in flight."""
        for _ in range(100):
            await RisingEdge(self.dut.clk)
            if self.source.count >= beats_in:
                break
        assert not self.source.idle, "every input beat went in before the reset"
        await self.reset()

    async def cycles(self, n):
        for _ in range(n):
            await RisingEdge(self.dut.clk)

    async def reset(self, cycles=2):
        """Synchronous reset; drops every queued input beat and every expected output."""
        await RisingEdge(self.dut.clk)
        self.dut.rst.value = 1
        self.source.clear()
        self.sink.clear()
        self.scoreboard.clear()
        await self.cycles(cycles)
        self.dut.rst.value = 0
        self.scoreboard.clear()
        await RisingEdge(self.dut.clk)

    async def finish(self, timeout=None, drain=16):
        """Wait for every expected output, then ``drain`` more cycles; fail on lost or extra beats."""
        if timeout is None:
            timeout = 64 + 8 * (len(self.source.queue) + self.scoreboard.pending * 4)
            timeout *= 8  # generous for heavy backpressure
        waited = 0
        while not (self.source.idle and self.scoreboard.pending == 0):
            await RisingEdge(self.dut.clk)
            waited += 1
            if waited > timeout + 10 * len(self.source.queue):
                self.scoreboard.assert_done()
                raise AssertionError(f"timeout after {waited} cycles with {len(self.source.queue)} "
                                     "input beats still queued: the DUT stopped accepting input")
        await self.cycles(drain)
        self.scoreboard.assert_done()
        assert not self.sink.errors, self.sink.errors[0]
        self.log.info("%d output beats matched; %d input beats; %d output stall cycles",
                      self.scoreboard.matched, self.source.count, self.sink.stalls)


async def first_in_out(clock, in_valid, in_ready, out_valid, start, limit=64):
    """Call ``start()`` and return (cycle the first input beat is taken, cycle ``out_valid`` is first seen).

    Cycles are counted from the call; both are sampled in ReadOnly, so the
    difference is the latency in clock cycles. ``in_ready=None`` means always ready.
    """
    await RisingEdge(clock)
    start()
    taken = None
    for cycle in range(limit):
        await ReadOnly()
        if taken is None and int(in_valid.value) and (in_ready is None or int(in_ready.value)):
            taken = cycle
        if taken is not None and int(out_valid.value):
            return taken, cycle
        await RisingEdge(clock)
    raise AssertionError(f"no output within {limit} cycles of an input beat"
                         if taken is not None else f"no input beat taken within {limit} cycles")
