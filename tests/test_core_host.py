"""psc.host: the checks that refuse a layer before anything is sent, the scheduler's tiling
(without a simulator), and the cycles of the PSC build against the plain build (Verilator).
The requantiser's own bench is tests/test_requantize.py."""

import numpy as np
import pytest

import core_cases
import psc.host.api
from psc import host
from psc.config import PSCConfig
from psc.hw.core import CoreConfig, PSCConvCore
from psc.presets import PRESETS

TINY = PRESETS["tiny"]


@pytest.fixture
def no_send(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("run_plans called: something was sent")
    monkeypatch.setattr(psc.host.api, "run_plans", refuse)


def _base(**changes):
    layer = core_cases.make("std_k3_s1_p1")
    layer.update(changes)
    return layer


def _w(cout, cin, k):
    return np.zeros((cout, cin, k, k), dtype=np.int64)


@pytest.mark.parametrize("changes, message", [
    (dict(w_pos=_w(8, 8, 2), w_neg=_w(8, 8, 2)), "kernel size must be one of"),
    (dict(w_pos=_w(8, 8, 9), w_neg=_w(8, 8, 9), padding=4), "kernel size must be one of"),
    (dict(stride=3), "stride must be one of"),
    (dict(padding=3), "padding must be less than the kernel size"),
    (dict(groups=2, w_pos=_w(8, 4, 3), w_neg=_w(8, 4, 3)), "only groups=1 and depthwise"),
    (dict(bias=np.full(8, 2**31 - 10)), "can leave the build's 32-bit sum"),
    (dict(mult=1 << 16), "mult must be within"),
    (dict(shift=63), "shift must be within"),
    (dict(x=np.full((8, 6, 6), 128)), "signed 8-bit range"),
])
def test_host_refuses_before_sending(no_send, changes, message):
    with pytest.raises(host.LayerError, match=message):
        host.run_layer(**_base(**changes))


def test_host_refuses_psc_weights_on_plain_build(no_send):
    plain = CoreConfig(pe=PSCConfig(psc=False))
    with pytest.raises(host.LayerError, match="psc=False"):
        host.run_layer(**_base(), config=plain)


def test_plan_covers_output_once():
    layer = core_cases._layer(np.random.default_rng(0), 6, 22, 9, 11, 3, 2, 1)
    plan = host.plan_layer(**layer, config=TINY)
    hits = np.zeros(plan.out_shape, dtype=int)
    for t in plan.tiles:
        if not t.n_out:
            continue         # a chunk of a split reduction places nothing
        c0, c1, oy0, oy1, ox0, ox1 = t.place
        hits[c0:c1, oy0:oy1, ox0:ox1] += 1
        assert t.fields["in_h"] * t.fields["in_w"] * t.fields["gin"] <= TINY.fmap_depth
        assert len(t.acts) == t.fields["in_h"] * t.fields["in_w"] * t.fields["gin"]
    assert (hits == 1).all()


def test_core_elaborates_for_other_builds():
    from amaranth.back import rtlil
    for cc in (TINY, CoreConfig(pe=PSCConfig(lanes=2, rows=3, psc=False)),
               CoreConfig(pe=PSCConfig(act_width=4, weight_width=4, acc_width=20,
                                       max_reduction=1024))):
        rtlil.convert(PSCConvCore(cc))


def _random_shapes(rng, n, config):
    """``n`` layer shapes of every kind that ``config`` can run."""
    out = []
    while len(out) < n:
        kind = ("standard", "depthwise", "pointwise", "fc")[len(out) % 4]
        k = 1 if kind in ("pointwise", "fc") else int(rng.choice([3, 5]))
        stride = 1 if kind == "fc" else int(rng.integers(1, 3))
        padding = 0 if kind == "fc" else int(rng.integers(0, k // 2 + 1))
        cin = int(rng.integers(1, 14))
        cout = cin if kind == "depthwise" else int(rng.integers(1, 14))
        lo = max(1, k - 2 * padding)
        h, w = (1, 1) if kind == "fc" else (int(rng.integers(lo, lo + 6)),
                                            int(rng.integers(lo, lo + 6)))
        shape = dict(cin=cin, cout=cout, h=h, w=w, k=k, stride=stride, padding=padding,
                     groups=cin if kind == "depthwise" else 1, relu=bool(rng.integers(0, 2)))
        try:
            host.plan_layer(**core_cases._layer(rng, **shape), config=config)
        except host.LayerError:
            continue
        out.append(shape)
    return out


def test_psc_build_takes_the_cycles_of_the_plain_build():
    """The same shapes, with W+ != W- on the PSC build and W+ = W- on the plain build, take
    the same cycles tile by tile; each build's outputs equal the golden model's."""
    rng = np.random.default_rng(2021)
    shapes = _random_shapes(rng, 4, TINY)          # one of each kind
    psc_layers = [core_cases._layer(rng, **s, weights="psc") for s in shapes]
    plain_layers = [core_cases._layer(rng, **s, weights="ili") for s in shapes]
    for layer in psc_layers:
        assert (layer["w_pos"] != layer["w_neg"]).any()
    plain = TINY.replace(psc=False)
    got = {"psc": host.run_layers(psc_layers, config=TINY, target="verilator"),
           "plain": host.run_layers(plain_layers, config=plain, target="verilator")}
    for build, layers in (("psc", psc_layers), ("plain", plain_layers)):
        for i, (layer, (y, _)) in enumerate(zip(layers, got[build])):
            np.testing.assert_array_equal(y, core_cases.expected(layer),
                                          err_msg=f"{build} build, layer {i} {shapes[i]}")
    for i, ((_, c_psc), (_, c_plain)) in enumerate(zip(got["psc"], got["plain"])):
        assert c_psc["tiles"] > 0
        assert c_psc["per_tile"] == c_plain["per_tile"], f"layer {i} {shapes[i]}"
