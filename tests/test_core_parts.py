# amaranth: UnusedElaboratable=no
"""Unit tests of the parts of PSCConvCore (psc.hw.core.*), each on the Amaranth simulator.

Every part runs alone, its neighbours replaced by the testbench (or by a
plain memory), against a Python statement of what it should do: the
derived sizes and checks of a command, the sequencer's tap order against
the stream order psc.host.plan_layer packs, the input buffer's banks, the
weight/parameter loaders, the fetch's queue and padding mask and the
output's bias, requantiser and depthwise pixel order.
"""

import itertools
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from psc import host
from psc.config import PSCConfig
from psc.hw.core import (KIND_DEPTHWISE, KIND_STANDARD, MAX_OUTPUTS, CoreConfig, LayerKind,
                         PSCConvCore, config_layout, param_layout, weight_layout)
from psc.hw.core.buffers import LoadBuffer
from psc.hw.core.fetch import Fetch
from psc.hw.core.input_buffer import InputAddressMap, InputBuffer
from psc.hw.core.layouts import bank_count, fetch_layout, output_groups, sizes_layout
from psc.hw.core.output import OutputStage
from psc.hw.core.sequencer import Sequencer
from psc.hw.requantize import Requantizer
from psc.hw.core.setup import (CommandSetup, CycleCounters, DerivedSizes, command_fields,
                               command_layout, derived_sizes, setup_cycles, size_factors)
from psc.model import golden
from psc.model.packing import pack_payload
from psc.presets import preset

#: One bank, psc weights.
DIAG = CoreConfig(pe=PSCConfig(lanes=2, rows=2, act_width=8, weight_width=8, acc_width=24,
                               mult_width=8, max_reduction=128),
                  fmap_depth=256, weight_depth=64, param_depth=8)
#: Depthwise layers on the whole array: four banks.
PIX = CoreConfig(pe=PSCConfig(lanes=4, rows=4, act_width=8, weight_width=8, acc_width=24,
                              mult_width=8, max_reduction=128, depthwise="pixels"),
                 fmap_depth=256, weight_depth=64, param_depth=8)


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def _fields(**kw):
    f = {"in_h": 1, "in_w": 1, "out_h": 1, "out_w": 1, "gin": 1, "gout": 1, "k": 1, "stride": 1,
         "pad_top": 0, "pad_left": 0, "kind": KIND_STANDARD, "relu": 0, "keep": 0}
    f.update(kw)
    return f


def _sizes(cc, f):
    """The derived sizes of command ``f`` (the model DerivedSizes must match; 0 for those
    the build does not use) and its ``ws``."""
    sizes = dict({name: 0 for name, _ in sizes_layout(cc)}, **derived_sizes(cc, f))
    return sizes, size_factors(cc, f).get("ws", 0)


def _set_command(ctx, part, cc, f, *, with_sizes=True):
    """Drive the command ports a part shares with the core's setup."""
    ctx.set(part.cmd, config_layout(cc).const(f))
    dw = f["kind"] == KIND_DEPTHWISE
    if hasattr(part, "dw"):
        ctx.set(part.dw, dw)
    if hasattr(part, "dwp"):
        ctx.set(part.dwp, dw and cc.pe.depthwise == "pixels")
    if hasattr(part, "dwc"):
        ctx.set(part.dwc, dw and cc.pe.depthwise == "channels")
    if hasattr(part, "gin_e"):
        ctx.set(part.gin_e, 1 if dw else f["gin"])
    if hasattr(part, "gout_o"):
        ctx.set(part.gout_o, output_groups(cc, f["kind"], f["gout"]))
    sizes, ws = _sizes(cc, f)
    if with_sizes and hasattr(part, "sizes"):
        ctx.set(part.sizes, sizes_layout(cc).const(sizes))
    if hasattr(part, "ws"):
        ctx.set(part.ws, ws)
    return sizes, ws


# --- command setup -------------------------------------------------------------------

class _Control(wiring.Component):
    """CommandSetup with its DerivedSizes, wired as in the core (on a
    :attr:`~psc.config.CoreConfig.given_sizes` build, the sizes from the command beat)."""

    def __init__(self, cc):
        self.given = cc.given_sizes
        self.setup = CommandSetup(cc)
        self.sizes = DerivedSizes(cc)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.setup = setup = self.setup
        m.submodules.sizes = sizes = self.sizes
        if self.given:
            m.d.comb += sizes.given.eq(setup.cfg.payload.sizes)
        m.d.comb += [
            sizes.cmd.eq(setup.cmd), sizes.gin_e.eq(setup.gin_e), sizes.gout_o.eq(setup.gout_o),
            sizes.clear.eq(setup.accept), sizes.enable.eq(setup.sizing),
            setup.sizes.eq(sizes.sizes), setup.sizes_ready.eq(sizes.ready),
        ]
        return m


