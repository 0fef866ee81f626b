"""The core's fetch: address queue, buffer reads and the MAC array's input beats."""

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig
from psc.hw.dot_product import input_layout

from .layouts import (bank_count, fetch_layout, input_read_layout, read_signature,
                      weight_address_width, weight_layout)

__all__ = ["Fetch"]


class Fetch(wiring.Component):
    """Turns address beats into the MAC array's input beats.

    Pipeline: :attr:`i` -> a two-entry FIFO (1 cycle) -> synchronous reads
    of the input and weight buffers (1 cycle; the bank data, the padding
    bits, ``first`` and ``last`` registered together) -> with
    ``read_register``, one more register (1 cycle) -> padding mask -> :attr:`o`.
    A beat therefore leaves on :attr:`o` two cycles after it entered
    :attr:`i` (three with ``read_register``, one more with ``skid``:
    :attr:`latency`) when :attr:`o` does not stall; one beat per cycle.

    On a ``depthwise="channels"`` build the input buffer gives every bank's
    word (:class:`~psc.hw.core.input_buffer.InputBuffer`) and the fetch
    picks the shared word of a non-depthwise beat (bank ``sel``) after the
    read register (``dwc`` low), where the multiplexer is not behind a block
    RAM's output.

    The FIFO is why the sequencer's issue condition is a few registers:
    :attr:`o`'s ready (which comes back combinationally from the core's
    output through the requantiser and the MAC array) ends at the FIFO's
    read side instead of fanning out into every sequencer register.
    The bias field of :attr:`o` is zero (the bias is added after the array).

    With ``skid``, :attr:`o` comes from a register, with a skid register behind it for
    the beat that arrives while :attr:`o` stalls (one cycle more of latency, still one
    beat per cycle): :attr:`o`'s ready, which comes from the MAC array's enable, ends at
    the skid's flag instead of running on through the fetch's stages into its FIFO and
    the buffers' read enables, and the beat leaves the fetch from flip-flops, so that
    the bank choice and padding mask are not in front of a long route to the array's
    multipliers: on a large device these sit far from the buffers.

    Parameters
    ----------
    config : CoreConfig
    skid : bool

    Attributes
    ----------
    i : In(stream.Signature(fetch_layout(config)))
    o : Out(stream.Signature(input_layout(config.pe)))
    inputs : Out(read_signature(input_read_layout(config), ...))
        Read port of the input buffer.
    weights : Out(read_signature(weight_address_width(config), weight_layout(config)))
        Read port of the weight buffer.
    beat : Out(1)
        A beat leaves on :attr:`o` this cycle.
    dwc : In(1)
        Only on a ``depthwise="channels"`` build: the command is depthwise
        (every row takes its own bank's word).
    """

    def __init__(self, config, *, skid=False):
        if not isinstance(config, CoreConfig):
            raise TypeError(f"config must be a psc.hw.core.CoreConfig, not {config!r}")
        self._config = config
        self._skid = bool(skid)
        beat = input_layout(config.pe)
        super().__init__({
            "i": In(stream.Signature(fetch_layout(config))),
            "o": Out(stream.Signature(beat)),
            "inputs": Out(read_signature(input_read_layout(config), beat["x"].shape)),
            "weights": Out(read_signature(weight_address_width(config), weight_layout(config))),
            "beat": Out(1),
            **({"dwc": In(1)} if config.pe.depthwise == "channels" else {}),
        })

    @property
    def latency(self):
        """Cycles from a beat taken on :attr:`i` to the same beat on :attr:`o` when :attr:`o`
        does not stall: 2, one more with ``read_register``, one more with ``skid``."""
        return 2 + self._config.read_register + self._skid

    def elaborate(self, platform):
        m = Module()
        cc = self._config
        pe = cc.pe
        pix = bank_count(cc) > 1
        layout = fetch_layout(cc)
        m.submodules.addr_fifo = fifo = SyncFIFO(width=layout.size, depth=2)
        a1 = data.View(layout, fifo.r_data)

        v1 = Signal()
        first1 = Signal()
        last1 = Signal()
        adv1 = Signal()
        padr1 = Signal(layout["pad"].shape)  # padding per row (pixels builds) or shared
        chn = cc.pe.depthwise == "channels"
        # channels builds: the bank each row takes (its own in a depthwise beat, else the
        # shared word's), registered per row so that no wide fan-out decides it late
        pick = data.ArrayLayout(layout["sel"].shape, pe.rows) if chn else 1
        pick1 = Signal(pick, reset_less=True)

        # the stages' own output (`o` itself, or what enters the skid register)
        ready = Signal()
        valid = Signal()
        out = Signal.like(self.o.payload)
        # What the reads present, padding not yet masked: with read_register
        # the mask comes after the register, so the block RAM's clock-to-out
        # ends at a flip-flop.
        beat = Signal(input_layout(pe))
        if cc.read_register:
            v2 = Signal()
            beat2 = Signal(input_layout(pe), reset_less=True)
            pad2 = Signal.like(padr1, reset_less=True)
            adv2 = ~v2 | ready
            m.d.comb += [adv1.eq(~v1 | adv2), valid.eq(v2)]
            with m.If(adv2):
                m.d.sync += [v2.eq(v1), beat2.eq(beat), pad2.eq(padr1)]
            beat_o, pad_o = beat2, pad2
            pick2 = Signal(pick, reset_less=True)
            with m.If(adv2):
                m.d.sync += pick2.eq(pick1)
            pick_o = pick2
        else:
            m.d.comb += [adv1.eq(~v1 | ready), valid.eq(v1)]
            beat_o, pad_o, pick_o = beat, padr1, pick1

        m.d.comb += [
            fifo.w_en.eq(self.i.valid),
            self.i.ready.eq(fifo.w_rdy),
            fifo.w_data.eq(self.i.payload),
            fifo.r_en.eq(adv1),
            self.inputs.addr.addr.eq(a1.addr),
            self.inputs.en.eq(adv1),
            self.weights.addr.eq(a1.waddr),
            self.weights.en.eq(adv1),
            self.beat.eq(self.o.valid & self.o.ready),
        ]
        if self._skid:
            skid = Signal.like(out, reset_less=True)
            skid_v = Signal()
            o_reg = Signal.like(out, reset_less=True)
            o_v = Signal()
            m.d.comb += [ready.eq(~skid_v), self.o.valid.eq(o_v), self.o.payload.eq(o_reg)]
            with m.If(self.o.ready | ~o_v):
                # the output register moves on: the waiting beat first
                m.d.sync += [o_reg.eq(Mux(skid_v, skid, out)), o_v.eq(skid_v | valid),
                             skid_v.eq(0)]
            with m.Elif(valid & ~skid_v):
                m.d.sync += skid_v.eq(1)
            # an empty skid register follows the stages' output, so that its enable is its
            # own flag, not the array's ready (a fan-out of a whole beat)
            with m.If(~skid_v):
                m.d.sync += skid.eq(out)
        else:
            m.d.comb += [ready.eq(self.o.ready), self.o.valid.eq(valid),
                         self.o.payload.eq(out)]
        if pix:
            m.d.comb += self.inputs.addr.sel.eq(a1.sel)
        if cc.pe.depthwise == "pixels":
            m.d.comb += self.inputs.addr.rot.eq(a1.rot)
        with m.If(adv1):
            m.d.sync += [
                v1.eq(fifo.r_rdy),
                padr1.eq(a1.pad),
                first1.eq(a1.first),
                last1.eq(a1.last),
            ]
            if chn:
                m.d.sync += [pick1[r].eq(Mux(self.dwc, r, a1.sel)) for r in range(pe.rows)]
        # An AND, not a mux to 0: Yosys would turn the mux into a synchronous
        # reset of the PE's input register, which an SB_MAC16 input register
        # cannot absorb, leaving the multiply outside nextpnr's timing.
        word_bits = pe.lanes * pe.act_width
        if chn:
            # one padding bit (the rows' words are one pixel's); a non-depthwise beat's
            # shared word from bank sel
            banks = Array(beat_o.x[b].as_value() for b in range(pe.rows))
            for r in range(pe.rows):
                m.d.comb += out.x[r].eq(banks[pick_o[r]] & ~pad_o[0].replicate(word_bits))
        elif pix:
            # each row its own padding bit (its own pixel)
            for r in range(pe.rows):
                m.d.comb += out.x[r].eq(beat_o.x[r].as_value() & ~pad_o[r].replicate(word_bits))
        else:
            m.d.comb += out.x.eq(beat_o.x.as_value() & ~pad_o[0].replicate(word_bits))
        m.d.comb += [
            beat.x.eq(self.inputs.data),
            beat.w.eq(self.weights.data),
            beat.bias.eq(0),
            beat.first.eq(first1),
            beat.last.eq(last1),
            out.w.eq(beat_o.w),
            out.bias.eq(beat_o.bias),
            out.first.eq(beat_o.first),
            out.last.eq(beat_o.last),
        ]
        return m
