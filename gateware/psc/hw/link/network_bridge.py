"""Network mode's UART bridge: a framed byte protocol around :class:`psc.hw.network.NetworkEngine`.

The host loads a program once (:meth:`psc.host.program.Program.engine_image`: its
instructions, every weight block and parameter word) into the engine's on-chip
stores; an inference is then one frame of input beats in and the output's words
back, every layer running on chip. The host side is :mod:`psc.host.serial_link`.

Protocol (version 7)
--------------------

All multi-byte fields are little-endian except the CRC. The frames that carry
data end with a CRC-16 (CRC-16/CCITT-FALSE: polynomial 0x1021, initial value
0xFFFF, no reflection) of every byte of the frame from its opcode on, sent most
significant byte first. Host to board:

=========  =======  ===========================================================  ============
command    opcode   fields after the opcode                                      reply
=========  =======  ===========================================================  ============
PING       ``P``    none                                                         ID frame
LOAD       ``L``    ``sel`` (u8), ``addr`` (u32), ``n`` (u16), ``n`` words, CRC  none
READY      ``R``    ``program`` (u32), ``n_in`` (u32), ``n_out`` (u32),          none
                    ``in_bytes`` (u8), CRC
INFER      ``I``    ``n_in`` (u32), ``n_out`` (u32), ``in_bytes`` (u8),         ``n_out`` words
                    ``n_in`` input beats, CRC
STATUS     ``S``    none                                                         status frame
=========  =======  ===========================================================  ============

* LOAD writes ``n`` words from ``addr`` on into a store: ``sel`` 0 the command
  store (4-byte words), 1 the core's weight buffer (weight-block beats), 2 the
  parameter store (parameter beats); a word is ``ceil(width / 8)`` bytes
  (:func:`load_bytes`). It marks the board as holding no program; a LOAD whose
  CRC is wrong, or that arrives while an inference runs (its words are then
  dropped, flag ``LOAD_REFUSED``), spoils the load.
* READY ends a load: with a good CRC and no spoilt LOAD since the last READY,
  the board holds program ``program`` (an identifier the host chooses, reported
  in every status frame) whose input is ``n_in`` beats of ``in_bytes`` bytes and
  output ``n_out`` words.
* INFER runs the program on ``n_in`` input beats (the input's pixels in raster
  order, ``rows`` channels per beat), each sent as the first ``in_bytes`` of
  its ``ceil(rows * act_width / 8)`` bytes (:func:`io_bytes`), the rest zero:
  an input with fewer channels than ``rows`` sends only its own (an
  ``in_bytes`` of 0 or past a beat's bytes means a whole beat).
  Its ``n_in``, ``n_out`` and ``in_bytes`` must be the program's; if they are not, or no
  program is held, nothing runs (flag ``NOT_LOADED``) and the beats are dropped.
  Either way exactly ``n_out`` output words (``ceil(lanes * act_width / 8)``
  bytes each) come back, padded with zero words (flag ``SHORT``) when the run
  made fewer (a refused command, or nothing ran), with no header, as they leave
  the engine. A wrong CRC sets ``CRC_ERROR``: the input was corrupted and the
  outputs are not to be used.
* Status frame, :data:`STATUS_BYTES` bytes, sent once the engine is idle and
  every owed word has left: ``S``, flags (u16, :data:`FLAGS`), the program held
  (u32, 0 for none), the output words the run made (u32), the run's cycles
  (u32, from the input's first beat awaited to the output's last word leaving the
  engine), those after the input was received (u32: every layer and the output's
  words handed to the bridge's output FIFO, :attr:`NetworkBridgeConfig.out_fifo_depth`)
  and its compute cycles (u32, cycles in which a beat entered the MAC array). Flags: bit
  0 ``BUSY``, 1 ``ERROR`` (the engine stopped at a command the core refused), 2
  ``DONE``, 3 ``DROPPED``, 4 ``SHORT``, 5 ``EXTRA``, 6 ``RX_ERROR`` (framing error,
  overrun, full receive FIFO, or a frame abandoned after ``frame_timeout`` bit
  times of silence in its middle: an inference it belonged to is aborted, the
  program stays), 7 ``BAD_OPCODE``, 8 ``CRC_ERROR``, 9 ``LOADED`` (a program is
  held), 10 ``NOT_LOADED``, 11 ``LOAD_REFUSED``. INFER clears flags 2 to 5, 8
  and 10; STATUS clears ``RX_ERROR``, ``BAD_OPCODE``, ``CRC_ERROR`` and
  ``LOAD_REFUSED`` after reporting them.
* ID frame, :data:`ID_BYTES` bytes: ``P``, ``PSC``, the protocol version (u8),
  the fields of the tile-mode bridge's ID (:data:`psc.hw.link.bridge.ID_FIELDS`,
  describing the core) and then those of :data:`ENGINE_ID_FIELDS`, the
  engine's memories, so that a host can check that a program fits
  (:meth:`psc.host.program.Program.check_engine`) before sending any of it.

Flow control: as the tile-mode bridge's. The host sends a whole INFER and a
STATUS, then reads the ``n_out`` words and the status frame. The engine takes
input beats faster than the UART brings them.
"""

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import crc, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from psc.hw.core import act_in_layout, act_out_layout, param_layout, weight_layout
from psc.hw.link.bridge import (ID_FIELDS, OP as TILE_OP, RX_FIFO_DEPTH, check_frame_timeout,
                                encode_id, id_values)
