"""PSCConvCore through psc.host.run_layer on Icarus and Verilator, against psc.model.golden.

Every output activation of every case is compared with the golden model.
Streams pause at random (``STALL``) on every input and on the output.
"""

import dataclasses

import numpy as np
import pytest

import core_cases
from psc import host
from psc.config import PSCConfig
from psc.hw.core import CoreConfig, KIND_DEPTHWISE, KIND_POINTWISE, Part
from psc.presets import PRESETS, TARGETS as TARGET_PRESETS

TARGETS = ["verilator", "icarus"]
# the longest benches run on Icarus only in the opt-in soak (pytest -m soak); Verilator
# runs them in the default suite (the reset in the middle of a layer runs on both)
SOAK_ICARUS = ["verilator", pytest.param("icarus", marks=pytest.mark.soak)]
STALL = 0.25
DEFAULT = CoreConfig()
# Small buffers and 4x4 lanes/rows: every layer below needs several tiles.
TINY = PRESETS["tiny"]          # the build the host tests use: one Verilator model for both


def _check(layer, y, label):
    ref = core_cases.expected(layer)
    assert y.shape == ref.shape, f"{label}: shape {y.shape}, golden {ref.shape}"
    bad = np.argwhere(y != ref)
    assert not len(bad), (f"{label}: {len(bad)} of {ref.size} outputs differ; first at "
                          f"{tuple(bad[0])}: core {y[tuple(bad[0])]}, golden {ref[tuple(bad[0])]}")