async def _command(ctx, setup, cc, f, *, timeout=2000):
    """Send command ``f``; returns (started, error, sizes) at its start or refusal."""
    ctx.set(setup.cfg.payload, command_layout(cc).const(command_fields(cc, f)))
    ctx.set(setup.cfg.valid, 1)
    assert ctx.get(setup.cfg.ready), "setup not idle"
    await ctx.tick()
    ctx.set(setup.cfg.valid, 0)
    assert ctx.get(setup.busy)
    for _ in range(timeout):
        if ctx.get(setup.start):
            return True, 0, ctx.get(setup.sizes)
        if ctx.get(setup.done):
            return False, ctx.get(setup.error), ctx.get(setup.sizes)
        assert ctx.get(setup.busy) and not ctx.get(setup.cfg.ready)
        await ctx.tick()
    raise AssertionError("command neither started nor refused")


GOOD = _fields(in_h=3, in_w=4, out_h=3, out_w=4, gin=2, gout=3, k=3, pad_top=1, pad_left=2)
BAD = {
    "k=2": dict(k=2),
    "stride 3": dict(stride=3),
    "pad_left >= k": dict(pad_left=3),
    "gout 0": dict(gout=0),
    "pointwise k=3": dict(kind=LayerKind.POINTWISE),
    "depthwise gin != gout": dict(kind=KIND_DEPTHWISE),
    "input words": dict(in_h=1000, in_w=1000),
    "weights": dict(gout=8, gin=4),
    "outputs": dict(out_h=65535, out_w=65535, gout=8),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_setup_refuses(name):
    dut = _Control(DIAG)
    setup = dut.setup
    f = dict(GOOD, **BAD[name])
    seen = {}

    async def bench(ctx):
        started, error, sizes = await _command(ctx, setup, DIAG, f)
        seen.update(started=started, error=error)
        # refused: done pulses for one cycle, error holds, back to idle
        await ctx.tick()
        assert not ctx.get(setup.done) and ctx.get(setup.error) and ctx.get(setup.cfg.ready)
        assert not ctx.get(setup.busy)

    _run(dut, bench)
    assert seen == {"started": False, "error": 1}


def test_setup_accepts_runs_and_ends():
    dut = _Control(DIAG)
    setup = dut.setup
    expect, _ = _sizes(DIAG, GOOD)

    async def bench(ctx):
        started, error, sizes = await _command(ctx, setup, DIAG, GOOD)
        assert started and not error
        assert {n: getattr(sizes, n) for n in expect} == expect
        await ctx.tick()
        assert ctx.get(setup.run) and ctx.get(setup.busy) and not ctx.get(setup.start)
        # the end: outputs and inputs done (registered a cycle), and not while loads
        # are pending; done then pulses for one cycle with the core idle again
        ctx.set(setup.outputs_done, 1)
        ctx.set(setup.inputs_done, 1)
        for _ in range(3):
            await ctx.tick()
            assert ctx.get(setup.run) and not ctx.get(setup.done)
        ctx.set(setup.loaded, 1)
        await ctx.tick()
        assert ctx.get(setup.done) and not ctx.get(setup.error) and ctx.get(setup.cfg.ready)
        # the next command is refused: error is its own
        started, error, _ = await _command(ctx, setup, DIAG, dict(GOOD, k=4))
        assert (started, error) == (False, 1)

    _run(dut, bench)


def _accepted_commands(cc, n, seed):
    """``n`` random commands ``cc`` accepts: every kind, with the sizes the builds allow."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.choice([KIND_STANDARD, LayerKind.POINTWISE, KIND_DEPTHWISE])
        k = 1 if kind == LayerKind.POINTWISE else rng.choice([1, 3, 5])
        stride = rng.choice([1, 2])
        in_h, in_w = rng.randint(1, 9), rng.randint(1, 9)
        gin = rng.randint(1, 3)
        gout = gin if kind == KIND_DEPTHWISE else rng.randint(1, 3)
        pt, pl = rng.randint(0, k - 1), rng.randint(0, k - 1)
        f = _fields(kind=kind, k=k, stride=stride, in_h=in_h, in_w=in_w, gin=gin, gout=gout,
                    pad_top=pt, pad_left=pl, out_h=max(1, (in_h + pt - k) // stride + 1),
                    out_w=max(1, (in_w + pl - k) // stride + 1))
        sizes, _ = _sizes(cc, f)
        gin_e = 1 if kind == KIND_DEPTHWISE else gin
        bank = cc.fmap_depth // bank_count(cc)
        if (sizes["n_in"] <= bank and sizes["n_dw"] <= bank and sizes["n_w"] <= cc.weight_depth
                and gin_e * k * k * cc.pe.lanes <= cc.pe.max_reduction
                and output_groups(cc, kind, gout) <= cc.param_depth):
            out.append(f)
    return out


@pytest.mark.parametrize("given", [False, True], ids=["computed", "given"])
@pytest.mark.parametrize("cc", [DIAG, PIX, preset("ecp5-25k")], ids=["diag", "pixels", "ecp5"])
def test_sizes_and_setup_cycles(cc, given):
    """Every derived size of random accepted commands, and the setup's cycles: the start
    comes ``setup_cycles + 3`` cycles after the command is taken (the chains, or with
    ``given`` the one cycle that stores the sizes given with the command; the cycle that
    sees them ready, the check and the start)."""
    cc = cc.replace(given_sizes=given)
    dut = _Control(cc)
    setup = dut.setup

    async def bench(ctx):
        for f in _accepted_commands(cc, 12, seed=hash(cc.pe.depthwise) & 0xFFFF):
            expect, _ = _sizes(cc, f)
            ctx.set(setup.cfg.payload, command_layout(cc).const(command_fields(cc, f)))
            ctx.set(setup.cfg.valid, 1)
            await ctx.tick()
            ctx.set(setup.cfg.valid, 0)
            cycles = 1
            while not ctx.get(setup.start):
                assert not ctx.get(setup.done), f"refused: {f}"
                await ctx.tick()
                cycles += 1
            sizes = ctx.get(setup.sizes)
            got = {n: getattr(sizes, n) for n in expect}
            assert got == expect, f"command {f}"
            assert cycles == setup_cycles(cc, f) + 3, f"command {f}: {cycles} cycles"
            await ctx.tick()
            for port in (setup.outputs_done, setup.inputs_done, setup.loaded):
                ctx.set(port, 1)
            while not ctx.get(setup.done):
                await ctx.tick()
            for port in (setup.outputs_done, setup.inputs_done, setup.loaded):
                ctx.set(port, 0)
            await ctx.tick()

    _run(dut, bench)


@pytest.mark.parametrize("given", [False, True], ids=["computed", "given"])
def test_sizes_saturate(given):
    """Huge fields saturate their products, never wrap: refused, with all-ones sizes, each
    as :func:`derived_sizes` has it (so that sizes a host gives are refused alike)."""
    cc = DIAG.replace(given_sizes=given)
    dut = _Control(cc)
    setup = dut.setup
    huge = dict(GOOD, in_h=0xFFFF, in_w=0xFFFF, gin=0xFFFF, out_h=0xFFFF, out_w=0xFFFF,
                gout=0xFFFF, pad_top=2)
    layout = sizes_layout(cc)
    expect = derived_sizes(cc, huge)

    async def bench(ctx):
        started, error, sizes = await _command(ctx, setup, cc, huge)
        assert (started, error) == (False, 1)
        for name in ("wg", "n_in", "ow", "n_out", "n_w", "pl_g"):
            assert getattr(sizes, name) == (1 << layout[name].shape.width) - 1, name
        assert {n: getattr(sizes, n) for n in expect} == expect

    _run(dut, bench)


def test_cycle_counters():
    dut = CycleCounters()

    async def bench(ctx):
        script = [dict(busy=1), dict(busy=1, run=1, beat=1), dict(busy=1, run=1, waiting=1),
                  dict(busy=1, beat=1, waiting=1), dict(run=1, beat=1), dict()]
        for step in script:
            for name in ("busy", "run", "beat", "waiting"):
                ctx.set(getattr(dut, name), step.get(name, 0))
            await ctx.tick()
        assert (ctx.get(dut.total), ctx.get(dut.compute), ctx.get(dut.stall)) == (4, 2, 1)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        assert (ctx.get(dut.total), ctx.get(dut.compute), ctx.get(dut.stall)) == (0, 0, 0)

    _run(dut, bench)


# --- sequencer ---------------------------------------------------------------------

def _expected_taps(cc, f, sizes, ws):
    """The taps of command ``f`` in issue order: (ix, iy, lin or None, waddr, first, last)."""
    k, s, gin, R = f["k"], f["stride"], f["gin"], cc.pe.rows
    pix = f["kind"] == KIND_DEPTHWISE and cc.pe.depthwise == "pixels"
    gin_e = 1 if f["kind"] == KIND_DEPTHWISE else gin
    ox_range = range(0, f["out_w"], R) if pix else range(f["out_w"])
    taps = []
    for oy, ox, j, ky, kx, g in itertools.product(range(f["out_h"]), ox_range, range(f["gout"]),
                                                  range(k), range(k), range(gin_e)):
        iy, ix = oy * s - f["pad_top"] + ky, ox * s - f["pad_left"] + kx
        if pix:
            lin = j * sizes["plane"] + iy * ws          # columns come from the bank map
        elif 0 <= iy < f["in_h"] and 0 <= ix < f["in_w"]:
            # word (iy, ix, group) of the (y, x, g) input stream
            lin = (iy * f["in_w"] + ix) * gin + (j if f["kind"] == KIND_DEPTHWISE else g)
        else:
            lin = None                                  # padding: masked after the read
        waddr = ((j * k + ky) * k + kx) * gin_e + g
        taps.append((ix, iy, lin, waddr, int(ky == kx == g == 0),
                     int(ky == kx == k - 1 and g == gin_e - 1)))
    return taps


def _collect_taps(cc, f, *, p_ready=1.0, seed=0, params_arriving=False):
    """The taps the sequencer issues for command ``f``. With ``params_arriving`` the
    parameter words arrive one by one at random (``params_in``, then ``params_done``),
    and each tap is checked to issue only once its output group's word is in (a
    depthwise layer's: once every word is)."""
    dut = Sequencer(cc, early_params=params_arriving)
    sizes, ws = _sizes(cc, f)
    got = []
    n = len(_expected_taps(cc, f, sizes, ws))

    async def bench(ctx):
        rng = random.Random(seed)
        _set_command(ctx, dut, cc, f)
        await ctx.tick()                 # the sizes settle a cycle before the start
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.run, 1)
        ctx.set(dut.rows_in, f["in_h"])
        ctx.set(dut.weights_done, 1)
        params = 0 if params_arriving else f["gout"]
        ctx.set(dut.params_in, params)
        ctx.set(dut.params_done, params == f["gout"])
        per_group = f["k"] ** 2 * (1 if f["kind"] == KIND_DEPTHWISE else f["gin"])
        for _ in range(20 * n + 20):
            ctx.set(dut.taps.ready, rng.random() < p_ready)
            if ctx.get(dut.taps.valid) and ctx.get(dut.taps.ready):
                t = ctx.get(dut.taps.payload)
                need = f["gout"] if f["kind"] == KIND_DEPTHWISE else t.waddr // per_group + 1
                assert params >= need, (f"tap {len(got)} of group {t.waddr // per_group} "
                                        f"issued with {params} parameter words in")
                got.append((t.ix, t.iy, t.lin, t.waddr, t.first, t.last))
            if params < f["gout"] and rng.random() < 0.3:
                params += 1
                ctx.set(dut.params_in, params)
                ctx.set(dut.params_done, params == f["gout"])
            await ctx.tick()
        assert not ctx.get(dut.taps.valid), "the sequencer issued more taps than the command has"

    _run(dut, bench)
    return got, _expected_taps(cc, f, sizes, ws)