from psc.hw.link.framing import FrameReceiver, ReplyTransmitter
from psc.hw.link.uart import UARTConfig
from psc.hw.network.engine import CMD_WORD, EngineConfig, NetworkEngine
from psc.model.checks import BadTypeError, check_int, show

__all__ = ["NetworkBridgeConfig", "NetworkBridge", "PROTOCOL_VERSION", "OP", "FLAGS",
           "ENGINE_ID_FIELDS", "ID_BYTES", "STATUS_BYTES", "CRC", "load_bytes", "io_bytes",
           "engine_id_values", "id_frame", "COUNT_WIDTH"]

PROTOCOL_VERSION = 7
OP = {"PING": TILE_OP["PING"], "STATUS": TILE_OP["STATUS"], "LOAD": ord("L"),
      "READY": ord("R"), "INFER": ord("I")}
FLAGS = {"BUSY": 0, "ERROR": 1, "DONE": 2, "DROPPED": 3, "SHORT": 4, "EXTRA": 5,
         "RX_ERROR": 6, "BAD_OPCODE": 7, "CRC_ERROR": 8, "LOADED": 9, "NOT_LOADED": 10,
         "LOAD_REFUSED": 11}
STATUS_BYTES = 23
#: The engine's fields of the ID frame, after the core's: (name, bytes).
ENGINE_ID_FIELDS = (("act_depth", 4), ("cmd_depth", 4), ("param_store_depth", 4),
                    ("weight_store_depth", 4), ("op_values", 1), ("given_sizes", 1))
ID_BYTES = 5 + sum(n for _, n in ID_FIELDS + ENGINE_ID_FIELDS)
#: The frames' CRC.
CRC = crc.catalog.CRC16_CCITT_FALSE
#: Bits of the beat and word counts of an inference (a count is taken modulo ``2**COUNT_WIDTH``).
COUNT_WIDTH = 24


def _nbytes(bits):
    return (bits + 7) // 8


