"""UART bridge: a framed byte protocol around :class:`psc.hw.core.PSCConvCore`.

The bridge lets a host drive the core's five streams over one serial line
(8N1, :mod:`psc.hw.link.uart`). The host side is :mod:`psc.host.serial_link`; the board
tops are in :mod:`psc.flow.board`.

Protocol (version 3)
--------------------

All multi-byte fields are little-endian. A *beat* is one payload of a core
stream, the same packed integer :func:`psc.host.plan_layer` puts in a
:class:`~psc.host.Tile`, sent in ``ceil(width / 8)`` bytes (``width`` the
stream's payload width for the build; a command beat is
:func:`psc.hw.core.command_layout`'s, which on a build with
:attr:`~psc.config.CoreConfig.given_sizes` carries the command's derived sizes after
it). Host to board, one opcode byte then its fields:

=========  =======  ============================================  ==========================
command    opcode   fields after the opcode                       reply
=========  =======  ============================================  ==========================
PING       ``P``    none                                          ID frame
CFG        ``C``    ``n_out`` (u32), one command beat             none
WEIGHTS    ``W``    ``n`` (u16), ``n`` weight-block beats         none
PARAMS     ``K``    ``n`` (u16), ``n`` parameter beats            none
ACTS       ``A``    ``n`` (u16), ``n`` activation lane words      none
STATUS     ``S``    none                                          status frame
=========  =======  ============================================  ==========================

(``P`` = 0x50, ``C`` = 0x43, ``W`` = 0x57, ``K`` = 0x4B, ``A`` = 0x41,
``S`` = 0x53.) Board to host:

* Output beats: after a CFG with ``n_out``, the core's ``act_out`` beats
  (``ceil(rows * act_width / 8)`` bytes each) are sent back as they come, with
  no header, up to ``n_out`` of them (taken modulo ``2**24``: the core
  refuses a command of more than :data:`psc.hw.core.MAX_OUTPUTS` beats).
  Extra beats are discarded (flag ``EXTRA``); if the command ends with
  fewer (a refused command), STATUS pads with zero beats up to ``n_out``
  (flag ``SHORT``), so the host always reads exactly ``n_out`` beats before
  the status frame.
* Status frame, 18 bytes, sent once the core is idle and all ``n_out`` beats
  have left: ``S``, flags (u8), real output beats (u32, below ``2**24``),
  the core's ``cycles_total``, ``cycles_compute``, ``cycles_stall`` (u32 each) of the
  last command. Flags (:data:`FLAGS`): bit 0 ``BUSY``, 1 ``ERROR`` (the core
  refused the command), 2 ``DONE`` (the command ended), 3 ``DROPPED`` (data
  beats discarded because the core was idle: they belonged to a refused
  command), 4 ``SHORT``, 5 ``EXTRA``, 6 ``RX_ERROR`` (framing error, receiver
  overrun or receive FIFO overflow), 7 ``BAD_OPCODE``. CFG clears all flags;
  STATUS clears ``RX_ERROR`` and ``BAD_OPCODE`` after reporting them.
  ``RX_ERROR`` is also set when a frame was abandoned after
  ``frame_timeout`` bit times of silence in its middle
  (:class:`BridgeConfig`).
* ID frame (:func:`id_frame`), :data:`ID_BYTES` bytes: ``P``, ``PSC``,
  protocol version (u8), then the fields of :data:`ID_FIELDS` in order:
  the build digest (u32, :meth:`psc.config.CoreConfig.digest`, covering
  every field of the core's configuration), ``act_width``,
  ``weight_width``, ``acc_width``, ``mult_width``, ``lanes``, ``rows``,
  ``psc`` (u8 each), ``max_reduction``, ``fmap_depth``, ``weight_depth``,
  ``param_depth``, UART ``divisor`` (u32 each), ``multiplier`` and
  ``depthwise`` (u8, the index in :data:`psc.config.MULTIPLIERS` and
  :data:`psc.config.DEPTHWISE_MODES`), ``tree_stages``, ``requantizers``,
  ``requant_mult_bits`` (u8, 0 for ``None``), ``read_register`` (u8),
  ``psum_depth`` (u32), ``psum_width`` (u8) and ``fmap_ram`` (u8, the index
  in :data:`psc.config.FMAP_RAMS`).
  The host compares the digest with its own configuration's (the readable
  fields name what differs) or, given none, looks it up among the shipped
  presets. Version 1 boards sent 32 bytes without the digest, version 2
  boards had no partial-sum buffer (and a command without its ``part``
  field); the version byte comes first so that a host can refuse them
  before reading on.

Data beats go to the core as it accepts them; the core accepts weights,
parameters and a whole tile's activations into its buffers without waiting
for its outputs, so a tile's frames can be sent back to back. Flow control is
the host's: send one tile (CFG, WEIGHTS, PARAMS, ACTS, STATUS), then read its
``n_out`` output beats and the status frame before sending the next. The
only bytes that then arrive while the bridge is busy are the STATUS opcode
(held in a 16-byte receive FIFO while output beats drain). Output beats leave
at the UART rate; the core stalls behind the transmitter, which its stream
contract allows, so no byte is lost. A frame whose count is 0 carries no
beats. Unknown opcodes are skipped (flag ``BAD_OPCODE``).

Timing: the bridge forwards a beat to the core in the cycle after its last
byte leaves the receive FIFO; the UART, not the bridge, sets the throughput
(``10 * divisor`` cycles per byte each way). The core's ``act_out.ready``
comes from registers (a registered "no beat owed" flag and the transmitter's
byte count), not from a wide compare.
"""

