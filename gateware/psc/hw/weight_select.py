"""Weight selection unit (WSU): one 2:1 mux per weight, steered by the activation's sign."""

from amaranth.hdl import Module, Mux, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from psc.config import _check_range

__all__ = ["WeightSelect"]


class WeightSelect(wiring.Component):
    """Pick ``W+`` or ``W-`` from each parified weight word by the sign mask.

    A parified word holds ``{W-, W+}`` with ``W+`` in the low ``weight_width``
    bits (:func:`psc.model.packing.parify`). Lane ``l`` outputs ``W+`` when
    ``mask[l]`` is 0 (activation ``>= 0``) and ``W-`` when it is 1. The cost is
    one LUT per weight bit; the multiplier count is unchanged.

    Combinational: latency 0, one vector per cycle, no clock or reset. The
    consumer (:class:`psc.hw.pe.PSCMac`) registers ``w`` before its multiplier
    (so the PSC datapath meets the plain one's clock).

    Parameters
    ----------
    lanes : int
        Number of weights, 1..64.
    weight_width : int
        Bits of one signed weight, 2..32; a word is twice as wide.

    Attributes
    ----------
    words : View of ArrayLayout(unsigned(2 * weight_width), lanes), in
        Parified weight words.
    mask : Signal(lanes), in
        Sign mask from :class:`psc.hw.sign_mask.SignMask`; bit ``l`` set means
        the activation of lane ``l`` is negative.
    w : View of ArrayLayout(signed(weight_width), lanes), out
        Selected weights.
    """

    def __init__(self, lanes, weight_width):
        _check_range("lanes", lanes, 1, 64)
        _check_range("weight_width", weight_width, 2, 32)
        self._lanes = lanes
        self._weight_width = weight_width
        super().__init__({
            "words": In(data.ArrayLayout(unsigned(2 * weight_width), lanes)),
            "mask": In(lanes),
            "w": Out(data.ArrayLayout(signed(weight_width), lanes)),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def weight_width(self):
        return self._weight_width

    @property
    def latency(self):
        """Cycles from ``words``/``mask`` to ``w``: 0 (combinational)."""
        return 0

    def elaborate(self, platform):
        m = Module()
        ww = self._weight_width
        for lane in range(self._lanes):
            word = self.words[lane]
            m.d.comb += self.w[lane].eq(Mux(self.mask[lane], word[ww:], word[:ww]))
        return m