def _plan_fields(cc, cin, cout, h, w, k, stride, padding, groups=1):
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, size=(cin, h, w))
    shape = (cout, cin // groups, k, k)
    w_pos, w_neg = rng.integers(-128, 128, size=shape), rng.integers(-128, 128, size=shape)
    plan = host.plan_layer(x, w_pos, w_neg, np.zeros(cout, dtype=np.int64),
                           np.ones(cout, dtype=np.int64), np.full(cout, 8), stride=stride,
                           padding=padding, groups=groups, config=cc)
    assert plan.tiles
    return plan.tiles


@pytest.mark.parametrize("case", [
    (DIAG, 3, 4, 5, 6, 3, 2, 1, 1),       # standard, stride 2, padding
    (DIAG, 4, 2, 4, 5, 1, 1, 0, 1),       # pointwise
    (DIAG, 2, 24, 3, 3, 1, 1, 0, 1),      # pointwise, a new output group every tap
    (DIAG, 3, 3, 4, 4, 3, 1, 1, 3),       # depthwise, block-diagonal
    (PIX, 4, 4, 3, 7, 3, 2, 1, 4),        # depthwise on the whole array
])
def test_sequencer_order_matches_scheduler(case):
    cc, *layer = case
    for tile in _plan_fields(cc, *layer):
        f = dict(tile.fields)
        # the scheduler's streams are what the taps index: (y, x, g) input words,
        # (j, ky, kx, g) weight blocks
        gin_e = 1 if f["kind"] == KIND_DEPTHWISE else f["gin"]
        assert len(tile.acts) == f["in_h"] * f["in_w"] * f["gin"]
        if not f["keep"]:
            assert len(tile.weights) == f["gout"] * f["k"] ** 2 * gin_e
        for arriving in (False, True):
            got, want = _collect_taps(cc, f, params_arriving=arriving)
            assert len(got) == len(want)
            for i, (g, e) in enumerate(zip(got, want)):
                if e[2] is None:
                    g, e = g[:2] + g[3:], e[:2] + e[3:]
                assert g == e, f"tap {i}: got (ix, iy, lin, waddr, first, last) {g}, expected {e}"


def test_sequencer_one_tap_per_cycle_under_backpressure():
    f = _fields(in_h=4, in_w=4, out_h=4, out_w=4, gin=2, gout=2, k=3, pad_top=1, pad_left=1)
    got, want = _collect_taps(DIAG, f, p_ready=0.6, seed=3)
    assert [g[:2] + g[3:] for g in got] == [w[:2] + w[3:] for w in want]


# --- input buffer and its bank addressing ---------------------------------------------

class _InputSide(wiring.Component):
    """InputAddressMap feeding the InputBuffer's read port, as the fetch does a cycle later."""

    def __init__(self, cc):
        self.amap = InputAddressMap(cc)
        self.ibuf = InputBuffer(cc)
        self.pix = cc.pe.depthwise == "pixels"
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.amap = amap = self.amap
        m.submodules.ibuf = ibuf = self.ibuf
        a = amap.o.payload
        m.d.comb += [ibuf.read.addr.addr.eq(a.addr), ibuf.read.en.eq(1), amap.o.ready.eq(1),
                     amap.cmd.eq(ibuf.cmd), amap.dwp.eq(ibuf.dwp)]
        if self.pix:
            m.d.comb += [ibuf.read.addr.sel.eq(a.sel), ibuf.read.addr.rot.eq(a.rot)]
        return m


def _input_case(cc, f, *, p_valid=0.7, seed=1):
    """Load command ``f``'s words (word n = n + 1, lane 0), then read every tap back."""
    dut = _InputSide(cc)
    ibuf, amap = dut.ibuf, dut.amap
    R = cc.pe.rows if cc.pe.depthwise == "pixels" else 1
    pix = f["kind"] == KIND_DEPTHWISE and R > 1
    s, gin = f["stride"], f["gin"]

    def word(y, x, g):
        return (y * f["in_w"] + x) * gin + g + 1

    async def bench(ctx):
        rng = random.Random(seed)
        sizes, ws = _set_command(ctx, ibuf, cc, f)
        ctx.set(ibuf.start, 1)
        await ctx.tick()
        ctx.set(ibuf.start, 0)
        ctx.set(ibuf.run, 1)
        n = 0
        while n < sizes["n_in"]:
            assert ctx.get(ibuf.i.ready) and not ctx.get(ibuf.done)
            assert ctx.get(ibuf.rows_in) == n // sizes["wg"]
            valid = rng.random() < p_valid
            ctx.set(ibuf.i.valid, valid)
            ctx.set(ibuf.i.payload.as_value(), n + 1)
            await ctx.tick()
            n += valid
        ctx.set(ibuf.i.valid, 0)
        assert ctx.get(ibuf.done) and not ctx.get(ibuf.i.ready)
        assert ctx.get(ibuf.rows_in) == f["in_h"]
        lanes_mask = (1 << cc.pe.act_width) - 1
        for y, x, g in itertools.product(range(-1, f["in_h"] + 1), range(-2, f["in_w"] + 1),
                                         range(gin)):
            lin = g * sizes["plane"] + y * ws if pix else (y * f["in_w"] + x) * gin + g
            tap = amap.i.payload
            ctx.set(tap.lin, lin)
            ctx.set(tap.ix, x)
            ctx.set(tap.iy, y)
            pad = ctx.get(amap.o.payload.pad)
            await ctx.tick()
            data = ctx.get(ibuf.read.data.as_value())
            for r in range(R):
                col = x + s * r if pix else x
                inside = 0 <= y < f["in_h"] and 0 <= col < f["in_w"]
                assert (pad >> r) & 1 == (not inside), (y, x, g, r)
                if inside:
                    w = data >> (r * cc.pe.lanes * cc.pe.act_width) if R > 1 else data
                    assert w & lanes_mask == word(y, col, g), (y, x, g, r)

    _run(dut, bench)


@pytest.mark.parametrize("stride", [1, 2])
def test_input_buffer_depthwise_banks(stride):
    """Depthwise pixels: the rows of a beat read columns x + s*r from different banks."""
    _input_case(PIX, _fields(in_h=3, in_w=11, gin=2, gout=2, k=3, stride=stride,
                             kind=KIND_DEPTHWISE))


def test_input_buffer_interleaved_banks():
    """Any other layer on a banked build: word n in bank n % rows, read by every row."""
    _input_case(PIX, _fields(in_h=2, in_w=5, gin=3, k=3))


def test_input_buffer_one_bank():
    _input_case(DIAG, _fields(in_h=3, in_w=4, gin=2, k=3))


# --- weight and parameter buffers ---------------------------------------------------------

def test_load_buffer():
    dut = LoadBuffer(weight_layout(DIAG), 8, count_width=4, read_addr_width=4)
    words = [random.Random(2).getrandbits(weight_layout(DIAG).size) for _ in range(5)]

    async def load(ctx, keep, n):
        ctx.set(dut.keep, keep)
        ctx.set(dut.count, n)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.run, 1)
        taken = 0
        for cyc in range(3 * n + 4):
            ctx.set(dut.i.valid, cyc % 3 != 1)
            ctx.set(dut.i.payload.as_value(), words[taken] if taken < n else 0)
            if ctx.get(dut.i.valid) and ctx.get(dut.i.ready):
                taken += 1
            await ctx.tick()
        ctx.set(dut.run, 0)
        return taken

    async def read(ctx, n):
        got = []
        ctx.set(dut.read.en, 1)
        for a in range(n):
            ctx.set(dut.read.addr, a)
            await ctx.tick()
            got.append(ctx.get(dut.read.data.as_value()))
        return got

    async def bench(ctx):
        assert await load(ctx, 0, 5) == 5
        assert ctx.get(dut.done) and not ctx.get(dut.i.ready)
        assert await read(ctx, 5) == words
        # keep: nothing taken, contents and done kept
        assert await load(ctx, 1, 3) == 0
        assert ctx.get(dut.done)
        assert await read(ctx, 5) == words
        # outside run nothing is taken
        ctx.set(dut.i.valid, 1)
        assert not ctx.get(dut.i.ready)

    _run(dut, bench)


