"""cocotb bench of psc.hw.network.NetworkEngine, driven by :func:`psc.host.program.Program.simulate`.

Like :mod:`psc.host.core_bench` it knows nothing of networks: it plays a job
(``PSC_JOB``, JSON: the store words to load, then per image the input beats
and the number of output words) on the engine: every store word through
``load``, then per image a ``run`` pulse, the beats into ``host_in`` and the
words out of ``host_out``, with random pauses of probability ``stall`` on
both streams, until ``done``. It writes per image the output words, ``error``
``cycles``, ``window`` and ``compute`` to ``PSC_RESULT``; with ``trace`` in the job, also
per image the cycles each instruction started, had its first and last beat into the MAC
array, and its beats (:meth:`psc.host.program.Program.simulate`'s ``trace``).
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from psc.host.cocotb_stream import (StreamDriver, StreamMonitor, play_job, random_pause,
                                    read_int)


@cocotb.test()
async def run_job(dut):
    await play_job(dut, _run, "images")


async def _run(dut, job, results):
    rng = random.Random(job.get("seed", 0))
    stall = float(job.get("stall", 0.0))
    clk = dut.clk
    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.run.value = 0
    load = StreamDriver(clk, dut.load__valid, dut.load__payload, dut.load__ready, reset=dut.rst,
                        name="load")
    host_in = StreamDriver(clk, dut.host_in__valid, dut.host_in__payload, dut.host_in__ready,
                           reset=dut.rst, name="host_in")
    words = []
    host_out = StreamMonitor(clk, dut.host_out__valid, dut.host_out__payload,
                             dut.host_out__ready, reset=dut.rst, callback=words.append,
                             name="host_out")
    if stall:
        host_in.set_pause_generator(random_pause(stall, random.Random(rng.random())))
        host_out.set_pause_generator(random_pause(stall, random.Random(rng.random())))
    for _ in range(3):
        await RisingEdge(clk)
    dut.rst.value = 0
    load.send_many(job["loads"])
    while load.count < len(job["loads"]):
        await RisingEdge(clk)
    for index, image in enumerate(job["images"]):
        words.clear()
        await RisingEdge(clk)
        dut.run.value = 1
        await RisingEdge(clk)
        dut.run.value = 0
        host_in.send_many(image["beats"])
        cycles = 0
        trace = [] if job.get("trace") else None
        while True:
            await RisingEdge(clk)
            cycles += 1
            await ReadOnly()
            if trace is not None:
                _trace(dut, cycles, trace)
            if read_int(dut.done):
                break
            if cycles > job["max_cycles"]:
                raise AssertionError(f"image {index}: no done after {cycles} cycles; "
                                     f"{len(words)}/{image['n_out']} output words")
        await RisingEdge(clk)
        if host_out.errors:
            raise AssertionError(str(host_out.errors[0]))
        results.append({"outputs": list(words), "error": read_int(dut.error),
                        "cycles": read_int(dut.cycles), "compute": read_int(dut.compute),
                        "window": read_int(dut.window),
                        **({"trace": {"instructions": trace, "cycles": cycles}}
                           if trace is not None else {})})


#: The encoding of the engine's ``START`` state in its Verilog ``fsm_state`` (Amaranth numbers
#: a state machine's states in the order they are defined: IDLE, FETCH, START, ...).
_START = 2


def _trace(dut, cycle, trace):
    """One cycle of the job's ``trace``: an instruction starts in its ``START`` state
    (``[start, first beat, last beat, beats]``, cycles counted from the ``run`` pulse), and
    the core's beat into the MAC array (its cycle counters' ``beat``) is the instruction's."""
    if read_int(dut.fsm_state) == _START:
        trace.append([cycle, None, None, 0])
    if trace and read_int(dut.core.counters.beat):
        step = trace[-1]
        step[1] = cycle if step[1] is None else step[1]
        step[2] = cycle
        step[3] += 1
