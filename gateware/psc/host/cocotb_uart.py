"""The board's serial port for cocotb benches: :class:`UartPins` plays a host's serial port on a
top's ``rx``/``tx`` pins, and :func:`drive_async` runs the host's protocol generators
(:mod:`psc.host.serial_link`, :mod:`psc.host.network_link`) over it, the same code that runs
a board over pyserial."""

from collections import deque

import cocotb
from cocotb.triggers import FallingEdge, Timer

from psc.host import serial_link

__all__ = ["UartPins", "drive_async"]


class UartPins:
    """The board's serial port, simulated: ``write`` drives ``rx``, ``read`` returns bytes
    decoded from ``tx``.

    The clock runs with period ``period_ns``; a bit lasts ``divisor`` clock cycles. Bit
    times are waited as one timer each (not cycle by cycle), so a slow baud costs no more
    simulator callbacks than a fast one; ``rx`` changes and ``tx`` is sampled half a
    clock cycle away from the rising edges. ``read`` gives up (``LinkError``, as a real
    port's timeout would) when no byte arrives for ``idle_limit`` clock cycles.
    """

    def __init__(self, dut, divisor, idle_limit=200_000, period_ns=10):
        self.dut = dut
        self.div = divisor
        self.idle_limit = idle_limit
        self.period = period_ns
        self.rx_bytes = deque()
        self.written = 0                       # bytes the host has sent
        self.framing_errors = 0
        dut.rx.value = 1
        self._monitor = cocotb.start_soon(self._decode())

    def _cycles(self, n):
        return Timer(n * self.period, unit="ns")

    async def _decode(self):
        dut, div = self.dut, self.div
        while True:
            await FallingEdge(dut.tx)          # just after a rising edge of the clock
            await Timer((div // 2) * self.period + self.period // 2, unit="ns")
            if int(dut.tx.value):
                continue                       # glitch
            byte = 0
            for i in range(8):
                await self._cycles(div)
                byte |= int(dut.tx.value) << i
            await self._cycles(div)
            if not int(dut.tx.value):
                self.framing_errors += 1
            self.rx_bytes.append(byte)

    async def write(self, data):
        dut, div = self.dut, self.div
        self.written += len(data)
        await FallingEdge(dut.clk)
        for byte in data:
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                dut.rx.value = bit
                await self._cycles(div)

    async def read(self, n, what=""):
        idle = 0
        have = len(self.rx_bytes)
        while len(self.rx_bytes) < n:
            await self._cycles(10 * self.div)
            if len(self.rx_bytes) == have:
                idle += 10 * self.div
                if idle > self.idle_limit:
                    raise serial_link.LinkError(
                        f"timeout reading the {what or 'reply'}: got {len(self.rx_bytes)} "
                        f"of {n} bytes")
            else:
                have, idle = len(self.rx_bytes), 0
        return bytes(self.rx_bytes.popleft() for _ in range(n))


async def drive_async(gen, pins):
    """:func:`psc.host.serial_link.drive` for the simulated pins: the same requests, awaited."""
    try:
        req = next(gen)
        while True:
            if isinstance(req, serial_link.Write):
                await pins.write(req.data)
                req = gen.send(None)
            else:
                req = gen.send(await pins.read(req.n, req.what))
    except StopIteration as stop:
        return stop.value