# --- fetch --------------------------------------------------------------------------

class _FetchBench(wiring.Component):
    """Fetch reading two plain memories (input word a holds 3a + 1, weight block a holds 5a + 2)."""

    def __init__(self, cc, skid=False):
        self.fetch = Fetch(cc, skid=skid)
        self.cc = cc
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fetch = fetch = self.fetch
        xw = fetch.inputs.data.shape().size
        ww = weight_layout(self.cc).size
        m.submodules.imem = imem = Memory(shape=xw, depth=16, init=[3 * a + 1 for a in range(16)])
        m.submodules.wmem = wmem = Memory(shape=ww, depth=16, init=[5 * a + 2 for a in range(16)])
        for mem, port in ((imem, fetch.inputs), (wmem, fetch.weights)):
            rp = mem.read_port()
            addr = port.addr.addr[0] if port is fetch.inputs else port.addr
            m.d.comb += [rp.addr.eq(addr), rp.en.eq(port.en), port.data.eq(rp.data)]
        return m


@pytest.mark.parametrize("read_register, skid", [(False, False), (True, False), (True, True)])
def test_fetch(read_register, skid):
    """Every beat in order, padding masked, under random stalls of ``o``; the latency, and
    (``o`` always ready) a beat per cycle, the same with the registered output and its skid
    register."""
    cc = CoreConfig(pe=DIAG.pe, fmap_depth=16, weight_depth=16, param_depth=4,
                    read_register=read_register)
    dut = _FetchBench(cc, skid)
    fetch = dut.fetch
    layout = fetch_layout(cc)
    rng = random.Random(4)
    entries = [{"addr": [rng.randrange(16)], "waddr": rng.randrange(16), "pad": rng.random() < 0.3,
                "first": rng.randrange(2), "last": rng.randrange(2)} for _ in range(40)]
    got, times = [], {}
    latency = (3 if read_register else 2) + skid
    assert fetch.latency == latency

    async def bench(ctx):
        sent = 0
        for cyc in range(400):
            steady = cyc < 24                # first: o always ready, to see the latency
            ctx.set(fetch.o.ready, steady or rng.random() < 0.5)
            ctx.set(fetch.i.valid, sent < len(entries) and (steady or rng.random() < 0.7))
            if sent < len(entries):
                ctx.set(fetch.i.payload, layout.const(entries[sent]))
            if ctx.get(fetch.o.valid) and ctx.get(fetch.o.ready):
                assert ctx.get(fetch.beat)
                b = ctx.get(fetch.o.payload)
                got.append((b.x.as_value().value, b.w.as_value().value, b.bias.as_value().value,
                            b.first, b.last))
                times.setdefault("first_out", cyc)
                if steady:
                    times.setdefault("steady", []).append(cyc)
            if ctx.get(fetch.i.valid) and ctx.get(fetch.i.ready):
                times.setdefault("first_in", cyc)
                sent += 1
            await ctx.tick()

    _run(dut, bench)
    mask = (1 << fetch.inputs.data.shape().size) - 1
    want = [(0 if e["pad"] else (3 * e["addr"][0] + 1) & mask, 5 * e["waddr"] + 2, 0,
             e["first"], e["last"]) for e in entries]
    got = [(x & mask, w, 0, first, last) for x, w, _, first, last in got]
    assert got == want
    assert times["first_out"] - times["first_in"] == latency
    # the steady phase sends entries back to back: they leave back to back
    steady = times["steady"]
    assert len(steady) > 10 and steady == list(range(steady[0], steady[0] + len(steady)))


