# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of SignMask, WeightSelect, PSCMac and DotProduct.

Expected results come from :func:`psc.model.golden.psc_conv2d` on 1x1 problems (a
reduction of ``n`` beats of ``lanes`` activations is a 1x1 convolution with
``n * lanes`` input channels and ``rows`` output channels); payloads are packed
with :mod:`psc.model.packing`. Nothing here re-derives PSC arithmetic.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from amaranth.hdl import Module, unsigned
from amaranth.sim import Simulator

from psc import golden
from psc.model import packing
from psc.config import PSCConfig
from psc.hw.dot_product import DotProduct, input_layout, output_layout
from psc.hw.pe import PSCMac
from psc.hw.sign_mask import SignMask
from psc.hw.weight_select import WeightSelect

# Odd lane count exercises the adder tree's unpaired branch; the narrow config
# puts reductions right at the edges of a small accumulator.
CONFIGS = {
    "l3r2": PSCConfig(lanes=3, rows=2),
    "tiny": PSCConfig(lanes=2, rows=2),
    "narrow": PSCConfig(act_width=4, weight_width=5, acc_width=14, lanes=4, rows=3, max_reduction=16),
    "l1r1": PSCConfig(lanes=1, rows=1, max_reduction=64, acc_width=22),
    # Registers inside the adder tree (5 lanes: an unpaired branch crosses them).
    "l5r2t2": PSCConfig(lanes=5, rows=2, tree_stages=2),
}


def run(dut, *testbenches, processes=()):
    sim = Simulator(dut)
    sim.add_clock(1e-6, if_exists=True)  # combinational designs have no clock
    for tb in testbenches:
        sim.add_testbench(tb)
    for p in processes:
        sim.add_process(p)
    sim.run()


def set_view(ctx, view, values):
    """Drive a layout-typed port from host values through the project's packer."""
    ctx.set(view.as_value(), packing.pack_payload(view.shape(), values))


def lo_hi(width):
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


# --- stimulus and reference ------------------------------------------------

class Reduction:
    """One reduction: ``n`` beats of activations and weights and a bias per row."""

    def __init__(self, x, w_pos, w_neg, bias):
        self.x = np.asarray(x, dtype=np.int64)            # (n, lanes)
        self.w_pos = np.asarray(w_pos, dtype=np.int64)    # (n, rows, lanes)
        self.w_neg = np.asarray(w_neg, dtype=np.int64)
        self.bias = np.asarray(bias, dtype=np.int64)      # (rows,)

    @property
    def beats(self):
        return self.x.shape[0]

    def expected(self, config):
        """Golden result per row: psc_conv2d (or conv2d for psc=False) on a 1x1 problem."""
        n, lanes = self.x.shape
        rows = self.bias.shape[0]
        x = self.x.reshape(n * lanes, 1, 1)
        w_pos = self.w_pos.transpose(1, 0, 2).reshape(rows, n * lanes, 1, 1)
        w_neg = self.w_neg.transpose(1, 0, 2).reshape(rows, n * lanes, 1, 1)
        widths = dict(act_width=config.act_width, weight_width=config.weight_width,
                      acc_width=config.acc_width)
        if config.psc:
            return golden.psc_conv2d(x, w_pos, w_neg, self.bias, **widths)[:, 0, 0]
        return golden.conv2d(x, w_pos, self.bias, **widths)[:, 0, 0]

    def words(self, config, beat):
        """Weight words of one beat, ``(rows, lanes)``: parified for PSC, ``W+`` alone if plain."""
        if config.psc:
            return packing.parify(self.w_pos[beat], self.w_neg[beat], config.weight_width)
        return packing.pack_lanes(self.w_pos[beat][..., None], config.weight_width)

    def payloads(self, config):
        layout = input_layout(config)
        for b in range(self.beats):
            yield packing.pack_payload(layout, {
                "x": self.x[b], "w": self.words(config, b), "bias": self.bias,
                "first": int(b == 0), "last": int(b == self.beats - 1)})


