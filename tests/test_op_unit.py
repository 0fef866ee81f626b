# amaranth: UnusedElaboratable=no
"""Network mode's add and pooling unit (psc.hw.network.OpUnit) on the Amaranth simulator,
against psc.host.program.ActivationMemory and the golden psc.model.network.add and
global_avg_pool, the whole activation memory compared word for word after every operation.

The engine's tests compare a network's outputs only, which a unit that writes a pixel's
padding lanes (the lanes of its last word past the tensor's channels, ``last_mask``)
still gets right. Here the memory is first filled with random values everywhere
(padding lanes and words outside every region too), each operation's descriptor is the
program's own (:func:`psc.host.program.op_fields` of an :class:`OpStep`), and after each
operation every word of the memory is read back: a write to a padding lane, to a word
outside the destination, or a result off by one, fails, naming the word.

The sums go through a real requantiser: an idle :class:`psc.hw.core.PSCConvCore` lends
its first ``values`` rows (``lent_requantizer_rows``, ``rq_share`` high), wired as
:class:`psc.hw.network.NetworkEngine` wires them, with random stalls in both directions
between the unit and the requantiser (its input refused, its results held back). The
builds: the tiny one (4 lanes, a requantiser a value per cycle), the UP5K's (8 lanes,
a digit-serial requantiser shared by its 2 rows) and the ECP5's (7 lanes: a two-bank
memory), channel counts that leave padding lanes, ``values`` 1 and more, dividing the
lanes or not. Last, a reset with an operation in flight: the operations after it are
exact.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module, Mux, Signal
from amaranth.sim import Simulator

from psc.host.program import ActivationMemory as Model, OpStep, Region, op_fields
from psc.hw.core import PSCConvCore
from psc.hw.network import ActivationMemory, OpUnit
from psc.model.network import add, global_avg_pool
from psc.model.packing import channel_groups, pack_lanes, pack_payload

from core_cases import simulable

_PORTS = ("read_addr", "read_en", "write_addr", "write_data", "write_mask", "write_en")


def _top(cc, depth, values):
    """The memory, the op unit and an idle core lending it its requantiser, as the engine
    wires them; the memory's ports the op unit's while ``op_active``, else the bench's
    (``tb``); ``stall_i`` refuses the requantiser's input, ``stall_o`` holds its results
    back."""
    m = Module()
    m.domains.sync = cd = ClockDomain()
    m.submodules.mem = mem = ActivationMemory(cc, depth, write_register=cc.read_register)
    m.submodules.op = op = OpUnit(cc, mem.addr_width, values)
    m.submodules.core = core = PSCConvCore(cc, resident_weights=True,
                                           lent_requantizer_rows=values, early_params=True)
    tb = {n: Signal.like(getattr(mem, n), name=f"tb_{n}") for n in _PORTS}
    op_active, stall_i, stall_o = Signal(), Signal(), Signal()
    m.d.comb += op.read_data.eq(mem.read_data)
    for name, sig in tb.items():
        m.d.comb += getattr(mem, name).eq(Mux(op_active, getattr(op, name), sig))
    m.d.comb += [core.rq_share.eq(op_active), core.rq_relu.eq(op.rq_relu),
                 core.rq_i.payload.eq(op.rq_i.payload),
                 core.rq_i.valid.eq(op.rq_i.valid & ~stall_i),
                 op.rq_i.ready.eq(core.rq_i.ready & ~stall_i),
                 op.rq_o.payload.eq(core.rq_o.payload),
                 op.rq_o.valid.eq(core.rq_o.valid & ~stall_o),
                 core.rq_o.ready.eq(op.rq_o.ready & ~stall_o)]
    return m, cd, mem, op, core, tb, op_active, (stall_i, stall_o)


def _steps(cc, c, h, w, relu):
    """The regions of a ``c``-channel ``h x w`` tensor's add and poolings, a word apart (and
    the first at an odd word), and their steps: ``d = add(a, b)``, ``e = gap(d)``,
    ``g = add(d, a)`` (a full-scale multiplier, the other ReLU) and ``f = gap(a)`` (a
    full-scale multiplier); with the memory's depth."""
    groups = channel_groups(c, cc.lanes)
    regions, base = {}, 1
    for name, shape in (("a", (c, h, w)), ("b", (c, h, w)), ("d", (c, h, w)),
                        ("e", (c, 1, 1)), ("g", (c, h, w)), ("f", (c, 1, 1))):
        regions[name] = Region(base, shape, groups)
        base = regions[name].end + 1
    r = regions
    n = h * w
    steps = [
        OpStep("res", "add", (r["a"], r["b"]), r["d"],
               {"mult_a": 23000, "mult_b": 31000, "shift": 15, "relu": relu}),
        OpStep("pool", "gap", (r["d"],), r["e"], {"mult": (1 << 15) // n, "shift": 14}),
        OpStep("res2", "add", (r["d"], r["a"]), r["g"],
               {"mult_a": (1 << 16) - 1, "mult_b": 777, "shift": 16, "relu": not relu}),
        OpStep("pool2", "gap", (r["a"],), r["f"],
               {"mult": (1 << 16) - 1, "shift": 17 + n.bit_length() // 2}),
    ]
    return steps, base + 2 - base % 2     # even, a word or two past the last region


def _apply(model, step, cc):
    """``step`` on the model's memory: the golden operation of its stored inputs, stored (its
    padding lanes keep their values)."""
    xs = [model.load(r) for r in step.srcs]
    a = step.attrs
    kw = {"act_width": cc.pe.act_width, "mult_width": cc.pe.mult_width}
    if step.op == "add":
        y = add(xs[0], xs[1], a["mult_a"], a["mult_b"], a["shift"], relu=a["relu"], **kw)
    else:
        y = global_avg_pool(xs[0], a["mult"], a["shift"], **kw)
    model.store(step.dst, y)
    return y


#: 8 x 2 with one time-shared digit-serial requantiser (4 bits of M per cycle): an operation
#: waits for the requantiser, whose beats take 8 cycles.
SERIAL = simulable("ice40-up5k").replace(lanes=8, requant_mult_bits=4)


def _run(name, values, c, h, w, *, relu=False, seed=0, abort=None):
    """Fill the memory (and the model) with random values, run the steps of :func:`_steps`
    one by one with random stalls, and after each read the whole memory back and compare
    it with the model's. ``abort = (i, writes, cycles)``: step ``i`` is first started and
    stopped by a reset of everything ``cycles`` cycles after its ``writes``-th word is
    written (with ``writes``, at the next cycle with a result at the requantiser's output
    and a beat at its input), then run again."""
    cc = SERIAL if name == "serial" else simulable(name)
    steps, depth = _steps(cc, c, h, w, relu)
    m, cd, mem, op, core, tb, op_active, (stall_i, stall_o) = _top(cc, depth, values)
    rng = np.random.default_rng(seed)
    aw = cc.pe.act_width
    model = Model(depth, cc.lanes, aw)
    model.values[:] = rng.integers(-(1 << (aw - 1)), 1 << (aw - 1), size=model.values.shape)
    init = [int(v) for v in pack_lanes(model.values, aw)]
    wants = []
    for step in steps:
        y = _apply(model, step, cc)
        # the results spread, not saturated constants
        assert len(np.unique(y)) > min(y.size // 3, 8), (step, y.ravel().tolist())
        want = [int(v) for v in pack_lanes(model.values, aw)]
        assert want != (wants[-1] if wants else init), f"{step} changes no word"
        wants.append(want)
    chunks = -(-cc.lanes // values)
    rnd = random.Random(seed)
    stall = {"p": 0.0}

    async def staller(ctx):
        while True:
            ctx.set(stall_i, rnd.random() < stall["p"])
            ctx.set(stall_o, rnd.random() < stall["p"])
            await ctx.tick()

    async def start(ctx, fields):
        ctx.set(op_active, 1)
        ctx.set(op.start.payload.as_value(), pack_payload(op.start.payload.shape(), fields))
        ctx.set(op.start.valid, 1)
        await ctx.tick().until(op.start.ready)
        ctx.set(op.start.valid, 0)

    async def finish(ctx, fields, words):
        """Until the unit is idle (and no write after), then the whole memory read back."""
        for cycle in range(64 * words * chunks + 200):
            if not ctx.get(op.busy):
                break
            await ctx.tick()
        else:
            raise AssertionError(f"{fields}: still busy after {cycle} cycles")
        for _ in range(4):
            assert not ctx.get(op.write_en), f"{fields}: a write after the unit is idle"
            await ctx.tick()
        ctx.set(op_active, 0)
        ctx.set(tb["read_en"], 1)
        got = []
        for addr in range(depth):
            ctx.set(tb["read_addr"], addr)
            await ctx.tick()
            got.append(ctx.get(mem.read_data))
        ctx.set(tb["read_en"], 0)
        return got

    def check(got, want, step, fields):
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        if not bad:
            return
        dst = step.dst

        def lanes(word):
            return [(word >> (aw * i)) & ((1 << aw) - 1) for i in range(cc.lanes)]
        lines = [f"{step.op} {step.name} (values={values}) {fields}: {len(bad)} of {depth} "
                 f"words differ from the model's; dst words [{dst.base}, {dst.end}), "
                 f"{dst.groups} per pixel"]
        for i in bad[:6]:
            diff = [k for k, (x, y) in enumerate(zip(lanes(got[i]), lanes(want[i]))) if x != y]
            lines.append(f"  word {i}: got {got[i]:#0{2 + cc.lanes * aw // 4}x}, want "
                         f"{want[i]:#0{2 + cc.lanes * aw // 4}x} (lanes {diff} differ)")
        raise AssertionError("\n".join(lines))

    async def bench(ctx):
        ctx.set(tb["write_mask"], (1 << cc.lanes) - 1)
        ctx.set(tb["write_en"], 1)
        for addr, word in enumerate(init):
            ctx.set(tb["write_addr"], addr)
            ctx.set(tb["write_data"], word)
            await ctx.tick()
        ctx.set(tb["write_en"], 0)
        await ctx.tick().repeat(2)
        for i, (step, want, p) in enumerate(zip(steps, wants, (0.0, 0.3, 0.6, 0.3))):
            fields = op_fields(step, cc.lanes)
            if abort is not None and abort[0] == i:
                # the step started, stopped by a reset with words written and values in
                # flight; then run again, from the start (its words rewritten)
                _, writes, cycles = abort
                stall["p"] = 0.3
                await start(ctx, fields)
                seen = 0
                while seen < writes:
                    assert ctx.get(op.busy), f"step {i} ended before its {writes}th write"
                    seen += ctx.get(op.write_en)
                    await ctx.tick()
                await ctx.tick().repeat(cycles)
                if writes:
                    # with a result waiting at the requantiser's output and a beat at its
                    # input: the reset drops values on both sides
                    for _ in range(50):
                        if ctx.get(core.rq_o.valid) and ctx.get(op.rq_i.valid):
                            break
                        await ctx.tick()
                    else:
                        raise AssertionError(f"step {i}: no values in flight to reset")
                assert ctx.get(op.busy), f"step {i} ended before the reset"
                ctx.set(cd.rst, 1)
                await ctx.tick()
                ctx.set(cd.rst, 0)
                assert not ctx.get(op.busy) and not ctx.get(op.rq_i.valid)
                assert not ctx.get(core.rq_o.valid) and not ctx.get(core.busy)
            stall["p"] = p
            await start(ctx, fields)
            got = await finish(ctx, fields, step.srcs[0].words)
            check(got, want, step, fields)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(staller, background=True)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("name, values, c, h, w, relu", [
    ("tiny", 1, 6, 3, 2, False),          # 4 lanes: 2 words a pixel, the last half padding
    ("tiny", 2, 7, 2, 3, True),
    ("tiny", 3, 5, 3, 3, False),          # 3 values a beat: a word's last beat one lane
    ("tiny", 4, 3, 2, 2, True),           # a word a beat; one word a pixel, one lane padding
    ("serial", 1, 11, 2, 3, True),        # 8 lanes, a digit-serial requantiser
    ("ice40-up5k", 1, 11, 2, 3, True),    # 6 lanes: 2 words a pixel, the last 1 lane padding
    ("ice40-up5k", 2, 5, 3, 2, False),    # one word a pixel, 1 lane of it padding
    ("ecp5-25k", 3, 10, 3, 2, False),     # 7 lanes: two banks, 3 values a beat
    ("ecp5-25k", 4, 16, 2, 2, True),      # 3 words a pixel, the last 2 of 7 lanes
])
def test_ops_write_only_the_model_s_words(name, values, c, h, w, relu):
    """An add, a pooling of its result, an add with a full-scale multiplier and a pooling of
    the input, each followed by the whole memory compared with the model's."""
    _run(name, values, c, h, w, relu=relu, seed=values * 10 + c)


@pytest.mark.parametrize("name, values, abort", [
    ("ice40-up5k", 2, (0, 2, 3)),         # an add with words written and values in flight
    ("tiny", 3, (1, 0, 6)),               # a pooling still summing its first group
    ("tiny", 1, (3, 1, 1)),
])
def test_reset_in_the_middle_of_an_operation(name, values, abort):
    """A reset with an operation in flight (its words partly written, beats in the
    requantiser): the unit and the requantiser are idle after it, and every operation
    after it (the one abandoned too) is exact."""
    _run(name, values, 9, 2, 3, seed=5 + values, abort=abort)


@pytest.mark.parametrize("shape", [(0, 2, 2), (3, 0, 2), (3, 2, 0)])
def test_an_empty_source_is_refused_before_it_reaches_the_unit(shape):
    """The unit counts its words and groups down to the last, so a descriptor with none
    would never end: the descriptor maker refuses an empty source, naming the step."""
    src = Region(0, shape, max(1, -(-shape[0] // 4)))
    step = OpStep("pool", "gap", (src,), Region(64, (shape[0], 1, 1), 1),
                  {"mult": 1, "shift": 0})
    with pytest.raises(ValueError, match=r"gap 'pool': source shape must have every "
                                         r"dimension at least 1, not \(" + str(shape[0])):
        op_fields(step, 4)
