"""What the hand-instantiated DSP multipliers share: operand widths, ports and latency."""

from amaranth.hdl import signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from psc.config import _check_range

__all__ = ["HardMultiplier", "sim_models"]


class HardMultiplier(wiring.Component):
    """Base of :class:`~psc.hw.ecp5_mul.Ecp5Mult18` and :class:`~psc.hw.ice40_mul.Ice40DualMul`.

    ``PRODUCTS`` signed products ``p = a * b`` (``a``, ``b`` and ``p`` are
    plain signed signals when it is 1, ``ArrayLayout`` views otherwise) of
    operands up to ``MAX_WIDTH`` bits, with ``en`` the clock enable of every
    register and :attr:`latency` = ``LATENCY`` enabled cycles. Subclasses set
    the three class attributes and instantiate the DSP in ``elaborate``.

    Parameters
    ----------
    a_width : int
        Bits of the signed ``a`` operand(s) (activations), 2..``MAX_WIDTH``.
    b_width : int
        Bits of the signed ``b`` operand(s) (weights), 2..``MAX_WIDTH``.
    """

    #: Registers from the operands to ``p``.
    LATENCY = 3
    #: Widest operand the DSP takes.
    MAX_WIDTH = None
    #: Products per DSP.
    PRODUCTS = 1

    def __init__(self, a_width=8, b_width=8):
        _check_range("a_width", a_width, 2, self.MAX_WIDTH)
        _check_range("b_width", b_width, 2, self.MAX_WIDTH)
        self._a_width = a_width
        self._b_width = b_width

        def shape(width):
            s = signed(width)
            return s if self.PRODUCTS == 1 else data.ArrayLayout(s, self.PRODUCTS)
        super().__init__({
            "a": In(shape(a_width)),
            "b": In(shape(b_width)),
            "en": In(1),
            "p": Out(shape(a_width + b_width)),
        })

    @property
    def a_width(self):
        return self._a_width

    @property
    def b_width(self):
        return self._b_width

    @property
    def latency(self):
        """Enabled cycles from ``a``/``b`` to ``p``: ``LATENCY`` (3)."""
        return self.LATENCY


def sim_models(pe_config):
    """``{file name: Verilog text}`` of the simulation models of the cells that a build
    instantiates by hand: the DSP cells of ``pe_config``'s multiplier (none for
    ``"generic"``) and requantiser multiplier (none for ``"adds"``) and, given a
    :class:`~psc.config.CoreConfig` with ``fmap_ram="spram"``, the ``SB_SPRAM256KA`` of its
    input buffer."""
    if hasattr(pe_config, "fmap_ram"):
        models = sim_models(pe_config.pe)
        if pe_config.fmap_ram == "spram":
            from psc.hw.spram import sb_spram256ka_sim_model
            models["sb_spram256ka_sim.v"] = sb_spram256ka_sim_model()
        return models
    # (requant_multiplier="ice40_mac16" takes SB_MAC16 too, and needs this multiplier)
    if pe_config.multiplier == "ice40_dual8x8":
        from psc.hw.ice40_mul import sb_mac16_sim_model
        return {"sb_mac16_sim.v": sb_mac16_sim_model()}
    if pe_config.multiplier == "ecp5_mult18":
        from psc.hw.ecp5_mul import mult18x18d_sim_model
        return {"mult18x18d_sim.v": mult18x18d_sim_model()}
    return {}
