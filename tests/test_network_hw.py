# amaranth: UnusedElaboratable=no
"""Network mode's gateware (psc.hw.network) on the Amaranth simulator against
psc.host.program.ActivationMemory, which defines every gather and scatter value by value.

The tiles are a real program's: a layer's output beats (random values) are scattered
into its tensor's region by the hardware and by the model, with random gaps between
beats; then every tile of the layers that read that tensor gathers its window, with
random stalls of ``act_in``, and each word is compared with the model's. On the tiny
build, the UP5K's (diagonal depthwise; and each one-word window again from lanes 2, 4
and 6, as a diagonal command of one output group on a build whose ``rows`` do not divide
its ``lanes`` reads) and the ECP5's (channels depthwise, padding channels, 7 lanes x 4
rows: beats that run on into the next word). Last, the whole memory is read back, so a
write to a lane the model leaves alone (a padding channel) fails too.
"""

import dataclasses
import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module, Mux, Signal
from amaranth.sim import Simulator

from psc import data
from psc.host.program import (ActivationMemory as Model, ConvStep, NetworkFitError, Region,
                              UnrollStep, compile_network, gather_fields, scatter_fields,
                              unroll_fields)
from psc.hw.network import ActivationMemory, Gather, Scatter, Unroll
from psc.model.network import Layer
from psc.model.packing import pack_lanes, pack_payload
from psc.onnx_import import import_onnx
from psc.presets import PRESETS


def _top(cc, depth):
    m = Module()
    m.submodules.mem = mem = ActivationMemory(cc, depth, write_register=cc.read_register)
    m.submodules.gather = g = Gather(cc, mem.addr_width)
    m.submodules.scatter = s = Scatter(cc, mem.addr_width)
    m.d.comb += [mem.read_addr.eq(g.read_addr), mem.read_en.eq(g.read_en),
                 g.read_data.eq(mem.read_data)]
    for name in ("addr", "lane", "data", "mask", "en"):
        m.d.comb += getattr(mem, f"write_{name}").eq(getattr(s, f"write_{name}"))
    return m, g, s


def _jobs(cc, layers, rng, from_lanes=()):
    """Scatters of the named layers' tiles (random beats) into the model, and the gathers of
    every tile that reads one of their outputs, with the model's words; each gather of one
    lane word again from each lane of ``from_lanes``, its channels up to the word's end."""
    net = import_onnx(data.path("digits_psc.onnx"))
    prog = compile_network(net, cc)
    depth = prog.act_words + prog.act_words % 2
    model = Model(depth, cc.lanes, cc.pe.act_width)
    lo, hi = -(1 << (cc.pe.act_width - 1)), 1 << (cc.pe.act_width - 1)
    scatters, written = [], set()
    steps = {s.name: s for s in prog.steps if isinstance(s, ConvStep)}
    for name in layers:
        step = steps[name]
        for tile in step.plan.tiles:
            if not tile.n_out:
                continue
            beats = [int(w) for w in pack_lanes(rng.integers(lo, hi, size=(
                tile.n_out, cc.rows)), cc.pe.act_width)]
            model.scatter(step.dst, step.plan, tile, beats)
            scatters.append((scatter_fields(step.dst, step.plan, tile), beats))
        written.add(step.dst)
    windows = [(s, t.window) for s in steps.values() if s.src in written for t in s.plan.tiles]
    windows += [(s, dataclasses.replace(w, c_lo=w.c_lo + lane, c_hi=w.c_lo + cc.lanes))
                for s, w in windows if w.groups == 1 for lane in from_lanes]
    gathers = [(gather_fields(s.src, w, cc.lanes), model.gather(s.src, w),
                f"{s.name} tile {w}") for s, w in windows]
    assert gathers
    # last, the whole memory as one window: no write touched a lane the model did not
    dump = {"addr": 0, "pixel_step": 0, "row_step": 0, "n_g": depth, "n_x": 1, "n_y": 1,
            "rot": 0, "valid": depth * cc.lanes}
    gathers.append((dump, [int(w) for w in pack_lanes(model.values, cc.pe.act_width)],
                    "whole memory"))
    return depth, scatters, gathers