from dataclasses import dataclass, field

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from psc.config import DEPTHWISE_MODES, FMAP_RAMS, MULTIPLIERS
from psc.hw.core import (OUTPUT_COUNT_WIDTH, CoreConfig, PSCConvCore, act_in_layout,
                         act_out_layout, command_layout, param_layout, weight_layout)
from psc.hw.link.framing import FrameReceiver, ReplyTransmitter
from psc.hw.link.uart import UARTConfig

__all__ = ["BridgeConfig", "Bridge", "OP", "FLAGS", "PROTOCOL_VERSION", "ID_MAGIC",
           "ID_FIELDS", "ID_HEADER_BYTES", "beat_bytes", "id_values", "id_frame", "STATUS_BYTES",
           "ID_BYTES", "RX_FIFO_DEPTH"]

PROTOCOL_VERSION = 3
ID_MAGIC = b"PSC"
OP = {"PING": ord("P"), "CFG": ord("C"), "WEIGHTS": ord("W"), "PARAMS": ord("K"),
      "ACTS": ord("A"), "STATUS": ord("S")}
FLAGS = {"BUSY": 0, "ERROR": 1, "DONE": 2, "DROPPED": 3, "SHORT": 4, "EXTRA": 5,
         "RX_ERROR": 6, "BAD_OPCODE": 7}
STATUS_BYTES = 18
#: The fields of the ID frame after its header, in order: (name, bytes).
ID_FIELDS = (("digest", 4),
             ("act_width", 1), ("weight_width", 1), ("acc_width", 1), ("mult_width", 1),
             ("lanes", 1), ("rows", 1), ("psc", 1),
             ("max_reduction", 4), ("fmap_depth", 4), ("weight_depth", 4), ("param_depth", 4),
             ("divisor", 4),
             ("multiplier", 1), ("depthwise", 1), ("tree_stages", 1), ("requantizers", 1),
             ("requant_mult_bits", 1), ("read_register", 1), ("psum_depth", 4),
             ("psum_width", 1), ("fmap_ram", 1))
#: Fields of :class:`~psc.config.CoreConfig` (and of its ``pe``) that the ID frame carries only
#: in its digest: they change the core's timing or cells, or (``given_sizes``) the length of a
#: command beat, which a host derives from its own configuration (a host that names one the
#: board was built without is refused, by the digest, before it sends a command).
DIGEST_ONLY_FIELDS = ("early_weights", "requant_multiplier", "given_sizes")
#: ``P``, ``PSC`` and the protocol version: what a host reads before it knows the frame's length.
ID_HEADER_BYTES = 1 + len(ID_MAGIC) + 1
ID_BYTES = ID_HEADER_BYTES + sum(n for _, n in ID_FIELDS)
RX_FIFO_DEPTH = 16
#: Largest beat count of one WEIGHTS/PARAMS/ACTS frame.
MAX_FRAME_BEATS = 0xFFFF


def _nbytes(bits):
    return (bits + 7) // 8


def beat_bytes(config):
    """Bytes per beat of each stream for ``config``: dict ``cfg, weights, params, acts, out``."""
    return {"cfg": _nbytes(command_layout(config).size),
            "weights": _nbytes(weight_layout(config).size),
            "params": _nbytes(param_layout(config).size),
            "acts": _nbytes(act_in_layout(config).size),
            "out": _nbytes(act_out_layout(config).size)}


