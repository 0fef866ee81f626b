# amaranth: UnusedElaboratable=no
"""The depthwise datapath (``depthwise="pixels"``, ``"channels"`` and ``"shifted"``): per-lane accumulators
and the drain of :class:`psc.hw.dot_product.DotProduct` (and of the naive datapath,
:class:`psc.hw.naive.NaiveDotProduct`), in the Amaranth simulator against
:func:`psc.model.golden.psc_conv2d` (every lane of every row is its own 1x1 problem).
"""

import numpy as np
import pytest

from psc import golden
from psc.model import packing
from psc.config import PSCConfig
from psc.hw.dot_product import DotProduct, input_layout
from psc.hw.naive import NaiveDotProduct

from test_primitives_sim import lo_hi, random_stream, run, stream_dot_product

CONFIGS = {
    "p4": PSCConfig(lanes=4, rows=4, depthwise="pixels"),
    "p2t2": PSCConfig(lanes=2, rows=2, depthwise="pixels", tree_stages=2),
    "p4plain": PSCConfig(lanes=4, rows=4, depthwise="pixels", psc=False),
    "c4x3": PSCConfig(lanes=4, rows=3, depthwise="channels"),
    "c2x4t1": PSCConfig(lanes=2, rows=4, depthwise="channels", tree_stages=1),
    "s6x2": PSCConfig(lanes=6, rows=2, depthwise="shifted"),
    "s8x4t1": PSCConfig(lanes=8, rows=4, depthwise="shifted", tree_stages=1),
}


