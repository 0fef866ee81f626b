"""The naive PSC datapath of the paper's Figure 3(a): two convolutions, on ``x+`` and ``x-``, summed.

This exists only as the comparison point of ``psc compare``: it computes
exactly what :class:`~psc.pe.PSCMac` / :class:`~psc.dot_product.DotProduct`
compute, but the way PSC is written down rather than the way the paper builds
it, so it needs two multipliers per weight instead of one mux per weight.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring

from .dot_product import DotProduct
from .pe import PSCMac, _check_config, tree_sum

__all__ = ["NaiveMac", "NaiveDotProduct"]


def _check_psc(config):
    c = _check_config(config)
    if not c.psc:
        raise ValueError("the naive datapath needs a PSC configuration (psc=True): it reads "
                         "parified {W-, W+} weight words")
    return c


class NaiveMac(PSCMac):
    """One output row of the naive PSC datapath: ``W+ * x+ + W- * x-`` per lane.

    ``x+ = max(x, 0)`` and ``x- = min(x, 0)``, so one of the two products of
    a lane is always 0 and the sum equals PSC's ``Wsel * x``
    (:func:`psc.golden.psc_conv2d`). Both products are nonetheless computed:
    ``2 * lanes`` multipliers per row against ``lanes`` for
    :class:`~psc.pe.PSCMac`. ``mask`` is not used; ``x+``/``x-`` come from
    the sign of ``x`` itself.

    Ports, protocol, latency (:attr:`latency` = 3) and throughput are those
    of :class:`~psc.pe.PSCMac` with ``psc=True``; the pipeline is the same
    (stage 1: ``x+``, ``x-``, ``W+``, ``W-`` registered; stage 2: the
    ``2 * lanes`` products registered; stage 3: a ``2 * lanes`` input adder
    tree into the accumulator), so the multipliers are timed the same way.

    Parameters
    ----------
    config : psc.config.PSCConfig
        As for :class:`~psc.pe.PSCMac`; must have ``psc=True``.
    """

    def __init__(self, config):
        super().__init__(_check_psc(config))

    def elaborate(self, platform):
        m = Module()
        c = self._config
        ww, lanes = c.weight_width, c.lanes
        xlayout = data.ArrayLayout(signed(c.act_width), lanes)
        wlayout = data.ArrayLayout(signed(ww), lanes)

        xp1 = Signal(xlayout, reset_less=True)
        xn1 = Signal(xlayout, reset_less=True)
        wp1 = Signal(wlayout, reset_less=True)
        wn1 = Signal(wlayout, reset_less=True)
        b1 = Signal(signed(c.acc_width), reset_less=True)
        v1, f1, l1 = Signal(), Signal(), Signal()
        pp2 = Signal(data.ArrayLayout(signed(c.product_width), lanes), reset_less=True)
        pn2 = Signal(data.ArrayLayout(signed(c.product_width), lanes), reset_less=True)
        b2 = Signal(signed(c.acc_width), reset_less=True)
        v2, f2, l2 = Signal(), Signal(), Signal()
        acc = Signal(signed(c.acc_width), reset_less=True)
        m.d.comb += self.acc.eq(acc)

        tree = Signal(signed(c.acc_width))
        start = Signal(signed(c.acc_width))
        m.d.comb += [
            tree.eq(tree_sum([pp2[lane] for lane in range(lanes)] +
                             [pn2[lane] for lane in range(lanes)])),
            start.eq(Mux(f2, b2, acc)),
        ]

        with m.If(self.en):
            m.d.sync += [
                v1.eq(self.valid), f1.eq(self.first), l1.eq(self.last),
                v2.eq(v1), f2.eq(f1), l2.eq(l1),
                self.acc_valid.eq(v2 & l2),
            ]
            for lane in range(lanes):
                x, word = self.x[lane], self.words[lane]
                neg = x[-1]
                m.d.sync += [
                    xp1[lane].eq(Mux(neg, 0, x)),
                    xn1[lane].eq(Mux(neg, x, 0)),
                    wp1[lane].eq(word[:ww]),
                    wn1[lane].eq(word[ww:]),
                    pp2[lane].eq(xp1[lane] * wp1[lane]),
                    pn2[lane].eq(xn1[lane] * wn1[lane]),
                ]
            with m.If(self.valid & self.first):
                m.d.sync += b1.eq(self.bias)
            with m.If(v1 & f1):
                m.d.sync += b2.eq(b1)
            with m.If(v2):
                m.d.sync += acc.eq(start + tree)
        return m


class NaiveDotProduct(DotProduct):
    """:class:`~psc.dot_product.DotProduct` built from :class:`NaiveMac` rows.

    Same ports, protocol, latency and results; ``2 * lanes * rows``
    multipliers. No sign mask is shared (each row derives ``x+``/``x-``
    itself; Yosys merges the identical registers).

    Parameters
    ----------
    config : psc.config.PSCConfig
        Must have ``psc=True``.
    """

    def __init__(self, config):
        super().__init__(_check_psc(config))

    def elaborate(self, platform):
        m = Module()
        c = self._config
        p = self.i.payload

        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        for row in range(c.rows):
            pe = NaiveMac(c)
            m.submodules[f"pe_{row}"] = pe
            m.d.comb += [
                pe.x.eq(p.x),
                pe.mask.eq(0),
                pe.words.eq(p.w[row]),
                pe.bias.eq(p.bias[row]),
                pe.valid.eq(self.i.valid),
                pe.first.eq(p.first),
                pe.last.eq(p.last),
                pe.en.eq(en),
                self.o.payload[row].eq(pe.acc),
            ]
            if row == 0:
                m.d.comb += self.o.valid.eq(pe.acc_valid)
        return m