def id_values(config, divisor):
    """The fields of the ID frame of a bridge built for ``config`` and ``divisor``, as integers.

    Keys are the names of :data:`ID_FIELDS`. Enumerations are their index in
    :data:`psc.config.MULTIPLIERS` / :data:`psc.config.DEPTHWISE_MODES` /
    :data:`psc.config.FMAP_RAMS`,
    booleans 0 or 1, and an optional count that is ``None`` is 0 (none of
    them can be 0 otherwise).
    """
    p = config.pe
    return {"digest": config.digest(),
            "act_width": p.act_width, "weight_width": p.weight_width, "acc_width": p.acc_width,
            "mult_width": p.mult_width, "lanes": p.lanes, "rows": p.rows, "psc": int(p.psc),
            "max_reduction": p.max_reduction, "fmap_depth": config.fmap_depth,
            "weight_depth": config.weight_depth, "param_depth": config.param_depth,
            "divisor": divisor,
            "multiplier": MULTIPLIERS.index(p.multiplier),
            "depthwise": DEPTHWISE_MODES.index(p.depthwise),
            "tree_stages": p.tree_stages, "requantizers": p.requantizers or 0,
            "requant_mult_bits": p.requant_mult_bits or 0,
            "read_register": int(config.read_register), "psum_depth": config.psum_depth,
            "psum_width": config.psum_width, "fmap_ram": FMAP_RAMS.index(config.fmap_ram)}


def id_frame(config, divisor):
    """The ID frame a bridge built for ``config`` and ``divisor`` sends in answer to PING."""
    out = encode_id(PROTOCOL_VERSION, ID_FIELDS, id_values(config, divisor))
    assert len(out) == ID_BYTES
    return out


def encode_id(version, fields, values):
    """An ID frame: ``P``, ``PSC``, ``version``, then each of ``fields`` ((name, bytes)
    pairs) from ``values``, little-endian."""
    out = bytes([OP["PING"]]) + ID_MAGIC + bytes([version])
    for name, nbytes in fields:
        out += int(values[name]).to_bytes(nbytes, "little")
    return out


def check_frame_timeout(value):
    """``value`` if it is a valid ``frame_timeout`` (0, or 20 to 2**24 bit times), else
    ``ValueError``."""
    if not isinstance(value, int) or isinstance(value, bool) \
            or not (value == 0 or 20 <= value <= 1 << 24):
        raise ValueError(f"frame_timeout must be 0 or an integer in [20, {1 << 24}] bit "
                         f"times, not {value!r}")
    return value


@dataclass(frozen=True)
class BridgeConfig:
    """Build-time parameters of :class:`Bridge`.

    Parameters
    ----------
    core : psc.hw.core.CoreConfig
        The core behind the bridge.
    divisor : int
        UART clock cycles per bit (:class:`psc.hw.link.uart.UARTConfig`), ``>= 4``.
    frame_timeout : int
        Bit times (``divisor`` cycles each) without a byte, in the middle of
        a frame, after which the bridge abandons the frame and waits for an
        opcode again (flag ``RX_ERROR``), so a host that died mid-frame
        cannot leave it out of step: after that much silence a PING is
        always understood. 0 disables it. Default 50000 (50 ms at 1 Mbaud).
    """
    core: CoreConfig = field(default_factory=CoreConfig)
    divisor: int = 104
    frame_timeout: int = 50_000

    def __post_init__(self):
        if not isinstance(self.core, CoreConfig):
            raise TypeError(f"core must be a psc.hw.core.CoreConfig, not {self.core!r}")
        UARTConfig(self.divisor)   # validates divisor with its own message
        check_frame_timeout(self.frame_timeout)