def bias_range(config):
    """Biases the host accepts: bias + any reduction of max_reduction products fits the accumulator."""
    alo, ahi = lo_hi(config.act_width)
    wlo, whi = lo_hi(config.weight_width)
    pos_peak = config.max_reduction * alo * wlo
    neg_peak = config.max_reduction * min(alo * whi, ahi * wlo)
    lo, hi = lo_hi(config.acc_width)
    return lo - neg_peak, hi - pos_peak


def random_reduction(rng, config, beats, *, kind="random"):
    lanes, rows = config.lanes, config.rows
    alo, ahi = lo_hi(config.act_width)
    wlo, whi = lo_hi(config.weight_width)
    shape_x, shape_w = (beats, lanes), (beats, rows, lanes)
    x = rng.integers(alo, ahi + 1, size=shape_x)
    w_pos = rng.integers(wlo, whi + 1, size=shape_w)
    w_neg = rng.integers(wlo, whi + 1, size=shape_w)
    blo, bhi = bias_range(config)
    bias = rng.integers(blo, bhi + 1, size=rows)
    if kind == "min":          # most negative everything: largest positive products
        x[:] = alo
        w_pos[:] = wlo
        w_neg[:] = wlo
        bias[:] = bhi
    elif kind == "min_neg":    # most negative x times most positive W-: most negative sum
        x[:] = alo
        w_pos[:] = 0
        w_neg[:] = whi
        bias[:] = blo
    elif kind == "zero":       # x == 0 selects W+, product 0: the bias comes out
        x[:] = 0
    elif kind == "negative":   # every lane negative: only W- matters
        x = rng.integers(alo, 0, size=shape_x)
    elif kind == "positive":   # every lane >= 0: only W+ matters
        x = rng.integers(0, ahi + 1, size=shape_x)
    elif kind == "max":
        x[:] = ahi
        w_pos[:] = whi
        bias[:] = bhi
    return Reduction(x, w_pos, w_neg, bias)