def load_bytes(engine_config):
    """Bytes of a LOAD word for each ``sel``: (command store, weight blocks, parameter store)."""
    cc = engine_config.core
    return (CMD_WORD // 8, _nbytes(weight_layout(cc).size), _nbytes(param_layout(cc).size))


def io_bytes(engine_config):
    """Bytes of an input beat and of an output word: ``(in, out)``."""
    cc = engine_config.core
    return _nbytes(act_out_layout(cc).size), _nbytes(act_in_layout(cc).size)


def engine_id_values(engine_config):
    """The engine's fields of the ID frame (:data:`ENGINE_ID_FIELDS`), as integers."""
    return {name: int(getattr(engine_config, name)) for name, _ in ENGINE_ID_FIELDS}


def id_frame(engine_config, divisor):
    """The ID frame a network bridge for ``engine_config`` and ``divisor`` answers PING with."""
    values = dict(id_values(engine_config.core, divisor), **engine_id_values(engine_config))
    out = encode_id(PROTOCOL_VERSION, ID_FIELDS + ENGINE_ID_FIELDS, values)
    assert len(out) == ID_BYTES
    return out


@dataclass(frozen=True)
class NetworkBridgeConfig:
    """Build-time parameters of :class:`NetworkBridge`.

    Parameters
    ----------
    engine : psc.hw.network.EngineConfig
        The engine behind the bridge.
    divisor : int
        UART clock cycles per bit, ``>= 4``.
    frame_timeout : int
        Bit times of silence in the middle of a frame after which it is
        abandoned (flag ``RX_ERROR``; an inference it belonged to is aborted).
        0 disables it. Default 50000 (50 ms at 1 Mbaud).
    out_fifo_depth : int
        Output words held between the engine and the UART, so that an output of at
        most this many words leaves the engine as fast as it makes them instead of at
        the line's pace (a classifier's output is a few words). 0: none, the engine
        waits for the line. Default 16.
    """
    engine: EngineConfig
    divisor: int = 104
    frame_timeout: int = 50_000
    out_fifo_depth: int = 16

    def __post_init__(self):
        if not isinstance(self.engine, EngineConfig):
            raise BadTypeError(f"engine must be a psc.hw.network.EngineConfig, "
                               f"not {show(self.engine)}")
        UARTConfig(self.divisor)
        check_frame_timeout(self.frame_timeout)
        check_int("out_fifo_depth", self.out_fifo_depth, 0)

    @property
    def core(self):
        return self.engine.core

    def key(self):
        """A short name of this configuration, for build directories."""
        return (f"{self.engine.key()}_d{self.divisor}t{self.frame_timeout}"
                f"o{self.out_fifo_depth}")


class NetworkBridge(wiring.Component):
    """The :class:`~psc.hw.network.NetworkEngine` behind a UART speaking protocol version 7.

    Latency/throughput: bounded by the UART (``10 * divisor`` cycles per byte);
    see the module docstring for the protocol.

    Parameters
    ----------
    config : NetworkBridgeConfig

    Members
    -------
    rx : In(1)
        UART receive pin (idle high).
    tx : Out(1)
        UART transmit pin (idle high).
    busy, error, loaded : Out(1)
        The engine runs an inference; the last one stopped at a refused command; a
        program is held (for LEDs).
    """

    def __init__(self, config):
        if not isinstance(config, NetworkBridgeConfig):
            raise BadTypeError(f"config must be a psc.hw.link.network_bridge.NetworkBridgeConfig,"
                               f" not {show(config)}")
        self.config = config
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1),
                          "error": Out(1), "loaded": Out(1)})

    def elaborate(self, platform):
        m = Module()
        bc = self.config
        ec = bc.engine
        lb = load_bytes(ec)
        ib, ob = io_bytes(ec)
        # Registered: the engine's reset reaches every one of its flip-flops, so it must
        # not come through the timeout's compare and the parser's logic in the same cycle.
        abort = Signal()
        m.d.sync += abort.eq(0)
        engine = NetworkEngine(ec)
        m.submodules.engine = ResetInserter(abort)(engine)
        m.submodules.rx = rx = FrameReceiver(bc.divisor, bc.frame_timeout, RX_FIFO_DEPTH)
        m.submodules.tx = tx = ReplyTransmitter(bc.divisor, ob, id_frame(ec, bc.divisor),
                                                STATUS_BYTES, COUNT_WIDTH)
        m.submodules.crc = check = crc.Processor(CRC(data_width=8))
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx), self.busy.eq(engine.busy),
                     self.error.eq(engine.error)]
        if bc.out_fifo_depth:
            # emptied after each INFER's start and after an abort, so that no word of an
            # earlier run is sent as one of the next; through a register, as the engine's
            # reset (the engine's first word is many cycles after either)
            out_fifo = SyncFIFOBuffered(width=8 * ob, depth=bc.out_fifo_depth)
            out_clear = Signal()
            m.d.sync += out_clear.eq(abort | tx.arm)
            m.submodules.out_fifo = ResetInserter(out_clear)(out_fifo)
            wiring.connect(m, engine.host_out, out_fifo.w_stream)
            wiring.connect(m, out_fifo.r_stream, tx.words)
            out_held = out_fifo.level != 0
        else:
            wiring.connect(m, engine.host_out, tx.words)
            out_held = Const(0)

        # the engine stopped and no word of its output waits: registered, as the output
        # FIFO's level is an adder and a compare in front of the transmitter's count (an
        # idle engine makes no more words, so a cycle late is still right)
        quiet = Signal()
        m.d.sync += quiet.eq(~engine.busy & ~engine.host_out.valid & ~out_held)

        # --- state reported in the status frame -----------------------------------------
        f = {name: Signal(name=f"f_{name.lower()}") for name in (
            "DONE", "DROPPED", "RX_ERROR", "BAD_OPCODE", "CRC_ERROR", "NOT_LOADED",
            "LOAD_REFUSED", "SHORT", "EXTRA")}
        loaded = Signal()
        spoilt = Signal()                    # a LOAD since the last READY went wrong
        program = Signal(32)
        prog_in = Signal(COUNT_WIDTH)
        prog_out = Signal(COUNT_WIDTH)
        # an input beat's bytes on the line, and the zero bytes the board adds above them
        prog_bytes = Signal(range(ib + 1))
        in_bytes = Signal(range(ib + 1), init=ib)
        in_pad = Signal(range(ib))
        m.d.comb += self.loaded.eq(loaded)
        # the engine's start, a cycle after the frame's head is checked: the check's compares
        # would otherwise lead into the engine's state. The input's first beat is a byte away.
        run = Signal()
        m.d.sync += run.eq(0)
        m.d.comb += engine.run.eq(run)
        with m.If(engine.done):
            m.d.sync += f["DONE"].eq(1)
        with m.If(rx.error):
            m.d.sync += f["RX_ERROR"].eq(1)
        with m.If(tx.short):
            m.d.sync += f["SHORT"].eq(1)
        with m.If(tx.extra):
            m.d.sync += f["EXTRA"].eq(1)
        flags = Signal(16)                   # as they were when the status was asked for
        with m.If(tx.reply_ack):
            m.d.sync += flags.eq(Cat(engine.busy, engine.error, f["DONE"], f["DROPPED"],
                                     f["SHORT"], f["EXTRA"], f["RX_ERROR"], f["BAD_OPCODE"],
                                     f["CRC_ERROR"], loaded, f["NOT_LOADED"], f["LOAD_REFUSED"]))
        # the rest holds still while the status is sent: the engine is idle, no word is owed
        m.d.comb += tx.status.eq(Cat(Const(OP["STATUS"], 8), flags,
                                     program, tx.real, Const(0, 32 - COUNT_WIDTH),
                                     engine.cycles, engine.window, engine.compute))

        # --- parser: bytes shift in at the top of `sh`; a field of n bytes read last sits,
        # little-endian, in its top n bytes (a static slice).
        maxb = max(15, max(lb), ib)
        sh = Signal(8 * maxb)

        def top(nbytes):
            return sh[8 * (maxb - nbytes):]

        left = Signal(range(maxb + 1))       # bytes still to read in this field
        count = Signal(COUNT_WIDTH)          # words or beats still to forward
        sel = Signal(2)
        addr = Signal(32)
        # the CRC takes each byte a cycle after it is read: its update then starts at flip-
        # flops, not at the parser's state; and its verdict is registered (`crc_ok`), so
        # that the residue's compare does not lead into the enables of what a check
        # accepts. A check waits out both cycles (`crc_settled`).
        crc_byte = Signal(8)
        crc_valid = Signal()
        crc_start = Signal()
        crc_valid_q = Signal()
        crc_ok = Signal()
        crc_settled = Signal()
        m.d.sync += [crc_byte.eq(rx.byte), crc_valid.eq(0), crc_start.eq(0),
                     crc_valid_q.eq(crc_valid), crc_ok.eq(check.match_detected)]
        m.d.comb += [check.data.eq(crc_byte), check.valid.eq(crc_valid),
                     check.start.eq(crc_start), crc_settled.eq(~crc_valid & ~crc_valid_q)]

        def read(nxt):
            """In a state reading a field: shift a byte in (and into the CRC); go to ``nxt``
            after the last."""
            m.d.comb += [rx.take.eq(1), rx.reading.eq(1)]
            with m.If(rx.ready):
                m.d.sync += crc_valid.eq(1)
                m.d.sync += [sh.eq(Cat(sh[8:], rx.byte)), left.eq(left - 1)]
                with m.If(left == 1):
                    m.next = nxt
            with m.Elif(rx.timed_out):
                # the host has given up on this frame: it reads nothing more of it
                m.d.sync += [f["RX_ERROR"].eq(1), abort.eq(engine.busy), arm.eq(1),
                             expect.eq(0)]
                m.next = "OP"

        def whole_beat(n):
            """An ``in_bytes`` field: 0 or past a beat's bytes is a whole beat."""
            return Mux((n == 0) | (n > ib), ib, n)

        def beat_or_crc(last, n_bytes=in_bytes):
            """Read the next input beat (``n_bytes``), or the CRC after the ``last`` one."""
            with m.If(last):
                m.d.sync += left.eq(2)
                m.next = "INFER_CRC"
            with m.Else():
                m.d.sync += left.eq(n_bytes)
                m.next = "INFER_READ"

        # An input beat waits in a register for the engine: its valid comes from a flip-flop,
        # not from the parser's state, and the engine's ready only clears it. The UART brings
        # a beat every `ib` bytes; the engine takes one within a few cycles.
        beat_valid = Signal()
        beat_taken = Signal()
        m.d.comb += [engine.host_in.valid.eq(beat_valid),
                     beat_taken.eq(engine.host_in.ready | ~engine.busy)]
        with m.If(beat_valid & beat_taken):
            m.d.sync += beat_valid.eq(0)
            with m.If(~engine.host_in.ready):
                # nothing runs (or the run has stopped): drop rather than hang
                m.d.sync += f["DROPPED"].eq(1)
        with m.If(abort):
            m.d.sync += beat_valid.eq(0)

        # The parser's requests to the transmitter, registered: they lead into its byte
        # count and frame state, which should start at flip-flops, not at the parser's state.
        # A reply is asked for until it is acknowledged; a request made a cycle late costs a
        # cycle against the UART's ten bit times a byte.
        reply = Signal(2)
        pad = Signal()
        arm = Signal()
        expect = Signal.like(tx.expect)
        m.d.sync += [reply.eq(0), pad.eq(0), arm.eq(0)]
        m.d.comb += [tx.reply.eq(reply), tx.pad.eq(pad), tx.arm.eq(arm), tx.expect.eq(expect)]

        # a refused LOAD word is flagged a cycle later: the parser's state then ends at a
        # flip-flop, not at the flags' enables
        refused = Signal()
        m.d.sync += refused.eq(0)
        with m.If(refused):
            m.d.sync += [f["LOAD_REFUSED"].eq(1), spoilt.eq(1)]

        with m.FSM():
            with m.State("OP"):
                m.d.comb += rx.take.eq(1)
                with m.If(rx.ready):
                    m.d.sync += [crc_start.eq(1), crc_valid.eq(1)]
                    with m.Switch(rx.byte):
                        with m.Case(OP["PING"]):
                            m.d.sync += reply.eq(1)
                            m.next = "PING"
                        with m.Case(OP["STATUS"]):
                            m.next = "SYNC"
                        with m.Case(OP["LOAD"]):
                            m.d.sync += [left.eq(7), loaded.eq(0)]
                            m.next = "LOAD_HEAD"
                        with m.Case(OP["READY"]):
                            m.d.sync += left.eq(15)
                            m.next = "READY_READ"
                        with m.Case(OP["INFER"]):
                            m.d.sync += left.eq(9)
                            m.next = "INFER_HEAD"
                        with m.Default():
                            m.d.sync += f["BAD_OPCODE"].eq(1)
            with m.State("PING"):
                with m.If(tx.reply_ack):
                    m.next = "OP"
                with m.Else():
                    m.d.sync += reply.eq(1)
            with m.State("SYNC"):
                # the status follows the last owed word, once the engine has stopped (an
                # idle engine stays idle and a word owed is never owed again, so a request
                # a cycle late still holds; a late pad is ignored once none is owed)
                with m.If(tx.reply_ack):
                    m.d.sync += [f[n].eq(0) for n in ("RX_ERROR", "BAD_OPCODE",
                                                      "CRC_ERROR", "LOAD_REFUSED")]
                    m.next = "OP"
                with m.Else():
                    m.d.sync += [reply.eq(Mux(quiet & tx.owed_none, 2, 0)),
                                 pad.eq(quiet & ~tx.owed_none)]

            # LOAD ---------------------------------------------------------------------------
            with m.State("LOAD_HEAD"):
                read("LOAD_START")
            with m.State("LOAD_START"):
                head = top(7)
                m.d.sync += [sel.eq(head[:2]), addr.eq(head[8:40]), count.eq(head[40:56])]
                with m.If(head[40:56] == 0):
                    m.d.sync += left.eq(2)
                    m.next = "LOAD_CRC"
                with m.Else():
                    m.next = "LOAD_WORD"
            with m.State("LOAD_WORD"):
                with m.Switch(sel):
                    for s in range(4):
                        with m.Case(s):
                            m.d.sync += left.eq(lb[s] if s < 3 else lb[0])
                m.next = "LOAD_READ"
            with m.State("LOAD_READ"):
                read("LOAD_SEND")
            with m.State("LOAD_SEND"):
                m.d.comb += [engine.load.payload.sel.eq(sel), engine.load.payload.addr.eq(addr)]
                with m.Switch(sel):
                    for s in range(3):
                        with m.Case(s):
                            m.d.comb += engine.load.payload.data.eq(top(lb[s]))
                m.d.comb += engine.load.valid.eq(sel != 3)
                # the engine takes a word in the cycle it is offered, unless it is running
                m.d.sync += refused.eq(~engine.load.ready | (sel == 3))
                m.d.sync += [addr.eq(addr + 1), count.eq(count - 1)]
                with m.If(count == 1):
                    m.d.sync += left.eq(2)
                    m.next = "LOAD_CRC"
                with m.Else():
                    m.next = "LOAD_WORD"
            with m.State("LOAD_CRC"):
                read("LOAD_CHECK")
            with m.State("LOAD_CHECK"):
                with m.If(crc_settled):
                    with m.If(~crc_ok):
                        m.d.sync += [f["CRC_ERROR"].eq(1), spoilt.eq(1)]
                    m.next = "OP"

            # READY --------------------------------------------------------------------------
            with m.State("READY_READ"):
                read("READY_CHECK")
            with m.State("READY_CHECK"):
                fields = top(15)
                with m.If(crc_settled):
                    with m.If(crc_ok):
                        m.d.sync += [loaded.eq(~spoilt), program.eq(fields[:32]),
                                     prog_in.eq(fields[32:64]), prog_out.eq(fields[64:96])]
                        m.d.sync += prog_bytes.eq(whole_beat(fields[96:104]))
                    with m.Else():
                        m.d.sync += [f["CRC_ERROR"].eq(1), loaded.eq(0)]
                    m.d.sync += spoilt.eq(0)
                    m.next = "OP"

            # INFER --------------------------------------------------------------------------
            with m.State("INFER_HEAD"):
                read("INFER_START")
            with m.State("INFER_START"):
                head = top(9)
                n_in, n_out = head[:COUNT_WIDTH], head[32:32 + COUNT_WIDTH]
                n_bytes = whole_beat(head[64:72])
                m.d.sync += [arm.eq(1), expect.eq(n_out)]
                m.d.sync += [count.eq(n_in), in_bytes.eq(n_bytes), in_pad.eq(ib - n_bytes)] + [
                    f[n].eq(0) for n in (
                        "DONE", "DROPPED", "SHORT", "EXTRA", "CRC_ERROR", "NOT_LOADED")]
                with m.If(loaded & ~engine.busy & (n_in == prog_in) & (n_out == prog_out)
                          & (n_bytes == prog_bytes)):
                    m.d.sync += run.eq(1)
                with m.Else():
                    m.d.sync += f["NOT_LOADED"].eq(1)
                beat_or_crc(n_in == 0, n_bytes)
            with m.State("INFER_READ"):
                read("INFER_SEND")
            with m.State("INFER_SEND"):
                with m.If(~beat_valid | beat_taken):
                    # the beat's bytes read last sit at the top: moved down past the
                    # bytes the line did not carry, zeros above them
                    m.d.sync += [beat_valid.eq(1),
                                 engine.host_in.payload.eq(top(ib) >> (in_pad * 8)),
                                 count.eq(count - 1)]
                    beat_or_crc(count == 1)
            with m.State("INFER_CRC"):
                read("INFER_CHECK")
            with m.State("INFER_CHECK"):
                with m.If(crc_settled):
                    with m.If(~crc_ok):
                        m.d.sync += f["CRC_ERROR"].eq(1)
                    m.next = "OP"
        return m
