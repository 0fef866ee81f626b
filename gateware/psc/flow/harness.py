"""Pin-frugal wrapper that lets a wide component be placed and routed on a real FPGA package."""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SynthHarness", "HARNESS_COST"]

#: What the harness adds around the design under test, stated for the reports.
HARNESS_COST = (
    "one flip-flop per input bit of the design (a serial shift register), one "
    "flip-flop per 16 output bits plus one (the XOR reduction's pipeline registers), "
    "and about one LUT4 per 3 output bits (the XOR trees); `psc synth` measures it "
    "by keeping the design under test a separate Yosys module and reports the "
    "harness's own cells apart")


class SynthHarness(wiring.Component):
    """Feed every input of ``dut`` from one serial pin, fold every output into one pin.

    The design under test keeps its own hierarchy (the Yosys flow marks it
    ``keep_hierarchy``), so nothing in it can be optimised against the
    harness: every input bit is a distinct, unknown register output, and
    every output bit reaches the ``sout`` pin through an XOR tree.

    * Inputs: a shift register as long as all of ``dut``'s ``In`` ports
      together (stream payloads, ``valid``, and the ``ready`` of output
      streams, so backpressure logic is exercised), shifted from ``sin``
      every cycle. Its flip-flops drive the design's inputs directly: a
      register-to-register path with no logic, never the critical one.
    * Outputs: every bit of ``dut``'s ``Out`` ports, XOR-reduced in groups of
      16 into registers (two LUT levels), then those registers XOR-reduced
      into ``sout`` (also a register). Deep enough for neither reduction to
      be the critical path at the clocks reported.

    Ports of the top module (besides ``clk``/``rst``): ``sin`` in, ``sout`` out.

    Parameters
    ----------
    dut : amaranth.lib.wiring.Component
        Any component; its ports are found through its signature, so
        :func:`psc.flow.synth.synth_top` can swap in a larger top unchanged.
    """

    GROUP = 16

    def __init__(self, dut):
        if not isinstance(dut, wiring.Component):
            raise TypeError(f"dut must be an amaranth.lib.wiring.Component, not {dut!r}")
        self._dut = dut
        super().__init__({"sin": In(1), "sout": Out(1)})

    @property
    def dut(self):
        return self._dut

    def _ports(self):
        ins, outs = [], []
        for path, member, value in self._dut.signature.flatten(self._dut):
            (ins if member.flow == In else outs).append(value.as_value() if hasattr(value, "as_value")
                                                        else value)
        return ins, outs

    @property
    def input_bits(self):
        return sum(len(v) for v in self._ports()[0])

    @property
    def output_bits(self):
        return sum(len(v) for v in self._ports()[1])

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self._dut
        ins, outs = self._ports()

        n_in = sum(len(v) for v in ins)
        chain = Signal(n_in, reset_less=True)
        m.d.sync += chain.eq(Cat(self.sin, chain[:-1]) if n_in > 1 else self.sin)
        offset = 0
        for value in ins:
            m.d.comb += value.eq(chain[offset:offset + len(value)])
            offset += len(value)

        bits = Cat(*outs)
        groups = [bits[i:i + self.GROUP] for i in range(0, len(bits), self.GROUP)]
        folded = Signal(len(groups), reset_less=True)
        m.d.sync += [folded[i].eq(group.xor()) for i, group in enumerate(groups)]
        m.d.sync += self.sout.eq(folded.xor())
        return m
