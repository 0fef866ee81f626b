"""Standard layers with few input channels (a network's stem) run as pointwise layers over
their unrolled input (psc.host.scheduler.unroll): the same products, bit-exact on the core."""

import numpy as np
import pytest

import core_cases
from psc import golden, host
from psc.host.cycle_model import plan_cycles, tiles_cycles
from psc.host.scheduler import (KIND_POINTWISE, KIND_STANDARD, choose_kind, cut_bands, emit_tiles,
                                pack, unroll, validate)
from psc.presets import PRESETS

STALL = 0.25


def _layers(seed):
    """Layers the scheduler unrolls on the tiny build (4 lanes)."""
    r = np.random.default_rng(seed)
    return [
        core_cases._layer(r, 3, 10, 9, 8, 3, 2, 1, relu=True),       # an RGB stem, stride 2
        core_cases._layer(r, 1, 6, 7, 7, 3, 2, 1),                   # one channel
        core_cases._layer(r, 2, 5, 9, 9, 3, 2, 0, weights="ini"),    # no padding, ReLU baseline
    ]


@pytest.mark.parametrize("seed", range(4))
def test_unrolled_layer_has_the_same_sums(seed):
    r = np.random.default_rng(100 + seed)
    for layer in _layers(seed) + [core_cases._layer(r, 2, 4, 7, 6, 5, 1, 2),
                                  core_cases._layer(r, 3, 4, 9, 9, 7, 2, 3)]:
        v = validate(**layer, config=PRESETS["tiny"])
        u = unroll(v)
        assert u.k == 1 and u.stride == 1 and u.padding == 0
        assert np.array_equal(golden.psc_conv2d(u.x, u.w_pos, u.w_neg, u.bias),
                              golden.psc_conv2d(v.x, v.w_pos, v.w_neg, v.bias, stride=v.stride,
                                                padding=v.padding))


def test_which_layers_are_unrolled():
    r = np.random.default_rng(0)
    stem = core_cases._layer(r, 3, 16, 16, 16, 3, 2, 1)
    full = core_cases._layer(r, 8, 16, 8, 8, 3, 1, 1)        # its channels fill 8 lanes
    # unrolled, its input would be 10 times the words of its own
    wide = core_cases._layer(r, 3, 16, 16, 16, 5, 1, 2)
    for name in ("default", "ecp5-25k", "tiny"):
        cc = PRESETS[name]
        assert choose_kind(validate(**stem, config=cc))[0] == KIND_POINTWISE, name
        plan = host.plan_layer(**stem, config=cc)
        assert plan.kind == KIND_POINTWISE and plan.macs == 8 * 8 * 16 * 27
    assert choose_kind(validate(**full, config=PRESETS["default"]))[0] == KIND_STANDARD
    assert choose_kind(validate(**wide, config=PRESETS["default"]))[0] == KIND_STANDARD
    # fewer predicted cycles than the same layer run as a standard convolution
    v = validate(**stem, config=PRESETS["ecp5-25k"])
    standard = tiles_cycles(v.config, emit_tiles(v, KIND_STANDARD, *pack(v), cut_bands(v)))
    assert plan_cycles(host.plan_layer(**stem, config=PRESETS["ecp5-25k"])) < 0.9 * standard


@pytest.mark.parametrize("target", ["verilator", "icarus"])
def test_unrolled_layers_on_the_tiny_build(target):
    layers = _layers(7)
    assert all(host.plan_layer(**layer, config=PRESETS["tiny"]).kind == KIND_POINTWISE
               for layer in layers)
    results = host.run_layers(layers, config=PRESETS["tiny"], target=target, stall=STALL, seed=2)
    for i, (layer, (y, _)) in enumerate(zip(layers, results)):
        ref = core_cases.expected(layer)
        bad = np.argwhere(y != ref)
        assert not len(bad), (f"layer {i}: {len(bad)} of {ref.size} outputs differ; first at "
                              f"{tuple(bad[0])}: core {y[tuple(bad[0])]}, golden {ref[tuple(bad[0])]}")


@pytest.mark.parametrize("name", ["ice40-up5k", "ecp5-25k"])
def test_unrolled_stem_on_the_shipped_builds(name):
    layer = core_cases._layer(np.random.default_rng(3), 3, 16, 12, 12, 3, 2, 1, relu=True)
    (y, _), = host.run_layers([layer], config=PRESETS[name], target="verilator", stall=STALL,
                              seed=4)
    assert np.array_equal(y, core_cases.expected(layer))
