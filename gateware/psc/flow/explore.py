"""Design-space exploration (``psc explore``): builds of a target, resources against inferences per second.

A *space* is a base preset and, per configuration field, the values to try;
its points are every combination (:func:`space_points`). For each point:

* whether the configuration is valid at all (:class:`~psc.config.CoreConfig`
  checks itself; an invalid combination is listed with the reason, not built);
* the core's resources and whether it fits the device, from Yosys, and its
  Fmax (median of ``seeds`` nextpnr seeds), as ``psc synth`` measures them
  (:mod:`psc.flow.synth`): every elaboration, Yosys run and seed is one task
  of a :class:`~psc.flow.executor.Executor`, so the points run in parallel
  on a local cluster or a Dask cluster, and a rerun takes the tool runs of
  points it has seen from the cache;
* the cycles of one inference of the workload, from the cycle model
  (:mod:`psc.host.cycle_model`, which a test keeps within 2% of the
  simulated core): the convolutions of the network (the layers the core does
  not run, such as residual adds and pooling, run on the host and are not
  counted), or a list of layers;
* inferences per second at the point's Fmax.

The result (:func:`explore`) has every point, the Pareto front of LUTs
against inferences per second among the points that fit and were placed,
the best point per objective, and the point chosen: the most inferences per
second among the points on the front that meet the target's clock goal.
:func:`write_outputs` writes it as Markdown, CSV, JSON and a PNG plot.

Space files (``--space FILE``, TOML or JSON)::

    base = "ice40-up5k"          # a preset (default: the target's)
    [vary]                       # field -> values; "shape" is [lanes, rows] pairs
    shape = [[6, 2], [4, 2]]
    tree_stages = [1, 2]

Fields are those of :class:`~psc.config.CoreConfig` and
:class:`~psc.config.PSCConfig` (:data:`FIELDS`). On a ``depthwise="channels"``
base a shape keeps the input buffer's banks (one per row) at the base's
depth unless the space varies ``fmap_depth`` too.
"""

import csv
import hashlib
import io
import itertools
import json
from dataclasses import fields as dc_fields
from pathlib import Path

import numpy as np

from psc.config import CoreConfig, PSCConfig
from psc.flow.synth import _Job, _check_executor, _check_run, _check_target, _run_jobs
from psc.presets import PRESETS, TARGETS as TARGET_PRESETS, preset

__all__ = ["FIELDS", "DEFAULT_SPACES", "WORKLOADS", "load_space", "space_points", "workload",
           "explore", "pareto_front", "config_line", "format_table", "write_outputs",
           "check_space", "main_explore"]

#: Fields a space may vary: every field of the core's and the datapath's configuration but
#: the nested ``pe``, and ``shape`` (``[lanes, rows]``).
FIELDS = tuple(sorted({f.name for f in dc_fields(PSCConfig)}
                      | {f.name for f in dc_fields(CoreConfig)} - {"pe"} | {"shape"}))

#: The space ``psc explore --target T`` sweeps without ``--space``: around the shipped preset
#: (whose values are among those tried, so the shipped point is one of the points).
DEFAULT_SPACES = {
    # the requantiser against the array: on two of the 8 SB_MAC16 (one value per cycle)
    # beside a 6 x 2 array, or in LUTs (all of M per cycle, or 4 or 8 of its bits) beside
    # a 6 x 2 or an 8 x 2 array on all of them
    "ice40-up5k": {"base": "ice40-up5k",
                   "vary": {"shape": [[6, 2], [8, 2]],
                            "requant_multiplier": ["ice40_mac16", "adds"],
                            "requant_mult_bits": [None, 4, 8]}},
    # the array's shape on the 28 multipliers (7x4 and 4x7 use all, 8x3 24) and the
    # adder tree's registers
    "ecp5-25k": {"base": "ecp5-25k",
                 "vary": {"shape": [[7, 4], [4, 7], [8, 3]], "tree_stages": [1, 2]}},
}

#: Workloads by name (``--network``); a path to an ONNX file is taken too.
WORKLOADS = ("digits", "mbv2")


def _bad(msg):
    return ValueError(f"space: {msg}")


