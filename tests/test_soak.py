"""Random soak of PSCConvCore against psc.model.golden, on both simulators.

Random layer kinds, kernels, strides, paddings, channel counts (up to
reductions many times longer than one command holds, which the scheduler
splits) and sizes, with random stalls on every stream, on the ``tiny``
preset (small buffers: every layer is tiled) and on both synthesis targets'
cores (:mod:`psc.presets`). Every drawn layer is one the API promises to
run: a refusal (:class:`psc.host.LayerError`) fails the test. The default
suite runs a few small layers per build and simulator; ``scripts/soak.sh``
runs a long one. ``PSC_SOAK_LAYERS`` (default 2) sets the number of layers per
build and simulator, ``PSC_SOAK_SEED`` (default 1) the seed and
``PSC_SOAK_MAX_CYCLES`` (default 4000) the largest layer drawn, in ideal
cycles of the build's array (MACs / (lanes x rows)), which bounds the run
time. A failure names the seed, the layer index and its parameters, so it
can be replayed.
"""

import os

import numpy as np
import pytest

import core_cases
from psc import host
from psc.presets import PRESETS, TARGETS

BUILDS = {name: PRESETS[name] for name in ("tiny", *sorted(TARGETS))}


def _env_int(name, default, lo):
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, not {text!r}")
    return value


def random_layer(rng):
    """The parameters of a random layer and its :func:`core_cases._layer` arguments. One in
    three has a long reduction (40 to 700 input channels) on a small map."""
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
    return params, core_cases._layer(rng, **params)


def _ideal_cycles(layer, config):
    cout, cin_g, k, _ = layer["w_pos"].shape
    _, h, w = layer["x"].shape
    oh = (h + 2 * layer["padding"] - k) // layer["stride"] + 1
    ow = (w + 2 * layer["padding"] - k) // layer["stride"] + 1
    return oh * ow * cout * cin_g * k * k / (config.lanes * config.rows)


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize("target", ["verilator", "icarus"])
def test_random_layers(build, target):
    n = _env_int("PSC_SOAK_LAYERS", 2, 1)
    seed = _env_int("PSC_SOAK_SEED", 1, 0)
    budget = _env_int("PSC_SOAK_MAX_CYCLES", 4000, 1)
    cc = BUILDS[build]
    print(f"soak: seed {seed}, build {build}, {target}, {n} layers")
    rng = np.random.default_rng([seed, sorted(BUILDS).index(build)])
    drawn = []
    while len(drawn) < n:
        params, layer = random_layer(rng)
        if _ideal_cycles(layer, cc) > budget:
            continue        # bounds the run time; not a limit of the build
        try:
            host.plan_layer(**layer, config=cc)
        except host.LayerError as e:
            pytest.fail(f"layer {len(drawn)} (seed {seed}, build {build}) {params} "
                        f"refused: {e}")
        drawn.append((params, layer))
    results = host.run_layers([layer for _, layer in drawn], config=cc, target=target,
                              stall=float(rng.uniform(0.0, 0.5)), seed=seed)
    for i, ((params, layer), (y, _)) in enumerate(zip(drawn, results)):
        ref = core_cases.expected(layer)
        bad = np.argwhere(y != ref)
        assert not len(bad), (f"layer {i} (seed {seed}, build {build}, {target}) {params}: "
                              f"{len(bad)} of {ref.size} outputs differ; first at {tuple(bad[0])}: "
                              f"core {y[tuple(bad[0])]}, golden {ref[tuple(bad[0])]}")
