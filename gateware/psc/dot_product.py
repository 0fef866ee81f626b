"""``rows`` PEs sharing one activation vector and its sign mask, behind valid/ready streams."""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .pe import PSCMac, _check_config, pe_latency
from .sign_mask import SignMask

__all__ = ["DotProduct", "input_layout", "output_layout"]


def input_layout(config):
    """Payload layout of :attr:`DotProduct.i` for ``config``.

    Fields, packed LSB first in this order: ``x`` (``lanes`` signed
    activations), ``w`` (``rows`` x ``lanes`` weight words, row-major: row
    ``r`` lane ``l`` at word index ``r * lanes + l``), ``bias`` (``rows``
    signed accumulators), ``first``, ``last``.
    """
    c = _check_config(config)
    return data.StructLayout({
        "x": data.ArrayLayout(signed(c.act_width), c.lanes),
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

    One :class:`~psc.sign_mask.SignMask` feeds ``rows``
    :class:`~psc.pe.PSCMac` (the sign bits are computed once per lane and
    shared, as in the paper's section 3.4). For a reduction made of the input
    beats ``first`` .. ``last``, output row ``r`` is::

        bias[r] (of the first beat) + sum over beats b and lanes l of Wsel[r][l] * x[l]

    with ``Wsel = W+`` where ``x >= 0`` and ``W-`` where ``x < 0`` (``W`` as is
    when ``psc=False``), i.e. :func:`psc.golden.psc_conv2d` of a 1x1 problem.

    Protocol: :mod:`amaranth.lib.stream` valid/ready on both sides. Every
    reduction starts with a ``first`` beat; ``first`` and ``last`` may share a
    beat. One output beat per ``last`` input beat, in order; nothing is
    dropped or duplicated under backpressure.

    Flow control is one global enable, ``en = ~o.valid | o.ready``: the whole
    pipeline advances when the output register is empty or being read, and
    ``i.ready = en``. ``o.valid`` is a register (the PEs' ``acc_valid``) and
    never depends on ``o.ready`` combinationally; ``i.ready`` does (one gate).

    Latency: :attr:`latency` (that of :class:`~psc.pe.PSCMac`: 3 by default,
    one more with ``multiplier="ice40_dual8x8"`` or ``"ecp5_mult18"`` and one more per
    ``tree_stages``): a ``last`` beat accepted in cycle ``t`` is on ``o`` from
    cycle ``t + latency`` when ``o`` is not stalled. Throughput: one input
    beat per cycle while ``o.ready`` is high or ``o.valid`` low; a reduction
    of ``n`` beats takes ``n`` cycles, so back-to-back one-beat reductions
    produce one output per cycle.

    Parameters
    ----------
    config : psc.config.PSCConfig
        Widths, ``lanes`` (activations per beat), ``rows`` (outputs per
        beat) and ``psc``.

    Attributes
    ----------
    i : In(stream.Signature(input_layout(config)))
        Input beats; see :func:`input_layout` for the payload.
    o : Out(stream.Signature(output_layout(config)))
        One beat of ``rows`` signed ``acc_width``-bit results per reduction.
    """

    def __init__(self, config):
        self._config = c = _check_config(config)
        super().__init__({
            "i": In(stream.Signature(input_layout(c))),
            "o": Out(stream.Signature(output_layout(c))),
        })

    @property
    def config(self):
        return self._config

    @property
    def latency(self):
        """Cycles from accepting a ``last`` beat to ``o.valid`` (no output stall).

        That of :class:`~psc.pe.PSCMac`: 3, plus 1 with
        ``multiplier="ice40_dual8x8"`` or ``"ecp5_mult18"``, plus ``tree_stages``.
        """
        return pe_latency(self._config)

    #: The row's multiply-accumulate unit (:class:`~psc.naive.NaiveDotProduct` swaps it).
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

        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        mask = self._sign_mask(m)
        for row in range(c.rows):
            pe = self._mac(c)
            m.submodules[f"pe_{row}"] = pe
            m.d.comb += [
                pe.x.eq(p.x),
                pe.mask.eq(mask),
                pe.words.eq(p.w[row]),
                pe.bias.eq(p.bias[row]),
                pe.valid.eq(self.i.valid),
                pe.first.eq(p.first),
                pe.last.eq(p.last),
                pe.en.eq(en),
                self.o.payload[row].eq(pe.acc),
            ]
            if row == 0:
                # Every PE sees the same control, so their acc_valid are equal.
                m.d.comb += self.o.valid.eq(pe.acc_valid)
        return m
