"""Shared pytest fixtures: the repository root on sys.path (for the ``tb`` package), and
Verilog generation of Amaranth components into <build root>/rtl, once per session."""

import sys
from pathlib import Path

import pytest

from psc.build_dir import build_root
from psc.host.sim import write_if_changed  # noqa: F401 (the tests' import of it)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # tb/ is not an installed package; the cocotb runner also hands this sys.path
    # to the simulator's Python, which imports the benches from tb/.
    sys.path.insert(0, str(ROOT))

_generated = {}


def _export(component, name, path):
    from amaranth.back import verilog
    text = verilog.convert(component, name=name, emit_src=False)
    write_if_changed(path, text)
    return path


@pytest.fixture(scope="session")
def export_verilog():
    """``export_verilog(make_component, name, tag)`` -> path of <build root>/rtl/<tag>/<name>.v.

    ``make_component`` is called (and converted) only the first time a (name, tag)
    is asked for in the session.
    """
    def export(make_component, name, tag):
        key = (name, tag)
        if key not in _generated:
            _generated[key] = _export(make_component(), name, build_root() / "rtl" / tag / f"{name}.v")
        return _generated[key]
    return export


def run_mac_bench(sim, config, tag, model, *, top="dot_product", make=None, env=None, **kw):
    """Run the cocotb bench of the DotProduct (``top="dot_product"``) or PSCMac
    (``top="pe"``) of ``config`` on ``sim``, with the Verilog simulation model
    ``model`` (path) of a hand-instantiated DSP; ``make`` replaces the class
    (a broken-on-purpose subclass). Returns what :func:`tb.runner.run_cocotb` does."""
    from psc.hw.dot_product import DotProduct
    from psc.hw.pe import PSCMac
    from tb.psc_model import config_env
    from tb.runner import run_cocotb
    cls, bench = (DotProduct, "tb.test_dot_product") if top == "dot_product" else (PSCMac, "tb.test_pe")
    component = (make or cls)(config)
    src = _export(component, top, build_root() / "rtl" / tag / f"{top}.v")
    env = config_env(config, f"{cls.__module__}:{cls.__name__}", latency=component.latency, **(env or {}))
    return run_cocotb(top, [src, model], bench, sim, env=env, tag=tag, **kw)