def _beats_of(layer, y):
    """Beats a named case's layer puts through the MAC array on the default build."""
    k = layer["w_pos"].shape[-1]
    cin, cout = layer["x"].shape[0], layer["w_pos"].shape[0]
    ho, wo = y.shape[1:]
    gin = -(-cin // DEFAULT.lanes) if layer["groups"] == 1 else 1
    if host.plan_layer(**layer, config=DEFAULT).kind == KIND_POINTWISE and k > 1:
        # a stem the scheduler unrolled: one beat per group of its K*K*Cin inputs
        k, gin = 1, -(-cin * k * k // DEFAULT.lanes)
    if layer["groups"] > 1:
        # depthwise='pixels' (the default build): one beat per kernel tap per
        # block of rows neighbouring output pixels
        assert DEFAULT.pe.depthwise == "pixels"
        wo = -(-wo // DEFAULT.rows)
    return ho * wo * -(-cout // DEFAULT.rows) * k * k * gin


# Icarus runs the named cases on the 8 x 8 build slowly (many minutes): opt-in there
# (pytest -m soak); the other benches here cover Icarus in the default suite. One test runs
# every case in one simulation (a test per case would build and run it on every xdist worker
# that gets one) and reports each case that fails.
@pytest.mark.parametrize("target", SOAK_ICARUS)
def test_named_cases(target):
    names = sorted(core_cases.CASES)
    layers = [core_cases.make(n) for n in names]
    results = host.run_layers(layers, config=DEFAULT, target=target, stall=STALL, seed=7)
    failed = []
    for name, layer, (y, counters) in zip(names, layers, results):
        try:
            _check(layer, y, f"{name} on {target}")
            # every beat of the reduction entered the MAC array exactly once
            beats = _beats_of(layer, y)
            assert counters["compute"] == beats, (
                f"{name} on {target}: {counters['compute']} beats, {beats} expected")
        except AssertionError as e:
            failed.append(str(e))
    assert not failed, f"{len(failed)} of {len(names)} cases failed:\n" + "\n".join(failed)


def _tiled_layers():
    r = np.random.default_rng(11)
    return [
        core_cases._layer(r, 6, 22, 9, 11, 3, 1, 1),            # chunks, row and column bands
        core_cases._layer(r, 20, 20, 12, 12, 3, 2, 1, groups=20),     # depthwise, chunks
        core_cases._layer(r, 8, 8, 10, 10, 1, relu=True),              # pointwise, bands
        core_cases._layer(r, 5, 6, 11, 9, 5, 2, 2, weights="ili"),    # 5x5 s2, split reduction
    ]


@pytest.mark.parametrize("target", SOAK_ICARUS)
def test_tiled_larger_than_buffers(target):
    layers = _tiled_layers()
    for layer in layers:
        plan = host.plan_layer(**layer, config=TINY)
        assert len(plan.tiles) > 1
        # the later bands reuse the chunk's weights, or the reduction is split over chunks
        assert any(t.fields["keep"] or t.fields["part"] != Part.WHOLE for t in plan.tiles)
    results = host.run_layers(layers, config=TINY, target=target, stall=STALL, seed=5)
    for i, (layer, (y, counters)) in enumerate(zip(layers, results)):
        _check(layer, y, f"tiled layer {i} on {target}")
        assert counters["tiles"] > 1


def _refused_commands():
    c = DEFAULT
    base = dict(in_h=4, in_w=4, out_h=4, out_w=4, gin=1, gout=1, k=3, pad_top=1, pad_left=1)
    bad = {
        "kernel 2": dict(base, k=2, pad_top=0, pad_left=0),
        "kernel 4": dict(base, k=4),
        "kernel 9": dict(base, k=9),
        "stride 3": dict(base, stride=3),
        "stride 0": dict(base, stride=0),
        "padding >= k": dict(base, pad_top=3),
        "zero height": dict(base, out_h=0),
        "zero groups": dict(base, gin=0),
        "input buffer": dict(base, in_h=64, in_w=64, out_h=64, out_w=64),
        "weight buffer": dict(base, gin=8, gout=4),
        "param buffer": dict(base, k=1, pad_top=0, pad_left=0, gout=c.param_depth + 1),
        "pointwise k=3": dict(base, kind=KIND_POINTWISE),
        "depthwise gin != gout": dict(base, kind=KIND_DEPTHWISE, gin=2, gout=1),
        # 1350 words fit fmap_depth linearly, but banked by column (9 columns
        # -> 2 per bank of 256) a depthwise tile needs 8 * 150 * 2 = 2400
        "depthwise banks": dict(base, kind=KIND_DEPTHWISE, in_h=150, in_w=9, out_h=150, out_w=9),
        # a chunk of a split reduction: its beats must fit the partial-sum buffer
        "partial sums": dict(base, in_h=17, in_w=17, out_h=17, out_w=17, part=Part.FIRST),
        "split depthwise": dict(base, kind=KIND_DEPTHWISE, part=Part.LAST),
    }
    return {name: host.encode_command(c, **f) for name, f in bad.items()}


def _refused_then_clean(refused, case, target, seed):
    """Send the raw ``refused`` commands (with junk data), then the named case: every refused
    command raises ``error``, takes no data, makes no output; the case after them is clean."""
    junk = dict(weights=[1, 2], params=[3], acts=[4, 5, 6])
    tiles = [host.Tile(cfg=word, n_out=0, fields={"name": name}, **junk)
             for name, word in refused.items()]
    layer = core_cases.make(case)
    plan = host.plan_layer(**layer, config=DEFAULT)
    res = host.run_plans([tiles, plan.tiles], config=DEFAULT, target=target, stall=STALL,
                         seed=seed)
    for tile, r in zip(tiles, res[0]):
        name = tile.fields["name"]
        assert r["done"] and r["error"] == 1, f"{name}: {r}"
        assert r["outputs"] == [], f"{name}: produced output"
        assert r["accepted"] == {"cfg": 1, "weights": 0, "params": 0, "act_in": 0}, (name, r)
    assert all(r["error"] == 0 for r in res[1])
    _check(layer, plan.assemble(res[1]), f"{case} after refused commands on {target}")


@pytest.mark.parametrize("target", SOAK_ICARUS)
def test_refused_commands_then_clean_layer(target):
    """A command the build cannot hold raises ``error``, takes no data, makes no output."""
    _refused_then_clean(_refused_commands(), "std_k3_s2_p1_odd", target, seed=2)


@pytest.mark.parametrize("target", TARGETS)
def test_reset_mid_layer_then_clean_layer(target):
    first = core_cases.make("std_k5_s2_p0")
    second = core_cases.make("dw_k3_s1_p1")
    p1 = host.plan_layer(**first, config=DEFAULT)
    p2 = host.plan_layer(**second, config=DEFAULT)
    p1.tiles[0].reset_after = 250          # mid-computation: outputs have started
    res = host.run_plans([p1.tiles, p2.tiles], config=DEFAULT, target=target, stall=STALL, seed=4)
    assert res[0][0]["reset"] and not res[0][0]["done"]
    assert 0 < len(res[0][0]["outputs"]) < p1.tiles[0].n_out
    _check(second, p2.assemble(res[1]), f"layer after reset on {target}")


def test_shared_requantizer_build():
    """One requantiser for all rows: outputs unchanged; pointwise layers (reduction shorter
    than ``rows``) are throttled by it, not corrupted."""
    cc = CoreConfig(pe=PSCConfig(lanes=4, rows=4, requantizers=1), fmap_depth=256,
                    weight_depth=64, param_depth=8)
    layers = [core_cases.make("pw_odd"), core_cases.make("std_k3_s2_p1_odd"),
              core_cases.make("dw_k3_s1_p1")]
    results = host.run_layers(layers, config=cc, target="verilator", stall=STALL, seed=9)
    for i, (layer, (y, _)) in enumerate(zip(layers, results)):
        _check(layer, y, f"shared-requantiser layer {i}")


# depthwise='pixels' on 4x4 with small buffers: banked input, tiles, stride 2,
# odd channels, columns that do not fill the last block of rows pixels; with the
# read register stage (the ECP5 target's) in front of the MAC array
TINY_PIX = CoreConfig(pe=PSCConfig(lanes=4, rows=4, depthwise="pixels"), fmap_depth=128,
                      weight_depth=64, param_depth=4, read_register=True)


@pytest.mark.parametrize("target", SOAK_ICARUS)
def test_depthwise_pixels_build(target):
    r = np.random.default_rng(12)
    layers = [
        core_cases._layer(r, 10, 10, 9, 11, 3, 1, 1, groups=10, relu=True),  # chunks + bands
        core_cases._layer(r, 5, 7, 6, 7, 3, 1, 1),                            # standard between
        core_cases._layer(r, 7, 7, 11, 13, 3, 2, 1, groups=7),                # stride 2
        core_cases._layer(r, 4, 4, 7, 6, 5, 1, 2, groups=4, weights="ini"),   # 5x5, 1 block + 2
        core_cases._layer(r, 3, 3, 5, 5, 1, 1, 0, groups=3),                  # 1x1: drain holds
    ]
    plans = _reset_then_layers(TINY_PIX, layers, target, "pixels")
    assert len(plans[0].tiles) > 1 and len(plans[2].tiles) > 1


def _reset_then_layers(cc, layers, target, label):
    """A reset in the middle of the first tile of ``layers[2]`` (a stride-2 depthwise
    layer), then every layer from a clean start, each checked; returns the plans."""
    plans = [host.plan_layer(**layer, config=cc) for layer in layers]
    reset_plan = host.plan_layer(**layers[2], config=cc)
    reset_plan.tiles[0].reset_after = 60
    res = host.run_plans([reset_plan.tiles[:1]] + [p.tiles for p in plans], config=cc,
                         target=target, stall=STALL, seed=6)
    assert res[0][0]["reset"] and not res[0][0]["done"]
    for i, (layer, plan, r_) in enumerate(zip(layers, plans, res[1:])):
        _check(layer, plan.assemble(r_), f"{label} layer {i} on {target}")
    return plans


# depthwise='channels' on 4 lanes x 3 rows (neither a square nor a power of two) with
# small buffers: input banked by channel group, tiles over groups of 12 channels and
# bands, padding channels, stride 2, 5x5, 1x1 (the drain holds the array), standard and
# pointwise layers on the banked buffer; with the read register stage
TINY_CHN = CoreConfig(pe=PSCConfig(lanes=4, rows=3, depthwise="channels"), fmap_depth=3 * 64,
                      weight_depth=64, param_depth=8, read_register=True, psum_depth=16)


@pytest.mark.parametrize("target", SOAK_ICARUS)
def test_depthwise_channels_build(target):
    r = np.random.default_rng(13)
    layers = [
        core_cases._layer(r, 30, 30, 9, 11, 3, 1, 1, groups=30, relu=True),  # chunks + bands
        core_cases._layer(r, 5, 7, 6, 7, 3, 1, 1),                            # standard between
        core_cases._layer(r, 7, 7, 11, 13, 3, 2, 1, groups=7),                # stride 2
        core_cases._layer(r, 13, 13, 7, 6, 5, 1, 2, groups=13, weights="ini"),  # 5x5
        core_cases._layer(r, 3, 3, 5, 5, 1, 1, 0, groups=3),                  # 1x1: drain holds
        core_cases._layer(r, 9, 6, 5, 7, 1, relu=True),                       # pointwise
    ]
    plans = _reset_then_layers(TINY_CHN, layers, target, "channels")
    assert plans[0].kind == KIND_DEPTHWISE and len(plans[0].tiles) > 2


# depthwise='shifted' on the UP5K's 6 lanes x 2 rows with small buffers: two pixels per
# beat from one input word (no banks), groups of 6 channels of 3 output groups each, tiles
# over groups and bands, odd widths (a block's second pixel dropped), padding channels,
# stride 2, 5x5, 1x1 (the drain holds the array), standard and pointwise layers between;
# each command beat carries its derived sizes (given_sizes)
TINY_SHF = CoreConfig(pe=PSCConfig(lanes=6, rows=2, depthwise="shifted"), fmap_depth=256,
                      weight_depth=96, param_depth=16, psum_depth=16, given_sizes=True)


@pytest.mark.parametrize("target", SOAK_ICARUS)
def test_depthwise_shifted_build(target):
    r = np.random.default_rng(14)
    layers = [
        core_cases._layer(r, 26, 26, 9, 11, 3, 1, 1, groups=26, relu=True),  # chunks + bands
        core_cases._layer(r, 5, 7, 6, 7, 3, 1, 1),                            # standard between
        core_cases._layer(r, 7, 7, 11, 13, 3, 2, 1, groups=7),                # stride 2
        core_cases._layer(r, 13, 13, 7, 6, 5, 1, 2, groups=13, weights="ini"),  # 5x5
        core_cases._layer(r, 3, 3, 5, 5, 1, 1, 0, groups=3),                  # 1x1: drain holds
        core_cases._layer(r, 9, 6, 5, 7, 1, relu=True),                       # pointwise
    ]
    plans = _reset_then_layers(TINY_SHF, layers, target, "shifted")
    assert plans[0].kind == KIND_DEPTHWISE and len(plans[0].tiles) > 2


def _overflowing_commands():
    """Commands whose derived sizes overflow the core's registers (DEFAULT: 12-bit input-word
    and reduction sizes, 9-bit weight-block count, 25-bit output count, 25-bit setup adder).
    Each one would pass the checks if its product wrapped; the comment says to what."""
    c = DEFAULT
    one = dict(in_h=1, in_w=1, out_h=1, out_w=1, gin=1, gout=1, k=1)
    bad = {
        # MAX_OUTPUTS + 1 output beats: exact in the 25-bit product, only the
        # output-count check refuses it
        "outputs 2**24": dict(one, in_h=4, in_w=4, out_h=4096, out_w=4096, k=3,
                              pad_top=1, pad_left=1),
        # 1024 * 1024 * 32 = 2**25: wraps to 0 in 25 bits
        "outputs 2**25": dict(one, in_h=4, in_w=4, out_h=1024, out_w=1024, gout=32),
        # 0x8001 * 1024 = 2**25 + 1024: the shifted multiplicand leaves the adder's
        # 25 bits while a factor bit is still to come; wraps to 1024
        "outputs, multiplicand out of the adder": dict(one, in_h=4, in_w=4, out_h=0x8001,
                                                       out_w=1024),
        # in_w * gin = 4096 = 2**12 wraps to 0 in the 12-bit words-per-row register
        "input words per row wrap": dict(one, in_w=4096),
        # 64 * 64 * 1 = 2**12 wraps to 0 in the 12-bit input-word count
        "input words wrap": dict(one, in_h=64, in_w=64),
        # 32 groups x 16 blocks = 512 = 2**9 wraps to 0 in the 9-bit weight-block count
        "weight blocks wrap": dict(one, gin=16, gout=32),
        # 42 groups x 7x7 = 2058 beats > max_reduction / lanes = 2048; with keep, so
        # no weight-block check can refuse it first
        "reduction (keep)": dict(one, gin=42, k=7, keep=1),
        "all fields at their maximum": dict(in_h=0xFFFF, in_w=0xFFFF, out_h=0xFFFF,
                                            out_w=0xFFFF, gin=0xFFFF, gout=0xFFFF, k=7),
    }
    return {name: host.encode_command(c, **f) for name, f in bad.items()}


@pytest.mark.parametrize("target", SOAK_ICARUS)
def test_refused_overflowing_commands_then_clean_layer(target):
    """Products of a command's fields that overflow the core's size registers saturate: the
    command is refused (``error``, no data taken, no output), never wrapped into a small one."""
    _refused_then_clean(_overflowing_commands(), "pw_odd", target, seed=3)


def test_host_never_plans_more_outputs_than_the_core_counts():
    """A build whose buffers admit a tile of more than MAX_OUTPUTS output beats: 1x1 conv,
    1024 output groups of one channel over a 128x128 map = 2**24 beats in one tile."""
    from psc.hw.core import MAX_OUTPUTS
    cc = CoreConfig(pe=PSCConfig(lanes=1, rows=1), fmap_depth=1 << 14, weight_depth=1024,
                    param_depth=1024)
    r = np.random.default_rng(1)
    w = r.integers(-128, 128, size=(1024, 1, 1, 1))
    try:
        plan = host.plan_layer(r.integers(-128, 128, size=(1, 128, 128)), w, w, None, 1, 0,
                               config=cc)
    except host.LayerError:
        return                         # refusing the layer is acceptable too
    assert max(t.n_out for t in plan.tiles) <= MAX_OUTPUTS
    assert sum(t.n_out for t in plan.tiles) == 1024 * 128 * 128


@pytest.mark.parametrize("name", sorted(TARGET_PRESETS))
def test_shipped_target_core(name):
    """The synthesis targets' own cores, as synthesised: hand-instantiated DSP cells
    (with their simulation models; on the UP5K the requantiser's SB_MAC16 too), 26-bit
    accumulators on the UP5K, ``read_register`` on ECP5; standard, strided depthwise
    (the shifted mapping on the UP5K, its commands carrying their sizes; the channels mapping on the
    ECP5), pointwise and fully connected layers (each computing while its weights load:
    ``early_weights``) with stalls, bit-exact on Verilator."""
    cc = PRESETS[TARGET_PRESETS[name]]
    r = np.random.default_rng(21)
    layers = [core_cases._layer(r, 10, 9, 7, 6, 3, 1, 1, relu=True),
              core_cases._layer(r, 9, 9, 5, 5, 3, 2, 1, groups=9),
              core_cases.make("pw_odd"), core_cases.make("fc")]
    # stalls heavier than STALL: a tap issued one weight block too early reads a block that
    # has not arrived only when the weights' stream pauses long enough
    results = host.run_layers(layers, config=cc, target="verilator", stall=0.5, seed=8)
    for i, (layer, (y, _)) in enumerate(zip(layers, results)):
        _check(layer, y, f"{name} layer {i}")


@pytest.mark.parametrize("name", sorted(TARGET_PRESETS))
def test_shipped_target_slow_tile_is_not_a_hang(name):
    """A valid tile that takes long per output beat (a 3x3 reduction over 64 input
    channels: well over 64 cycles per output on these builds) finishes, and a tile
    whose input stream is short (the core waits for ever) trips the watchdog: it comes
    from the plan's own bound on the tile's cycles (``psc.host.scheduler.cycle_bound``),
    not from a rate per output beat."""
    cc = PRESETS[TARGET_PRESETS[name]]
    layer = core_cases._layer(np.random.default_rng(3), 64, 8, 6, 6, 3, 1, 1)
    plan = host.plan_layer(**layer, config=cc)
    bound = sum(host.scheduler.cycle_bound(cc, t.fields, 0) for t in plan.tiles)
    assert bound / sum(t.n_out for t in plan.tiles) > 64   # what a per-beat watchdog allowed
    (y, _), = host.run_layers([layer], config=cc, target="verilator", stall=STALL, seed=2)
    _check(layer, y, f"{name} 3x3 over 64 channels")
    short = dataclasses.replace(plan.tiles[0], acts=plan.tiles[0].acts[:-1])
    with pytest.raises(RuntimeError, match="tile 0: no done after"):
        host.api.run_plans([[short]], config=cc, target="verilator", stall=STALL, seed=2)
