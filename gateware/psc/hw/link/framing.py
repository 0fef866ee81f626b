"""The two ends of a framed byte protocol over the UART: :class:`FrameReceiver` and
:class:`ReplyTransmitter`.

Network mode's bridge (:mod:`psc.hw.link.network_bridge`) is built from them: the
receiver gives the parser bytes and abandons a frame the host stopped sending, the
transmitter sends the output words a command owes the host, padded or cut to the
count the host expects, and the fixed-length reply frames (an ID, a status).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from psc.hw.link.uart import UARTReceiver, UARTTransmitter
from psc.model.checks import check_int

__all__ = ["FrameReceiver", "ReplyTransmitter"]


class FrameReceiver(wiring.Component):
    """UART receiver, a byte FIFO and the frame timeout.

    Parameters
    ----------
    divisor : int
        UART clock cycles per bit.
    frame_timeout : int
        Bit times of silence in the middle of a frame (``reading`` high, no byte
        waiting) after which ``timed_out`` pulses; 0 never.
    depth : int
        Bytes of the FIFO, which holds what arrives while the parser waits.

    Members
    -------
    rx : In(1)
        The UART pin.
    byte : Out(8), ready : Out(1), take : In(1)
        The oldest byte, whether there is one, and the parser's read of it (a
        first-word-fall-through FIFO read port).
    reading : In(1)
        The parser is in the middle of a frame.
    timed_out : Out(1)
        Pulse: ``frame_timeout`` bit times passed with ``reading`` and no byte.
    error : Out(1)
        Pulse: a framing error, a receiver overrun or a byte that found the FIFO full.
    """

    def __init__(self, divisor, frame_timeout, depth=16):
        self._divisor = divisor
        self._timeout = check_int("frame_timeout", frame_timeout, 0)
        self._depth = check_int("depth", depth, 2)
        super().__init__({"rx": In(1, init=1), "byte": Out(8), "ready": Out(1), "take": In(1),
                          "reading": In(1), "timed_out": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = urx = UARTReceiver(self._divisor)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=self._depth)
        m.d.comb += [urx.rx.eq(self.rx),
                     fifo.w_data.eq(urx.o.payload), fifo.w_en.eq(urx.o.valid), urx.o.ready.eq(1),
                     self.byte.eq(fifo.r_data), self.ready.eq(fifo.r_rdy),
                     fifo.r_en.eq(self.take),
                     self.error.eq((urx.o.valid & ~fifo.w_rdy) | urx.overrun
                                   | urx.framing_error)]
        limit = self._timeout * self._divisor
        if limit:
            idle = Signal(range(limit))
            # `idle == limit - 1`, kept as a flag a cycle ahead: `reading` comes from the
            # parser's state, so a compare of the count would sit between that state and
            # its next one
            last = Signal()
            with m.If(self.reading & ~fifo.r_rdy):
                m.d.sync += [idle.eq(idle + 1), last.eq(idle == limit - 2)]
                m.d.comb += self.timed_out.eq(last)
            with m.Else():
                m.d.sync += [idle.eq(0), last.eq(0)]
        return m


class ReplyTransmitter(wiring.Component):
    """UART transmitter of the words a command owes the host and of the reply frames.

    ``arm`` with ``expect`` sets how many words the host waits for. Each word
    of ``words`` then leaves as ``word_bytes`` bytes, little-endian, until that
    many have; words beyond it are taken and discarded (``extra`` pulses), so the
    host is never sent what it does not read. While ``pad`` is high (the producer
    has ended short) zero words are sent instead, each pulsing ``short``, until
    none is owed (``owed_none``). ``real`` counts the words the producer made.

    A reply (``reply`` 1: the constant ``ident`` frame; 2: the ``status`` frame)
    starts when no word is being sent or offered; ``reply_ack`` pulses then. The
    status is picked byte by byte as it is sent (no register as wide as the frame),
    from the cycle after ``reply_ack`` on: what it carries may be captured at
    ``reply_ack`` and must then hold still until it has left.

    Throughput: the UART's, ``10 * divisor`` cycles per byte. ``words.ready`` and
    ``owed_none`` come from registers.
    """

    def __init__(self, divisor, word_bytes, ident, status_bytes, count_width):
        self._divisor = divisor
        self._word_bytes = check_int("word_bytes", word_bytes, 1)
        self._ident = bytes(ident)
        self._status_bytes = check_int("status_bytes", status_bytes, 1)
        super().__init__({
            "tx": Out(1, init=1),
            "words": In(stream.Signature(8 * word_bytes)),
            "arm": In(1), "expect": In(count_width),
            "pad": In(1), "owed_none": Out(1, init=1), "real": Out(count_width),
            "extra": Out(1), "short": Out(1),
            "reply": In(2), "reply_ack": Out(1), "status": In(8 * status_bytes),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = utx = UARTTransmitter(self._divisor)
        m.d.comb += self.tx.eq(utx.tx)
        nb, ident, sb = self._word_bytes, self._ident, self._status_bytes
        owed = Signal.like(self.expect)
        sh = Signal(8 * nb)                 # the word being sent
        mode = Signal(2)                    # 0 a word, 1 the ID frame, 2 the status frame
        most = max(nb, sb, len(ident))
        # The ID and the status are picked byte by byte as they are sent (no register as
        # wide as the frame): the frame's 4-byte group of byte `idx` is registered every
        # cycle, then the byte chosen from it, so that no multiplexer over the whole frame
        # sits in front of the UART's shift register. The group is a cycle behind `idx`:
        # a byte is offered only once it has caught up (`fresh`, low in the cycle after a
        # byte is taken or a frame starts), which costs the first byte of a frame one cycle
        # and the others none (the UART is busy for 10 * divisor cycles after a byte).
        idx = Signal(range(most + 1))
        idx_q = Signal.like(idx)            # `idx` a cycle late, with `group`
        left = Signal(range(most + 1))      # bytes left in the frame
        # `left == 0` as a flag of its own: it decides `reply_ack` and `words.ready`, which
        # lead into the bridge's state, so no compare of the count should sit in front
        done = Signal(init=1)
        group = Signal(32)
        fresh = Signal()
        frames = {1: [Const(b, 8) for b in ident],
                  2: [self.status[8 * i:8 * i + 8] for i in range(sb)]}

        def groups(frame):
            # the frame's bytes as one value, a whole number of 4-byte groups
            return Cat(*frame, Const(0, 8 * (-len(frame) % 4)))
        m.d.sync += [idx_q.eq(idx), fresh.eq(1),
                     group.eq(Mux(mode == 1, groups(frames[1]).word_select(idx[2:], 32),
                                  groups(frames[2]).word_select(idx[2:], 32)))]
        m.d.comb += [utx.i.payload.eq(Mux(mode == 0, sh[:8], group.word_select(idx_q[:2], 8))),
                     utx.i.valid.eq(~done & (fresh | (mode == 0)))]
        with m.If(utx.i.valid & utx.i.ready):
            m.d.sync += [sh.eq(sh >> 8), idx.eq(idx + 1), left.eq(left - 1), fresh.eq(0),
                         done.eq(left == 1)]

        with m.If(self.owed_none):
            m.d.comb += [self.words.ready.eq(1), self.extra.eq(self.words.valid)]
        with m.Elif(done):
            m.d.comb += self.words.ready.eq(1)
            with m.If(self.words.valid):
                m.d.sync += [sh.eq(self.words.payload), mode.eq(0), left.eq(nb), done.eq(0),
                             self.real.eq(self.real + 1)]
            with m.Elif(self.pad):
                m.d.comb += self.short.eq(1)
                m.d.sync += [sh.eq(0), mode.eq(0), left.eq(nb), done.eq(0)]
            with m.If(self.words.valid | self.pad):
                m.d.sync += [owed.eq(owed - 1), self.owed_none.eq(owed == 1)]
        with m.If(done & ~self.words.valid & (self.reply != 0)):
            m.d.comb += self.reply_ack.eq(1)
            m.d.sync += [mode.eq(self.reply), idx.eq(0), fresh.eq(0), done.eq(0)]
            with m.If(self.reply == 1):
                m.d.sync += left.eq(len(ident))
            with m.Else():
                m.d.sync += left.eq(sb)
        with m.If(self.arm):
            m.d.sync += [owed.eq(self.expect), self.owed_none.eq(self.expect == 0),
                         self.real.eq(0)]
        return m
