"""``rows`` PEs sharing one activation vector and its sign mask, behind valid/ready streams."""

from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from psc.hw.pe import PSCMac, _check_config, pe_latency
from psc.hw.sign_mask import SignMask

__all__ = ["DotProduct", "input_layout", "output_layout"]


def input_layout(config):
    """Payload layout of :attr:`DotProduct.i` for ``config``.

    Fields, packed LSB first in this order: ``x`` (``lanes`` signed
    activations; with ``depthwise="pixels"`` or ``"channels"`` one such lane
    word per row, row 0 lowest), ``w`` (``rows`` x ``lanes`` weight words, row-major: row
    ``r`` lane ``l`` at word index ``r * lanes + l``), ``bias`` (``rows``
    signed accumulators), ``first``, ``last``.
    """
    c = _check_config(config)
    x = data.ArrayLayout(signed(c.act_width), c.lanes)
    return data.StructLayout({
        "x": data.ArrayLayout(x, c.rows) if c.row_words else x,
        "w": data.ArrayLayout(data.ArrayLayout(unsigned(c.word_width), c.lanes), c.rows),
        "bias": data.ArrayLayout(signed(c.acc_width), c.rows),
        "first": 1,
        "last": 1,
    })


def output_layout(config):
    """Payload layout of :attr:`DotProduct.o`: ``rows`` signed accumulators, row 0 lowest."""
    c = _check_config(config)
    return data.ArrayLayout(signed(c.acc_width), c.rows)


