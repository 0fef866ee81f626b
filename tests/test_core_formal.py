"""Formal: every top-level stream of PSCConvCore keeps the amaranth.lib.stream contract.

Harness: the four input streams (``cfg``, ``weights``, ``params``, ``act_in``)
and ``act_out.ready`` are free inputs, constrained only by the contract on the
sources (a beat offered and not taken stays, unchanged); ``rst`` is free too.
Asserted: once ``act_out`` offers a beat that is not taken, the next cycle
offers the same beat (unless reset intervened). Proved by k-induction with
Yosys's SAT solver (tb.formal.prove) on a tiny build (1 lane, 1 row, 2-bit
data, two-word buffers): the control logic is the same at every size. The
vacuity twin asserts that ``act_out.valid`` never rises and must fail, so the
proof is not vacuous. A structural check shows ``act_out.valid`` has no
combinational path from ``act_out.ready``.
"""

import re

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Module, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from psc.config import PSCConfig
from psc.hw.core import CoreConfig, PSCConvCore
from tb.formal import FormalError, _past_domain, _workdir, _yosys, check_no_comb_path

TINY = CoreConfig(pe=PSCConfig(act_width=2, weight_width=2, acc_width=8, mult_width=2,
                               lanes=1, rows=1, max_reduction=4),
                  fmap_depth=2, weight_depth=2, param_depth=2)
INPUTS = ("cfg", "weights", "params", "act_in")


class CoreStreamContract(wiring.Component):
    def __init__(self, vacuity=False):
        self.dut = PSCConvCore(TINY)
        self.vacuity = vacuity
        members = {}
        for name in INPUTS:
            members[f"{name}_payload"] = In(
                self.dut.signature.members[name].signature.members["payload"].shape)
            members[f"{name}_valid"] = In(1)
        members["out_ready"] = In(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        _past_domain(m)
        started, past_rst = Signal(), Signal()
        m.d.fv += [started.eq(1), past_rst.eq(ResetSignal("sync"))]
        for name in INPUTS:
            port = getattr(dut, name)
            m.d.comb += [port.payload.eq(getattr(self, f"{name}_payload")),
                         port.valid.eq(getattr(self, f"{name}_valid"))]
            held = Signal(name=f"{name}_held")
            prev = Signal.like(port.payload, name=f"{name}_prev")
            m.d.fv += [held.eq(port.valid & ~port.ready), prev.eq(port.payload)]
            with m.If(started & ~past_rst & held):
                m.d.comb += Assume(port.valid & (port.payload.as_value() == prev.as_value()))
        out = dut.act_out
        m.d.comb += out.ready.eq(self.out_ready)
        held = Signal()
        prev = Signal.like(out.payload)
        m.d.fv += [held.eq(out.valid & ~out.ready), prev.eq(out.payload)]
        if self.vacuity:
            m.d.comb += Assert(~out.valid, "act_out.valid rose (expected: this check fails)")
        else:
            with m.If(started & ~past_rst & held):
                m.d.comb += [Assert(out.valid, "act_out.valid fell before act_out.ready"),
                             Assert(out.payload.as_value() == prev.as_value(),
                                    "act_out.payload changed before act_out.ready")]
        return m


def _prove(name, design, mode, expect):
    """tb.formal.prove's flow plus ``memory_map`` (the core's buffers), which Yosys's SAT
    model needs; the buffers start at zero, any later content is reachable."""
    wd = _workdir(name)
    (wd / "design.il").write_text(rtlil.convert(design, name="top"))
    (wd / "cex.vcd").unlink(missing_ok=True)
    script = ("read_rtlil design.il; hierarchy -check -top top; proc; flatten; memory_map; "
              "opt_clean; chformal -lower; async2sync; dffunmap; opt -fast; "
              f"sat {mode} -prove-asserts -set-assumes -set-init-zero -dump_vcd cex.vcd -verify")
    rc, log, seconds = _yosys(wd, script, 600)
    status = ("PASS" if "SUCCESS!" in log and rc == 0 else
              "FAIL" if re.search(r"model found.*FAIL!", log, re.S) else "ERROR")
    if status != expect:
        raise FormalError(f"{name}: expected {expect}, got {status} after {seconds:.0f} s "
                          f"(log {wd / 'yosys.log'})\n{log[-1500:]}")


def test_core_streams_keep_the_contract():
    _prove("core_stream_contract", CoreStreamContract(), "-tempinduct -maxsteps 8", "PASS")


def test_core_stream_contract_is_not_vacuous():
    # A 1x1 layer's first output reaches act_out about 40 cycles after its command
    # (setup multiplies the command fields bit-serially).
    _prove("core_stream_contract_vacuity", CoreStreamContract(vacuity=True), "-seq 44", "FAIL")


def test_core_out_valid_not_combinational_from_ready():
    check_no_comb_path("core_out_valid_comb", PSCConvCore(TINY), "act_out__ready",
                       "act_out__valid")