def drain_order(config):
    """``(row, lane)`` of each value of a reduction's output beats, in order: row by row
    (``"pixels"``, ``"channels"``), or lane group by lane group, then row by row
    (``"shifted"``: each group of ``rows`` channels leaves pixel by pixel)."""
    rows, lanes = config.rows, config.lanes
    if config.depthwise == "shifted":
        return [(r, p * rows + i) for p in range(lanes // rows) for r in range(rows)
                for i in range(rows)]
    return [(r, lane) for r in range(rows) for lane in range(lanes)]


class DwReduction:
    """A depthwise reduction: ``n`` beats, a lane word per row per beat (the same word in
    every row on a ``"shifted"`` build)."""

    def __init__(self, x, w_pos, w_neg):
        self.x = np.asarray(x, dtype=np.int64)            # (n, rows, lanes)
        self.w_pos = np.asarray(w_pos, dtype=np.int64)    # (n, rows, lanes)
        self.w_neg = np.asarray(w_neg, dtype=np.int64)

    def expected(self, config):
        """The ``lanes`` output beats: the rows' lane accumulators in :func:`drain_order`, in
        beats of ``rows``, each the 1x1 problem of its own products."""
        n, rows, lanes = self.x.shape
        out = np.zeros((rows, lanes), dtype=np.int64)
        widths = dict(act_width=config.act_width, weight_width=config.weight_width,
                      acc_width=config.acc_width)
        for r in range(rows):
            for lane in range(lanes):
                x = self.x[:, r, lane].reshape(n, 1, 1)
                wp = self.w_pos[:, r, lane].reshape(1, n, 1, 1)
                wn = self.w_neg[:, r, lane].reshape(1, n, 1, 1)
                if config.psc:
                    out[r, lane] = golden.psc_conv2d(x, wp, wn, **widths)[0, 0, 0]
                else:
                    out[r, lane] = golden.conv2d(x, wp, **widths)[0, 0, 0]
        return np.array([out[r, lane] for r, lane in drain_order(config)]).reshape(lanes, rows)

    def payloads(self, config):
        layout = input_layout(config)
        n = self.x.shape[0]
        for b in range(n):
            if config.psc:
                words = packing.parify(self.w_pos[b], self.w_neg[b], config.weight_width)
            else:
                words = packing.pack_lanes(self.w_pos[b][..., None], config.weight_width)
            yield packing.pack_payload(layout, {
                "x": self.x[b] if config.row_words else self.x[b][0], "w": words, "bias": np.zeros(config.rows, dtype=np.int64),
                "first": int(b == 0), "last": int(b == n - 1)})


def random_dw(rng, config, beats, corner=None):
    alo, ahi = lo_hi(config.act_width)
    wlo, whi = lo_hi(config.weight_width)
    shape = (beats, config.rows, config.lanes)
    x = rng.integers(alo, ahi + 1, size=shape)
    if not config.row_words:
        x[:] = x[:, :1]      # one word for every row
    wp = rng.integers(wlo, whi + 1, size=shape)
    wn = rng.integers(wlo, whi + 1, size=shape) if config.psc else wp
    if corner == "min":      # the largest sum a 7x7 window can make
        x[:], wp[:], wn[:] = alo, wlo, wlo
    return DwReduction(x, wp, wn)


@pytest.mark.parametrize("name", sorted(CONFIGS) + ["c4x3naive", "s6x2naive"])
@pytest.mark.parametrize("p_gap,p_stall", [(0.0, 0.0), (0.3, 0.4)])
def test_depthwise_mode_matches_golden(name, p_gap, p_stall):
    """Every lane of every row accumulates alone; ``lanes`` output beats per reduction, in
    order. Reductions of 1..12 beats: those shorter than lanes make the drain hold the PEs."""
    # the naive datapath (psc compare's third variant) accumulates each lane's two products
    dut_class = NaiveDotProduct if name.endswith("naive") else DotProduct
    config = CONFIGS[name.removesuffix("naive")]
    rng = np.random.default_rng(3)
    reds = [random_dw(rng, config, int(rng.integers(1, 13))) for _ in range(12)]
    reds.append(random_dw(rng, config, 49, corner="min"))
    payloads = [p for r in reds for p in r.payloads(config)]
    got = stream_dot_product(config, payloads, len(reds) * config.lanes, dw=1, seed=1,
                             dut_class=dut_class, p_gap=p_gap, p_stall=p_stall)
    exp = np.concatenate([r.expected(config) for r in reds])
    bad = np.argwhere(got != exp)
    assert not len(bad), (f"first mismatch at output beat {bad[0][0]} lane {bad[0][1]}: "
                          f"got {got[bad[0][0]]}, expected {exp[bad[0][0]]}")


@pytest.mark.parametrize("name", ["p4", "p2t2"])
def test_other_layers_unchanged(name):
    """dw low: a depthwise-capable build computes ordinary dot products (x given to every row)."""
    config = CONFIGS[name]
    rng = np.random.default_rng(5)
    reds = random_stream(rng, config, 10, 4)
    layout = input_layout(config)
    payloads = []
    for r in reds:
        for b in range(r.beats):
            payloads.append(packing.pack_payload(layout, {
                "x": np.broadcast_to(r.x[b], (config.rows, config.lanes)),
                "w": r.words(config, b), "bias": r.bias,
                "first": int(b == 0), "last": int(b == r.beats - 1)}))
    got = stream_dot_product(config, payloads, len(reds), dw=0, seed=2, p_gap=0.2, p_stall=0.3)
    assert np.array_equal(got, np.array([r.expected(config) for r in reds]))


def test_depthwise_latency_and_throughput():
    """With o ready: the first beat of a reduction accepted as last in cycle t is on o at
    t + dw_latency, and reductions of rows beats back to back never stall the input."""
    config = CONFIGS["p4"]
    dut = DotProduct(config)
    rng = np.random.default_rng(8)
    reds = [random_dw(rng, config, config.rows) for _ in range(5)]
    payloads = [p for r in reds for p in r.payloads(config)]
    accepted, outputs = [], []

    async def tb(ctx):
        ctx.set(dut.dw, 1)
        ctx.set(dut.o.ready, 1)
        for cycle in range(60):
            ctx.set(dut.i.valid, cycle < len(payloads))
            if cycle < len(payloads):
                ctx.set(dut.i.payload.as_value(), payloads[cycle])
            _, _, iv, ir, ov, word = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.payload.as_value())
            if iv:
                assert ir, f"input stalled in cycle {cycle}"
                accepted.append(cycle)
            if ov:
                outputs.append((cycle, packing.unpack_lanes(word, config.rows, config.acc_width)))

    run(dut, tb)
    lasts = accepted[config.rows - 1::config.rows]
    firsts = [c for c, _ in outputs][::config.rows]
    assert firsts == [c + dut.dw_latency for c in lasts]
    exp = np.concatenate([r.expected(config) for r in reds])
    assert np.array_equal(np.array([o for _, o in outputs]), exp)


def test_pixels_needs_square_power_of_two():
    with pytest.raises(ValueError, match=r"depthwise='pixels' needs lanes == rows"):
        PSCConfig(lanes=4, rows=2, depthwise="pixels")
    with pytest.raises(ValueError, match=r"depthwise must be one of"):
        PSCConfig(depthwise="rows")
