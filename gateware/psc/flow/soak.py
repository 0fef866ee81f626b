"""Random soak of the core against the golden model, as tasks on the executor (``psc soak``).

Random layers (:func:`random_layer`: every kind, kernels 1 to 7, strides 1
and 2, paddings, channel counts up to reductions many times longer than one
command holds, random W+/W- or the ReLU and linear baselines) run on the
simulated core of each build, with random stalls on every stream, and every
output is compared with :mod:`psc.model.golden`. Every drawn layer is one
the API promises to run: a refusal is a failure.

The work is cut into batches: one batch is ``per_task`` layers of one build
on one simulator, drawn from ``(seed, build, batch)`` alone, run in one
simulation, and is one task of a :class:`~psc.flow.executor.Executor` (not
cached: its result depends on the core's code). The batches run in parallel
on a local cluster or on the workers of a Dask cluster; a batch is replayed
by its seed, build and index. ``tests/test_soak.py`` runs one small batch
per build and simulator in the default suite.
"""

import numpy as np

from psc.model import golden
from psc.model.checks import check_choice, check_int
from psc.presets import PRESETS

__all__ = ["BUILDS", "SIMULATORS", "layer_args", "golden_output", "random_layer",
           "ideal_cycles", "draw", "soak_batch", "soak", "format_soak", "main_soak"]

#: Builds the soak runs on: the tiling build and both synthesis targets' cores.
BUILDS = ("tiny", "ice40-up5k", "ecp5-25k")
#: Simulators it runs on.
SIMULATORS = ("verilator", "icarus")