class Bridge(wiring.Component):
    """The core behind a UART speaking the protocol of this module.

    Latency/throughput: bounded by the UART (``10 * divisor`` cycles per
    byte); see the module docstring for the protocol and its flow control.

    Parameters
    ----------
    config : BridgeConfig

    Attributes
    ----------
    rx : In(1)
        UART receive pin (idle high).
    tx : Out(1)
        UART transmit pin (idle high).
    busy, error : Out(1)
        The core's ``busy`` and ``error`` (for LEDs).
    """

    def __init__(self, config=None):
        if config is None:
            config = BridgeConfig()
        if not isinstance(config, BridgeConfig):
            raise TypeError(f"config must be a psc.hw.link.bridge.BridgeConfig, not {config!r}")
        self._config = config
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1),
                          "busy": Out(1), "error": Out(1)})

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cc = self._config.core
        div = self._config.divisor
        nb = beat_bytes(cc)
        m.submodules.core = core = PSCConvCore(cc)
        m.submodules.rx = rx = FrameReceiver(div, self._config.frame_timeout, RX_FIFO_DEPTH)
        # Output beats: a command makes at most MAX_OUTPUTS (OUTPUT_COUNT_WIDTH bits), so the
        # counts are that wide (n_out is taken modulo 2**OUTPUT_COUNT_WIDTH; the status frame
        # zero-extends the beats made to u32).
        m.submodules.tx = tx = ReplyTransmitter(div, nb["out"], id_frame(cc, div), STATUS_BYTES,
                                                OUTPUT_COUNT_WIDTH)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx),
                     self.busy.eq(core.busy), self.error.eq(core.error)]
        wiring.connect(m, core.act_out, tx.words)

        # --- flags -------------------------------------------------------------
        f_dropped, f_short, f_extra, f_rx, f_badop, f_done = (Signal(name=n) for n in (
            "f_dropped", "f_short", "f_extra", "f_rx", "f_badop", "f_done"))
        with m.If(core.done):
            m.d.sync += f_done.eq(1)
        with m.If(rx.error):
            m.d.sync += f_rx.eq(1)
        with m.If(tx.short):
            m.d.sync += f_short.eq(1)
        with m.If(tx.extra):
            m.d.sync += f_extra.eq(1)

        # --- parser: bytes are shifted in at the top of `sh`, so after a field of
        # n bytes it sits, little-endian, in the top n bytes (a static slice).
        maxb = max(nb["cfg"] + 4, nb["weights"], nb["params"], nb["acts"], 2)
        sh = Signal(8 * maxb)
        byte = rx.byte

        def top(nbytes):
            return sh[8 * (maxb - nbytes):]

        op = Signal(8)
        left = Signal(range(maxb + 1))      # bytes still to read in this field
        count = Signal(16)                   # beats still to forward in this frame
        sel = Signal(3)                      # the stream of the frame's beats, one-hot

        streams = {OP["WEIGHTS"]: (core.weights, nb["weights"]),
                   OP["PARAMS"]: (core.params, nb["params"]),
                   OP["ACTS"]: (core.act_in, nb["acts"])}
        for s, n in streams.values():
            m.d.comb += s.payload.as_value().eq(top(n))
        m.d.comb += core.cfg.payload.as_value().eq(top(nb["cfg"]))

        def read_byte(nxt):
            """In a state reading a field: shift a byte in; go to ``nxt`` after the last."""
            m.d.comb += [rx.take.eq(1), rx.reading.eq(1)]
            with m.If(rx.ready):
                m.d.sync += [sh.eq(Cat(sh[8:], byte)), left.eq(left - 1)]
                with m.If(left == 1):
                    m.next = nxt
            with m.Elif(rx.timed_out):
                m.d.sync += f_rx.eq(1)
                m.next = "OP"

        # Registered: the status may go out once the core has ended its command and every
        # expected beat has left (or is to be padded). Each term, once true in SYNC, stays
        # true until the next CFG, so a cycle late is only later; the core's state and the
        # transmitter's count then end at a flip-flop, not in the reply's handshake.
        idle = Signal()
        owed_none = Signal()
        m.d.sync += [idle.eq(~core.busy & ~core.act_out.valid), owed_none.eq(tx.owed_none)]
        # The transmitter's acceptance of a reply, a cycle late: the state moves on from a
        # flip-flop, not through the handshake (which starts from the core's output valid).
        # Asked again in that cycle, the transmitter, busy with the frame, does not accept.
        acked = Signal()
        m.d.sync += acked.eq(tx.reply_ack)
        # The requests to the transmitter, a cycle late from flip-flops set in the state that
        # makes them, so that the state's decode does not lead into the transmitter's word
        # and count registers. A request held a cycle too long does nothing: the
        # transmitter pads only while words are owed and is busy with a reply it accepted.
        pad = Signal()
        reply = Signal(2)
        m.d.sync += [pad.eq(0), reply.eq(0)]
        m.d.comb += [tx.pad.eq(pad), tx.reply.eq(reply)]
        is_op = Signal(data.StructLayout({"ping": 1, "status": 1, "cfg": 1, "stream": 1}))
        m.d.sync += is_op.eq(Cat(op == OP["PING"], op == OP["STATUS"], op == OP["CFG"],
                                 Cat(op == code for code in streams).any()))
        # The beats offered to the core (a command, or a beat of the frame's stream) are
        # valid from flip-flops set a cycle after the state that sends them is entered:
        # the state's decode would otherwise run into the core's handshakes and on to
        # every register a beat loads there.
        offer_cfg = Signal()
        offer_beat = Signal()
        m.d.comb += core.cfg.valid.eq(offer_cfg)
        for i, (s, _) in enumerate(streams.values()):
            m.d.comb += s.valid.eq(offer_beat & sel[i])
        with m.FSM():
            with m.State("OP"):
                m.d.comb += rx.take.eq(1)
                with m.If(rx.ready):
                    m.d.sync += op.eq(byte)
                    m.next = "DECODE"
            with m.State("DECODE"):
                # the opcode is decoded from its register into flags (`is_op`, written every
                # cycle), and the next state acts on the flags: the receive FIFO's block RAM
                # output, or the opcode's compares, in front of the state and the flags limit
                # a UP5K build
                m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.If(is_op.ping):
                    m.next = "PING"
                with m.Elif(is_op.status):
                    m.next = "SYNC"
                with m.Elif(is_op.cfg):
                    m.d.sync += left.eq(nb["cfg"] + 4)
                    m.next = "CFG_READ"
                with m.Elif(is_op.stream):
                    m.d.sync += left.eq(2)
                    m.next = "COUNT"
                with m.Else():
                    m.d.sync += f_badop.eq(1)
                    m.next = "OP"
            with m.State("PING"):
                with m.If(acked):
                    m.next = "OP"
                with m.Else():
                    m.d.sync += reply.eq(1)
            with m.State("SYNC"):
                # The status frame follows the last output beat: wait for the core
                # to end the command and for every expected beat to be sent.
                with m.If(idle):
                    with m.If(owed_none):
                        with m.If(acked):
                            m.d.sync += [f_rx.eq(0), f_badop.eq(0)]
                            m.next = "OP"
                        with m.Else():
                            m.d.sync += reply.eq(2)
                    with m.Else():
                        m.d.sync += pad.eq(1)
            with m.State("CFG_READ"):
                read_byte("CFG_SEND")
            with m.State("CFG_SEND"):
                m.d.sync += offer_cfg.eq(1)
                with m.If(offer_cfg & core.cfg.ready):
                    m.d.sync += offer_cfg.eq(0)
                    m.d.comb += [tx.arm.eq(1),
                                 tx.expect.eq(top(nb["cfg"] + 4)[:OUTPUT_COUNT_WIDTH])]
                    m.d.sync += [f_dropped.eq(0), f_short.eq(0), f_extra.eq(0), f_done.eq(0)]
                    m.next = "OP"
            with m.State("COUNT"):
                read_byte("COUNT_DONE")
            with m.State("COUNT_DONE"):
                m.d.sync += count.eq(top(2)[:16])
                with m.If(top(2)[:16] == 0):
                    m.next = "OP"
                with m.Else():
                    m.next = "BEAT_START"
            with m.State("BEAT_START"):
                with m.Switch(op):
                    for i, (code, (_, n)) in enumerate(streams.items()):
                        with m.Case(code):
                            m.d.sync += [left.eq(n), sel.eq(1 << i)]
                m.next = "BEAT_READ"
            with m.State("BEAT_READ"):
                read_byte("BEAT_SEND")
            with m.State("BEAT_SEND"):
                # The core's ready is deep logic: it only moves the state on, and the
                # count steps in the next state (a cycle per beat, against a byte's
                # 10 * divisor).
                m.d.sync += offer_beat.eq(1)
                accepted = Cat(sel[i] & s.ready for i, (s, _) in enumerate(streams.values()))
                with m.If(offer_beat & accepted.any()):
                    m.d.sync += offer_beat.eq(0)
                    m.next = "BEAT_TAKEN"
                with m.Elif(offer_beat & ~core.busy):
                    # An idle core takes no data: the beat belongs to a refused
                    # command; drop it rather than hang.
                    m.d.sync += [f_dropped.eq(1), offer_beat.eq(0)]
                    m.next = "BEAT_TAKEN"
            with m.State("BEAT_TAKEN"):
                m.d.sync += count.eq(count - 1)
                with m.If(count == 1):
                    m.next = "OP"
                with m.Else():
                    m.next = "BEAT_START"

        # The status frame: the flags as they were when STATUS was answered; the rest
        # holds still while it is sent (the core is idle and every output has left).
        tflags = Signal(8)
        with m.If(tx.reply_ack):
            m.d.sync += tflags.eq(Cat(core.busy, core.error, f_done, f_dropped, f_short,
                                      f_extra, f_rx, f_badop))
        m.d.comb += tx.status.eq(Cat(Const(OP["STATUS"], 8), tflags, tx.real,
                                     Const(0, 32 - len(tx.real)), core.cycles_total,
                                     core.cycles_compute, core.cycles_stall))
        return m
