"""Network mode's residual add and global average pooling, on tensors in the activation memory.

The operations are :func:`psc.model.network.add` and
:func:`psc.model.network.global_avg_pool`, bit for bit: the sums go through a
one-channel :class:`~psc.hw.requantize.Requantizer` of the build's own kind
(digit-serial where the build's is), one activation per cycle.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from psc.config import PSCConfig
from psc.hw.requantize import SHIFT_WIDTH, Requantizer

__all__ = ["op_layout", "OpUnit", "OP_MODES", "COUNT_WIDTH"]

#: ``mode`` of an :class:`OpUnit` descriptor.
OP_MODES = {"add": 0, "gap": 1}
#: Bits of a descriptor's word and pixel counts.
COUNT_WIDTH = 20
_ACC_WIDTH = 32


def op_layout(config, addr_width):
    """The op unit's descriptor: ``mode`` (:data:`OP_MODES`); the regions ``a``, ``b``
    (add only) and ``dst``; ``n``, the words of each operand (add) or the pixels of the
    input (gap); ``groups``, words per pixel; ``last_mask``, the lanes of a pixel's last
    word that hold channels (the others, padding, are not written); ``mult_a``,
    ``mult_b`` and ``shift`` (gap: ``mult_a`` and ``shift``); ``relu`` (add)."""
    pe = config.pe
    return data.StructLayout({
        "mode": 1, "a": addr_width, "b": addr_width, "dst": addr_width,
        "n": COUNT_WIDTH, "groups": COUNT_WIDTH, "last_mask": pe.lanes,
        "mult_a": pe.mult_width, "mult_b": pe.mult_width, "shift": SHIFT_WIDTH, "relu": 1,
    })


class OpUnit(wiring.Component):
    """Residual add or global average pooling of tensors in :class:`ActivationMemory`.

    ``add``: word ``k`` of ``dst`` from words ``k`` of ``a`` and ``b``, lane by lane
    ``requantize(a * mult_a + b * mult_b, 1, shift, relu)``. ``gap``: word ``g`` of
    ``dst`` from the sums over the ``n`` pixels of lane group ``g``,
    ``requantize(sum, mult_a, shift)``. Only lanes holding channels are written.

    Parameters
    ----------
    config : psc.config.CoreConfig
    addr_width : int
        The activation memory's address width.

    Members
    -------
    start : In(stream.Signature(op_layout))
        An operation; taken when the unit is idle.
    read_addr, read_en : Out
    read_data : In
        The memory's read port (latency 1).
    write_addr, write_data, write_mask, write_en : Out
        The memory's write port (whole words, lane 0).
    busy : Out(1)

    Throughput: one activation per cycle into the requantiser (``lanes`` cycles per
    word); an add reads two words per output word, a pooling one word per cycle into
    its ``lanes`` running sums.
    """

    FIFO_DEPTH = 4

    def __init__(self, config, addr_width):
        self.config, self.addr_width = config, addr_width
        pe = config.pe
        self._rq = PSCConfig(lanes=1, rows=1, act_width=pe.act_width, weight_width=pe.weight_width,
                             acc_width=_ACC_WIDTH, mult_width=pe.mult_width,
                             requant_mult_bits=pe.requant_mult_bits)
        super().__init__({
            "start": In(stream.Signature(op_layout(config, addr_width))),
            "read_addr": Out(addr_width), "read_en": Out(1),
            "read_data": In(pe.lanes * pe.act_width),
            "write_addr": Out(addr_width), "write_data": Out(pe.lanes * pe.act_width),
            "write_mask": Out(pe.lanes), "write_en": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        pe = self.config.pe
        lanes, aw = pe.lanes, pe.act_width
        width = lanes * aw
        d = Signal(op_layout(self.config, self.addr_width))
        gap = d.mode == OP_MODES["gap"]

        # --- reads: (a, b) word pairs for add, single words (and a group's end) for gap --
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=2 * width + 1, depth=self.FIFO_DEPTH)
        issuing = Signal()
        k = Signal(COUNT_WIDTH)                 # add: word; gap: pixel
        g = Signal(COUNT_WIDTH)                 # gap: group
        ptr = Signal(self.addr_width)           # gap: the word of pixel k, group g
        second = Signal()                       # add: the b read of the pair is next
        got_a = Signal(width)
        rd_second, rd_end = Signal(), Signal()
        inflight = Signal()
        issue = Signal()
        # a pair needs its place before its first read; one read in flight at most
        m.d.comb += issue.eq(issuing & (second | (fifo.level + inflight < self.FIFO_DEPTH - 1)))
        m.d.sync += inflight.eq(issue & (gap | second))
        m.d.comb += [self.read_en.eq(issue),
                     self.read_addr.eq(Mux(gap, ptr, Mux(second, d.b + k, d.a + k)))]
        with m.If(issue):
            m.d.sync += [rd_second.eq(second), rd_end.eq(k + 1 == d.n)]
            with m.If(gap):
                with m.If(k + 1 < d.n):
                    m.d.sync += [k.eq(k + 1), ptr.eq(ptr + d.groups)]
                with m.Else():
                    m.d.sync += [k.eq(0), g.eq(g + 1), ptr.eq(d.a + g + 1)]
                    with m.If(g + 1 == d.groups):
                        m.d.sync += issuing.eq(0)
            with m.Elif(~second):
                m.d.sync += second.eq(1)
            with m.Else():
                m.d.sync += [second.eq(0), k.eq(k + 1)]
                with m.If(k + 1 == d.n):
                    m.d.sync += issuing.eq(0)
        a_back = Signal()                       # the a word of a pair arrives
        m.d.sync += a_back.eq(issue & ~gap & ~second)
        with m.If(a_back):
            m.d.sync += got_a.eq(self.read_data)
        m.d.comb += [fifo.w_en.eq(inflight),
                     fifo.w_data.eq(Mux(gap, Cat(self.read_data, self.read_data, rd_end),
                                        Cat(got_a, self.read_data, 0)))]

        # --- values: one activation per cycle into the requantiser ------------------------
        m.submodules.rq = rq = Requantizer(self._rq)
        lane = Signal(range(lanes))
        entry_a, entry_b, entry_end = fifo.r_data[:width], fifo.r_data[width:2 * width], \
            fifo.r_data[-1]
        sums = [Signal(signed(_ACC_WIDTH), name=f"sum{i}") for i in range(lanes)]
        draining = Signal()                     # gap: the group's sums go to the requantiser

        def value(word, i):
            return word.word_select(i, aw).as_signed()

        a_l = Signal(signed(aw))
        b_l = Signal(signed(aw))
        m.d.comb += [a_l.eq(entry_a.word_select(lane, aw).as_signed()),
                     b_l.eq(entry_b.word_select(lane, aw).as_signed())]
        sum_l = Signal(signed(_ACC_WIDTH))
        with m.Switch(lane):
            for i in range(lanes):
                with m.Case(i):
                    m.d.comb += sum_l.eq(sums[i])
        m.d.comb += [rq.relu.eq(d.relu & ~gap),
                     rq.i.payload.shift[0].eq(d.shift)]
        with m.If(gap):
            m.d.comb += [rq.i.payload.acc[0].eq(sum_l), rq.i.payload.mult[0].eq(d.mult_a),
                         rq.i.valid.eq(draining)]
            with m.If(draining & rq.i.ready):
                m.d.sync += lane.eq(Mux(lane == lanes - 1, 0, lane + 1))
                with m.If(lane == lanes - 1):
                    m.d.sync += draining.eq(0)
                    m.d.sync += [s.eq(0) for s in sums]
            with m.Elif(~draining & fifo.r_rdy):
                m.d.comb += fifo.r_en.eq(1)
                m.d.sync += [s.eq(s + value(entry_a, i)) for i, s in enumerate(sums)]
                with m.If(entry_end):
                    m.d.sync += draining.eq(1)
        with m.Else():
            m.d.comb += [rq.i.payload.acc[0].eq(a_l * d.mult_a + b_l * d.mult_b),
                         rq.i.payload.mult[0].eq(1), rq.i.valid.eq(fifo.r_rdy)]
            with m.If(fifo.r_rdy & rq.i.ready):
                m.d.sync += lane.eq(Mux(lane == lanes - 1, 0, lane + 1))
                with m.If(lane == lanes - 1):
                    m.d.comb += fifo.r_en.eq(1)

        # --- words: lanes activations collected, then written ------------------------------
        out_lane = Signal(range(lanes))
        out_word = Signal(width)
        out_k = Signal(COUNT_WIDTH)             # the word written next
        out_g = Signal(COUNT_WIDTH)             # its group (add: k mod groups)
        total = Mux(gap, d.groups, d.n)
        writing = Signal()
        y = rq.o.payload.as_value()[:aw]
        full = Signal(width)
        m.d.comb += [rq.o.ready.eq(1), full.eq(Cat(out_word[aw:], y))]
        m.d.comb += [self.write_addr.eq(d.dst + out_k),
                     self.write_data.eq(full),
                     self.write_mask.eq(Mux(out_g + 1 == d.groups, d.last_mask,
                                            (1 << lanes) - 1)),
                     self.write_en.eq(rq.o.valid & (out_lane == lanes - 1) & writing)]
        with m.If(rq.o.valid):
            m.d.sync += out_word.eq(full)
            m.d.sync += out_lane.eq(Mux(out_lane == lanes - 1, 0, out_lane + 1))
            with m.If(out_lane == lanes - 1):
                m.d.sync += [out_k.eq(out_k + 1),
                             out_g.eq(Mux(out_g + 1 == d.groups, 0, out_g + 1))]
                with m.If(out_k + 1 == total):
                    m.d.sync += writing.eq(0)

        m.d.comb += [self.start.ready.eq(~self.busy),
                     self.busy.eq(issuing | writing)]
        with m.If(self.start.valid & self.start.ready):
            p = self.start.payload
            m.d.sync += [d.eq(p), issuing.eq(1), writing.eq(1), k.eq(0), g.eq(0), ptr.eq(p.a),
                         second.eq(0), lane.eq(0), draining.eq(0), out_lane.eq(0),
                         out_k.eq(0), out_g.eq(0)]
            m.d.sync += [s.eq(0) for s in sums]
        return m
