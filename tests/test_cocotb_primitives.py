"""Run the cocotb benches of the PSC primitives on Icarus and Verilator.

- tb.test_selftest: the bench library against a stream register (and a broken one);
- tb.test_pe: PSCMac from rtl/pe.v (the default preset's datapath);
- tb.test_dot_product: DotProduct from rtl/dot_product.v (the default preset's
  datapath, the MAC array of the default core), rtl/dot_product_baseline.v
  (psc=False) and a 2 x 2 datapath.

Each simulator model is built once per session (tb.runner caches builds).
``PSC_WAVES=1`` dumps waveforms (see tb/README.md).
"""

import importlib

import pytest

from psc.config import PSCConfig
from psc.presets import PRESETS
from tb.psc_model import config_env
from conftest import write_if_changed
from tb.runner import ROOT, SIMULATORS, run_cocotb

RTL = ROOT / "rtl"
#: What rtl/pe.v and rtl/dot_product.v are built for.
DEFAULT = PRESETS["default"].pe


def tiny_config(**changes):
    """A 2 lanes x 2 rows datapath: small enough to simulate quickly."""
    return PSCConfig(lanes=2, rows=2, **changes)


def _component(path, config):
    module, _, name = path.partition(":")
    component = getattr(importlib.import_module(module), name)(config)
    component._MustUse__silence = True  # built for its properties; not always elaborated
    return component


def _run(export_verilog, sim, component_path, config, top, tag, *, rtl=None, bench, **kw):
    latency = getattr(_component(component_path, config), "latency", None)
    source = rtl if rtl is not None else export_verilog(lambda: _component(component_path, config), top, tag)
    env = config_env(config, component_path, latency=latency,
                     **kw.pop("env", {}))
    return run_cocotb(top, [source], bench, sim, env=env, tag=tag, **kw)


# --- the bench library itself --------------------------------------------------

@pytest.mark.parametrize("sim", SIMULATORS)
def test_library_stream_register(export_verilog, sim):
    from tb.standins import StreamRegister
    src = export_verilog(StreamRegister, "stream_register", "selftest")
    run_cocotb("stream_register", [src], "tb.test_selftest", sim, tag="selftest")


def test_library_catches_contract_violation(export_verilog):
    from tb.standins import BrokenStreamRegister
    src = export_verilog(BrokenStreamRegister, "broken_register", "selftest")
    run_cocotb("broken_register", [src], "tb.test_selftest", "icarus", tag="selftest",
               env={"PSC_SELFTEST": "violation"})


@pytest.mark.parametrize("kind", ["dot_product", "pe"])
def test_benches_accept_standin(export_verilog, kind):
    """The benches pass an independent naive implementation (tb.standins)."""
    cfg = tiny_config()
    if kind == "pe":
        _run(export_verilog, "icarus", "tb.standins:StandinPSCMac", cfg, "standin_pe", "standin",
             bench="tb.test_pe")
    else:
        _run(export_verilog, "icarus", "tb.standins:StandinDotProduct", cfg, "standin_dot_product",
             "standin", bench="tb.test_dot_product")


# --- the gateware ---------------------------------------------------------------

def _generated(export_verilog, top, config, tag):
    """rtl-style Verilog of ``top`` for a non-shipped ``config``, written by psc.flow.generate."""
    from psc.flow.generate import generate_verilog, module_name

    path = ROOT / "build" / "rtl" / tag / f"{module_name(top, config)}.v"
    write_if_changed(path, generate_verilog(top, config))
    return module_name(top, config), path


@pytest.mark.parametrize("sim", SIMULATORS)
def test_pe(export_verilog, sim):
    _run(export_verilog, sim, "psc.hw.pe:PSCMac", DEFAULT, "pe", "default", rtl=RTL / "pe.v",
         bench="tb.test_pe")


def test_pe_baseline(export_verilog):
    _run(export_verilog, "icarus", "psc.hw.pe:PSCMac", DEFAULT.replace(psc=False), "pe_baseline", "default",
         rtl=RTL / "pe_baseline.v", bench="tb.test_pe")


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("preset", ["default", "baseline", "tiny"])
def test_dot_product(export_verilog, sim, preset):
    if preset == "default":
        cfg, top, rtl = DEFAULT, "dot_product", RTL / "dot_product.v"
    elif preset == "baseline":
        cfg, top, rtl = DEFAULT.replace(psc=False), "dot_product_baseline", RTL / "dot_product_baseline.v"
    else:
        cfg = tiny_config()
        top, rtl = _generated(export_verilog, "dot_product", cfg, "tiny")
    _run(export_verilog, sim, "psc.hw.dot_product:DotProduct", cfg, top, preset, rtl=rtl,
         bench="tb.test_dot_product")


def test_bench_detects_swapped_weights(export_verilog):
    """Mutation check: W+ and W- swapped in the stimulus must fail with the inputs in the message."""
    cfg = tiny_config()
    top, rtl = _generated(export_verilog, "dot_product", cfg, "tiny")
    with pytest.raises(AssertionError) as info:
        _run(export_verilog, "icarus", "psc.hw.dot_product:DotProduct", cfg, top, "tiny", rtl=rtl,
             bench="tb.test_dot_product", testcase="dot_random", env={"PSC_BREAK": "swap_weights"})
    msg = str(info.value)
    assert "differs from psc.model.golden" in msg and "inputs that produced the expected value" in msg, msg
    assert "W+" in msg and "W-" in msg, msg
