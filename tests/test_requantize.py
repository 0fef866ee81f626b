"""psc.hw.requantize.Requantizer in the Amaranth simulator against psc.model.golden.requantize:
random vectors and corners (M = 0 and max, S = 0 and at least the product width, most
negative/positive accumulators, relu), random input gaps and output stalls, parallel and
time-shared builds, other widths (other digit counts and adder-tree depths); and the
``latency`` and throughput the docstring states, measured."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from psc.config import PSCConfig
from psc.hw.requantize import Requantizer, requant_input_layout
from tb.psc_model import requant_expected, requant_vectors

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
    acc, mult, shift = requant_vectors(cfg, 120, seed=2 * list(CONFIGS).index(name) + relu)
    got, _, _, _ = _run(cfg, acc, mult, shift, relu, p_valid=0.8, p_ready=0.6, seed=5)
    ref = requant_expected(cfg, acc, mult, shift, relu)
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
    acc, mult, shift = requant_vectors(cfg, 1, seed=1)
    _, accepted, emitted, dut = _run(cfg, acc, mult, shift, False)
    assert emitted[0] - accepted[0] == dut.latency
    n = dut.cycles_per_beat
    d = 1 if cfg.requant_mult_bits is None else -(-cfg.mult_width // cfg.requant_mult_bits)
    assert n == cfg.rows // cfg.requant_parallel * d
    acc, mult, shift = requant_vectors(cfg, 24, seed=2)
    got, accepted, emitted, _ = _run(cfg, acc, mult, shift, True)
    # steady state (the first beat is taken into the serialiser's hold register
    # sooner when the multiply is digit-serial)
    assert np.diff(accepted).tolist()[1:] == [n] * 22
    assert np.diff(emitted).tolist() == [n] * 23
    assert np.array_equal(got, requant_expected(cfg, acc, mult, shift, True))


@pytest.mark.soak
def test_core_with_digit_serial_requantizer():
    """The whole core (Verilator, random stalls) with digit-serial requantisers
    (``requant_mult_bits=4``: 2 rows per requantiser x 4 digits = 8 cycles per output
    beat): outputs equal the golden model, including a pointwise layer that the
    requantiser throttles. (The UP5K target's core, one requantiser on SB_MAC16, runs in
    tests/test_core_sim.py::test_shipped_target_core.)"""
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
    acc, mult, shift = requant_vectors(cfg, 12, seed=4)
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


# --- the SB_MAC16 multiply (requant_multiplier="ice40_mac16"), on Icarus and Verilator ------

#: Requantisers on SB_MAC16, which only the Verilog simulators run (with Yosys's model of the
#: cell): two 16-bit halves of a 32-bit sum, one row per requantiser; a time-shared one on
#: 27-bit sums (an 11-bit signed top half); one 16-bit half only (no sum of the halves).
DUAL = "ice40_dual8x8"
MAC16 = {
    "mac16": PSCConfig(rows=2, requant_multiplier="ice40_mac16", multiplier=DUAL),
    "mac16_shared": PSCConfig(rows=3, requantizers=1, acc_width=27, max_reduction=2048,
                              requant_multiplier="ice40_mac16", multiplier=DUAL),
    "mac16_narrow": PSCConfig(rows=2, act_width=4, weight_width=4, acc_width=16, mult_width=9,
                              max_reduction=64, requant_multiplier="ice40_mac16", multiplier=DUAL),
}


class _SwappedHalves(Requantizer):
    """Broken on purpose: the bottom half of each sum taken as signed, the top as unsigned."""

    @staticmethod
    def _mac16(a_signed):
        from psc.hw.ice40_mul import Ice40Mul16
        return Ice40Mul16(not a_signed)


def _mac16_bench(export_verilog, name, sim, make=Requantizer):
    from psc.host.sim import dsp_models
    from tb.psc_model import config_env
    from tb.runner import run_cocotb
    cfg = MAC16[name]
    tag = f"requant-{name}-{make.__name__.lower()}"
    src = export_verilog(lambda: make(cfg), "requantizer", tag)
    models = dsp_models(cfg, src.parent)          # Yosys's SB_MAC16, as the config asks
    env = config_env(cfg, "psc.hw.requantize:Requantizer", latency=Requantizer.latency_of(cfg))
    return run_cocotb("requantizer", [src, *models], "tb.test_requantize", sim, env=env,
                      tag=tag)


@pytest.mark.parametrize("name,sim", [("mac16", "icarus"), ("mac16_shared", "icarus"),
                                      ("mac16_narrow", "icarus"), ("mac16_shared", "verilator")])
def test_mac16_matches_golden(export_verilog, name, sim):
    """Every output of the SB_MAC16 requantiser against the model, under stalls and relu; its
    latency and throughput as its properties state; reset with beats in flight."""
    _mac16_bench(export_verilog, name, sim)


def test_mac16_bench_catches_a_broken_multiply(export_verilog):
    """The bench fails, naming the beat's inputs, when a half's signedness is wrong."""
    from psc.host.sim import SimulationFailed
    with pytest.raises(SimulationFailed, match=r"acc=\["):
        _mac16_bench(export_verilog, "mac16", "icarus", make=_SwappedHalves)


@pytest.mark.parametrize("changes,match", [
    (dict(requant_multiplier="dsp"),
     r"requant_multiplier must be one of 'adds', 'ice40_mac16', not 'dsp'"),
    (dict(requant_multiplier="ice40_mac16", multiplier=DUAL, requant_mult_bits=4),
     r"requant_mult_bits must be None with requant_multiplier='ice40_mac16' .*, not 4"),
    (dict(requant_multiplier="ice40_mac16", multiplier=DUAL, mult_width=17),
     r"mult_width must be at most 16 with requant_multiplier='ice40_mac16' .*, not 17"),
    (dict(requant_multiplier="ice40_mac16", multiplier=DUAL, acc_width=33),
     r"acc_width must be at most 32 with requant_multiplier='ice40_mac16' .*, not 33"),
    (dict(requant_multiplier="ice40_mac16", multiplier="ecp5_mult18"),
     r"requant_multiplier='ice40_mac16' needs .* \(multiplier='ice40_dual8x8'\), not "
     r"multiplier='ecp5_mult18'"),
    (dict(requant_multiplier="ice40_mac16", multiplier="generic"),
     r"requant_multiplier='ice40_mac16' needs .*, not multiplier='generic'"),
])
def test_mac16_config_checks(changes, match):
    with pytest.raises(ValueError, match=match):
        PSCConfig(**changes)


def test_mac16_config_in_a_core():
    """A core's requantiser takes its partial sums (``psum_width`` bits): at most 32 on
    SB_MAC16; the field is written into a configuration's dict only where it is set."""
    from psc.config import CoreConfig
    pe = PSCConfig(requant_multiplier="ice40_mac16", multiplier=DUAL)
    with pytest.raises(ValueError, match=r"psum_width must be at most 32 with "
                                         r"requant_multiplier='ice40_mac16' .*, not 40"):
        CoreConfig(pe=pe, psum_width=40)
    assert CoreConfig(pe=pe, psum_depth=0, psum_width=40).requant_config.acc_width == 32
    assert "requant_multiplier" not in PSCConfig().to_dict()
    assert PSCConfig.from_dict(pe.to_dict()) == pe
    assert PSCConfig.from_dict(PSCConfig().to_dict()) == PSCConfig()
    assert pe.hand_dsps and not PSCConfig().hand_dsps


def test_mac16_multiplier_refuses_a_non_bool():
    from psc.hw.ice40_mul import Ice40Mul16
    from psc.model.checks import BadTypeError
    with pytest.raises(BadTypeError, match=r"a_signed must be True or False, not 1"):
        Ice40Mul16(1)