# --- output --------------------------------------------------------------------------

class _OutputBench(wiring.Component):
    """OutputStage reading a parameter memory."""

    def __init__(self, cc, params):
        self.out = OutputStage(cc)
        self.cc = cc
        self.params = params
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.out = out = self.out
        init = [pack_payload(param_layout(self.cc), p) for p in self.params]
        m.submodules.pmem = pmem = Memory(shape=param_layout(self.cc).size,
                                          depth=self.cc.param_depth, init=init)
        rp = pmem.read_port()
        m.d.comb += [rp.addr.eq(out.params.addr), rp.en.eq(out.params.en),
                     out.params.data.eq(rp.data)]
        return m


def _output_case(cc, f, beats, *, seed=6):
    """Push ``beats`` (one list of ``rows`` sums each) and return the output beats."""
    pe = cc.pe
    rng = random.Random(seed)
    params = [{"bias": [rng.randrange(-300, 300) for _ in range(pe.rows)],
               "mult": [rng.randrange(1, 1 << pe.mult_width) for _ in range(pe.rows)],
               "shift": [rng.randrange(0, 12) for _ in range(pe.rows)]}
              for _ in range(cc.param_depth)]
    dut = _OutputBench(cc, params)
    out = dut.out
    sizes, _ = _sizes(cc, f)
    got, times = [], {}

    async def bench(ctx):
        _set_command(ctx, out, cc, f)
        ctx.set(out.n_out, sizes["n_out"])
        ctx.set(out.last_group, f["gout"] - 1)
        ctx.set(out.start, 1)
        await ctx.tick()
        ctx.set(out.start, 0)
        ctx.set(out.run, 1)
        sent = 0
        for cyc in range(40 * len(beats) + 100):
            steady = cyc < 30                # first: no gaps, no stalls, to see the latency
            ctx.set(out.o.ready, steady or rng.random() < 0.7)
            ctx.set(out.i.valid, sent < len(beats) and (steady or rng.random() < 0.7))
            if sent < len(beats):
                ctx.set(out.i.payload, beats[sent])
            if ctx.get(out.o.valid) and ctx.get(out.o.ready):
                assert not ctx.get(out.all_sent)
                got.append(list(ctx.get(out.o.payload)))
                times.setdefault("first_out", cyc)
            if ctx.get(out.i.valid) and ctx.get(out.i.ready):
                times.setdefault("first_in", cyc)
                sent += 1
            await ctx.tick()
        assert ctx.get(out.all_sent)

    _run(dut, bench)
    # one register (sum and parameters), then the requantiser
    assert times["first_out"] - times["first_in"] == 1 + Requantizer(cc.pe).latency
    return got, params