def random_stream(rng, config, count, max_beats):
    kinds = ["random", "min", "min_neg", "zero", "negative", "positive", "max"]
    out = []
    for i in range(count):
        beats = int(rng.integers(1, max_beats + 1))
        beats = min(beats, max(1, config.max_reduction // config.lanes))
        out.append(random_reduction(rng, config, beats, kind=kinds[i % len(kinds)]))
    return out


# --- DotProduct harness -----------------------------------------------------

def run_dot_product(config, reductions, *, seed=0, p_gap=0.0, p_stall=0.0, timeout=100000):
    """Stream ``reductions`` through a DotProduct with random gaps and stalls; returns results."""
    payloads = [p for r in reductions for p in r.payloads(config)]
    got = stream_dot_product(config, payloads, len(reductions), seed=seed, p_gap=p_gap,
                             p_stall=p_stall, timeout=timeout)
    return got.reshape(len(got), config.rows)


def stream_dot_product(config, payloads, n_out, *, dw=None, seed=0, p_gap=0.0, p_stall=0.0,
                       timeout=100000, dut_class=DotProduct):
    """Drive input ``payloads`` into a ``dut_class`` (a DotProduct) with random gaps, take
    ``n_out`` output beats with random stalls (``dw``: the depthwise-mode input of a
    ``depthwise="pixels"`` or ``"channels"`` build).

    Also checks the stream rules on ``o``: once valid, the payload holds until taken, and
    nothing comes after the last expected beat.
    """
    dut = dut_class(config)
    rng = np.random.default_rng(seed)
    got = []

    async def driver(ctx):
        if dw is not None:
            ctx.set(dut.dw, dw)
        for word in payloads:
            while rng.random() < p_gap:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload.as_value(), word)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def monitor(ctx):
        held = None
        for _ in range(timeout):
            if len(got) == n_out:
                break
            ready = bool(rng.random() >= p_stall)
            ctx.set(dut.o.ready, ready)
            _, _, valid, word = await ctx.tick().sample(dut.o.valid, dut.o.payload.as_value())
            if held is not None:
                assert valid and word == held, "o dropped or changed a beat while stalled"
            held = word if valid and not ready else None
            if valid and ready:
                got.append(packing.unpack_lanes(word, config.rows, config.acc_width))
        else:
            raise AssertionError(f"timeout: {len(got)} of {n_out} outputs")
        # Nothing more may come out.
        ctx.set(dut.o.ready, 1)
        for _ in range(dut.latency + config.rows + 2):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, "extra output beat"

    run(dut, driver, monitor)
    return np.array(got)


def expected_stream(config, reductions):
    return np.array([r.expected(config) for r in reductions]).reshape(len(reductions), config.rows)


# --- SignMask ----------------------------------------------------------------

@pytest.mark.parametrize("act_width", [2, 4, 8])
def test_sign_mask_exhaustive(act_width):
    """Every activation value in every lane: mask bit is 1 iff x < 0 (SPEC: the MSB)."""
    lanes = 3
    dut = SignMask(lanes, act_width)
    lo, hi = lo_hi(act_width)
    values = np.arange(lo, hi + 1)

    async def tb(ctx):
        for v in values:
            for lane in range(lanes):
                x = np.zeros(lanes, dtype=np.int64)
                x[lane] = v
                x[(lane + 1) % lanes] = lo if lanes > 1 else v
                set_view(ctx, dut.x, x)
                mask = ctx.get(dut.mask)
                assert [(mask >> i) & 1 for i in range(lanes)] == [int(e < 0) for e in x]

    run(dut, tb)


# --- WeightSelect --------------------------------------------------------------

@given(st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_weight_select(data):
    """Mask bit 0 selects W+ (low half of the word), 1 selects W- (SPEC port definition)."""
    lanes = data.draw(st.integers(1, 6))
    width = data.draw(st.integers(2, 10))
    lo, hi = lo_hi(width)
    vals = st.lists(st.integers(lo, hi), min_size=lanes, max_size=lanes)
    w_pos = np.array(data.draw(vals))
    w_neg = np.array(data.draw(vals))
    mask = data.draw(st.integers(0, (1 << lanes) - 1))
    dut = WeightSelect(lanes, width)

    async def tb(ctx):
        words = packing.parify(w_pos, w_neg, width)
        set_view(ctx, dut.words, words)
        ctx.set(dut.mask, mask)
        got = packing.unpack_lanes(ctx.get(dut.w.as_value()), lanes, width)
        sel_pos, sel_neg = packing.unparify(words, width)
        for i in range(lanes):
            assert got[i] == (sel_neg[i] if (mask >> i) & 1 else sel_pos[i])

    run(dut, tb)


def test_sign_mask_feeds_weight_select_like_golden():
    """SignMask -> WeightSelect: Wsel * x per lane equals golden psc_conv2d of that lane."""
    lanes, aw, ww = 4, 8, 8
    m = Module()
    m.submodules.sm = sm = SignMask(lanes, aw)
    m.submodules.wsu = wsu = WeightSelect(lanes, ww)
    m.d.comb += wsu.mask.eq(sm.mask)
    rng = np.random.default_rng(5)

    async def tb(ctx):
        corners = [[-128, 0, 127, -1], [0] * lanes, [-128] * lanes, [127] * lanes]
        for trial in range(200):
            x = np.array(corners[trial]) if trial < len(corners) else rng.integers(-128, 128, size=lanes)
            w_pos = rng.integers(-128, 128, size=lanes)
            w_neg = rng.integers(-128, 128, size=lanes)
            set_view(ctx, sm.x, x)
            set_view(ctx, wsu.words, packing.parify(w_pos, w_neg, ww))
            sel = packing.unpack_lanes(ctx.get(wsu.w.as_value()), lanes, ww)
            for i in range(lanes):
                ref = golden.psc_conv2d(x[i:i + 1].reshape(1, 1, 1), w_pos[i].reshape(1, 1, 1, 1),
                                        w_neg[i].reshape(1, 1, 1, 1))[0, 0, 0]
                got = golden.conv2d(x[i:i + 1].reshape(1, 1, 1), np.array(sel[i]).reshape(1, 1, 1, 1))
                assert got[0, 0, 0] == ref
                if x[i] == 0:      # x == 0 selects W+ (the product is 0 either way)
                    assert sel[i] == w_pos[i]

    run(m, tb)


# --- PSCMac --------------------------------------------------------------------

def pe_harness(config):
    """A PSCMac fed by its own SignMask, as in DotProduct."""
    m = Module()
    m.submodules.pe = pe = PSCMac(config)
    if config.psc:
        m.submodules.sm = sm = SignMask(config.lanes, config.act_width)
        m.d.comb += [sm.x.eq(pe.x), pe.mask.eq(sm.mask)]
    return m, pe


def run_pe(config, reductions, *, seed=0, p_gap=0.0, p_stall=0.0):
    """Drive PSCMac directly (valid gaps, en low at random); results taken when acc_valid & en."""
    m, pe = pe_harness(config)
    rng = np.random.default_rng(seed)
    beats = []
    for r in reductions:
        for b in range(r.beats):
            beats.append((r.x[b], r.words(config, b)[0], r.bias[0], b == 0, b == r.beats - 1))
    got = []

    async def tb(ctx):
        pending = list(beats)
        for _ in range(100000):
            if len(got) == len(reductions):
                break
            en = bool(rng.random() >= p_stall)
            ctx.set(pe.en, en)
            if pending and rng.random() >= p_gap:
                x, words, bias, first, last = pending[0]
                set_view(ctx, pe.x, x)
                set_view(ctx, pe.words, words)
                ctx.set(pe.bias, int(bias))
                ctx.set(pe.first, first)
                ctx.set(pe.last, last)
                ctx.set(pe.valid, 1)
                if en:
                    pending.pop(0)
            else:
                # A bubble carries garbage: it must change nothing.
                ctx.set(pe.valid, 0)
                ctx.set(pe.first, int(rng.integers(2)))
                ctx.set(pe.last, int(rng.integers(2)))
                ctx.set(pe.bias, int(rng.integers(-100, 100)))
            _, _, acc_valid, acc = await ctx.tick().sample(pe.acc_valid, pe.acc)
            if acc_valid and en:
                got.append(acc)
        else:
            raise AssertionError("timeout")

    run(m, tb)
    return np.array(got)


@pytest.mark.parametrize("name", ["l3r2", "narrow", "l1r1", "l5r2t2"])
@pytest.mark.parametrize("psc", [True, False])
def test_pe_random_with_stalls(name, psc):
    config = CONFIGS[name].replace(psc=psc, rows=1)
    rng = np.random.default_rng(11)
    reductions = random_stream(rng, config, 30, 4)
    got = run_pe(config, reductions, seed=3, p_gap=0.3, p_stall=0.3)
    assert np.array_equal(got, expected_stream(config, reductions)[:, 0])


def test_pe_ignores_rows():
    assert (PSCMac(PSCConfig(rows=5))).signature == (PSCMac(PSCConfig(rows=1))).signature


@pytest.mark.parametrize("psc", [True, False])
@pytest.mark.parametrize("tree_stages", [0, 1, 2])
def test_pe_latency(psc, tree_stages):
    """A beat presented with en in cycle t shows on acc in cycle t + latency (en always high)."""
    config = CONFIGS["l3r2"].replace(psc=psc, tree_stages=tree_stages)
    assert PSCMac(config).latency == 3 + tree_stages
    m, pe = pe_harness(config)
    red = random_reduction(np.random.default_rng(1), config, 1)
    seen = []

    async def tb(ctx):
        ctx.set(pe.en, 1)
        set_view(ctx, pe.x, red.x[0])
        set_view(ctx, pe.words, red.words(config, 0)[0])
        ctx.set(pe.bias, int(red.bias[0]))
        ctx.set(pe.first, 1)
        ctx.set(pe.last, 1)
        ctx.set(pe.valid, 1)
        await ctx.tick()
        ctx.set(pe.valid, 0)
        for cycle in range(1, 10):
            if ctx.get(pe.acc_valid):
                seen.append((cycle, ctx.get(pe.acc)))
            await ctx.tick()

    run(m, tb)
    assert [c for c, _ in seen] == [pe.latency]
    assert seen[0][1] == red.expected(config)[0]


# --- DotProduct ----------------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("p_gap,p_stall", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.4), (0.4, 0.5)])
def test_dot_product_stream(name, p_gap, p_stall):
    config = CONFIGS[name]
    rng = np.random.default_rng(abs(hash((name, p_gap, p_stall))) % 2**32)
    reductions = random_stream(rng, config, 25, 4)
    got = run_dot_product(config, reductions, seed=7, p_gap=p_gap, p_stall=p_stall)
    assert np.array_equal(got, expected_stream(config, reductions))


@pytest.mark.parametrize("name", ["l3r2", "narrow"])
def test_dot_product_baseline(name):
    """psc=False: W used as is, no sign dependence (golden.conv2d)."""
    config = CONFIGS[name].replace(psc=False)
    rng = np.random.default_rng(2)
    reductions = random_stream(rng, config, 25, 3)
    got = run_dot_product(config, reductions, seed=1, p_gap=0.2, p_stall=0.3)
    assert np.array_equal(got, expected_stream(config, reductions))
    assert input_layout(config)["w"].shape.elem_shape.elem_shape == unsigned(config.weight_width)


def test_dot_product_corners_at_accumulator_edges():
    """Longest reductions of extreme values land on the accumulator's limits exactly."""
    config = CONFIGS["narrow"]
    rng = np.random.default_rng(0)
    beats = config.max_reduction // config.lanes
    reductions = [random_reduction(rng, config, beats, kind=k)
                  for k in ("min", "min_neg", "max", "zero", "negative", "positive")]
    got = run_dot_product(config, reductions, p_stall=0.3)
    exp = expected_stream(config, reductions)
    assert np.array_equal(got, exp)
    lo, hi = lo_hi(config.acc_width)
    assert exp.max() == hi and exp.min() == lo  # the corners really are the corners


@pytest.mark.parametrize("name", ["l3r2", "l5r2t2"])
def test_dot_product_latency_and_throughput(name):
    """o.ready high: a last beat accepted in cycle t is on o in cycle t + latency, and
    back-to-back one-beat reductions give one output per cycle with i.ready never low."""
    config = CONFIGS[name]
    dut = DotProduct(config)
    rng = np.random.default_rng(4)
    reductions = [random_reduction(rng, config, 1) for _ in range(10)]
    payloads = [p for r in reductions for p in r.payloads(config)]
    accepted, outputs = [], []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        for cycle in range(40):
            if cycle < len(payloads):
                ctx.set(dut.i.payload.as_value(), payloads[cycle])
                ctx.set(dut.i.valid, 1)
            else:
                ctx.set(dut.i.valid, 0)
            _, _, iv, ir, ov, word = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.payload.as_value())
            if iv:
                assert ir
                accepted.append(cycle)
            if ov:
                outputs.append((cycle, packing.unpack_lanes(word, config.rows, config.acc_width)))

    run(dut, tb)
    assert accepted == list(range(len(payloads)))
    assert [c for c, _ in outputs] == [c + dut.latency for c in accepted]
    assert np.array_equal(np.array([o for _, o in outputs]), expected_stream(config, reductions))


def test_dot_product_holds_output_until_ready():
    """A stalled output holds and the pipeline behind it freezes; nothing is lost."""
    config = CONFIGS["tiny"]
    rng = np.random.default_rng(9)
    reductions = [random_reduction(rng, config, 1) for _ in range(6)]
    # Long stalls: the pipeline fills completely behind the held output.
    got = run_dot_product(config, reductions, seed=5, p_stall=0.9)
    assert np.array_equal(got, expected_stream(config, reductions))


@given(st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_dot_product_property(data):
    """Random configurations and reductions (hypothesis) match golden, with gaps and stalls."""
    act_width = data.draw(st.integers(2, 9), label="act_width")
    weight_width = data.draw(st.integers(2, 9), label="weight_width")
    lanes = data.draw(st.integers(1, 5), label="lanes")
    rows = data.draw(st.integers(1, 3), label="rows")
    # Every beat carries `lanes` products, so a full-range stream needs max_reduction >= lanes.
    max_reduction = data.draw(st.integers(lanes, 40), label="max_reduction")
    psc = data.draw(st.booleans(), label="psc")
    from psc.config import required_acc_width
    acc_width = max(8, required_acc_width(act_width, weight_width, max_reduction)
                    + data.draw(st.integers(0, 2), label="acc slack"))
    config = PSCConfig(act_width=act_width, weight_width=weight_width, acc_width=acc_width,
                       lanes=lanes, rows=rows, max_reduction=max_reduction, psc=psc)
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    max_beats = max(1, max_reduction // lanes)
    reductions = random_stream(rng, config, data.draw(st.integers(1, 8), label="count"),
                               min(max_beats, 4))
    got = run_dot_product(config, reductions, seed=seed, p_gap=0.3, p_stall=0.3)
    assert np.array_equal(got, expected_stream(config, reductions))


# --- parameters and layouts ------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: SignMask(0, 8), r"lanes must be an integer in \[1, 64\], not 0"),
    (lambda: SignMask(4, 1), r"act_width must be an integer in \[2, 32\], not 1"),
    (lambda: SignMask(True, 8), r"lanes must be an integer in \[1, 64\], not True"),
    (lambda: WeightSelect(65, 8), r"lanes must be an integer in \[1, 64\], not 65"),
    (lambda: WeightSelect(4, "8"), r"weight_width must be an integer in \[2, 32\], not '8'"),
])
def test_parameter_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [PSCMac, DotProduct])
def test_config_type_checked(cls):
    with pytest.raises(TypeError, match=r"config must be a psc.config.PSCConfig, not \{'lanes': 8\}"):
        cls({"lanes": 8})


