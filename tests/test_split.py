"""Reductions longer than one command: input-channel chunks summed in the core's partial-sum
buffer (``Part`` FIRST / MIDDLE / LAST), planned by psc.host.scheduler and checked against
psc.model.golden on Icarus and Verilator with random stalls."""

import numpy as np
import pytest

import core_cases
from psc import host
from psc.host.cycle_model import tiles_cycles
from psc.hw.core import Part
from psc.presets import PRESETS, TARGETS as TARGET_PRESETS

TINY = PRESETS["tiny"]
STALL = 0.25


def _check(layer, y, label):
    ref = core_cases.expected(layer)
    bad = np.argwhere(y != ref)
    assert not len(bad), (f"{label}: {len(bad)} of {ref.size} outputs differ; first at "
                          f"{tuple(bad[0])}: core {y[tuple(bad[0])]}, golden {ref[tuple(bad[0])]}")


def _split_layers(seed):
    """Layers whose reduction does not fit one command of the tiny build (64 weight blocks,
    64 input words, max_reduction 16384): every kind but depthwise, strides, padding, a
    short last chunk."""
    r = np.random.default_rng(seed)
    return [
        core_cases._layer(r, 40, 6, 5, 6, 3, 1, 1),                 # 10 groups x 9 taps > 64
        core_cases._layer(r, 29, 5, 7, 7, 3, 2, 1, relu=True),      # stride 2, odd channels
        core_cases._layer(r, 12, 4, 6, 6, 5, 1, 2, weights="ili"),  # 5x5 window > 64 words
        core_cases._layer(r, 300, 10, 1, 1, 1),                     # fully connected, 75 groups
        core_cases._layer(r, 280, 6, 3, 2, 1),                      # pointwise
    ]


def _placed_once(plan):
    hits = np.zeros(plan.out_shape, dtype=int)
    for t in plan.tiles:
        if t.n_out:
            c0, c1, oy0, oy1, ox0, ox1 = t.place
            hits[c0:c1, oy0:oy1, ox0:ox1] += 1
    return (hits == 1).all()


def test_split_reduction_chunks_are_balanced_and_cover_the_groups():
    layer = host.scheduler.validate(**_split_layers(0)[0], config=TINY)
    _, layer = host.scheduler.choose_kind(layer)
    chunks = host.scheduler.split_reduction(layer)
    assert chunks == [(0, 5), (5, 10)]     # the fewest chunks of at most 64 // 9 = 7 groups
    for n in range(1, 11):
        c = host.scheduler.split_reduction(layer, n)
        assert c[0][0] == 0 and c[-1][1] == 10 and len(c) == n
        assert all(a[1] == b[0] for a, b in zip(c, c[1:]))
        sizes = [g1 - g0 for g0, g1 in c]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("name", ["tiny", *sorted(TARGET_PRESETS)])
def test_plan_of_a_split_layer(name):
    cc = PRESETS[TARGET_PRESETS.get(name, name)]
    r = np.random.default_rng(2)
    # ResNet-18's widest 3x3 layer, reduced to a few output channels
    layer = core_cases._layer(r, 512, 2 * cc.rows + 1, 4, 4, 3, 1, 1)
    plan = host.plan_layer(**layer, config=cc)
    assert _placed_once(plan)
    parts = [t.fields["part"] for t in plan.tiles]
    assert Part.WHOLE not in parts and parts[0] == Part.FIRST and parts[-1] == Part.LAST
    for t in plan.tiles:
        f = t.fields
        assert not f["keep"] and t.weights and t.params
        assert f["out_h"] * f["out_w"] * f["gout"] <= cc.psum_depth
        assert len(t.weights) == f["gout"] * f["k"] ** 2 * f["gin"] <= cc.weight_depth
        assert f["gin"] * cc.lanes * f["k"] ** 2 <= cc.pe.max_reduction
        assert t.n_out == (f["out_h"] * f["out_w"] * f["gout"] if f["part"] == Part.LAST else 0)
    # every chunk of a band sees the same band and channels, the chunks in order
    bands = {}
    for t in plan.tiles:
        bands.setdefault(t.place, []).append(t.fields["part"])
    for seq in bands.values():
        assert seq == [Part.FIRST] + [Part.MIDDLE] * (len(seq) - 2) + [Part.LAST]


def test_split_needs_a_partial_sum_buffer():
    layer = _split_layers(0)[0]
    with pytest.raises(host.LayerError, match=r"no partial-sum buffer \(psum_depth=0\)"):
        host.plan_layer(**layer, config=TINY.replace(psum_depth=0))
    # what no chunking can fix: one channel group's 7x7 window is 49 words
    layer = core_cases._layer(np.random.default_rng(0), 4, 4, 9, 9, 7, 1, 3)
    with pytest.raises(host.LayerError, match=r"does not fit this build even for one channel "
                                              r"group.*fmap_depth=32"):
        host.plan_layer(**layer, config=TINY.replace(fmap_depth=32))


@pytest.mark.parametrize("target", ["verilator", "icarus"])
def test_split_layers_on_the_tiny_build(target):
    layers = _split_layers(1)
    for layer in layers:
        plan = host.plan_layer(**layer, config=TINY)
        assert any(t.fields["part"] == Part.MIDDLE for t in plan.tiles) or \
            any(t.fields["part"] == Part.FIRST for t in plan.tiles)
    results = host.run_layers(layers, config=TINY, target=target, stall=STALL, seed=3)
    for i, (layer, (y, _)) in enumerate(zip(layers, results)):
        _check(layer, y, f"split layer {i} on {target}")


