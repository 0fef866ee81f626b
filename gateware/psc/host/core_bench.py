"""cocotb bench of psc.hw.core.PSCConvCore, driven by psc.host (``run_layer``/``run_plans``).

This module knows nothing of convolution: it plays a job written by the
host scheduler (``PSC_JOB``, JSON: a list of tiles, each a command word, its
weight, parameter and activation words, the number of output beats and an
optional reset point) on the core's five streams, with random pauses of
probability ``stall`` on every stream (sources withhold ``valid``, the output
sink withholds ``ready``), checks the stream contract on ``act_out``, and
writes per tile the output words, the ``error`` flag, the cycle counters and
how many beats each input accepted to ``PSC_RESULT``. Judging the outputs is
the host's and the tests' job (against psc.model.golden).
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from psc.host.cocotb_stream import (StreamDriver, StreamMonitor, play_job, random_pause,
                                    read_int)


@cocotb.test()
async def run_job(dut):
    await play_job(dut, _run, "tiles")


async def _run(dut, job, results):
    rng = random.Random(job.get("seed", 0))
    stall = float(job.get("stall", 0.0))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    clk = dut.clk

    def driver(name):
        d = StreamDriver(clk, getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__payload"),
                         getattr(dut, f"{name}__ready"), reset=dut.rst, name=name)
        if stall:
            d.set_pause_generator(random_pause(stall, random.Random(rng.random())))
        return d

    drivers = {n: driver(n) for n in ("cfg", "weights", "params", "act_in")}
    outputs = []
    sink = StreamMonitor(clk, dut.act_out__valid, dut.act_out__payload, dut.act_out__ready,
                         reset=dut.rst, callback=outputs.append, name="act_out")
    if stall:
        sink.set_pause_generator(random_pause(stall, random.Random(rng.random())))
    for _ in range(3):
        await RisingEdge(clk)
    dut.rst.value = 0

    max_cycles = job.get("max_cycles")
    for index, tile in enumerate(job["tiles"]):
        outputs.clear()
        start = {n: d.count for n, d in drivers.items()}
        drivers["cfg"].send(tile["cfg"])
        drivers["weights"].send_many(tile["weights"])
        drivers["params"].send_many(tile["params"])
        drivers["act_in"].send_many(tile["acts"])
        # The plan's bound on the tile's cycles; paused streams stretch it.
        limit = max_cycles or int(tile["cycle_bound"] * (1 + 8 * stall))
        reset_after = tile.get("reset_after")
        res = {"done": False, "error": 0, "reset": False}
        cycles = 0
        while True:
            await RisingEdge(clk)
            cycles += 1
            if reset_after is not None and cycles >= reset_after:
                await _reset(dut, drivers, sink)
                res["reset"] = True
                break
            await ReadOnly()
            if read_int(dut.done):
                res.update(done=True, error=read_int(dut.error), total=read_int(dut.cycles_total),
                           compute=read_int(dut.cycles_compute), stall=read_int(dut.cycles_stall))
                break
            if cycles > limit:
                raise AssertionError(
                    f"tile {index}: no done after {cycles} cycles; accepted "
                    f"{ {n: d.count - start[n] for n, d in drivers.items()} }, "
                    f"{len(outputs)}/{tile['n_out']} outputs")
        # A refused command leaves its data unsent; drop it so the next tile starts clean.
        await RisingEdge(clk)
        for d in drivers.values():
            d.clear()
        for _ in range(2):
            await RisingEdge(clk)
        res["accepted"] = {n: d.count - start[n] for n, d in drivers.items()}
        res["outputs"] = list(outputs)
        if sink.errors:
            raise AssertionError(str(sink.errors[0]))
        results.append(res)


async def _reset(dut, drivers, sink):
    dut.rst.value = 1
    for d in drivers.values():
        d.clear()
    sink.clear()
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
