"""Tests of whole networks: the golden operations (psc.model.network), the Network object and
its file, and psc.network.run on the simulated core, bit for bit against the golden model."""

import json
from fractions import Fraction

import numpy as np
import pytest

from psc.host.scheduler import LayerError
from psc.model.checks import BadTypeError
from psc.model.golden import psc_conv2d_float, requantize_float
from psc.model.network import (FORMAT, VERSION, Layer, Network, add, conv_layer, flatten,
                               global_avg_pool, quantize_multiplier)
from psc.network import run
from psc.presets import preset

RNG = np.random.default_rng(1111)


def rand(shape, width=8, rng=RNG):
    return rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=shape)


def _round_shift(v, shift):
    """Independent round-half-up of ``v / 2**shift`` with Python's exact fractions."""
    q = Fraction(int(v), 1 << int(shift)) + Fraction(1, 2) if shift else Fraction(int(v))
    return q.numerator // q.denominator


def _clamp(v, lo=-128, hi=127):
    return min(hi, max(lo, v))


# --- the golden operations against independent formulations -----------------------------

@pytest.mark.parametrize("psc", [True, False])
@pytest.mark.parametrize("groups", [1, 6])
def test_conv_layer_matches_float_reference(psc, groups):
    x = rand((2, 6, 7, 7))
    wp = rand((6, 6 // groups, 3, 3))
    wn = rand(wp.shape) if psc else None
    bias, mult, shift = rand(6, 16), RNG.integers(1, 1 << 16, 6), RNG.integers(10, 20, 6)
    got = conv_layer(x, wp, wn, bias, mult, shift, stride=2, padding=1, groups=groups, relu=True)
    for i in range(2):
        acc = psc_conv2d_float(x[i], wp, wp if wn is None else wn, bias, stride=2, padding=1,
                               groups=groups)
        np.testing.assert_array_equal(got[i], requantize_float(acc, mult, shift, relu=True))


@pytest.mark.parametrize("relu", [False, True])
def test_add_matches_exact_integers(relu):
    a, b = rand((2, 3, 4, 5)), rand((2, 3, 4, 5))
    ma, mb, shift = 23000, 41000, 15
    got = add(a, b, ma, mb, shift, relu=relu)
    want = np.vectorize(lambda p, q: _clamp(_round_shift(p * ma + q * mb, shift)))(a, b)
    np.testing.assert_array_equal(got, np.maximum(want, 0) if relu else want)
    # saturation at both ends
    top = np.full((1, 1, 1), 127)
    assert add(top, top, 1, 1, 0)[0, 0, 0] == 127
    assert add(-top - 1, -top - 1, 1, 1, 0)[0, 0, 0] == -128


def test_global_avg_pool_matches_exact_integers():
    x = rand((2, 5, 3, 4))
    mult, shift = RNG.integers(1, 1 << 16, 5), RNG.integers(5, 20, 5)
    got = global_avg_pool(x, mult, shift)
    assert got.shape == (2, 5, 1, 1)
    for n in range(2):
        for c in range(5):
            s = sum(int(v) for v in x[n, c].reshape(-1))
            assert got[n, c, 0, 0] == _clamp(_round_shift(s * int(mult[c]), shift[c]))


def test_flatten_is_c_order():
    x = rand((2, 3, 4, 5))
    got = flatten(x)
    assert got.shape == (2, 60, 1, 1)
    for c in range(3):
        for h in range(4):
            for w in range(5):
                assert got[1, (c * 4 + h) * 5 + w, 0, 0] == x[1, c, h, w]


@pytest.mark.parametrize("scale", [1e-7, 0.00123, 0.5, 0.99999, 1.0, 3.75, 40000.0])
def test_quantize_multiplier(scale):
    mult, shift = quantize_multiplier(scale)
    assert 0 < mult < 1 << 16 and 0 <= shift <= 62
    assert abs(mult / 2 ** shift - scale) <= scale * 2.0 ** -15 + 2.0 ** -(shift + 1)
    with pytest.raises(ValueError, match="scale must be positive"):
        quantize_multiplier(-scale)


# --- a residual network ----------------------------------------------------------------

def residual_net(rng=RNG, c=8, classes=10):
    """Stem (PSC 3x3), depthwise PSC 3x3, plain pointwise with ReLU, residual add, global
    average pooling, flatten and a PSC classifier: every op, sized to fit every preset."""
    def r(shape, width=8):
        return rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=shape)
    layers = [
        Layer.conv("stem", "image", "a", r((c, 1, 3, 3)), r((c, 1, 3, 3)), r(c, 10), 300, 12,
                   padding=1),
        Layer.conv("dw", "a", "b", r((c, 1, 3, 3)), r((c, 1, 3, 3)), r(c, 10), 300, 12,
                   padding=1, groups=c),
        Layer.conv("pw", "b", "c", r((c, c, 1, 1)), None, r(c, 10), 300, 12, relu=True),
        Layer.add("res", "a", "c", "d", 20000, 30000, 15),
        Layer.gap("pool", "d", "e", 40000, 20),
        Layer.flatten("flat", "e", "f"),
        Layer.conv("fc", "f", "logits", r((classes, c, 1, 1)), r((classes, c, 1, 1)),
                   r(classes, 10), 30000, 14),
    ]
    return Network("image", (1, 6, 6), layers, "logits", input_scale=1 / 64)


def test_network_runs_every_op_on_the_golden_model():
    net = residual_net()
    x = rand((3, 1, 6, 6))
    t = net.run(x, keep=True)
    a = conv_layer(x, *(net.layers[0].arrays[k] for k in ("w_pos", "w_neg", "bias", "mult",
                                                          "shift")), padding=1)
    np.testing.assert_array_equal(t["a"], a)
    np.testing.assert_array_equal(t["d"], add(t["a"], t["c"], 20000, 30000, 15))
    assert t["logits"].shape == (3, 10, 1, 1)
    np.testing.assert_array_equal(net.run(x[1]), t["logits"][1:2])
    assert net.classify(x).shape == (3,)


def test_summary_reports_shape_macs_bytes_par():
    net = residual_net()
    rows = {r["name"]: r for r in net.summary(rand((2, 1, 6, 6)))}
    assert rows["stem"]["out_shape"] == (8, 6, 6)
    assert rows["stem"]["macs"] == 6 * 6 * 8 * 9 and rows["stem"]["weight_bytes"] == 2 * 72
    assert rows["pw"]["weight_bytes"] == 64 and not rows["pw"]["psc"]
    assert rows["dw"]["macs"] == 6 * 6 * 8 * 9
    assert rows["fc"]["macs"] == 80 and rows["res"]["macs"] == 0
    assert all(0.0 <= r["par"] <= 1.0 for r in rows.values())
    assert "par" not in net.summary()[0]


def test_quantize_input_rounds_half_to_even():
    net = residual_net()
    q = net.quantize_input(np.array([0.5, 1.5, -100.0, 100.0]) / 64)
    np.testing.assert_array_equal(q, [0, 2, -100, 100])
    np.testing.assert_array_equal(net.quantize_input([3.0]), [127])


def test_save_load_round_trip(tmp_path):
    net = residual_net()
    path = tmp_path / "net.npz"
    net.save(path)
    back = Network.load(path)
    x = rand((4, 1, 6, 6))
    np.testing.assert_array_equal(back.run(x), net.run(x))
    assert back.header() == net.header()
    assert (back.header()["format"], back.header()["version"]) == (FORMAT, VERSION)
    assert back.input_scale == 1 / 64


# --- refusals ------------------------------------------------------------------------

def _rewrite(path, out, edit_header=None, drop=None, edit_array=None):
    """A copy of network file ``path`` with its header, or one array, changed."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    head = json.loads(data["header"].tobytes().decode())
    if edit_header:
        edit_header(head)
    data["header"] = np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)
    if drop:
        del data[drop]
    if edit_array:
        key, value = edit_array
        data[key] = value
    np.savez(out, **data)
    return out


@pytest.mark.parametrize("case, match", [
    ("version", "format version 99; this psc reads version 1"),
    ("format", "is not a PSC network file"),
    ("missing", "layer 'dw': tensor 'w_neg' is missing"),
    ("shape", "layer 'dw': w_neg must have the shape of w_pos"),
    ("range", "layer 'pw': w_pos must be within the signed 8-bit range"),
    ("mult", "layer 'stem': mult must be within"),
    ("float", "layer 'fc': w_pos must hold integers"),
    ("tensor", "layer 'res': reads tensor 'zz', which no earlier layer writes"),
    ("header", "malformed header"),
])
def test_bad_network_files_are_refused(tmp_path, case, match):
    good = tmp_path / "good.npz"
    residual_net().save(good)
    bad = tmp_path / "bad.npz"
    edits = {
        "version": dict(edit_header=lambda h: h.update(version=99)),
        "format": dict(edit_header=lambda h: h.update(format="other")),
        "missing": dict(drop="1.w_neg"),
        "shape": dict(edit_array=("1.w_neg", np.zeros((8, 1, 2, 2), np.int8))),
        "range": dict(edit_array=("2.w_pos", np.full((8, 8, 1, 1), 300, np.int16))),
        "mult": dict(edit_array=("0.mult", np.full(8, -1, np.int32))),
        "float": dict(edit_array=("6.w_pos", np.zeros((10, 8, 1, 1)))),
        "tensor": dict(edit_header=lambda h: h["layers"][3].update(inputs=["a", "zz"])),
        "header": dict(edit_header=lambda h: h.pop("widths")),
    }
    _rewrite(good, bad, **edits[case])
    with pytest.raises(ValueError, match=match) as e:
        Network.load(bad)
    assert "\n" not in str(e.value)


def test_not_a_network_file_is_refused(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a PSC network file"):
        Network.load(junk)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="it has no header"):
        Network.load(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="is not a PSC network file"):
        Network.load(tmp_path / "absent.npz")


def test_bad_layers_are_refused():
    net = residual_net()
    stem = net.layers[0]
    with pytest.raises(ValueError, match="layer 'stem': the name is used by an earlier layer"):
        Network("image", (1, 6, 6), [stem, stem], "a")
    with pytest.raises(ValueError, match="layer 'x': adds tensors of different shapes"):
        Network("image", (1, 6, 6), [stem, Layer.add("x", "image", "a", "y", 1, 1, 0)], "y")
    with pytest.raises(ValueError, match="layer 'stem': w_pos has 1 input channels per group"):
        Network("image", (2, 6, 6), [stem], "a")
    with pytest.raises(ValueError, match="layer 'stem': relu must be True or False"):
        Network("image", (1, 6, 6), [Layer("stem", "conv", ("image",), "a", stem.arrays,
                                           {**stem.attrs, "relu": "yes"})], "a")
    with pytest.raises(ValueError, match="layer 'p': op must be one of"):
        Network("image", (1, 6, 6), [Layer("p", "maxpool", ("image",), "a")], "a")
    with pytest.raises(ValueError, match="output must name a tensor"):
        Network("image", (1, 6, 6), [stem], "nope")
    with pytest.raises(BadTypeError, match=r"layers\[0\] must be a psc.model.network.Layer"):
        Network("image", (1, 6, 6), ["stem"], "a")
    with pytest.raises(ValueError, match="input_scale must be a positive number or None"):
        Network("image", (1, 6, 6), [stem], "a", input_scale=0.0)
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\) of positive ints"):
        Network("image", (1, 0, 6), [stem], "a")


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 1, 6, 6)), "images must hold integers"),
    (np.zeros((2, 1, 5, 6), np.int64), r"images must have shape \(N, 1, 6, 6\)"),
    (np.zeros((0, 1, 6, 6), np.int64), r"images must have shape \(N, 1, 6, 6\) with N >= 1"),
    (np.full((1, 1, 6, 6), 200), "images must be within the signed 8-bit range"),
    ("image", "images must hold integers"),
])
def test_bad_images_are_refused(images, match):
    net = residual_net()
    with pytest.raises(ValueError, match=match):
        net.run(images)
    with pytest.raises(ValueError, match=match):
        run(net, images, "verilator")


def test_run_refuses_bad_targets_and_layers_the_build_cannot_run():
    net = residual_net()
    x = rand((1, 1, 6, 6))
    with pytest.raises(ValueError, match="target must be one of golden, verilator, icarus"):
        run(net, x, "gpu")
    with pytest.raises(BadTypeError, match="net must be a psc.model.network.Network"):
        run("net", x)
    # a reduction longer than the tiny build's weight buffer (64 blocks: 3x3 over 8 groups)
    # on a build without the partial-sum buffer that would split it
    wide = Network("image", (32, 4, 4), [
        Layer.conv("wide", "image", "y", rand((4, 32, 3, 3)), rand((4, 32, 3, 3)), rand(4, 8),
                   300, 12, padding=1)], "y")
    with pytest.raises(LayerError, match="layer 'wide' cannot run on this build: "
                                         ".*no partial-sum buffer"):
        run(wide, rand((1, 32, 4, 4)), "verilator", config=preset("tiny").replace(psum_depth=0))
    plain = preset("default").replace(psc=False)
    with pytest.raises(LayerError, match="layer 'stem' cannot run on this build: .*psc=False"):
        run(net, x, "verilator", config=plain)


def test_golden_target_reports_host_and_no_cycles():
    net = residual_net()
    res = run(net, rand((2, 1, 6, 6)))
    assert all(r["where"] == "golden" for r in res.layers)
    assert res.totals["cycles"] == 0 and res.totals["macs"] == sum(net.macs(l) for l in net.layers)


# --- on the core -----------------------------------------------------------------------

def _check_on_core(name):
    # every layer in one simulation; the end-to-end feed is compared with it below
    net = residual_net(np.random.default_rng(7))
    x = rand((3, 1, 6, 6), rng=np.random.default_rng(8))
    res = run(net, x, "verilator", config=preset(name), feed="golden")
    assert res.totals["exact"]
    np.testing.assert_array_equal(res.outputs, net.run(x))
    where = {r["name"]: r["where"] for r in res.layers}
    assert where == {"stem": "core", "dw": "core", "pw": "core", "res": "host", "pool": "host",
                     "flat": "host", "fc": "core"}
    assert res.totals["host_layers"] == ["res", "pool", "flat"]
    core = [r for r in res.layers if r["where"] == "core"]
    assert all(r["cycles"] > 0 and r["tiles"] >= 1 and 0 < r["utilisation"] <= 1 for r in core)
    assert res.totals["cycles"] == sum(r["cycles"] for r in core)


@pytest.mark.parametrize("name", ["default", "ice40-up5k",
                                  pytest.param("tiny", marks=pytest.mark.slow)])
def test_network_on_verilator_equals_golden(name):
    _check_on_core(name)


@pytest.mark.soak      # two whole-network simulations; the next test covers the feed
def test_golden_feed_runs_every_layer_in_one_simulation_with_the_same_result():
    net = residual_net(np.random.default_rng(7))
    x = rand((3, 1, 6, 6), rng=np.random.default_rng(8))
    chained = run(net, x, "verilator")
    fed = run(net, x, "verilator", feed="golden")
    np.testing.assert_array_equal(fed.outputs, chained.outputs)
    assert fed.totals["exact"] and all(r["exact"] for r in fed.layers if r["where"] == "core")
    assert fed.totals["cycles"] == chained.totals["cycles"]


def test_golden_feed_reports_a_layer_the_core_got_wrong(monkeypatch):
    import psc.network
    net = residual_net(np.random.default_rng(7))
    x = rand((2, 1, 6, 6), rng=np.random.default_rng(8))
    want = net.run(x, keep=True)

    def fake_run_layers(layers, **_):
        # every layer right but the depthwise one, whose first output is off by one
        out = []
        for layer in layers:
            conv = next(l for l in net.layers if l.op == "conv"
                        and l.arrays["w_pos"] is layer["w_pos"])
            i = next(i for i, img in enumerate(want[conv.inputs[0]])
                     if np.array_equal(img, layer["x"]))
            y = want[conv.output][i].copy()
            if conv.name == "dw":
                y[0, 0, 0] += 1
            out.append((y, {"total": 10, "compute": 8, "stall": 0, "tiles": 1, "ideal": 5}))
        return out
    monkeypatch.setattr(psc.network, "run_layers", fake_run_layers)
    res = run(net, x, "verilator", feed="golden")
    exact = {r["name"]: r["exact"] for r in res.layers if r["where"] == "core"}
    assert exact == {"stem": True, "dw": False, "pw": True, "fc": True}
    assert res.totals["exact"] is False
    with pytest.raises(ValueError, match="feed must be one of 'core', 'golden'"):
        run(net, x, "verilator", feed="board")


# --- the demo of the shipped network --------------------------------------------------

def test_demo_refuses_bad_arguments_before_any_work():
    from psc.network import demo
    with pytest.raises(ValueError, match="target must be a core"):
        demo(target="golden")
    with pytest.raises(ValueError, match="targets must be one of"):
        demo(targets=("asic",))
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        demo(samples=0)


@pytest.mark.slow
def test_demo_checks_the_shipped_network_on_the_core():
    from psc.network import demo
    lines = []
    assert demo(samples=2, targets=(), out=lines.append) == 0
    text = "\n".join(lines)
    assert "core == golden model, every output of every layer of the 2 images: True" in text
    assert "int8, golden model" in text and "b0_dw" in text and "default" in text