def load_space(path):
    """The space in TOML or JSON file ``path``: ``{"base": preset, "vary": {field: values}}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"space: cannot read {str(path)!r}: {e.strerror}") from None
    try:
        if path.suffix == ".json":
            space = json.loads(text)
        else:
            import tomllib
            space = tomllib.loads(text)
    except ValueError as e:
        raise _bad(f"{str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                   f"{e}") from None
    return check_space(space)


def check_space(space):
    """``space`` checked: a known base preset, known fields, non-empty lists of values."""
    if not isinstance(space, dict) or set(space) - {"base", "vary"}:
        raise _bad(f"must have the keys 'base' (optional) and 'vary', not {space!r}")
    base = space.get("base")
    if base is not None and base not in PRESETS:
        raise _bad(f"base must be one of {sorted(PRESETS)}, not {base!r}")
    vary = space.get("vary")
    if not isinstance(vary, dict) or not vary:
        raise _bad(f"vary must map fields to lists of values, not {vary!r}")
    for name, values in vary.items():
        if name not in FIELDS:
            raise _bad(f"unknown field {name!r}; fields are {', '.join(FIELDS)}")
        if not isinstance(values, list) or not values:
            raise _bad(f"vary.{name} must be a non-empty list of values, not {values!r}")
        if name == "shape" and not all(isinstance(v, list) and len(v) == 2 for v in values):
            raise _bad(f"vary.shape must be a list of [lanes, rows] pairs, not {values!r}")
    return {"base": base, "vary": vary}


def space_points(target, space):
    """Every combination of ``space`` on ``target``: a list of ``(changes, config)``, where
    ``config`` is a :class:`~psc.config.CoreConfig`, or the reason the combination is not one."""
    space = check_space(space)
    base = preset(space["base"] or TARGET_PRESETS[target])
    names = list(space["vary"])
    points = []
    for values in itertools.product(*(space["vary"][n] for n in names)):
        changes = dict(zip(names, values))
        kw = {k: v for k, v in changes.items() if k != "shape"}
        if "shape" in changes:
            kw["lanes"], kw["rows"] = changes["shape"]
            if base.pe.depthwise == "channels" and "fmap_depth" not in changes:
                # one input bank per row: keep the banks' depth
                kw["fmap_depth"] = kw["rows"] * (base.fmap_depth // base.rows)
        try:
            points.append((changes, base.replace(**kw)))
        except (ValueError, TypeError) as e:
            points.append((changes, f"invalid: {e}"))
    return points


def workload(name):
    """``(label, layers)``: the convolutions of one inference of workload ``name`` (one of
    :data:`WORKLOADS`, or an ONNX file) as dicts of :func:`psc.host.run_layer` arguments."""
    if name == "mbv2":
        from psc.host.bench import MBV2_LAYERS
        rng = np.random.default_rng(0)
        return "MobileNetV2 0.35, 96x96 (random weights)", [f(rng) for _, f in MBV2_LAYERS.values()]
    from psc import data
    from psc.onnx_import import import_onnx
    path = data.path("digits_psc.onnx") if name == "digits" else Path(name)
    if name != "digits" and not path.is_file():
        raise ValueError(f"network must be one of {', '.join(WORKLOADS)} or an ONNX file, "
                         f"not {name!r}")
    net = import_onnx(path)
    shape = net.input_shape
    x = np.zeros((1, *shape), dtype=np.int64)
    ref = net.run(x, keep=True)
    layers = [dict(x=ref[layer.inputs[0]][0], **layer.conv_args())
              for layer in net.layers if layer.op == "conv"]
    return f"{path.name} ({len(layers)} convolutions)", layers


def _cycles(layers, config):
    from psc.host.cycle_model import layers_cycles
    from psc.host.scheduler import LayerError
    try:
        return sum(layers_cycles(layers, config)), None
    except LayerError as e:
        return None, f"does not run the workload: {e}"


def config_line(config):
    """``config`` as the Python expression to put into :data:`psc.presets.PRESETS`: the
    fields that differ from their defaults."""
    def changed(obj, skip=()):
        default = type(obj)() if not isinstance(obj, CoreConfig) else CoreConfig(pe=PSCConfig())
        return ", ".join(f"{f.name}={getattr(obj, f.name)!r}" for f in dc_fields(obj)
                         if f.name not in skip and getattr(obj, f.name) != getattr(default, f.name))
    return f"CoreConfig(pe=PSCConfig({changed(config.pe)}), {changed(config, ('pe',))})"


def pareto_front(points):
    """Indices of ``points`` (dicts with ``lut4`` and ``inf_per_s``) that no other point
    beats on both: as few LUTs and as many inferences per second, one strictly."""
    ok = [i for i, p in enumerate(points) if p.get("inf_per_s")]
    front = []
    for i in ok:
        a = points[i]
        if not any(points[j]["lut4"] <= a["lut4"] and points[j]["inf_per_s"] >= a["inf_per_s"]
                   and (points[j]["lut4"] < a["lut4"] or points[j]["inf_per_s"] > a["inf_per_s"])
                   for j in ok):
            front.append(i)
    return sorted(front, key=lambda i: points[i]["lut4"])


def _label(changes):
    return ", ".join(f"{k}={'x'.join(map(str, v)) if k == 'shape' else v}"
                     for k, v in changes.items())


def explore(target, *, network="digits", space=None, seeds=1, pnr=True, build_root=None,
            executor=None, log=None):
    """Sweep ``space`` (default :data:`DEFAULT_SPACES`) on ``target``; a dict (see the module).

    ``{"target", "workload", "seeds", "space", "points": [...], "front": [indices],
    "best": {objective: index}, "chosen": index or None, "shipped": index or None}``;
    each point has ``label``, ``changes``, ``config`` (:meth:`CoreConfig.to_dict`, None
    when invalid), ``line`` (:func:`config_line`), ``status`` (``"ok"``, ``"invalid: ..."``,
    ``"does not fit: ..."``, ``"failed: ..."``), ``cached``, the resources, ``fmax_mhz``,
    ``fmax_seeds_mhz``, ``cycles`` and ``inf_per_s``. Without ``executor`` one is made
    (a local cluster on every core) and closed.
    """
    t = _check_target(target)
    space = check_space(DEFAULT_SPACES[target] if space is None else space)
    _, root = _check_run(target, None, seeds, build_root, pnr)
    _check_executor(executor)
    label, layers = workload(network)
    say = log or (lambda msg: None)
    points = space_points(target, space)
    jobs, out = {}, []
    for i, (changes, config) in enumerate(points):
        p = {"label": _label(changes), "changes": changes, "config": None, "line": None,
             "status": config if isinstance(config, str) else "ok", "cached": False,
             "lut4": None, "ff": None, "bram": None, "mult": None, "spram": None,
             "fmax_mhz": None, "fmax_seeds_mhz": [], "cycles": None, "inf_per_s": None}
        if not isinstance(config, str):
            p.update(config=config.to_dict(), line=config_line(config))
            p["cycles"], why = _cycles(layers, config)
            if why:
                p["status"] = why
            else:
                digest = _digest(config)
                jobs[i] = _Job(target, "psc", "core", config, root, build_root,
                               name=f"{target}-explore-{digest}")
                jobs[i].tag = f"{target} {p['label'] or 'base'}"
        out.append(p)
    say(f"[explore {target}] {len(points)} points, {len(jobs)} to build; workload {label}")
    own = executor is None
    if own:
        from psc.flow.executor import Executor
        executor = Executor(log=log)
    try:
        if jobs:
            _run_jobs(executor, list(jobs.values()), seeds, pnr, log, raise_failed=False)
    finally:
        if own:
            executor.close()
    for i, job in jobs.items():
        p = out[i]
        if job.failed:
            p["status"] = "failed: " + "; ".join(f"{f.label}: {f.error}" for f in job.failed)
        rep = job.rep
        if rep is not None:
            p.update({k: rep.get(k) for k in ("lut4", "ff", "bram", "mult", "spram", "fmax_mhz",
                                              "fmax_seeds_mhz")})
            if rep["fits"] is not True:
                p["status"] = f"does not fit: {rep['fits']}"
        tasks = [job.yosys, *job.seeds]
        p["cached"] = all(tk.cached for tk in tasks if tk is not None)
        if p["status"] == "ok" and p["fmax_mhz"] and p["cycles"]:
            p["inf_per_s"] = round(p["fmax_mhz"] * 1e6 / p["cycles"], 1)
    return {"target": target, "workload": label, "seeds": seeds, "goal_mhz": t.goal_mhz,
            "space": space, "points": out, **_ranked(out, target, t.goal_mhz)}


def _ranked(out, target, goal_mhz):
    """The front, the best point per objective, the chosen point and the shipped one."""
    front = pareto_front(out)
    ok = [i for i, p in enumerate(out) if p["inf_per_s"]]
    best = {}
    if ok:
        best = {"inf_per_s": max(ok, key=lambda i: out[i]["inf_per_s"]),
                "lut4": min(ok, key=lambda i: out[i]["lut4"]),
                "fmax_mhz": max(ok, key=lambda i: out[i]["fmax_mhz"]),
                "cycles": min(ok, key=lambda i: out[i]["cycles"])}
    meeting = [i for i in front if out[i]["fmax_mhz"] >= goal_mhz]
    chosen = max(meeting, key=lambda i: out[i]["inf_per_s"]) if meeting else None
    shipped_cfg = preset(TARGET_PRESETS[target]).to_dict()
    shipped = next((i for i, p in enumerate(out) if p["config"] == shipped_cfg), None)
    return {"front": front, "best": best, "chosen": chosen, "shipped": shipped}


def _digest(config):
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


_COLUMNS = ("label", "status", "lut4", "ff", "bram", "spram", "mult", "fmax_mhz", "cycles",
            "inf_per_s")


def _cell(v):
    return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _short(status):
    """The status's kind (``ok``, ``does not fit``, ``invalid``, ``failed``, ...)."""
    return status.split(":")[0]