def _requant(pe, acc, p, r, relu):
    return int(golden.requantize(np.array([[[acc + p["bias"][r]]]]), p["mult"][r], p["shift"][r],
                                 act_width=pe.act_width, relu=relu, mult_width=pe.mult_width)[0, 0, 0])


def test_output_groups():
    f = _fields(out_h=2, out_w=3, gout=3, relu=1)
    pe = DIAG.pe
    rng = random.Random(8)
    beats = [[rng.randrange(-3000, 3000) for _ in range(pe.rows)] for _ in range(2 * 3 * 3)]
    got, params = _output_case(DIAG, f, beats)
    # beat n belongs to group n % gout, row r to channel j * rows + r
    want = [[_requant(pe, acc, params[n % 3], r, True) for r, acc in enumerate(b)]
            for n, b in enumerate(beats)]
    assert got == want


def test_output_depthwise_pixels_order():
    """One row per beat; the pixels past out_w of the last block are dropped."""
    f = _fields(out_h=1, out_w=6, gin=2, gout=2, k=3, kind=KIND_DEPTHWISE)
    pe = PIX.pe
    R = pe.rows
    rng = random.Random(9)
    # beats in the sequencer's order: (ox block, j, row); rows hold pixel ox + r of group j
    order = [(ox, j, r) for ox in range(0, 6, R) for j in range(2) for r in range(R)]
    beats = [[rng.randrange(-3000, 3000) for _ in range(R)] for _ in order]
    got, params = _output_case(PIX, f, beats)
    want = [[_requant(pe, acc, params[j], i, False) for i, acc in enumerate(b)]
            for (ox, j, r), b in zip(order, beats) if ox + r < 6]
    assert got == want


