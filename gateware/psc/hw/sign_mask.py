"""Sign masking: one bit per activation lane, shared by every PE that consumes the lane."""

from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from psc.config import _check_range

__all__ = ["SignMask"]


class SignMask(wiring.Component):
    """Sign bits of a vector of signed activations (the paper's ``sign_ext``).

    Activations are symmetric two's complement with no zero point,
    so the sign is the MSB and no comparator is needed. ``x == 0``
    gives 0, which selects ``W+`` (the product is 0 either way).

    Combinational: latency 0, one vector per cycle, no clock or reset.

    Parameters
    ----------
    lanes : int
        Number of activations, 1..64.
    act_width : int
        Bits of a signed activation, 2..32.

    Attributes
    ----------
    x : View of ArrayLayout(signed(act_width), lanes), in
        Activations, lane ``l`` in bits ``[l * act_width, (l + 1) * act_width)``.
    mask : Signal(lanes), out
        Bit ``l`` is 1 iff ``x[l] < 0``.
    """

    def __init__(self, lanes, act_width):
        _check_range("lanes", lanes, 1, 64)
        _check_range("act_width", act_width, 2, 32)
        self._lanes = lanes
        self._act_width = act_width
        super().__init__({
            "x": In(data.ArrayLayout(signed(act_width), lanes)),
            "mask": Out(lanes),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def act_width(self):
        return self._act_width

    @property
    def latency(self):
        """Cycles from ``x`` to ``mask``: 0 (combinational)."""
        return 0

    def elaborate(self, platform):
        m = Module()
        for lane in range(self._lanes):
            m.d.comb += self.mask[lane].eq(self.x[lane][-1])
        return m
