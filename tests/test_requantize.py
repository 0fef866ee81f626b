"""psc.hw.requantize.Requantizer in the Amaranth simulator against psc.model.golden.requantize:
random vectors and corners (M = 0 and max, S = 0 and at least the product width, most
negative/positive accumulators, relu), random input gaps and output stalls, parallel and
time-shared builds, other widths (other digit counts and adder-tree depths); and the
``latency`` and throughput the docstring states, measured."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from psc import golden
from psc.config import PSCConfig
from psc.hw.requantize import Requantizer, requant_input_layout

CONFIGS = {
    "default": PSCConfig(rows=3),
    "shared2": PSCConfig(rows=4, requantizers=2),
    "shared1": PSCConfig(rows=3, requantizers=1),
    # 2 acc digits (16 + a 1-bit signed top) x 2 M digits (8 + 1)
    "narrow": PSCConfig(rows=2, act_width=4, weight_width=4, acc_width=17, mult_width=9,
                        max_reduction=64),
    # one digit each: the product is a single partial product, no adder level
    "single": PSCConfig(rows=2, act_width=4, weight_width=4, acc_width=12, mult_width=5,
                        max_reduction=16),
    # 3 x 3 digits: four adder levels
    "wide": PSCConfig(rows=2, act_width=6, acc_width=36, mult_width=20, max_reduction=1 << 14),
    # digit-serial multiply (requant_mult_bits): 4 digits of 4 bits, parallel rows
    "serial4": PSCConfig(rows=2, requant_mult_bits=4),
    # ... time-shared, 2 digits of 8 bits (the UP5K's option)
    "shared_serial8": PSCConfig(rows=4, requantizers=2, requant_mult_bits=8),
    # ... 5-bit digits that do not divide mult_width (4 digits, the top one padded)
    "shared_serial5": PSCConfig(rows=3, requantizers=1, requant_mult_bits=5),
    # ... one bit per cycle, odd widths
    "serial1": PSCConfig(rows=1, act_width=4, weight_width=4, acc_width=17, mult_width=9,
                         max_reduction=64, requant_mult_bits=1),
}


def _vectors(cfg, n, seed):
    """``n`` beats of (acc, mult, shift), ``rows`` each, corners first, then random."""
    rng = np.random.default_rng(seed)
    rows, aw, mw = cfg.rows, cfg.acc_width, cfg.mult_width
    amin, amax, mmax = -(1 << (aw - 1)), (1 << (aw - 1)) - 1, (1 << mw) - 1
    pw = aw + mw + 1
    acc = rng.integers(amin, amax + 1, size=(n, rows))
    mult = rng.integers(0, mmax + 1, size=(n, rows))
    shift = rng.integers(0, min(pw + 3, 63), size=(n, rows))
    # corners, cycled over the rows: extreme accumulators against M = 0 / max
    # and S = 0 / just below, at and above the product width / 62
    corner_acc = [amin, amax, 0, -1, 1, amin + 1]
    corner_mult = [0, mmax, 1, mmax - 1 if mmax > 1 else 1]
    corner_shift = sorted({0, 1, pw - 2, pw - 1, pw, pw + 1, 62})
    corners = [(a, mu, s) for a in corner_acc for mu in corner_mult for s in corner_shift]
    # corner k goes to beat k // rows, row k % rows, within the first half of the beats
    for k, (a, mu, s) in enumerate(corners[:(n // 2) * rows]):
        acc[k // rows, k % rows], mult[k // rows, k % rows], shift[k // rows, k % rows] = a, mu, s
    # results near the saturation bounds: small accumulators, moderate shifts
    band = slice(n // 2, n // 2 + n // 4)
    acc[band] = rng.integers(-(1 << min(aw - 1, 12)), 1 << min(aw - 1, 12),
                             size=acc[band].shape)
    shift[band] = rng.integers(0, min(mw + 6, 62), size=shift[band].shape)
    # results on and next to the saturation bounds and zero: pick y, M, S and
    # the accumulators whose product lands within a few units of y * 2**S
    lo, hi = -(1 << (cfg.act_width - 1)), (1 << (cfg.act_width - 1)) - 1
    for b in range(n // 2 + n // 4, n):
        for r in range(rows):
            y = int(rng.choice([lo - 1, lo, lo + 1, -1, 0, 1, hi - 1, hi, hi + 1]))
            mu = int(rng.integers(1, mmax + 1))
            s = int(rng.integers(0, 8))
            a = (y << s) // mu + int(rng.integers(-2, 3))
            if amin <= a <= amax:
                acc[b, r], mult[b, r], shift[b, r] = a, mu, s
    return acc, mult, shift


def _reference(cfg, acc, mult, shift, relu):
    return np.stack([
        golden.requantize(acc[i].reshape(-1, 1, 1), mult[i], shift[i], act_width=cfg.act_width,
                          relu=relu, mult_width=cfg.mult_width)[:, 0, 0]
        for i in range(len(acc))])


def _run(cfg, acc, mult, shift, relu, *, p_valid=1.0, p_ready=1.0, seed=0):
    """Drive the beats through the DUT; ``(outputs, accept_cycles, output_cycles, dut)``."""
    dut = Requantizer(cfg)
    layout = requant_input_layout(cfg)
    rng = np.random.default_rng(seed)
    n = len(acc)
    got, accepted, emitted = [], [], []

    async def bench(ctx):
        ctx.set(dut.relu, int(relu))
        i = cycle = 0
        while len(got) < n and cycle < 40 * n + 100:
            if i < n:
                ctx.set(dut.i.payload, layout.const({
                    "acc": acc[i].tolist(), "mult": mult[i].tolist(),
                    "shift": shift[i].tolist()}))
            valid = i < n and rng.random() < p_valid
            ready = rng.random() < p_ready
            ctx.set(dut.i.valid, int(valid))
            ctx.set(dut.o.ready, int(ready))
            _, _, i_ready, o_valid, payload = await ctx.tick().sample(
                dut.i.ready, dut.o.valid, dut.o.payload)
            if o_valid and ready:
                got.append([int(v) for v in payload])
                emitted.append(cycle)
            if valid and i_ready:
                accepted.append(cycle)
                i += 1
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got), accepted, emitted, dut


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("relu", [False, True])
def test_matches_golden_with_stalls(name, relu):
    cfg = CONFIGS[name]
    acc, mult, shift = _vectors(cfg, 120, seed=2 * list(CONFIGS).index(name) + relu)
    got, _, _, _ = _run(cfg, acc, mult, shift, relu, p_valid=0.8, p_ready=0.6, seed=5)
    ref = _reference(cfg, acc, mult, shift, relu)
    assert got.shape == ref.shape
    bad = np.argwhere(got != ref)
    assert not len(bad), (
        f"{len(bad)} mismatches, first at beat {bad[0][0]} row {bad[0][1]}: "
        f"acc={acc[tuple(bad[0])]} M={mult[tuple(bad[0])]} S={shift[tuple(bad[0])]} "
        f"got {got[tuple(bad[0])]} want {ref[tuple(bad[0])]}")


@pytest.mark.parametrize("name", ["default", "shared2", "shared1", "wide", "single", "serial4",
                                  "shared_serial8", "shared_serial5"])
def test_latency_and_throughput(name):
    """One beat into an idle pipeline comes out ``latency`` cycles after it was accepted;
    a full stream with no stalls is accepted at one beat per ``cycles_per_beat`` cycles
    (``rows / requantizers * ceil(mult_width / requant_mult_bits)``)."""
    cfg = CONFIGS[name]
    acc, mult, shift = _vectors(cfg, 1, seed=1)
    _, accepted, emitted, dut = _run(cfg, acc, mult, shift, False)
    assert emitted[0] - accepted[0] == dut.latency
    n = dut.cycles_per_beat
    d = 1 if cfg.requant_mult_bits is None else -(-cfg.mult_width // cfg.requant_mult_bits)
    assert n == cfg.rows // cfg.requant_parallel * d
    acc, mult, shift = _vectors(cfg, 24, seed=2)
    got, accepted, emitted, _ = _run(cfg, acc, mult, shift, True)
    # steady state (the first beat is taken into the serialiser's hold register
    # sooner when the multiply is digit-serial)
    assert np.diff(accepted).tolist()[1:] == [n] * 22
    assert np.diff(emitted).tolist() == [n] * 23
    assert np.array_equal(got, _reference(cfg, acc, mult, shift, True))


@pytest.mark.soak
def test_core_with_digit_serial_requantizer():
    """The whole core (Verilator, random stalls) with digit-serial requantisers
    (``requant_mult_bits=4``: 2 rows per requantiser x 4 digits = 8 cycles per output
    beat): outputs equal the golden model, including a pointwise layer that the
    requantiser throttles. (The UP5K target's core, one requantiser with 27-bit sums,
    runs in tests/test_core_sim.py::test_shipped_target_core.)"""
    import core_cases
    from psc import host
    from psc.hw.core import CoreConfig

    cc = CoreConfig(pe=PSCConfig(lanes=4, rows=4, requantizers=2, requant_mult_bits=4),
                    fmap_depth=256, weight_depth=64, param_depth=8)
    layers = [core_cases.make("pw_odd"), core_cases.make("std_k3_s2_p1_odd")]
    results = host.run_layers(layers, config=cc, target="verilator", stall=0.25, seed=11)
    for i, (layer, (y, _)) in enumerate(zip(layers, results)):
        ref = core_cases.expected(layer)
        assert np.array_equal(y, ref), f"layer {i}: {np.count_nonzero(y != ref)} outputs differ"


@pytest.mark.parametrize("name", ["shared2", "shared_serial8"])
def test_shared_input_ready_ignores_output_ready(name):
    """Time-shared: ``i.ready`` depends on registers only, never on ``o.ready`` in the same
    cycle (on a board the UART bridge's ready must not reach back into the core), while
    beats flow through with random stalls."""
    cfg = CONFIGS[name]
    dut = Requantizer(cfg)
    layout = requant_input_layout(cfg)
    acc, mult, shift = _vectors(cfg, 12, seed=4)
    rng = np.random.default_rng(6)
    seen = set()

    async def bench(ctx):
        i = 0
        for _ in range(300):
            if i < len(acc):
                ctx.set(dut.i.payload, layout.const({
                    "acc": acc[i].tolist(), "mult": mult[i].tolist(), "shift": shift[i].tolist()}))
            ctx.set(dut.i.valid, int(i < len(acc)))
            ready = []
            for o_ready in (0, 1):
                ctx.set(dut.o.ready, o_ready)
                ready.append(ctx.get(dut.i.ready))
            assert ready[0] == ready[1], f"i.ready follows o.ready at beat {i}"
            seen.add(ready[0])
            r = int(rng.random() < 0.5)
            ctx.set(dut.o.ready, r)
            if i < len(acc) and ctx.get(dut.i.ready):
                i += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {0, 1}
