"""The naive PSC datapath of the paper's Figure 3(a): two convolutions, on ``x+`` and ``x-``, summed.

This exists only as the comparison point of ``psc compare``: it computes
exactly what :class:`~psc.hw.pe.PSCMac` / :class:`~psc.hw.dot_product.DotProduct`
compute, but the way PSC is written down rather than the way the paper builds
it, so it needs two multipliers per weight instead of one mux per weight.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data

from psc.hw.dot_product import DotProduct
from psc.hw.ice40_mul import Ice40DualMul
from psc.hw.pe import PSCMac, _check_config

__all__ = ["NaiveMac", "NaiveDotProduct"]


def _check_psc(config):
    c = _check_config(config)
    if not c.psc:
        raise ValueError("the naive datapath needs a PSC configuration (psc=True): it reads "
                         "parified {W-, W+} weight words")
    if c.multiplier == "ecp5_mult18":
        raise ValueError("the naive datapath has no hand-instantiated MULT18X18D (it would need "
                         "two per weight: 56 on a 4x7 array, the ECP5-25F has 28): use "
                         "multiplier='generic', not 'ecp5_mult18'")
    return c


class NaiveMac(PSCMac):
    """One output row of the naive PSC datapath: ``W+ * x+ + W- * x-`` per lane.

    ``x+ = max(x, 0)`` and ``x- = min(x, 0)``, so one of the two products of
    a lane is always 0 and the sum equals PSC's ``Wsel * x``
    (:func:`psc.model.golden.psc_conv2d`). Both products are nonetheless computed:
    ``2 * lanes`` multipliers per row against ``lanes`` for
    :class:`~psc.hw.pe.PSCMac` (with ``multiplier="ice40_dual8x8"``: one
    SB_MAC16 per lane, computing both of its products, against one per two
    lanes). ``mask`` is not used; ``x+``/``x-`` come from the sign of ``x``.

    Ports, protocol, latency (:attr:`latency`, that of
    :class:`~psc.hw.pe.PSCMac` for the same configuration) and throughput are
    those of :class:`~psc.hw.pe.PSCMac` with ``psc=True``, and so is the
    pipeline: ``x+``, ``x-``, ``W+``, ``W-`` registered at the multipliers'
    inputs (the ``x+``/``x-`` mux sits where PSC's weight mux does), the
    products registered, ``tree_stages`` registers in a ``2 * lanes`` input
    adder tree, then the accumulator; so the multipliers are timed the same way.

    Parameters
    ----------
    config : psc.config.PSCConfig
        As for :class:`~psc.hw.pe.PSCMac`; must have ``psc=True``.
    """

    def __init__(self, config):
        super().__init__(_check_psc(config))

    def elaborate(self, platform):
        m = Module()
        c = self._config
        ww, lanes = c.weight_width, c.lanes
        xlayout = data.ArrayLayout(signed(c.act_width), lanes)
        wlayout = data.ArrayLayout(signed(ww), lanes)
        players = data.ArrayLayout(signed(c.product_width), lanes)

        # x+, x- and the two weights of every lane, before the multipliers' input registers.
        xp, xn = Signal(xlayout), Signal(xlayout)
        wp, wn = Signal(wlayout), Signal(wlayout)
        for lane in range(lanes):
            x, word = self.x[lane], self.words[lane]
            # An AND with the (inverted) sign rather than a mux to 0: Yosys would
            # turn a mux to a constant in front of a register into a synchronous
            # reset, which the SB_MAC16 input register cannot absorb, and leave
            # the multiply untimed.
            neg = x[-1].replicate(c.act_width)
            m.d.comb += [
                xp[lane].eq(x & ~neg),
                xn[lane].eq(x & neg),
                wp[lane].eq(word[:ww]),
                wn[lane].eq(word[ww:]),
            ]

        if c.multiplier == "ice40_dual8x8":
            # One SB_MAC16 per lane, its two 8x8 halves computing x+ * W+ and x- * W-.
            pp, pn = Signal(players), Signal(players)
            for lane in range(lanes):
                mul = Ice40DualMul(c.act_width, c.weight_width)
                m.submodules[f"mul_{lane}"] = mul
                m.d.comb += [
                    mul.en.eq(self.en),
                    mul.a[0].eq(xp[lane]), mul.b[0].eq(wp[lane]),
                    mul.a[1].eq(xn[lane]), mul.b[1].eq(wn[lane]),
                    pp[lane].eq(mul.p[0]), pn[lane].eq(mul.p[1]),
                ]
            mul_stages = Ice40DualMul.LATENCY
        else:
            xp1, xn1 = Signal(xlayout, reset_less=True), Signal(xlayout, reset_less=True)
            wp1, wn1 = Signal(wlayout, reset_less=True), Signal(wlayout, reset_less=True)
            pp, pn = Signal(players, reset_less=True), Signal(players, reset_less=True)
            with m.If(self.en):
                m.d.sync += [xp1.eq(xp), xn1.eq(xn), wp1.eq(wp), wn1.eq(wn)]
                for lane in range(lanes):
                    m.d.sync += [pp[lane].eq(xp1[lane] * wp1[lane]),
                                 pn[lane].eq(xn1[lane] * wn1[lane])]
            mul_stages = 2

        ctl = self._accumulate(m, [pp[lane] for lane in range(lanes)] +
                               [pn[lane] for lane in range(lanes)], mul_stages)
        if c.lane_accumulators:
            # a lane's two products (one of them 0) into its own accumulator
            self._lane_accumulate(m, [pp[lane] + pn[lane] for lane in range(lanes)], ctl,
                                  mul_stages)
        return m


class NaiveDotProduct(DotProduct):
    """:class:`~psc.hw.dot_product.DotProduct` built from :class:`NaiveMac` rows.

    Same ports, protocol, latency and results; ``2 * lanes * rows``
    multipliers. No sign mask is shared (each row derives ``x+``/``x-``
    itself; Yosys merges the identical logic).

    Parameters
    ----------
    config : psc.config.PSCConfig
        Must have ``psc=True``.
    """

    def __init__(self, config):
        super().__init__(_check_psc(config))

    _mac = NaiveMac

    def _sign_mask(self, m):
        return 0          # each NaiveMac splits x into x+ and x- itself
