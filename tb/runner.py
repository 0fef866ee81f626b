"""Run a cocotb bench of the test suite on Icarus or Verilator (a thin user of :mod:`psc.host.sim`).

One build directory per (configuration tag, top level, simulator, waves) under
``<build root>/sim/``, so simulators, configurations and waveform builds never
overwrite each other; :mod:`psc.host.sim` builds each once and reuses it.
Each run gets its own test directory named after the pytest test (results
file, waveforms). ``PSC_WAVES=1`` turns waveforms on; the path is printed
(``pytest -s`` shows it).
"""

import os
import sys
from pathlib import Path

from psc.build_dir import build_root
from psc.host import sim
from psc.host.sim import SIMULATORS, waves_requested

__all__ = ["ROOT", "BUILD", "SIMULATORS", "waves_requested", "run_cocotb", "build_dir_for"]

ROOT = Path(__file__).resolve().parents[1]
BUILD = build_root()


def build_dir_for(toplevel, simulator, tag="", waves=False):
    parts = [p for p in (tag, toplevel, simulator, "waves" if waves else "") if p]
    return BUILD / "sim" / "-".join(sim.slug(p) for p in parts)


def run_cocotb(toplevel, verilog_sources, test_module, simulator, *, parameters=None, env=None,
               build_dir=None, tag="", testcase=None, seed=None):
    """Build (once) and run the cocotb tests of ``test_module`` against ``toplevel``.

    Parameters
    ----------
    toplevel : str
        HDL top module name.
    verilog_sources : list of path-like
        Verilog files of the design.
    test_module : str
        Python module holding the cocotb tests, e.g. ``"tb.test_pe"``.
    simulator : str
        ``"icarus"`` or ``"verilator"``.
    parameters : dict, optional
        HDL parameters of the top level (part of the build).
    env : dict, optional
        Extra environment for the simulation process (names already in the
        process environment win).
    build_dir : path-like, optional
        Defaults to ``<build root>/sim/<tag>-<toplevel>-<simulator>[-waves]``.
    tag : str
        Name of the configuration, to separate build directories.
    testcase : str or list of str, optional
        Run only these cocotb tests.
    seed : int, optional
        ``COCOTB_RANDOM_SEED`` for a reproducible run.

    Returns
    -------
    pathlib.Path
        The results file. Raises :class:`psc.host.sim.SimulationFailed` (an
        ``AssertionError``) with every failing test's message.
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")
    # The simulator's Python gets this process's sys.path, so tb/ is importable
    # there only if the repository root is on sys.path here.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    waves = waves_requested()
    build_dir = Path(build_dir) if build_dir is not None else build_dir_for(toplevel, simulator,
                                                                             tag, waves)
    runner = sim.build(simulator, verilog_sources, toplevel, build_dir, parameters=parameters,
                       waves=waves)
    name = os.environ.get("PYTEST_CURRENT_TEST", "run").split(" ")[0].rsplit("::", 1)[-1]
    test_dir = build_dir / "runs" / sim.slug(f"{test_module}-{name}")
    return sim.run(runner, simulator, toplevel, test_module, test_dir, env=env,
                   testcase=testcase, seed=seed, waves=waves)
