"""The core's output: bias, partial sums, requantiser and the output order of a depthwise
pixels layer."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig
from psc.hw.dot_product import output_layout
from psc.hw.requantize import Requantizer, requant_input_layout
from psc.model.checks import check_int

from .layouts import (FIELD_WIDTH, OUTPUT_COUNT_WIDTH, Part, act_out_layout,
                      config_layout,
                      param_address_width, param_layout, read_signature, sizes_layout)

__all__ = ["OutputStage", "lent_requantizer_ports"]


def lent_requantizer_ports(config, rows):
    """The ports through which a core lends the first ``rows`` rows of its requantiser
    (:class:`OutputStage` ``lent_rows``)."""
    return {
        "rq_share": In(1),
        "rq_i": In(stream.Signature(requant_input_layout(config.requant_config, rows))),
        "rq_relu": In(1),
        "rq_o": Out(stream.Signature(data.ArrayLayout(signed(config.pe.act_width), rows))),
    }


class OutputStage(wiring.Component):
    """From the MAC array's sums to output beats: bias, partial sums, requantiser, group order.

    Each sum beat (:attr:`i`) belongs to output group ``j``, which a counter
    follows (``0 .. last_group``, one step per beat, or per ``rows`` beats
    for a depthwise layer on a ``depthwise="pixels"`` or ``"shifted"`` build, whose
    beats are one pixel each; on a ``depthwise="channels"`` build a depthwise
    reduction's ``lanes`` beats are ``lanes`` groups, one step each). The beat and the parameter read of its group
    (:attr:`params`, one cycle) are registered together; with
    ``read_register`` they are registered once more before the bias add (a
    block RAM's clock-to-out plus a wide add in one cycle would limit an
    ECP5 build). The sum plus the bias goes through the
    :class:`~psc.hw.requantize.Requantizer` with the group's multiplier and
    shift to :attr:`o`. Latency from :attr:`i` to :attr:`o`: ``1 +
    rq.latency`` (one more with ``read_register``); one beat per cycle;
    :attr:`i` is ready whenever its register is empty or moves on. :attr:`o`'s
    ``ready`` goes no further than a skid register after the requantiser (a
    beat :attr:`o` refuses waits there, and the stage stalls from the next
    cycle), so a consumer's ready is not in the stage's stall chain.

    Split reductions (``psum_depth > 0``; the command's ``part``,
    :class:`~psc.hw.core.layouts.Part`). A layer whose reduction does not
    fit one command runs as several commands over chunks of its input
    channels, all over the same output beats in the same order. Beat ``n``
    of such a command reads entry ``n`` of the partial-sum buffer (a
    ``psum_depth x rows`` memory of ``psum_width``-bit sums) alongside its
    parameters, in the same cycle and with the same enable, so the read adds
    no stage. ``FIRST`` stores ``sum + bias`` into entry ``n``, ``MIDDLE``
    stores ``sum + entry``, ``LAST`` sends ``sum + entry`` to the
    requantiser. A stored beat leaves the stage at once (one write per
    cycle, never stalled by :attr:`o`). Each entry is read before it is
    written in a command and written by the command before the next one
    reads it, so no bypass is needed. Against the alternative of feeding
    the stored sums back into the MAC array's accumulators, this keeps the
    array and its timing untouched and costs one memory, a mux in front of
    the bias adder (already there) and the adder and requantiser widened
    from ``acc_width`` to ``psum_width``; the cost in time is each chunk's
    setup and weight load, which the scheduler amortises over up to
    ``psum_depth`` output beats per command.

    A depthwise pixels beat whose pixel (``oxo + ro``, block column plus
    row) lies past ``out_w`` is dropped here (the sequencer runs whole
    blocks of ``rows`` pixels), so the output order is ``(oy, ox // rows,
    j, ox % rows)`` with no gaps.

    ``all_sent`` is high when the command's ``n_out`` beats have left
    :attr:`o` or been stored (counted while ``run``). ``start`` (one cycle) rewinds the
    counters.

    With ``lent_rows``, another unit may use the requantiser while the core is idle (a
    network engine's add and pooling unit, which would otherwise need requantiser rows
    of its own): while ``rq_share`` is high, :attr:`rq_i` (the first ``lent_rows`` rows;
    the others keep what they hold) and :attr:`rq_relu` feed the requantiser in place of
    the sums, and the beats' results leave on :attr:`rq_o`, not on :attr:`o`.
    ``rq_share`` must change only while the requantiser is empty (no command running,
    every lent beat's result taken).

    Parameters
    ----------
    config : CoreConfig
    lent_rows : int
        Rows of the requantiser lent through the ``rq_*`` ports (0: no such ports).

    Attributes
    ----------
    i : In(stream.Signature(output_layout(config.pe)))
    o : Out(stream.Signature(act_out_layout(config)))
    params : Out(read_signature(param_address_width(config), param_layout(config)))
        Read port of the parameter buffer.
    start, run : In(1)
    cmd : In(config_layout())
        The running command (``out_w``, ``relu``).
    dwp : In(1)
        A depthwise layer whose beats come in blocks of ``rows`` pixels (a
        ``depthwise="pixels"`` or ``"shifted"`` build).
    last_group : In(range(config.param_depth))
    n_out : In(sizes_layout(config)["n_out"].shape)
    all_sent : Out(1)
    rq_share, rq_relu : In(1)
    rq_i : In(stream.Signature(requant_input_layout(config.requant_config, lent_rows)))
    rq_o : Out(stream.Signature(data.ArrayLayout(signed(act_width), lent_rows)))
        With ``lent_rows`` only: the requantiser lent to another unit.
    """

    def __init__(self, config, lent_rows=0):
        if not isinstance(config, CoreConfig):
            raise TypeError(f"config must be a psc.hw.core.CoreConfig, not {config!r}")
        self._config = config
        self._lent = check_int("lent_rows", lent_rows, 0, config.pe.rows)
        super().__init__({
            "i": In(stream.Signature(output_layout(config.pe))),
            "o": Out(stream.Signature(act_out_layout(config))),
            "params": Out(read_signature(param_address_width(config), param_layout(config))),
            "start": In(1),
            "run": In(1),
            "cmd": In(config_layout(config)),
            "dwp": In(1),
            "last_group": In(range(config.param_depth)),
            "n_out": In(sizes_layout(config)["n_out"].shape),
            "all_sent": Out(1),
            **(lent_requantizer_ports(config, self._lent) if self._lent else {}),
        })

    def elaborate(self, platform):
        m = Module()
        cc = self._config
        pe = cc.pe
        R = pe.rows
        pix = pe.depthwise in ("pixels", "shifted")
        cmd, dwp = self.cmd, self.dwp
        m.submodules.rq = rq = Requantizer(cc.requant_config)
        sw = cc.sum_width
        part = cmd.part
        # FIRST/MIDDLE store; MIDDLE/LAST add the stored sums instead of the bias. Decoded
        # into flip-flops (the command is held for cycles before its first output): the
        # command register fans out over the whole core, and `store` leads into the
        # requantiser's handshake and its multipliers' enables.
        store = Signal()
        add_psum = Signal()
        m.d.sync += [store.eq((part == Part.FIRST) | (part == Part.MIDDLE)),
                     add_psum.eq((part == Part.MIDDLE) | (part == Part.LAST))]

        jo = Signal(range(cc.param_depth))   # < gout <= param_depth
        vj = Signal()
        accj = Signal(output_layout(pe))
        en_j = Signal()
        keep_o = Signal()                    # dw pixels: the beat's pixel is inside out_w
        ro = Signal(range(R))                # dw pixels: row (pixel) of the beat
        oxo = Signal(FIELD_WIDTH)            # dw pixels: first pixel of the beat's block
        # a flag of its own on a build whose depthwise beats come in pixel blocks: with the
        # block's row it enables the block counter, behind the stage's enable
        last_jo = Signal(name="last_jo") if pix else jo == self.last_group
        m.d.comb += keep_o.eq(~dwp | (oxo + ro < cmd.out_w) if pix else 1)
        sums = data.ArrayLayout(signed(sw), R)
        if cc.psum_depth:
            m.submodules.psum = psum = Memory(shape=sums, depth=cc.psum_depth, init=[])
            ps_rd = psum.read_port()
            ps_wr = psum.write_port()
            ridx = Signal(range(cc.psum_depth))   # beat of stage j (read)
            widx = Signal(range(cc.psum_depth))   # beat of the stored sum (write)
            m.d.comb += [ps_rd.addr.eq(ridx), ps_rd.en.eq(en_j)]
            psum_data = ps_rd.data
        else:
            psum_data = None
        if cc.read_register:
            vb = Signal()
            accb = Signal.like(accj, reset_less=True)
            pb = Signal(param_layout(cc), reset_less=True)
            en_b = ~vb | rq.i.ready | store
            m.d.comb += en_j.eq(~vj | en_b)
            with m.If(en_b):
                m.d.sync += [vb.eq(vj), accb.eq(accj), pb.eq(self.params.data)]
            if psum_data is not None:
                psb = Signal(sums, reset_less=True)
                with m.If(en_b):
                    m.d.sync += psb.eq(psum_data)
                psum_data = psb
        else:
            vb, accb, pb = vj, accj, self.params.data
            m.d.comb += en_j.eq(~vj | rq.i.ready | store)
        # The host keeps bias + the whole reduction inside sum_width, so no sum wraps.
        total = Signal(sums)
        for r in range(R):
            base = pb.bias[r] if psum_data is None else Mux(add_psum, psum_data[r], pb.bias[r])
            m.d.comb += total[r].eq(accb[r] + base)
        if not self._lent:
            m.d.comb += rq.i.payload.acc.eq(total)
        stored = Signal()
        if cc.psum_depth:
            m.d.comb += [stored.eq(vb & store), ps_wr.addr.eq(widx), ps_wr.data.eq(total),
                         ps_wr.en.eq(stored)]
            with m.If(stored):
                m.d.sync += widx.eq(widx + 1)
            with m.If(en_j & self.i.valid):
                m.d.sync += ridx.eq(ridx + 1)
        m.d.comb += [
            self.i.ready.eq(en_j),
            self.params.addr.eq(jo),
            self.params.en.eq(en_j),
        ]
        if not self._lent:
            m.d.comb += [rq.i.valid.eq(vb & ~store), rq.i.payload.mult.eq(pb.mult),
                         rq.i.payload.shift.eq(pb.shift), rq.relu.eq(cmd.relu)]
        else:
            # the lent rows take the other unit's values while `rq_share`; the others keep
            # the core's (their results are not taken then)
            share, lent = self.rq_share, self.rq_i.payload
            for f, v in (("acc", total), ("mult", pb.mult), ("shift", pb.shift)):
                for r in range(R):
                    x = Mux(share, getattr(lent, f)[r], v[r]) if r < self._lent else v[r]
                    m.d.comb += getattr(rq.i.payload, f)[r].eq(x)
            m.d.comb += [rq.i.valid.eq(Mux(share, self.rq_i.valid, vb & ~store)),
                         self.rq_i.ready.eq(share & rq.i.ready),
                         rq.relu.eq(Mux(share, self.rq_relu, cmd.relu)),
                         self.rq_o.valid.eq(share & rq.o.valid)]
            m.d.comb += self.rq_o.payload.eq(rq.o.payload.as_value()[:self._lent * pe.act_width])
        # A skid register between the requantiser and `o`: the requantiser moves on whenever
        # the register is empty, and a beat `o` does not take waits in it, so `o.ready` ends
        # here instead of running back through the whole stage into the MAC sums' FIFO.
        # No latency: a beat goes straight out while `o` is ready.
        skid = Signal.like(rq.o.payload, reset_less=True)
        skid_v = Signal()
        # (a lent beat's result is not the core's)
        ours = rq.o.valid & ~share if self._lent else rq.o.valid
        m.d.comb += [self.o.valid.eq(skid_v | ours),
                     self.o.payload.eq(Mux(skid_v, skid, rq.o.payload)),
                     rq.o.ready.eq(Mux(share, self.rq_o.ready, ~skid_v) if self._lent
                                   else ~skid_v)]
        with m.If(skid_v):
            with m.If(self.o.ready):
                m.d.sync += skid_v.eq(0)
        with m.Elif(ours & ~self.o.ready):
            m.d.sync += [skid_v.eq(1), skid.eq(rq.o.payload)]
        with m.If(en_j):
            m.d.sync += [vj.eq(self.i.valid & keep_o), accj.eq(self.i.payload)]
            with m.If(self.i.valid & (~dwp | (ro == R - 1))):
                m.d.sync += jo.eq(Mux(last_jo, 0, jo + 1))
                if pix:
                    m.d.sync += last_jo.eq(Mux(last_jo, self.last_group == 0,
                                               jo + 1 == self.last_group))
            if pix:
                with m.If(self.i.valid & dwp):
                    m.d.sync += ro.eq(ro + 1)
                    with m.If((ro == R - 1) & last_jo):
                        m.d.sync += oxo.eq(Mux(oxo + R >= cmd.out_w, 0, oxo + R))

        out_cnt = Signal(OUTPUT_COUNT_WIDTH)
        with m.If(self.run & ((self.o.valid & self.o.ready) | stored)):
            m.d.sync += out_cnt.eq(out_cnt + 1)
        m.d.comb += self.all_sent.eq(out_cnt == self.n_out)
        with m.If(self.start):
            m.d.sync += [ro.eq(0), oxo.eq(0), out_cnt.eq(0), jo.eq(0)]
            if pix:
                m.d.sync += last_jo.eq(self.last_group == 0)
            if cc.psum_depth:
                m.d.sync += [ridx.eq(0), widx.eq(0)]
        return m
