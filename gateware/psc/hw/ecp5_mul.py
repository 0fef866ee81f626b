"""One signed product per ECP5 MULT18X18D, with the DSP's own input, pipeline and output registers."""

from pathlib import Path

from amaranth.hdl import ClockSignal, Instance, Module, Signal, signed

from psc.hw.hard_mul import HardMultiplier

__all__ = ["Ecp5Mult18", "MULT18X18D_PARAMS", "mult18x18d_sim_model"]


#: Parameters of the MULT18X18D that :class:`Ecp5Mult18` instantiates. Names
#: and values are those of Lattice's "ECP5 and ECP5-5G sysDSP Usage Guide"
#: (TN1267) and of Yosys's black box (``share/ecp5/cells_bb.v``); the ones
#: not listed keep their defaults. Yosys's own mapping of a ``$mul``
#: (``share/lattice/dsp_map_18x18.v``) leaves every ``REG_*_CLK`` at
#: ``"NONE"``: a combinational multiplier between two fabric registers.
MULT18X18D_PARAMS = {
    # Input registers A (activation) and B (selected weight), on CLK0/CE0:
    # the weight-select mux in front of B ends at this register.
    "REG_INPUTA_CLK": "CLK0", "REG_INPUTA_CE": "CE0", "REG_INPUTA_RST": "RST0",
    "REG_INPUTB_CLK": "CLK0", "REG_INPUTB_CE": "CE0", "REG_INPUTB_RST": "RST0",
    # C feeds only the shift/ALU paths, unused (tied 0).
    "REG_INPUTC_CLK": "NONE",
    # Pipeline register right behind the multiplier array, then the output
    # register that drives P: the DSP's three-stage "input, multiplier,
    # output" configuration, so no path inside the DSP spans more than one stage.
    "REG_PIPELINE_CLK": "CLK0", "REG_PIPELINE_CE": "CE0", "REG_PIPELINE_RST": "RST0",
    "REG_OUTPUT_CLK": "CLK0", "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0",
    # Data needs no reset (RST0 is tied low); the registers are not on the
    # global set/reset either.
    "GSR": "DISABLED", "RESETMODE": "SYNC",
    # Parallel A/B operands (SOURCEA = SOURCEB = 0), multiplier not bypassed.
    "SOURCEB_MODE": "B_SHIFT", "MULT_BYPASS": "DISABLED", "CAS_MATCH_REG": "FALSE",
    "HIGHSPEED_CLK": "NONE",
}


class Ecp5Mult18(HardMultiplier):
    """Signed product ``p = a * b`` in one hand-instantiated, fully registered MULT18X18D.

    Why: Yosys's ``synth_ecp5`` maps a ``$mul`` to a MULT18X18D with every
    register bypassed, so the path is fabric register -> multiplier ->
    fabric register, which limits an ECP5 datapath to about 88 MHz
    (LFE5U-25F). Here the operands go straight into the DSP's A/B input
    registers (``REG_INPUTA_CLK = REG_INPUTB_CLK = "CLK0"``), the product
    into its pipeline register, then its output register
    (:data:`MULT18X18D_PARAMS`). nextpnr-ecp5 then times the cell as
    ``MULT18X18D_REGS_ALL``: setup at A/B, clock-to-out at P, the multiply
    itself inside the cell between two registers (nextpnr does not model
    the pipeline register; the Lattice three-stage configuration is what
    keeps that internal path short in the silicon).

    Both operands are signed (``SIGNEDA = SIGNEDB = 1``) and sign-extended
    to the DSP's 18 bits. (Only the sign extension matters for ``p``: the
    low ``a_width + b_width`` bits of P do not depend on ``SIGNEDA``/``SIGNEDB``;
    the flags make the whole 36-bit P right.) ``en`` drives ``CE0``, the clock enable of the
    input, pipeline and output registers. The registers have no reset
    (``RST0`` tied low, ``GSR = "DISABLED"``).

    Latency: :attr:`latency` = 3 enabled cycles (input, pipeline, output
    register): operands presented with ``en`` high in cycle ``t`` appear on
    ``p`` from cycle ``t + 3``, counting enabled cycles only; ``en`` low
    holds every register. Throughput: one product per enabled cycle.

    Simulation: the Amaranth simulator cannot run an ``Instance`` and Yosys
    ships only a black box of MULT18X18D; simulate the exported Verilog with
    the project's behavioural stand-in (:func:`mult18x18d_sim_model`) on
    Icarus or Verilator.

    Parameters
    ----------
    a_width : int
        Bits of the signed ``a`` operand (activation), 2..18.
    b_width : int
        Bits of the signed ``b`` operand (weight), 2..18.

    Attributes
    ----------
    a : Signal(signed(a_width)), in
        Goes to A[17:0], sign-extended.
    b : Signal(signed(b_width)), in
        Goes to B[17:0], sign-extended.
    en : Signal(1), in
        Clock enable of every register.
    p : Signal(signed(a_width + b_width)), out
        Product, from the output register (the low bits of P[35:0]).
    """

    MAX_WIDTH = 18

    def elaborate(self, platform):
        m = Module()
        # The DSP sign-extends from bit 17 (SIGNEDA/SIGNEDB): extend here.
        a18 = Signal(signed(18))
        b18 = Signal(signed(18))
        p36 = Signal(signed(36))
        m.d.comb += [a18.eq(self.a), b18.eq(self.b)]
        # The cell's ports are single bits (A0..A17, ...), as in Yosys's black box.
        ports = {}
        for i in range(18):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
            ports[f"i_C{i}"] = 0
        for i in range(36):
            ports[f"o_P{i}"] = p36[i]
        params = {f"p_{name}": value for name, value in MULT18X18D_PARAMS.items()}
        m.submodules.mult = Instance(
            "MULT18X18D",
            **params,
            i_CLK0=ClockSignal(), i_CE0=self.en, i_RST0=0,
            i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
            **ports,
        )
        # |a * b| <= 2**(a_width + b_width - 2): the low bits hold the whole product.
        m.d.comb += self.p.eq(p36[:self._a_width + self._b_width])
        return m


#: The behavioural stand-in for simulation (Yosys has only a black box of MULT18X18D),
#: shipped inside the package.
SIM_MODEL_PATH = Path(__file__).resolve().parent / "sim_models" / "mult18x18d_sim.v"


def mult18x18d_sim_model():
    """Verilog text of the project's behavioural MULT18X18D stand-in (``psc/hw/sim_models/mult18x18d_sim.v``).

    Yosys ships only a black box of MULT18X18D (``share/ecp5/cells_bb.v``),
    so the benches use this model, written from Lattice's documentation of
    the cell (TN1267): input, pipeline and output registers on ``CLK0`` with
    a selectable clock enable and synchronous reset, signed or unsigned
    operands. It supports the subset :class:`Ecp5Mult18` uses and stops the
    simulation on anything else.
    """
    return SIM_MODEL_PATH.read_text()