def test_layouts_match_spec():
    config = PSCConfig()
    layout = input_layout(config)
    assert [name for name, _ in layout] == ["x", "w", "bias", "first", "last"]
    offsets = {name: (f.offset, f.width) for name, f in layout}
    assert offsets == {"x": (0, 64), "w": (64, 1024), "bias": (1088, 256),
                       "first": (1344, 1), "last": (1345, 1)}
    assert output_layout(config).size == 256
    dut = (DotProduct(config))
    assert dut.i.payload.shape() == layout and dut.o.payload.shape() == output_layout(config)
    assert dut.latency == (PSCMac(config)).latency == 3


def test_pack_payload_places_fields_and_checks_them():
    config = CONFIGS["tiny"]
    layout = input_layout(config)
    words = packing.parify([[1, -2], [3, -4]], [[-5, 6], [-7, 8]])
    word = packing.pack_payload(layout, {"x": [-1, 2], "w": words, "bias": [-9, 10],
                                         "first": 1, "last": 0})
    assert packing.unpack_lanes(word & 0xFFFF, 2, 8).tolist() == [-1, 2]
    w_bits = (word >> layout["w"].offset) & ((1 << 64) - 1)    # the 4 x 16-bit w field alone
    got_words = packing.unpack_lanes([w_bits], 4, 16, signed=False)[0]
    assert packing.unparify(got_words.reshape(2, 2))[0].tolist() == [[1, -2], [3, -4]]
    assert (word >> layout["first"].offset) & 1 == 1 and (word >> layout["last"].offset) & 1 == 0
    with pytest.raises(ValueError, match=r"values.x\[1\] must be an integer in \[-128, 127\], not 128"):
        packing.pack_payload(layout, {"x": [0, 128], "w": words, "bias": [0, 0], "first": 1, "last": 1})
    with pytest.raises(ValueError, match=r"exactly the fields"):
        packing.pack_payload(layout, {"x": [0, 0]})
