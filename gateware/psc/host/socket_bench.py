"""cocotb bench: a simulated board whose serial port is a TCP socket.

The top (a board's bridge: :class:`psc.hw.link.bridge.Bridge` or
:class:`psc.hw.link.network_bridge.NetworkBridge`) gets on its ``rx`` pin, bit by
bit at ``divisor`` clock cycles per bit, the bytes a host writes to the socket,
and what it sends on ``tx`` goes back to the host. The host is the unchanged
host code (``psc.network.run(target="serial:socket://127.0.0.1:PORT")``, through
pyserial's ``socket://`` URLs); :class:`psc.host.board_sim.SimulatedBoard` starts
this bench and gives the target.

Simulated time stands still while the host thinks: when the board is idle
(``busy`` low, nothing on either line for two byte times) and the host has sent
nothing, the bench waits for the host without advancing the clock. So the
cycles the bench counts are the board's and the line's, as with a host that
answers at once. It records every *turn* (from the first byte the host sends
after such a wait to the next wait, once the board has answered): its first and
last cycle and the bytes each way, in ``turns.jsonl`` of the run directory. Host
bytes that arrive before the board has answered belong to the turn they follow,
so a frame that reaches the socket in several TCP segments (the host writes long
frames in pieces, and under load they can arrive bit times apart) is one turn.

Job (``PSC_JOB``, JSON): ``divisor``, ``port_file`` (where the bench writes the
port it listens on), ``stop_file`` (the host creates it when done), ``turns``
(the path of the turn log).
"""

import json
import os
import select
import socket

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, Timer

from psc.host.cocotb_stream import play_job
from psc.host.cocotb_uart import UartPins

PERIOD_NS = 10


@cocotb.test()
async def run_job(dut):
    await play_job(dut, _run, "connections")


async def _run(dut, job, connections):
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    div = job["divisor"]
    dut.rst.value = 1
    pins = UartPins(dut, div, period_ns=PERIOD_NS)
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    tmp = job["port_file"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.getsockname()[1]))
    os.replace(tmp, job["port_file"])
    log = open(job["turns"], "w")

    def now():
        return get_sim_time("ns") // PERIOD_NS

    writing = []                     # bytes the host sent that are not on the pin yet
    busy_writing = [False]

    async def writer():
        while True:
            if writing:
                data = bytes(writing)
                writing.clear()
                busy_writing[0] = True
                await pins.write(data)
                busy_writing[0] = False
            else:
                await Timer(div * PERIOD_NS, unit="ns")

    cocotb.start_soon(writer())
    bit = Timer(div * PERIOD_NS, unit="ns")
    while not os.path.exists(job["stop_file"]):
        ready, _, _ = select.select([server], [], [], 0.2)
        if not ready:
            continue
        conn, _ = server.accept()
        turn = None
        held = None                  # a quiet turn the board has not answered yet
        quiet = 0                    # bit times with the board idle and nothing on the lines
        idle_since = now()

        def close(end):
            turn["end"] = end
            if not turn["out"]:
                return turn          # held: the host's next bytes continue it
            log.write(json.dumps(turn) + "\n")
            log.flush()
            return None

        while True:
            idle = (not writing and not busy_writing[0] and not pins.rx_bytes
                    and int(dut.tx.value) == 1 and not int(dut.busy.value))
            if idle and not quiet:
                idle_since = now()
            quiet = quiet + 1 if idle else 0
            if turn is not None and quiet > 20:
                held = close(idle_since)
                turn = None
            block = turn is None
            ready, _, _ = select.select([conn], [], [], 0.2 if block else 0)
            if ready:
                data = conn.recv(65536)
                if not data:
                    break            # the host closed the port
                # the host answers a finished exchange: the board idle since it last sent
                # (the host reads its last byte, so it can answer a bit time later at once)
                if turn is not None and turn["out"] and quiet:
                    close(idle_since)
                    turn = None
                if turn is None:
                    turn, held = held or {"start": now(), "in": 0, "out": 0}, None
                    quiet = 0
                turn["in"] += len(data)
                writing.extend(data)
            elif block:
                if os.path.exists(job["stop_file"]):
                    break
                continue             # the board is idle: wait for the host, time stands still
            await bit
            if pins.rx_bytes:
                out = bytes(pins.rx_bytes)
                pins.rx_bytes.clear()
                if turn is not None:
                    turn["out"] += len(out)
                conn.sendall(out)
        if turn is not None:
            held = close(idle_since if quiet else now())
        if held is not None:
            log.write(json.dumps(held) + "\n")
        conn.close()
        connections.append({"end": now()})
    log.close()
    server.close()
