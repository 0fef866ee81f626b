"""cocotb bench of network mode through the UART pins of :class:`psc.hw.link.network_bridge.NetworkBridge`.

The host is :mod:`psc.host.network_link`'s generators, driven over the simulated
pins (:mod:`psc.host.cocotb_uart`); like :mod:`psc.host.engine_bench` the bench
knows nothing of networks. Job (``PSC_JOB``, JSON, made by
:func:`psc.host.sim.run_link_job`): the UART ``divisor``, ``frame_timeout``
(bit times), the program's ``load`` frames (hex), its ``program`` identifier,
``n_in``, ``n_out``, ``in_bytes``, ``out_bytes``, the INFER frames of the images
(``infers``, hex), and ``faults`` (bool). Result (``PSC_RESULT``):

* ``ident``: the parsed ID frame;
* ``load``: the load's status and its ``cycles`` on the link;
* ``images``: per image the output ``words``, the ``status`` and the ``cycles``
  from the INFER's first byte sent to the status frame's last byte received;
* with ``faults``, ``faults``: what the host saw in each fault (``error``, the
  :class:`~psc.host.serial_link.LinkError` it raised, and a status) and the words
  of a clean inference right after it: an inference before any load, a corrupted
  input byte, a truncated INFER, a reset in the middle of an inference (then the
  reload it needs), a reload while idle and a load with a word for a store the board
  does not have.
"""

import dataclasses

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles

from psc.host import network_link as nl
from psc.host.cocotb_stream import play_job
from psc.host.cocotb_uart import UartPins, drive_async
from psc.host.serial_link import LinkError, ping_exchange

PERIOD_NS = 10


@cocotb.test()
async def run_job(dut):
    await play_job(dut, _run, "steps")


def _flags(status):
    return dict(status, flags=sorted(status["flags"]))


async def _attempt(gen, pins):
    """``(result, error)`` of a generator the host runs: the LinkError it raised, if any."""
    try:
        return await drive_async(gen, pins), None
    except LinkError as e:
        return None, str(e)


async def _run(dut, job, steps):
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    div = job["divisor"]
    image = nl.NetworkImage(tuple(bytes.fromhex(f) for f in job["load"]), job["program"],
                            job["n_in"], job["n_out"], job["in_bytes"], job["out_bytes"])
    infers = [bytes.fromhex(f) for f in job["infers"]]
    dut.rst.value = 1
    pins = UartPins(dut, div, idle_limit=job["idle_limit"], period_ns=PERIOD_NS)
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)

    def now():
        return get_sim_time("ns") // PERIOD_NS

    async def infer(frame):
        start = now()
        r = await drive_async(nl.infer_exchange(frame, image), pins)
        return {"words": r["words"], "status": _flags(r["status"]), "cycles": int(now() - start)}

    async def status():
        return _flags(await drive_async(nl.status_exchange(), pins))

    out = {"ident": await drive_async(ping_exchange(), pins)}
    faults = {}
    if job["faults"]:
        # an inference before any program is loaded
        _, error = await _attempt(nl.infer_exchange(infers[0], image), pins)
        faults["before_load"] = {"error": error, "status": await status()}
    start = now()
    loaded = await drive_async(nl.load_exchange(image), pins)
    out["load"] = {"status": _flags(loaded), "cycles": int(now() - start)}
    out["images"] = [await infer(f) for f in infers]
    if job["faults"]:
        silence = (job["frame_timeout"] + 40) * div
        # a corrupted byte in the input: the CRC catches it; then a clean inference
        bad = bytearray(infers[0])
        bad[10] ^= 0x10                  # the first input byte, after the head
        _, error = await _attempt(nl.infer_exchange(bytes(bad), image), pins)
        faults["corrupted"] = {"error": error, "status": await status(),
                               "next": await infer(infers[0])}
        # a truncated INFER: abandoned after the frame timeout, its run aborted
        await pins.write(infers[0][:len(infers[0]) // 2])
        await ClockCycles(dut.clk, silence)
        faults["truncated"] = {"status": await status(), "next": await infer(infers[0])}
        # a reset in the middle of an inference: the board forgets the program
        await pins.write(infers[0])
        await ClockCycles(dut.clk, 50)
        dut.rst.value = 1
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 20 * div)
        pins.rx_bytes.clear()
        _, error = await _attempt(nl.infer_exchange(infers[0], image), pins)
        after = await status()
        await drive_async(nl.load_exchange(image), pins)
        faults["reset"] = {"error": error, "status": after, "next": await infer(infers[0])}
        # the program loaded again while idle
        await drive_async(nl.load_exchange(image), pins)
        faults["reloaded"] = {"next": await infer(infers[-1])}
        # a LOAD to a store the board does not have (3), then the whole load: refused
        # (LOAD_REFUSED, the program not taken); then a clean load and inference
        first = image.frames[0][:-2]
        bad = nl.frame(first[:1] + bytes([3]) + first[2:])
        _, error = await _attempt(nl.load_exchange(
            dataclasses.replace(image, frames=(bad,) + image.frames)), pins)
        after = await status()
        await drive_async(nl.load_exchange(image), pins)
        faults["refused"] = {"error": error, "status": after, "next": await infer(infers[0])}
        out["faults"] = faults
    out["framing_errors"] = pins.framing_errors
    steps.append(out)