class DotProduct(wiring.Component):
    """``rows`` dot products of one activation vector, with accumulation over beats.

    One :class:`~psc.hw.sign_mask.SignMask` feeds ``rows``
    :class:`~psc.hw.pe.PSCMac` (the sign bits are computed once per lane and
    shared, as in the paper's section 3.4). For a reduction made of the input
    beats ``first`` .. ``last``, output row ``r`` is::

        bias[r] (of the first beat) + sum over beats b and lanes l of Wsel[r][l] * x[l]

    with ``Wsel = W+`` where ``x >= 0`` and ``W-`` where ``x < 0`` (``W`` as is
    when ``psc=False``), i.e. :func:`psc.model.golden.psc_conv2d` of a 1x1 problem.

    Protocol: :mod:`amaranth.lib.stream` valid/ready on both sides. Every
    reduction starts with a ``first`` beat; ``first`` and ``last`` may share a
    beat. One output beat per ``last`` input beat, in order; nothing is
    dropped or duplicated under backpressure.

    Flow control is one global enable, ``en = ~o.valid | o.ready``: the whole
    pipeline advances when the output register is empty or being read, and
    ``i.ready = en``. ``o.valid`` is a register (the PEs' ``acc_valid``) and
    never depends on ``o.ready`` combinationally; ``i.ready`` does (one gate).

    Latency: :attr:`latency` (that of :class:`~psc.hw.pe.PSCMac`: 3 by default,
    one more with ``multiplier="ice40_dual8x8"`` or ``"ecp5_mult18"`` and one more per
    ``tree_stages``): a ``last`` beat accepted in cycle ``t`` is on ``o`` from
    cycle ``t + latency`` when ``o`` is not stalled. Throughput: one input
    beat per cycle while ``o.ready`` is high or ``o.valid`` low; a reduction
    of ``n`` beats takes ``n`` cycles, so back-to-back one-beat reductions
    produce one output per cycle.

    Depthwise mode (builds with ``depthwise="pixels"``, ``"channels"`` or ``"shifted"``,
    while ``dw`` is high): every row gets its own lane word ``x[r]`` (in
    other layers the core gives every row the same word; ``"shifted"`` has one
    word for every row in all layers), each multiplier
    accumulates alone (:attr:`~psc.hw.pe.PSCMac.lane_acc`, no bias) and a
    reduction gives ``lanes`` output beats of ``rows`` values each: the
    ``rows * lanes`` lane accumulators read row by row, lane by lane, cut
    into beats of ``rows`` (sign-extended). With ``a[r*lanes + l] = sum over
    beats b of Wsel[r][l] * x[r][l]``, beat ``i`` is ``a[i*rows:(i+1)*rows]``
    (when ``lanes == rows``, beat ``r`` is row ``r``'s accumulators). With
    ``depthwise="shifted"`` (rows are pixels of one word, ``q = lanes / rows``
    beats per row) the beats go lane group by lane group, row by row: beat
    ``p*rows + r`` is ``a[r*lanes + p*rows : r*lanes + (p+1)*rows]``, so each
    output group of ``rows`` channels leaves as ``rows`` consecutive beats,
    pixel by pixel (the order of ``"pixels"``).

    A finished reduction is copied into a drain register bank that sends
    one beat per cycle, so the next reductions go on while it drains; the
    pipeline stops only when a reduction finishes before the previous one
    has drained (reductions shorter than ``lanes`` beats). Latency to the
    first beat :attr:`dw_latency`. ``dw`` may change only while the
    pipeline and the drain are empty (between layers).

    Parameters
    ----------
    config : psc.config.PSCConfig
        Widths, ``lanes`` (activations per beat), ``rows`` (outputs per
        beat), ``psc`` and ``depthwise``.

    Attributes
    ----------
    i : In(stream.Signature(input_layout(config)))
        Input beats; see :func:`input_layout` for the payload.
    o : Out(stream.Signature(output_layout(config)))
        One beat of ``rows`` signed ``acc_width``-bit results per reduction
        (``lanes`` beats in depthwise mode).
    dw : In(1)
        Only with ``depthwise="pixels"`` or ``"channels"``: depthwise mode.
    """

    def __init__(self, config):
        self._config = c = _check_config(config)
        super().__init__({
            "i": In(stream.Signature(input_layout(c))),
            "o": Out(stream.Signature(output_layout(c))),
            **({"dw": In(1)} if c.lane_accumulators else {}),
        })

    @property
    def config(self):
        return self._config

    @property
    def latency(self):
        """Cycles from accepting a ``last`` beat to ``o.valid`` (no output stall).

        That of :class:`~psc.hw.pe.PSCMac`: 3, plus 1 with
        ``multiplier="ice40_dual8x8"`` or ``"ecp5_mult18"``, plus ``tree_stages``.
        """
        return pe_latency(self._config)

    @property
    def dw_latency(self):
        """Depthwise mode: cycles from accepting a ``last`` beat to the first of its ``lanes`` beats.

        One more than the lane accumulators' (:attr:`~psc.hw.pe.PSCMac.lane_latency`):
        the copy into the drain bank.
        """
        return pe_latency(self._config) - self._config.tree_stages + 1

    def _drain_order(self):
        """``(row, lane)`` of each drain register, in the order the beats leave."""
        c = self._config
        if c.depthwise == "shifted":
            return [(r, p * c.rows + i) for p in range(c.lanes // c.rows)
                    for r in range(c.rows) for i in range(c.rows)]
        return [(r, lane) for r in range(c.rows) for lane in range(c.lanes)]

    #: The row's multiply-accumulate unit (:class:`~psc.hw.naive.NaiveDotProduct` swaps it).
    _mac = PSCMac

    def _sign_mask(self, m):
        """The sign bits of ``i.payload.x``, computed once and shared by every row."""
        if not self._config.psc:
            return 0
        m.submodules.sign_mask = sign_mask = SignMask(self._config.lanes, self._config.act_width)
        m.d.comb += sign_mask.x.eq(self.i.payload.x)
        return sign_mask.mask

    def elaborate(self, platform):
        m = Module()
        c = self._config
        p = self.i.payload
        per_row = c.row_words

        en = Signal()
        m.d.comb += self.i.ready.eq(en)

        mask = None if per_row else self._sign_mask(m)
        pes = []
        for row in range(c.rows):
            pe = self._mac(c)
            m.submodules[f"pe_{row}"] = pe
            pes.append(pe)
            if per_row:
                # One sign mask per row: the rows see different words in depthwise layers.
                m.d.comb += pe.x.eq(p.x[row])
                if c.psc:
                    m.submodules[f"sign_mask_{row}"] = sm = SignMask(c.lanes, c.act_width)
                    m.d.comb += [sm.x.eq(p.x[row]), pe.mask.eq(sm.mask)]
            else:
                m.d.comb += [pe.x.eq(p.x), pe.mask.eq(mask)]
            m.d.comb += [
                pe.words.eq(p.w[row]),
                pe.bias.eq(p.bias[row]),
                pe.valid.eq(self.i.valid),
                pe.first.eq(p.first),
                pe.last.eq(p.last),
                pe.en.eq(en),
            ]

        # Every PE sees the same control, so their acc_valid (lane_valid) are equal.
        if not c.lane_accumulators:
            m.d.comb += [
                en.eq(~self.o.valid | self.o.ready),
                self.o.valid.eq(pes[0].acc_valid),
                self.o.payload.eq(Cat(pe.acc for pe in pes)),
            ]
            return m

        # Depthwise-capable build. Other layers: o is the PEs' acc as above.
        # Depthwise layers: a finished reduction (lane_valid) is copied into a
        # bank of rows*lanes registers, row by row, that shifts one beat of
        # rows values out per accepted o; the PEs wait (en low) only when a
        # finished reduction finds the bank still draining.
        n = c.rows * c.lanes
        bank = [Signal(signed(c.dw_acc_width), reset_less=True, name=f"drain_{i}")
                for i in range(n)]
        left = Signal(range(c.lanes + 1))           # beats still in the bank
        # `left == 0` and `left == 1` as flip-flops: the array's enable, which fans out to
        # every PE and back through the fetch, is then one gate from registers and o.ready
        empty = Signal(init=1)
        one = Signal()
        free = Signal()
        m.d.comb += free.eq(empty | (one & self.o.ready))
        with m.If(self.dw):
            m.d.comb += [
                en.eq(~pes[0].lane_valid | free),
                self.o.valid.eq(~empty),
                *(self.o.payload[r].eq(bank[r]) for r in range(c.rows)),
            ]
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += [left.eq(left - 1), empty.eq(one), one.eq(left == 2)]
                m.d.sync += [bank[i].eq(bank[i + c.rows]) for i in range(n - c.rows)]
            with m.If(pes[0].lane_valid & free):
                m.d.sync += [left.eq(c.lanes), empty.eq(0), one.eq(c.lanes == 1)]
                m.d.sync += [bank[i].eq(pes[r].lane_acc[lane])
                             for i, (r, lane) in enumerate(self._drain_order())]
        with m.Else():
            m.d.comb += [
                en.eq(~self.o.valid | self.o.ready),
                self.o.valid.eq(pes[0].acc_valid),
                self.o.payload.eq(Cat(pe.acc for pe in pes)),
            ]
        return m
