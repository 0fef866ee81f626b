"""Long random soak of PSCConvCore against psc.model.golden (opt-in: ``pytest -m soak`` or ``scripts/soak.sh``).

Random layer kinds, kernels, strides, paddings, channel counts and sizes, on
the ``default`` preset and the ``tiny`` one that forces tiling (:mod:`psc.presets`), with random stalls
on every stream; layers a build refuses (:class:`psc.host.LayerError`) are drawn
again. ``PSC_SOAK_LAYERS`` (default 40) sets the number of layers
per build and simulator, ``PSC_SOAK_SEED`` the seed; a failure names the layer
index and its parameters so it can be replayed with the same seed.
"""

import os

import numpy as np
import pytest

import core_cases
from psc import host
from psc.presets import PRESETS

pytestmark = [pytest.mark.soak, pytest.mark.slow]

BUILDS = {name: PRESETS[name] for name in ("default", "tiny")}


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
    kind = rng.choice(["standard", "depthwise", "pointwise", "fc"])
    k = 1 if kind in ("pointwise", "fc") else int(rng.choice([1, 3, 5, 7]))
    stride = 1 if kind == "fc" else int(rng.integers(1, 3))
    padding = 0 if kind == "fc" else int(rng.integers(0, k // 2 + 1))
    cin = int(rng.integers(1, 40))
    cout = cin if kind == "depthwise" else int(rng.integers(1, 40))
    lo = max(1, k - 2 * padding)
    h, w = (1, 1) if kind == "fc" else (int(rng.integers(lo, lo + 9)), int(rng.integers(lo, lo + 9)))
    params = dict(cin=cin, cout=cout, h=h, w=w, k=k, stride=stride, padding=padding,
                  groups=cin if kind == "depthwise" else 1, relu=bool(rng.integers(0, 2)),
                  weights=str(rng.choice(["psc", "psc", "ini", "ili"])))
    return params, core_cases._layer(rng, **params)


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize("target", ["verilator", "icarus"])
def test_random_layers(build, target):
    n = _env_int("PSC_SOAK_LAYERS", 40, 1)
    seed = _env_int("PSC_SOAK_SEED", 1, 0)
    rng = np.random.default_rng([seed, sorted(BUILDS).index(build)])
    drawn = []
    while len(drawn) < n:
        params, layer = random_layer(rng)
        try:
            host.plan_layer(**layer, config=BUILDS[build])
        except host.LayerError:
            continue   # beyond this build's buffers (input-channel splitting is not supported)
        drawn.append((params, layer))
    results = host.run_layers([layer for _, layer in drawn], config=BUILDS[build], target=target,
                              stall=float(rng.uniform(0.0, 0.5)), seed=seed)
    for i, ((params, layer), (y, _)) in enumerate(zip(drawn, results)):
        ref = core_cases.expected(layer)
        bad = np.argwhere(y != ref)
        assert not len(bad), (f"layer {i} (seed {seed}, build {build}, {target}) {params}: "
                              f"{len(bad)} of {ref.size} outputs differ; first at {tuple(bad[0])}: "
                              f"core {y[tuple(bad[0])]}, golden {ref[tuple(bad[0])]}")
