"""cocotb bench of the UART bridge top (psc.hw.link.bridge.Bridge: UART + bridge + core), through its pins.

The host side is the real driver: the protocol generators of
:mod:`psc.host.serial_link` (``session``, ``tile_exchange``), the same code that
runs a board over pyserial, here driven by :class:`UartPins`, which plays
the serial port: it shifts the driver's bytes onto ``rx`` (8N1, ``divisor``
clocks per bit) and decodes ``tx`` back into bytes.

Job (``PSC_JOB``, JSON, written by tests/test_bridge.py): the core
configuration (``CoreConfig.to_dict``), the UART divisor, the plans (tiles
from psc.host.plan_layer), optionally ``wrong_configs`` (configurations a
host plans for that the board was not built with: each session must be
refused after its PING), and optionally a ``refused`` tile (a command the
core rejects). Result (``PSC_RESULT``): per wrong configuration the driver's
error and the bytes the host had written; per plan the per-tile results of
serial_link (the session names no configuration: the board's digest picks
the preset), and the refused tile's result. Judging the outputs against
psc.model.golden is the test's.
"""

import json
import os
import traceback

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, RisingEdge

from psc.config import CoreConfig
from psc.host import Tile
from psc.host import serial_link
from psc.host.cocotb_uart import UartPins, drive_async


def _tile(d):
    return Tile(cfg=d["cfg"], weights=d["weights"], params=d["params"], acts=d["acts"],
                n_out=d["n_out"], fields={})


def _status():
    """A bare STATUS exchange (the serial_link generators' requests and parser)."""
    yield serial_link.Write(bytes([serial_link.OP["STATUS"]]))
    status = serial_link.parse_status((yield serial_link.Read(serial_link.STATUS_BYTES, "status")))
    return dict(status, flags=sorted(status["flags"]))


@cocotb.test()
async def run_job(dut):
    job = json.loads(open(os.environ["PSC_JOB"]).read())
    result_path = os.environ["PSC_RESULT"]
    out = {}
    try:
        await _run(dut, job, out)
    except BaseException as e:
        with open(result_path, "w") as f:
            json.dump({"failure": f"{type(e).__name__}: {e}\n{traceback.format_exc()}", **out}, f)
        raise
    with open(result_path, "w") as f:
        json.dump(out, f)


async def _run(dut, job, out):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    config = CoreConfig.from_dict(job["config"])
    dut.rst.value = 1
    pins = UartPins(dut, job["divisor"])
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    plans = [[_tile(t) for t in tiles] for tiles in job["plans"]]
    out["wrong"] = []
    for d in job.get("wrong_configs", ()):
        sent = pins.written
        try:
            await drive_async(serial_link.session(plans, CoreConfig.from_dict(d)), pins)
            error = None
        except serial_link.LinkError as e:
            error = str(e)
        out["wrong"].append({"error": error, "written": pins.written - sent})
    start = get_sim_time("ns")
    out["results"] = await drive_async(serial_link.session(plans), pins)
    if job.get("refused"):
        out["refused"] = await drive_async(
            serial_link.tile_exchange(_tile(job["refused"]), config), pins)
        # the link must still work after a refused command
        out["ident_after"] = await drive_async(serial_link.ping_exchange(), pins)
    if job.get("partial"):
        # a host that dies mid-frame: after frame_timeout bit times the bridge listens again
        await pins.write(bytes.fromhex(job["partial"]))
        await ClockCycles(dut.clk, (job["frame_timeout"] + 20) * job["divisor"])
        out["ident_after_partial"] = await drive_async(serial_link.ping_exchange(), pins)
        out["status_after_partial"] = await drive_async(_status(), pins)
        # an opcode the bridge does not know: flagged in the next status, then forgotten
        await pins.write(bytes([job["bad_opcode"]]))
        out["status_after_bad_opcode"] = await drive_async(_status(), pins)
        out["ident_after_bad_opcode"] = await drive_async(serial_link.ping_exchange(), pins)
    out["framing_errors"] = pins.framing_errors
    out["cycles"] = (get_sim_time("ns") - start) // 10
