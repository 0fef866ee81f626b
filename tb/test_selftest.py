"""Self-test of the bench library against tb.standins.StreamRegister (good and broken).

Run from tests/test_cocotb_primitives.py. ``PSC_SELFTEST=violation`` selects the
broken register, for which the monitor must report a contract violation.
"""

import os

import cocotb
from cocotb.triggers import RisingEdge

from tb.bench import BaseTB, bench_rng
from psc.model.packing import pack_payload
from tb.scoreboard import Scoreboard
from tb.standins import PAYLOAD
from psc.host.cocotb_stream import StreamDriver, StreamMonitor, cycle_pause, random_pause


class TB(BaseTB):
    def __init__(self, dut, check=True):
        super().__init__(dut)
        self.rng = bench_rng()
        self.source = StreamDriver(dut.clk, dut.i__valid, dut.i__payload, dut.i__ready, reset=dut.rst,
                                   idle=lambda: int(self.rng.integers(0, 1 << 20)), name="i")
        self.scoreboard = Scoreboard("stream register o")
        self.sink = StreamMonitor(dut.clk, dut.o__valid, dut.o__payload, dut.o__ready, reset=dut.rst,
                                  callback=self.scoreboard.check, check=check, name="o")

    def send(self, a, b):
        word = pack_payload(PAYLOAD, {"a": a, "b": b})
        self.scoreboard.expect(word, (a, b))
        self.source.send(word)


def _violation_expected():
    return os.environ.get("PSC_SELFTEST") == "violation"


@cocotb.test(skip=_violation_expected())
async def register_random_stalls(dut):
    tb = TB(dut)
    await tb.reset()
    for idle, stall in [(None, None), (random_pause(0.3), random_pause(0.5)),
                        (cycle_pause((1, 0, 0)), cycle_pause((0, 1, 1, 0, 1)))]:
        tb.set_idle_generator(idle)
        tb.set_backpressure_generator(stall)
        for _ in range(100):
            tb.send(int(tb.rng.integers(-128, 128)), int(tb.rng.integers(0, 1 << 12)))
        await tb.finish()
    assert tb.sink.stalls > 0, "backpressure never happened"
    # A reset with data in flight, then clean data.
    tb.set_backpressure_generator(random_pause(0.7))
    for _ in range(20):
        tb.send(1, 2)
    await tb.cycles(7)
    await tb.reset()
    tb.send(-128, 4095)
    await tb.finish()


@cocotb.test(skip=not _violation_expected())
async def broken_register_is_caught(dut):
    tb = TB(dut, check=False)
    await tb.reset()
    tb.set_backpressure_generator(random_pause(0.8))
    for _ in range(50):
        tb.send(3, 5)
    for _ in range(400):
        await RisingEdge(dut.clk)
        if tb.sink.errors:
            break
    assert tb.sink.errors, "the monitor missed a withdrawn beat"
    msg = str(tb.sink.errors[0])
    assert "valid fell before the beat was accepted" in msg, msg
    dut._log.info("monitor caught: %s", msg)
