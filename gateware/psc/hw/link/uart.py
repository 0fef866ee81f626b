"""A small 8N1 UART: :class:`UARTReceiver` and :class:`UARTTransmitter`.

Written here because amaranth-stdio is not published on PyPI. Both sides run
in the ``sync`` domain with a fixed integer ``divisor`` (clock cycles per bit,
``clk_hz / baud`` rounded), one start bit, eight data bits LSB first, no
parity and one stop bit. Idle line level is 1.
"""

from dataclasses import dataclass

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTConfig", "UARTReceiver", "UARTTransmitter", "divisor_for"]

#: Smallest divisor the receiver supports: it samples the middle of a bit.
MIN_DIVISOR = 4


def divisor_for(clk_hz, baud):
    """Clock cycles per bit for ``baud`` at ``clk_hz``; raises if the error exceeds 2%."""
    if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    div = round(clk_hz / baud)
    if div < MIN_DIVISOR:
        raise ValueError(f"baud must be at most {int(clk_hz // MIN_DIVISOR)} for a "
                         f"{clk_hz / 1e6:g} MHz clock ({MIN_DIVISOR} clocks per bit), not {baud}")
    err = abs(clk_hz / div - baud) / baud
    if err > 0.02:
        raise ValueError(f"baud {baud} is {100 * err:.1f}% off the nearest rate a {clk_hz / 1e6:g} MHz "
                         f"clock can make ({clk_hz / div:.0f}); choose a baud with at most 2% error")
    return div


@dataclass(frozen=True)
class UARTConfig:
    """UART parameters.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, ``>= 4`` (the receiver samples each bit in its
        middle, ``divisor // 2`` cycles after the start bit's falling edge).
    """
    divisor: int = 104

    def __post_init__(self):
        if not isinstance(self.divisor, int) or isinstance(self.divisor, bool) \
                or not MIN_DIVISOR <= self.divisor <= 1 << 20:
            raise ValueError(f"divisor must be an integer in [{MIN_DIVISOR}, {1 << 20}], "
                             f"not {self.divisor!r}")


def _config(config):
    if isinstance(config, int) and not isinstance(config, bool):
        config = UARTConfig(divisor=config)
    if not isinstance(config, UARTConfig):
        raise TypeError(f"config must be a psc.hw.link.uart.UARTConfig or a divisor, not {config!r}")
    return config


class UARTReceiver(wiring.Component):
    """8N1 receiver.

    ``rx`` goes through a two-flip-flop synchroniser (it comes from a pin).
    A start bit is a falling edge that is still low half a bit later; data
    bits are sampled every ``divisor`` cycles after that; the byte is output
    if the stop bit samples high, else ``framing_error`` pulses and the byte
    is dropped.

    Protocol: ``o`` is a stream with no backpressure in practice: a byte is
    held valid until accepted or until the next byte completes; a byte
    completed while the previous one is still waiting replaces it and
    pulses ``overrun``. Latency: the byte is valid about 2 cycles after the
    middle of its stop bit (9.5 bit times after the start edge).

    Attributes
    ----------
    rx : In(1)
        Serial input (idle high).
    o : Out(stream.Signature(8))
    framing_error, overrun : Out(1)
        One-cycle pulses.
    """

    def __init__(self, config=None):
        self._config = _config(config if config is not None else UARTConfig())
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "framing_error": Out(1),
            "overrun": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self._config.divisor
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(div))
        bit = Signal(range(9))
        shreg = Signal(8)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(rx):          # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(rx << 7 | shreg >> 1), timer.eq(div - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                    with m.Else():
                        m.d.sync += bit.eq(bit + 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.sync += self.overrun.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        # Wait for the line to go idle before looking for a start bit.
                        m.d.sync += self.framing_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """8N1 transmitter.

    Protocol: ``i`` is a stream of bytes; ``i.ready`` is high when the
    transmitter is idle, and a byte is accepted in one cycle. Each byte takes
    ``10 * divisor`` cycles on ``tx`` (start, 8 data bits LSB first, stop);
    the next byte is accepted in the last cycle of the stop bit, so
    back-to-back bytes leave with no gap. Throughput: one byte per
    ``10 * divisor`` cycles.

    Attributes
    ----------
    i : In(stream.Signature(8))
    tx : Out(1)
        Serial output (idle high), registered.
    """

    def __init__(self, config=None):
        self._config = _config(config if config is not None else UARTConfig())
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self._config.divisor
        timer = Signal(range(div))
        # start bit, 8 data bits, stop bit; shifted out LSB first
        shreg = Signal(10, init=0x3FF)
        left = Signal(range(11))
        m.d.comb += self.tx.eq(shreg[0])
        # Ready while idle and in the last cycle of a stop bit, so frames can
        # follow each other with no idle cycle.
        m.d.comb += self.i.ready.eq((left == 0) | ((left == 1) & (timer == 0)))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(1 << 9 | self.i.payload << 1), left.eq(10),
                         timer.eq(div - 1)]
        with m.Elif(left != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(1 << 9 | shreg >> 1), left.eq(left - 1),
                             timer.eq(div - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m