@pytest.mark.parametrize("cc, lent", [(PIX, 2), (PIX.replace(requantizers=2), 1)])
def test_output_lends_its_requantizer(cc, lent):
    """While ``rq_share``, the lent rows requantise another unit's beats (random gaps and
    stalls) to ``rq_o``, bit for bit, and nothing leaves on ``o``."""
    pe = cc.pe
    out = OutputStage(cc, lent_rows=lent)
    rng = random.Random(12)
    acc_hi = 1 << (cc.requant_config.acc_width - 1)
    beats = [[(rng.randrange(-acc_hi, acc_hi), rng.randrange(1 << pe.mult_width),
               rng.randrange(20)) for _ in range(lent)] for _ in range(40)]
    relu = True
    want = [[_requant(pe, a, {"bias": [0], "mult": [mu], "shift": [sh]}, 0, relu)
             for a, mu, sh in b] for b in beats]
    got = []

    async def bench(ctx):
        ctx.set(out.rq_share, 1)
        ctx.set(out.rq_relu, relu)
        sent = 0
        for _ in range(40 * len(beats)):
            ctx.set(out.rq_o.ready, rng.random() < 0.7)
            ctx.set(out.rq_i.valid, sent < len(beats) and rng.random() < 0.7)
            if sent < len(beats):
                ctx.set(out.rq_i.payload, {"acc": [a for a, _, _ in beats[sent]],
                                           "mult": [mu for _, mu, _ in beats[sent]],
                                           "shift": [sh for _, _, sh in beats[sent]]})
            assert not ctx.get(out.o.valid)
            if ctx.get(out.rq_o.valid) and ctx.get(out.rq_o.ready):
                got.append(list(ctx.get(out.rq_o.payload)))
            if ctx.get(out.rq_i.valid) and ctx.get(out.rq_i.ready):
                sent += 1
            await ctx.tick()

    _run(out, bench)
    for n, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"beat {n}: (acc, mult, shift) {beats[n]}: got {g}, want {w}"
    assert len(got) == len(want)
    with pytest.raises(ValueError, match=r"lent_rows must be an integer in \[0, 4\], not 5"):
        OutputStage(cc, lent_rows=5)
    with pytest.raises(ValueError, match=r"lent_requantizer_rows must be an integer in "
                                         r"\[0, 4\], not -1"):
        PSCConvCore(cc, lent_requantizer_rows=-1)


# --- the whole core is made of the parts ------------------------------------------------------

def test_core_has_the_parts():
    from amaranth.hdl import Fragment
    frag = Fragment.get(PSCConvCore(PIX), None)
    names = {name for _, name, _ in frag.subfragments}
    assert {"setup", "sizes", "counters", "seq", "amap", "fetch", "ibuf", "wbuf", "pbuf", "dp",
            "out"} <= names
    assert MAX_OUTPUTS == (1 << 24) - 1