def format_table(result):
    """The points as a Markdown table (``*``: on the front), the reasons of the points that
    were not measured, the best point per objective and the chosen one."""
    pts = result["points"]
    lines = [f"`psc explore --target {result['target']}`: {result['workload']}; Fmax median "
             f"of {result['seeds']} seed(s); * on the Pareto front (LUT4 against inferences/s)",
             "", "| # | point | status | LUT4 | FF | BRAM | SPRAM | mult | Fmax MHz | cycles | inf/s |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, p in enumerate(pts):
        mark = " *" if i in result["front"] else ""
        tag = " (shipped)" if i == result["shipped"] else ""
        lines.append(f"| {i} | " + " | ".join([p["label"] + tag + mark, _short(p["status"])]
                                               + [_cell(p[c]) for c in _COLUMNS[2:]]) + " |")
    lines.append("")
    for i, p in enumerate(pts):
        if p["status"] != "ok":
            lines.append(f"#{i}: {' '.join(p['status'].split())}")
    for what, i in result["best"].items():
        lines.append(f"best {what}: #{i} {pts[i]['label']}")
    if result["chosen"] is not None:
        c = pts[result["chosen"]]
        lines += [f"chosen (most inferences/s on the front at >= {result['goal_mhz']:g} MHz): "
                  f"#{result['chosen']} {c['label']}", f"    {c['line']}"]
    else:
        lines.append(f"chosen: none (no point on the front meets {result['goal_mhz']:g} MHz)")
    return "\n".join(lines)


def _csv(result):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(list(_COLUMNS) + ["front", "shipped", "line"])
    for i, p in enumerate(result["points"]):
        w.writerow([_cell(p[c]) for c in _COLUMNS] + [int(i in result["front"]),
                                                       int(i == result["shipped"]), p["line"] or ""])
    return buf.getvalue()


def _plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    pts = result["points"]
    ok = [i for i, p in enumerate(pts) if p["inf_per_s"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([pts[i]["lut4"] for i in ok], [pts[i]["inf_per_s"] for i in ok], color="0.6",
               label="points")
    front = result["front"]
    ax.plot([pts[i]["lut4"] for i in front], [pts[i]["inf_per_s"] for i in front], "o-",
            color="C0", label="Pareto front")
    if result["shipped"] in ok:
        s = pts[result["shipped"]]
        ax.scatter([s["lut4"]], [s["inf_per_s"]], marker="*", s=250, color="C3", zorder=3,
                   label="shipped preset")
    for i in ok:       # the table's point numbers
        ax.annotate(f"#{i}", (pts[i]["lut4"], pts[i]["inf_per_s"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("LUT4 (core)")
    ax.set_ylabel("inferences / s at Fmax")
    ax.set_title(f"{result['target']}: {result['workload']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result, out_dir):
    """Write ``explore.md``, ``explore.csv``, ``explore.json`` and ``pareto.png`` (when any
    point has inferences per second) into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("explore.md", format_table(result) + "\n"), ("explore.csv", _csv(result)),
                       ("explore.json", json.dumps(result, indent=1, default=str) + "\n")):
        (out_dir / name).write_text(text)
        paths.append(out_dir / name)
    if any(p["inf_per_s"] for p in result["points"]):
        _plot(result, out_dir / "pareto.png")
        paths.append(out_dir / "pareto.png")
    return paths


def main_explore(target, *, network="digits", space_file=None, seeds=1, pnr=True, out_dir=None,
                 build_dir=None, as_json=False, scheduler=None, workers=None):
    """``psc explore``: :func:`explore`, write the outputs, print the table; exit status.

    ``out_dir`` defaults to ``<build root>/explore/<target>``; ``scheduler`` and
    ``workers`` as in :func:`psc.flow.synth.main_synth`.
    """
    from psc.build_dir import build_root
    from psc.flow.synth import _cli, _log
    space = load_space(space_file) if space_file is not None else None
    out_dir = Path(out_dir) if out_dir is not None else build_root() / "explore" / target
    written = []

    def run(executor):
        result = explore(target, network=network, space=space, seeds=seeds, pnr=pnr,
                         build_root=build_dir, executor=executor, log=_log)
        written.extend(write_outputs(result, out_dir))
        return result

    def fmt(result):
        pts = result["points"]
        counts = {k: sum(1 for p in pts if cond(p)) for k, cond in (
            ("built", lambda p: p["config"] is not None and not p["cached"]),
            ("cached", lambda p: p["cached"]),
            ("failed", lambda p: p["status"].startswith("failed")),
            ("invalid", lambda p: p["status"].startswith("invalid")))}
        return (format_table(result) + "\n\n" + f"{len(pts)} points: "
                + ", ".join(f"{v} {k}" for k, v in counts.items()) + "\nwritten: "
                + ", ".join(str(p) for p in written))
    return _cli("explore", build_dir, as_json, run, fmt, scheduler, workers)