def _run(cc, depth, scatters, gathers, seed, reset_first=False):
    m, g, s = _top(cc, depth)
    m.domains.sync = cd = ClockDomain()
    rnd = random.Random(seed)
    got = []

    async def reset(ctx):
        ctx.set(cd.rst, 1)
        await ctx.tick()
        ctx.set(cd.rst, 0)
        assert not ctx.get(s.busy) and not ctx.get(g.busy) and not ctx.get(g.act_in.valid)

    async def bench(ctx):
        if reset_first:
            # half of the first tile's beats, then a reset; a gather stalled with words
            # in flight, then a reset: the units take the next jobs as if nothing happened
            fields, beats = scatters[0]
            ctx.set(s.start.payload.as_value(), pack_payload(s.start.payload.shape(), fields))
            ctx.set(s.start.valid, 1)
            await ctx.tick().until(s.start.ready)
            ctx.set(s.start.valid, 0)
            ctx.set(s.act_out.valid, 1)
            for beat in beats[:len(beats) // 2]:
                ctx.set(s.act_out.payload.as_value(), beat)
                await ctx.tick()
            ctx.set(s.act_out.valid, 0)
            await reset(ctx)
            fields = gathers[0][0]
            ctx.set(g.start.payload.as_value(), pack_payload(g.start.payload.shape(), fields))
            ctx.set(g.start.valid, 1)
            await ctx.tick().until(g.start.ready)
            ctx.set(g.start.valid, 0)
            await ctx.tick().repeat(6)
            assert ctx.get(g.act_in.valid)
            await reset(ctx)
        for fields, beats in scatters:
            ctx.set(s.start.payload.as_value(), pack_payload(s.start.payload.shape(), fields))
            ctx.set(s.start.valid, 1)
            await ctx.tick().until(s.start.ready)
            ctx.set(s.start.valid, 0)
            for beat in beats:
                for _ in range(rnd.choice([0, 0, 0, 1, 3])):
                    await ctx.tick()
                ctx.set(s.act_out.payload.as_value(), beat)
                ctx.set(s.act_out.valid, 1)
                await ctx.tick().until(s.act_out.ready)
                ctx.set(s.act_out.valid, 0)
            assert not ctx.get(s.busy), f"scatter {fields} still busy after its beats"
        for fields, want, name in gathers:
            ctx.set(g.start.payload.as_value(), pack_payload(g.start.payload.shape(), fields))
            ctx.set(g.start.valid, 1)
            await ctx.tick().until(g.start.ready)
            ctx.set(g.start.valid, 0)
            words = []
            for _ in range(8 * len(want) + 16):
                ready = rnd.random() < 0.7
                ctx.set(g.act_in.ready, ready)
                if ready and ctx.get(g.act_in.valid):
                    words.append(ctx.get(g.act_in.payload.as_value()))
                await ctx.tick()
                if len(words) == len(want) and not ctx.get(g.busy):
                    break
            ctx.set(g.act_in.ready, 0)
            got.append((name, fields, words, want))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for name, fields, words, want in got:
        first = next((i for i, (a, b) in enumerate(zip(words, want)) if a != b), None)
        assert first is None and len(words) == len(want), (
            f"gather of {name} {fields}: {len(words)} words for {len(want)}; first "
            f"mismatch at word {first}: {words[first] if first is not None else None:#x} for "
            f"{want[first] if first is not None else 0:#x}")


@pytest.mark.parametrize("name, layers, from_lanes", [
    ("tiny", ["b0_expand", "b0_dw"], ()),               # 4 x 4: depthwise on its own lanes
    ("ice40-up5k", ["b0_expand", "b0_dw"], (2, 4)),     # 6 x 2, diagonal; windows from lane 2k
    ("ecp5-25k", ["b1_expand", "b1_dw"], ()),           # 7 x 4: beats run on into the next word
])
def test_scatter_then_gather_equal_the_model(name, layers, from_lanes):
    cc = PRESETS[name]
    depth, scatters, gathers = _jobs(cc, layers, np.random.default_rng(6), from_lanes)
    _run(cc, depth, scatters, gathers, seed=7)


def test_reset_in_the_middle_of_a_scatter_and_a_gather():
    cc = PRESETS["ecp5-25k"]
    depth, scatters, gathers = _jobs(cc, ["b1_expand", "b1_dw"], np.random.default_rng(8))
    _run(cc, depth, scatters, gathers, seed=9, reset_first=True)


def test_what_the_units_refuse():
    cc = PRESETS["default"]                    # depthwise='pixels': beats in pixel blocks
    net = import_onnx(data.path("digits_psc.onnx"))
    prog = compile_network(net, cc)
    dw = next(s for s in prog.steps if s.name == "b0_dw")
    with pytest.raises(NetworkFitError, match="blocks of pixels"):
        scatter_fields(dw.dst, dw.plan, dw.plan.tiles[0])
    from psc.host.scheduler import Window
    with pytest.raises(NetworkFitError, match="6 channels from lane 4 spans two words of 8"):
        gather_fields(dw.src, Window(4, 10, 1, 0, 1, 0, 1), 8)
    with pytest.raises(ValueError, match="depth must be even"):
        ActivationMemory(cc, 7)
    # the UP5K's activation memory (rows=2 dividing lanes=6) places beats at even lanes
    up5k = compile_network(net, PRESETS["ice40-up5k"])
    pw = next(s for s in up5k.steps if s.name == "b0_expand")
    tile = dataclasses.replace(pw.plan.tiles[0], place=(1,) + pw.plan.tiles[0].place[1:])
    with pytest.raises(NetworkFitError, match="output from channel 1: with rows=2 dividing "
                       "lanes=6, output beats start at a multiple of 2 channels"):
        scatter_fields(pw.dst, pw.plan, tile)


@pytest.mark.parametrize("name", ["ice40-up5k", "ecp5-25k"])
@pytest.mark.parametrize("write_register", [False, True])
def test_a_write_is_read_back_after_its_latency(name, write_register):
    """A read issued ``write_latency`` cycles after a write is presented returns the word's
    old value, one issued a cycle later the new one (the engine relies on both)."""
    cc = PRESETS[name]
    mem = ActivationMemory(cc, 8, write_register=write_register)
    assert mem.write_latency == 1 + write_register
    seen = {}

    async def bench(ctx):
        ctx.set(mem.write_mask, (1 << cc.lanes) - 1)
        ctx.set(mem.write_addr, 3)
        ctx.set(mem.read_addr, 3)
        for k in range(1, 5):
            ctx.set(mem.write_data, k)
            ctx.set(mem.write_en, 1)
            await ctx.tick()
            ctx.set(mem.write_en, 0)
            for _ in range(k - 1):
                await ctx.tick()
            ctx.set(mem.read_en, 1)
            await ctx.tick()
            ctx.set(mem.read_en, 0)
            seen[k] = ctx.get(mem.read_data)
            await ctx.tick().repeat(4)

    sim = Simulator(mem)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    lat = mem.write_latency
    assert seen == {k: k if k > lat else k - 1 for k in range(1, 5)}, seen


@pytest.mark.parametrize("name", ["ice40-up5k", "ecp5-25k"])
def test_units_convert_to_verilog(name):
    from amaranth.back import verilog
    cc = PRESETS[name]
    mem = ActivationMemory(cc, 1024)
    for unit in (mem, Gather(cc, mem.addr_width), Scatter(cc, mem.addr_width),
                 Unroll(cc, mem.addr_width)):
        assert "module" in verilog.convert(unit, name=type(unit).__name__.lower())


@pytest.mark.parametrize("name", ["ice40-up5k", "ecp5-25k"])
def test_the_engine_names_its_units(name):
    """``NetworkEngine.units`` (what ``psc program --synth --units`` keeps apart) are its
    submodules: the UP5K's engine has no unroll unit."""
    from amaranth.hdl import Fragment
    from psc.hw.network.engine import EngineConfig, NetworkEngine
    engine = NetworkEngine(EngineConfig(PRESETS[name]))
    names = {sub[1] for sub in Fragment.get(engine, None).subfragments}
    assert set(engine.units) <= names
    assert ("unroll" in engine.units) == (name == "ecp5-25k")


def _unroll_step(cc, c, h, w, k, stride, pad, src, dst, rng):
    """An :class:`UnrollStep` of a ``c``-channel ``h x w`` input at word ``src`` for a
    ``k x k`` stem, its unrolled tensor at word ``dst``."""
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    wt = rng.integers(-128, 128, size=(4, c, k, k))
    layer = Layer.conv("stem", "image", "a", wt, wt, np.zeros(4, dtype=np.int64), 1, 0,
                       stride=stride, padding=pad)
    return UnrollStep("stem/unroll", Region(src, (c, h, w), 1),
                      Region(dst, (k * k * c, ho, wo), -(-k * k * c // cc.lanes)), layer)


def _run_unrolls(cc, depth, steps, seed, reset_after=None, arriving=False):
    """Fill the memory with random values, run each unroll (the first one first stopped by a
    reset ``reset_after`` cycles in, then run again), read the whole memory back and
    compare it with the model's. With ``arriving`` the input's rows are reported stored
    one by one at random intervals and ``pause`` is raised at random, as while the input
    arrives: a read of a row not yet reported, or a write after a pause has had its two
    cycles, fails."""
    m = Module()
    m.domains.sync = cd = ClockDomain()
    m.submodules.mem = mem = ActivationMemory(cc, depth, write_register=cc.read_register)
    m.submodules.unroll = u = Unroll(cc, mem.addr_width)
    tb = {n: Signal.like(getattr(mem, n)) for n in (
        "read_addr", "read_en", "write_addr", "write_lane", "write_data", "write_mask",
        "write_en")}
    m.d.comb += u.read_data.eq(mem.read_data)
    for name, sig in tb.items():
        m.d.comb += getattr(mem, name).eq(Mux(u.busy, getattr(u, name), sig))
    rng = np.random.default_rng(seed)
    model = Model(depth, cc.lanes, cc.pe.act_width)
    aw = cc.pe.act_width
    model.values[:] = rng.integers(-(1 << (aw - 1)), 1 << (aw - 1), size=model.values.shape)
    init = [int(v) for v in pack_lanes(model.values, aw)]
    for step in steps:
        model.unroll(step, cc)
    want = [int(v) for v in pack_lanes(model.values, aw)]
    got = []

    async def job(ctx, step, stop=None):
        fields = unroll_fields(step, cc.lanes)
        _, h, w = step.src.shape
        ctx.set(u.rows_in, 0 if arriving else h)
        ctx.set(u.pause, 0)
        ctx.set(u.start.payload.as_value(), pack_payload(u.start.payload.shape(), fields))
        ctx.set(u.start.valid, 1)
        await ctx.tick().until(u.start.ready)
        ctx.set(u.start.valid, 0)
        if stop is not None:
            await ctx.tick().repeat(stop)
            ctx.set(cd.rst, 1)
            await ctx.tick()
            ctx.set(cd.rst, 0)
            assert not ctx.get(u.busy)
            return
        cycles, rows, paused = 0, 0 if arriving else h, [0, 0, 0]
        while ctx.get(u.busy):
            if arriving:
                # a read must be of a stored row: rows_in counts them
                if ctx.get(u.read_en):
                    row = (ctx.get(u.read_addr) - step.src.base) // w
                    inside = 0 <= ctx.get(u.read_addr) - step.src.base < h * w
                    assert not inside or row < rows, (cycles, row, rows)
                assert not (paused[1] and ctx.get(u.write_en)), cycles
                if rows < h and rng.random() < 0.05:
                    rows += 1
                    ctx.set(u.rows_in, rows)
                p = int(rng.random() < 0.3)
                ctx.set(u.pause, p)
                paused = [p] + paused[:2]
            await ctx.tick()
            cycles += 1
        if not arriving:
            assert cycles <= step.cycles + 4, (cycles, step.cycles)

    async def bench(ctx):
        ctx.set(tb["write_mask"], (1 << cc.lanes) - 1)
        for addr, word in enumerate(init):
            ctx.set(tb["write_addr"], addr)
            ctx.set(tb["write_data"], word)
            ctx.set(tb["write_en"], 1)
            await ctx.tick()
        ctx.set(tb["write_en"], 0)
        if reset_after is not None:
            await job(ctx, steps[0], reset_after)
        for step in steps:
            await job(ctx, step)
        await ctx.tick().repeat(2)
        ctx.set(tb["read_en"], 1)
        for addr in range(depth):
            ctx.set(tb["read_addr"], addr)
            await ctx.tick()
            got.append(ctx.get(mem.read_data))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert bad is None, (f"word {bad} after the unrolls {[unroll_fields(s, cc.lanes) for s in steps]}: "
                         f"{got[bad]:#x}, the model's {want[bad]:#x}")


@pytest.mark.parametrize("c, h, w, k, stride, pad", [
    (1, 8, 8, 3, 1, 1),          # the digits stem
    (3, 9, 7, 3, 2, 1),          # a MobileNet stem, odd sizes: padding on one side only
    (2, 7, 6, 5, 2, 2),
    (5, 5, 4, 3, 1, 0),          # writes that run on into the next word
    (7, 3, 5, 1, 1, 0),          # whole words
])
@pytest.mark.parametrize("arriving", [False, True])
def test_unroll_equals_the_model(c, h, w, k, stride, pad, arriving):
    """The unroll unit's writes, on the ECP5 build's two-bank memory, against the model's:
    the whole memory read back, so a write outside the unrolled tensor's channels fails;
    with its input all stored, or arriving row by row under random pauses."""
    cc = PRESETS["ecp5-25k"]
    rng = np.random.default_rng(c * 100 + k)
    step = _unroll_step(cc, c, h, w, k, stride, pad, 2, 2 + h * w, rng)
    _run_unrolls(cc, 2 * (-(-(step.dst.end + 1) // 2)), [step], seed=k + c, arriving=arriving)


def test_reset_in_the_middle_of_an_unroll():
    cc = PRESETS["ecp5-25k"]
    rng = np.random.default_rng(2)
    steps = [_unroll_step(cc, 3, 6, 6, 3, 1, 1, 0, 36, rng),
             _unroll_step(cc, 1, 4, 5, 3, 2, 0, 190, 210, rng)]
    _run_unrolls(cc, 220, steps, seed=3, reset_after=17)