def layer_args(rng, cin, cout, h, w, k, stride=1, padding=0, groups=1, relu=False,
               weights="psc"):
    """Random :func:`psc.host.run_layer` arguments of one layer's shape: int8 input and
    weights (``weights``: ``"psc"`` independent W+ and W-, ``"ini"`` the ReLU baseline
    W- = 0, ``"ili"`` the linear one W- = W+), biases, and requantiser parameters that put
    most outputs inside the int8 range, one channel saturating and one not rounding."""
    x = rng.integers(-128, 128, size=(cin, h, w))
    shape = (cout, cin // groups, k, k)
    w0 = rng.integers(-128, 128, size=shape)
    if weights == "psc":
        w_pos, w_neg = w0, rng.integers(-128, 128, size=shape)
    elif weights == "ini":
        w_pos, w_neg = golden.ini(w0)
    elif weights == "ili":
        w_pos, w_neg = golden.ili(w0)
    else:
        raise ValueError(f"weights must be 'psc', 'ini' or 'ili', not {weights!r}")
    red = cin // groups * k * k
    bias = rng.integers(-4000, 4000, size=cout)
    scale = max(1, int(np.sqrt(red)) * 128 * 128 // 64)
    shift = np.full(cout, 16) + rng.integers(-1, 2, size=cout)
    mult = rng.integers(1, max(2, (1 << 16) * 16 // scale), size=cout).clip(1, (1 << 16) - 1)
    mult[0] = (1 << 16) - 1
    shift[-1] = 0
    return dict(x=x, w_pos=w_pos, w_neg=w_neg, bias=bias, mult=mult, shift=shift,
                stride=stride, padding=padding, groups=groups, relu=relu)


def golden_output(layer, act_width=8):
    """The golden model's output of ``layer`` (:func:`psc.host.run_layer` arguments)."""
    acc = golden.psc_conv2d(layer["x"], layer["w_pos"], layer["w_neg"], layer["bias"],
                            stride=layer["stride"], padding=layer["padding"],
                            groups=layer["groups"])
    return golden.requantize(acc, layer["mult"], layer["shift"], act_width=act_width,
                             relu=layer["relu"])


def random_layer(rng):
    """``(params, layer)``: a random layer's shape and its :func:`layer_args`. One in three
    has a long reduction (40 to 700 input channels) on a small map."""
    kind = rng.choice(["standard", "depthwise", "pointwise", "fc"])
    k = 1 if kind in ("pointwise", "fc") else int(rng.choice([1, 3, 5, 7]))
    stride = 1 if kind == "fc" else int(rng.integers(1, 3))
    padding = 0 if kind == "fc" else int(rng.integers(0, k // 2 + 1))
    long = rng.random() < 1 / 3
    cin = int(rng.integers(40, 700)) if long else int(rng.integers(1, 40))
    cout = cin if kind == "depthwise" else int(rng.integers(1, 40))
    lo = max(1, k - 2 * padding)
    span = 4 if long else 9
    h, w = (1, 1) if kind == "fc" else (int(rng.integers(lo, lo + span)),
                                        int(rng.integers(lo, lo + span)))
    params = dict(cin=cin, cout=cout, h=h, w=w, k=k, stride=stride, padding=padding,
                  groups=cin if kind == "depthwise" else 1, relu=bool(rng.integers(0, 2)),
                  weights=str(rng.choice(["psc", "psc", "ini", "ili"])))
    return params, layer_args(rng, **params)


def ideal_cycles(layer, config):
    """MACs of ``layer`` over the MACs per cycle of ``config``'s array."""
    cout, cin_g, k, _ = layer["w_pos"].shape
    _, h, w = layer["x"].shape
    oh = (h + 2 * layer["padding"] - k) // layer["stride"] + 1
    ow = (w + 2 * layer["padding"] - k) // layer["stride"] + 1
    return oh * ow * cout * cin_g * k * k / (config.lanes * config.rows)


def _rng(seed, build, batch):
    return np.random.default_rng([seed, BUILDS.index(build), batch])


def draw(build, seed, n, max_cycles, batch=0):
    """The ``n`` layers of batch ``batch`` on ``build``: ``(params, layer)`` pairs, layers
    over ``max_cycles`` ideal cycles redrawn (that bounds the run time; it is not a limit
    of the build). Raises :class:`~psc.host.scheduler.LayerError` naming the layer the
    build refuses."""
    from psc.host.scheduler import LayerError, plan_layer
    cc = PRESETS[build]
    rng = _rng(seed, build, batch)
    drawn = []
    while len(drawn) < n:
        params, layer = random_layer(rng)
        if ideal_cycles(layer, cc) > max_cycles:
            continue
        try:
            plan_layer(**layer, config=cc)
        except LayerError as e:
            raise LayerError(f"layer {len(drawn)} (seed {seed}, build {build}, batch {batch}) "
                             f"{params} refused: {e}") from None
        drawn.append((params, layer))
    return drawn


def soak_batch(build, simulator, seed, n, max_cycles, batch=0):
    """Run one batch (see the module); ``{"build", "simulator", "seed", "batch", "layers",
    "stall", "failures"}``, ``failures`` a list of messages (empty when every output of every
    layer equals the golden model's), each naming the layer and its first differing output."""
    from psc.host import LayerError, run_layers
    out = {"build": build, "simulator": simulator, "seed": seed, "batch": batch, "layers": n,
           "stall": None, "failures": []}
    try:
        drawn = draw(build, seed, n, max_cycles, batch)
    except LayerError as e:
        out["failures"].append(str(e))
        return out
    stall = float(_rng(seed, build, batch).uniform(0.0, 0.5))
    out["stall"] = round(stall, 3)
    results = run_layers([layer for _, layer in drawn], config=PRESETS[build],
                         target=simulator, stall=stall, seed=seed)
    for i, ((params, layer), (y, _)) in enumerate(zip(drawn, results)):
        ref = golden_output(layer)
        bad = np.argwhere(y != ref)
        if len(bad):
            at = tuple(int(v) for v in bad[0])
            out["failures"].append(
                f"layer {i} (seed {seed}, build {build}, {simulator}, batch {batch}) {params}: "
                f"{len(bad)} of {ref.size} outputs differ; first at {at}: core {y[at]}, "
                f"golden {ref[at]}")
    return out


def _jobs(layers, seed, max_cycles, builds, simulators, per_task):
    """The batches' :func:`soak_batch` arguments, every argument checked first."""
    check_int("layers", layers, 1)
    check_int("seed", seed, 0, (1 << 32) - 1)
    check_int("max_cycles", max_cycles, 1)
    check_int("per_task", per_task, 1)
    for b in builds:
        check_choice("builds", b, BUILDS)
    for s in simulators:
        check_choice("simulators", s, SIMULATORS)
    return [(build, sim, seed, min(per_task, layers - start), max_cycles, batch)
            for build in builds for sim in simulators
            for batch, start in enumerate(range(0, layers, per_task))]


def soak(layers, seed, max_cycles, *, builds=BUILDS, simulators=SIMULATORS, per_task=6,
         executor=None):
    """``layers`` random layers per build and simulator, in batches of ``per_task``; the
    list of :func:`soak_batch` results (a batch whose task failed on every attempt has its
    :class:`~psc.flow.executor.Failure` as its one failure). Without ``executor`` the
    batches run one after the other in this process."""
    jobs = _jobs(layers, seed, max_cycles, builds, simulators, per_task)
    if executor is None:
        return [soak_batch(*job) for job in jobs]
    from psc.flow.executor import Failure
    tasks = [executor.submit(soak_batch, *job, cache=False,
                             label=f"soak {job[0]} {job[1]} batch {job[5]}") for job in jobs]
    results = []
    for job, res in zip(jobs, executor.gather(tasks)):
        if isinstance(res, Failure):
            res = {"build": job[0], "simulator": job[1], "seed": seed, "batch": job[5],
                   "layers": job[3], "stall": None, "failures": [f"{res.label}: {res.error}"]}
        results.append(res)
    return results


def format_soak(results):
    """One line per build and simulator, then the failures."""
    by = {}
    for r in results:
        key = (r["build"], r["simulator"])
        n, bad = by.get(key, (0, 0))
        by[key] = (n + r["layers"], bad + len(r["failures"]))
    lines = [f"{b} on {s}: {n} layers, " + ("all bit-exact" if not bad else f"{bad} FAILED")
             for (b, s), (n, bad) in by.items()]
    total = sum(n for n, _ in by.values())
    failures = [f for r in results for f in r["failures"]]
    lines.append(f"{total} layers, seed {results[0]['seed'] if results else '-'}: "
                 + ("all bit-exact" if not failures else f"{len(failures)} failures"))
    return "\n".join(lines + failures)


def main_soak(layers, seed, max_cycles, *, per_task=6, builds=BUILDS, simulators=SIMULATORS,
              scheduler=None, workers=None):
    """``psc soak``: :func:`soak` on an executor (``workers=0``: in this process), print the
    summary; exit status 0 when every layer is bit-exact, 1 otherwise."""
    import sys
    from psc.flow.executor import Executor
    from psc.flow.synth import _log
    opts = dict(builds=builds, simulators=simulators, per_task=per_task)
    _jobs(layers, seed, max_cycles, **opts)        # every argument checked before a worker starts
    if workers == 0 and scheduler is None:
        results = soak(layers, seed, max_cycles, **opts)
    else:
        with Executor(scheduler, workers, log=_log) as executor:
            results = soak(layers, seed, max_cycles, **opts, executor=executor)
    print(format_soak(results))
    sys.stdout.flush()
    return 1 if any(r["failures"] for r in results) else 0