def _resnet_sample(rng, cc):
    """CIFAR ResNet-18's convolution shapes (64 to 512 channels, 3x3 and the stride-2 1x1
    shortcut) at reduced spatial size and output channels: the reductions are full size."""
    cout = 2 * cc.rows + 1
    return [
        core_cases._layer(rng, 64, cout, 6, 6, 3, 1, 1, relu=True),
        core_cases._layer(rng, 128, cout, 6, 5, 3, 2, 1),
        core_cases._layer(rng, 128, cout, 5, 5, 1, 2, 0),            # shortcut
        core_cases._layer(rng, 256, cout, 3, 3, 3, 1, 1),
        core_cases._layer(rng, 512, cout, 2, 2, 3, 1, 1, relu=True),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGET_PRESETS))
def test_resnet_shapes_on_the_shipped_builds(name):
    cc = PRESETS[TARGET_PRESETS[name]]
    layers = _resnet_sample(np.random.default_rng(5), cc)
    results = host.run_layers(layers, config=cc, target="verilator", stall=STALL, seed=6)
    for i, (layer, (y, _)) in enumerate(zip(layers, results)):
        _check(layer, y, f"{name} ResNet layer {i}")


def test_reset_in_a_split_layer_then_clean_layers():
    """A reset between the chunks of a band (partial sums stored, the last chunk not run)
    leaves the core ready: the same layer again, then an unsplit one, are bit-exact."""
    layer, plain = _split_layers(4)[0], core_cases.make("std_k3_s1_p1")
    p1 = host.plan_layer(**layer, config=TINY)
    p2 = host.plan_layer(**layer, config=TINY)
    p3 = host.plan_layer(**plain, config=TINY)
    middle = next(i for i, t in enumerate(p1.tiles) if t.fields["part"] != Part.FIRST)
    p1.tiles[middle].reset_after = 40
    res = host.run_plans([p1.tiles[:middle + 1], p2.tiles, p3.tiles], config=TINY,
                         target="verilator", stall=STALL, seed=9)
    assert res[0][-1]["reset"]
    _check(layer, p2.assemble(res[1]), "split layer after a reset")
    _check(plain, p3.assemble(res[2]), "unsplit layer after a reset")


def resnet18_cifar_shapes():
    """Every distinct convolution of CIFAR ResNet-18 (32x32 input):
    ``(cin, cout, size, k, stride, padding)``."""
    shapes = [(3, 64, 32, 3, 1, 1)]
    cin, size = 64, 32
    for cout in (64, 128, 256, 512):
        if cout != cin:
            shapes.append((cin, cout, size, 3, 2, 1))     # the downsampling 3x3
            shapes.append((cin, cout, size, 1, 2, 0))     # its shortcut
            size //= 2
        shapes.append((cout, cout, size, 3, 1, 1))
        cin = cout
    return shapes


@pytest.mark.soak      # tens of minutes per build: pytest -m soak -k resnet18
@pytest.mark.parametrize("name", sorted(TARGET_PRESETS))
def test_resnet18_cifar_full_size_on_the_shipped_builds(name):
    cc = PRESETS[TARGET_PRESETS[name]]
    r = np.random.default_rng(18)
    layers = [core_cases._layer(r, cin, cout, size, size, k, stride, pad, relu=True)
              for cin, cout, size, k, stride, pad in resnet18_cifar_shapes()]
    results = host.run_layers(layers, config=cc, target="verilator", stall=0.1, seed=18)
    for shape, layer, (y, _) in zip(resnet18_cifar_shapes(), layers, results):
        _check(layer, y, f"{name} ResNet-18 {shape}")


def _mapped(layer, cc):
    layer = host.scheduler.validate(**layer, config=cc)
    return host.scheduler.choose_kind(layer)


@pytest.mark.parametrize("name", ["tiny", *sorted(TARGET_PRESETS)])
def test_the_cost_of_a_cut_is_the_cycle_model_of_its_tiles(name):
    # the scheduler chooses a cut by its commands' fields and word counts alone: they must
    # give the cycles of the tiles it then emits
    cc = PRESETS[TARGET_PRESETS.get(name, name)]
    sched = host.scheduler
    layers = _split_layers(4) + _resnet_sample(np.random.default_rng(4), cc)
    layers.append(core_cases._layer(np.random.default_rng(4), 20, 20, 9, 9, 3, 2, 1,
                                    groups=20))
    for layer in layers:
        kind, mapped = _mapped(layer, cc)
        bands = sched.cut_bands(mapped)
        tiles = sched.emit_tiles(mapped, kind, *sched.pack(mapped), bands)
        assert sched._bands_cycles(mapped, kind, bands) == tiles_cycles(cc, tiles)


@pytest.mark.parametrize("name", sorted(TARGET_PRESETS))
def test_a_long_fully_connected_layer_is_cut_to_load_its_input_less_often(name):
    # MobileNetV2's classifier: its weights fill the weight buffer many times over, so a cut
    # of whole reductions (a few output groups per command) loads the whole input for each;
    # chunks of the reduction let each command cover more output groups
    cc = PRESETS[TARGET_PRESETS[name]]
    sched = host.scheduler
    layer = core_cases._layer(np.random.default_rng(1), 1280, 1000, 1, 1, 1)
    kind, mapped = _mapped(layer, cc)
    bands = sched.cut_bands(mapped)
    whole = sched._cut(mapped, [(0, sched._groups_in(mapped))],
                       cc.weight_depth // sched._groups_in(mapped))
    assert len(bands[0][2]) > 1 and len(bands) < len(whole)
    assert sched._bands_cycles(mapped, kind, bands) < sched._bands_cycles(mapped, kind, whole)
    plan = host.plan_layer(**layer, config=cc)
    assert _placed_once(plan)
    assert all(len(t.weights) <= cc.weight_depth and t.n_out <= cc.psum_depth
               for t in plan.tiles)
