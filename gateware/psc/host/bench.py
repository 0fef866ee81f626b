"""``psc bench``: cycles per layer of the simulated core against the ideal ``MACs / (rows * lanes)``.

Every layer runs on the PSC build and on the plain (``psc=False``) build of
the same size, with the same layer (``W- = W+`` so the plain build can run
it too), no stalls, on Verilator; each output is checked against
psc.model.golden. ``total`` is the core's busy cycles summed over tiles (command
setup, weight/parameter loading, input rows the first outputs wait for,
computation, pipeline drain); utilisation is ``ideal / total``.
"""

import time

import numpy as np

from psc.model import golden
from psc.model.checks import BadTypeError, check_int, show
from psc.model.mobilenet import BLOCKS, divisible
from psc.hw.core import CoreConfig
from psc.host import plan_layer, run_layers
from psc.host.scheduler import LayerError

__all__ = ["BENCH_LAYERS", "MBV2_LAYERS", "RESNET_LAYERS", "FILL_LAYERS", "LAYER_SETS", "mobilenet_v2_layers", "check", "bench",
           "format_table"]


def _layer(rng, cin, cout, hw, k, stride=1, padding=0, groups=1):
    x = rng.integers(-128, 128, size=(cin, hw, hw))
    w0 = rng.integers(-128, 128, size=(cout, cin // groups, k, k))
    w_pos, w_neg = golden.ili(w0)
    return dict(x=x, w_pos=w_pos, w_neg=w_neg, bias=rng.integers(-1000, 1000, size=cout),
                mult=rng.integers(1, 1 << 8, size=cout), shift=np.full(cout, 16),
                stride=stride, padding=padding, groups=groups, relu=False)


#: name -> (description, layer factory)
BENCH_LAYERS = {
    "std3x3_32x32_16": ("standard 3x3 s1 p1, 32->32, 16x16", lambda r: _layer(r, 32, 32, 16, 3, 1, 1)),
    "std3x3_16x16_s2": ("standard 3x3 s2 p1, 16->16, 16x16", lambda r: _layer(r, 16, 16, 16, 3, 2, 1)),
    "pw_32x32_16": ("pointwise 1x1, 32->32, 16x16", lambda r: _layer(r, 32, 32, 16, 1)),
    "pw_16x96_12": ("pointwise 1x1, 16->96, 12x12 (MBv2 expand)", lambda r: _layer(r, 16, 96, 12, 1)),
    "dw3x3_32_16": ("depthwise 3x3 s1 p1, 32 ch, 16x16", lambda r: _layer(r, 32, 32, 16, 3, 1, 1, 32)),
    "stem3x3_3x32": ("standard 3x3 s2 p1, 3->32, 32x32 (MBv2 stem)", lambda r: _layer(r, 3, 32, 32, 3, 2, 1)),
    "fc_256x64": ("fully connected 256->64", lambda r: _layer(r, 256, 64, 1, 1)),
}


def mobilenet_v2_layers(width=0.35, size=96):
    """The convolutions of MobileNetV2 (Sandler et al., 2018) at ``width`` and input
    ``size``, in order, as ``{name: (description, factory)}``: the stem, every inverted
    residual block's 1x1 expansion, 3x3 depthwise and 1x1 projection, the last 1x1
    convolution and the classifier (fully connected, on the pooled features). Weights are
    random; the residual adds and the pooling run on the host, so they are not here."""
    out = {}

    def add(name, what, *args):
        out[f"mbv2_{name}"] = (f"MBv2 {what}", lambda r, a=args: _layer(r, *a))

    c, hw = divisible(32 * width), size // 2
    add("stem", f"stem 3x3 s2, 3->{c}, {size}x{size}", 3, c, size, 3, 2, 1)
    for b, (t, cb, n, stride) in enumerate(BLOCKS, 1):
        co = divisible(cb * width)
        for i in range(n):
            s = stride if i == 0 else 1
            e = c * t
            tag = f"{b}.{i}"
            if t != 1:
                add(f"{tag}_expand", f"{tag} expand 1x1, {c}->{e}, {hw}x{hw}", c, e, hw, 1)
            add(f"{tag}_dw", f"{tag} depthwise 3x3 s{s}, {e} ch, {hw}x{hw}", e, e, hw, 3, s, 1, e)
            hw = (hw - 1) // s + 1
            add(f"{tag}_project", f"{tag} project 1x1, {e}->{co}, {hw}x{hw}", e, co, hw, 1)
            c = co
    last = 1280 if width <= 1.0 else divisible(1280 * width)
    add("last", f"last 1x1, {c}->{last}, {hw}x{hw}", c, last, hw, 1)
    add("fc", f"classifier, {last}->1000", last, 1000, 1, 1)
    return out


#: The MobileNetV2 0.35 / 96x96 layer list (``psc bench mbv2`` runs all of it).
MBV2_LAYERS = mobilenet_v2_layers()
#: ResNet-18/34's wide layers (ImageNet sizes of the last two stages): reductions longer
#: than one command holds on the shipped builds (``psc bench resnet``).
RESNET_LAYERS = {
    "resnet_3x3_256_14": ("ResNet 3x3 s1, 256->256, 14x14",
                          lambda r: _layer(r, 256, 256, 14, 3, 1, 1)),
    "resnet_3x3_512_7": ("ResNet 3x3 s1, 512->512, 7x7", lambda r: _layer(r, 512, 512, 7, 3, 1, 1)),
    "resnet_3x3_s2_256_512": ("ResNet downsampling 3x3 s2, 256->512, 14x14",
                              lambda r: _layer(r, 256, 512, 14, 3, 2, 1)),
    "resnet_1x1_s2_256_512": ("ResNet shortcut 1x1 s2, 256->512, 14x14",
                              lambda r: _layer(r, 256, 512, 14, 1, 2, 0)),
}
#: Layers whose channels fill both shipped builds' lanes and rows (84 is a multiple of
#: 6, 7, 2 and 4), so that only the mapping and the memories, not padding channels, show
#: in their utilisation (``psc bench fill``).
FILL_LAYERS = {
    "fill_3x3_84_8": ("standard 3x3 s1 p1, 84->84, 8x8", lambda r: _layer(r, 84, 84, 8, 3, 1, 1)),
    "fill_1x1_84_16": ("pointwise 1x1, 84->84, 16x16", lambda r: _layer(r, 84, 84, 16, 1)),
}
#: Names the bench takes for a list of layers.
LAYER_SETS = {"mbv2": list(MBV2_LAYERS), "resnet": list(RESNET_LAYERS), "fill": list(FILL_LAYERS)}
_ALL_LAYERS = {**BENCH_LAYERS, **MBV2_LAYERS, **RESNET_LAYERS, **FILL_LAYERS}


def _expand(names):
    """Layer names with the layer sets replaced by their layers."""
    return [m for n in names for m in LAYER_SETS.get(n, [n])]


def _factory(name):
    return _ALL_LAYERS[name]


def _layers(names, seed):
    rng = np.random.default_rng(seed)
    return [_factory(n)[1](rng) for n in names]


def check(names, config=None, *, seed=0):
    """Check bench layer ``names`` (default all) and that the PSC and plain builds of
    ``config`` (default ``CoreConfig()``) can run each of them (:func:`psc.host.plan_layer`),
    before any simulator is built; returns the names as a list. ``ValueError``
    (:class:`~psc.host.scheduler.LayerError` for a layer the build cannot run) names the
    layer and the limit."""
    if config is not None and not isinstance(config, CoreConfig):
        raise BadTypeError(f"config must be a psc.config.CoreConfig or None, not {show(config)}")
    check_int("seed", seed, 0)
    if names is None:
        names = list(BENCH_LAYERS)
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        raise ValueError(f"names must be a list of bench layers, not {show(names)}")
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not (name in _ALL_LAYERS or name in LAYER_SETS):
            raise ValueError(f"bench layer must be one of {', '.join(BENCH_LAYERS)}, a layer "
                             f"of {', '.join(LAYER_SETS)} (mbv2_..., resnet_...) or "
                             f"{', '.join(LAYER_SETS)}, not {show(name)}")
    names = _expand(names)
    cc = config or CoreConfig()
    for name, layer in zip(names, _layers(names, seed)):
        for psc in (True, False):
            try:
                plan_layer(**layer, config=cc.replace(psc=psc))
            except LayerError as e:
                raise LayerError(f"bench layer {name} on the {'PSC' if psc else 'plain'} "
                                 f"build: {e}") from None
    return names


def bench(names=None, *, config=None, seed=0, target="verilator"):
    """Run the bench layers on the PSC and the plain build; returns a list of row dicts.

    Every layer is checked against both builds first (:func:`check`)."""
    cc = config or CoreConfig()
    names = check(names or None, cc, seed=seed)
    layers = _layers(names, seed)
    rows = []
    results = {}
    for psc in (True, False):
        build = cc.replace(psc=psc)
        t0 = time.time()
        results[psc] = run_layers(layers, config=build, target=target)
        results[(psc, "time")] = time.time() - t0
    for name, layer, (y, c), (yb, cb) in zip(names, layers, results[True], results[False]):
        ref = golden.requantize(
            golden.psc_conv2d(layer["x"], layer["w_pos"], layer["w_neg"], layer["bias"],
                              stride=layer["stride"], padding=layer["padding"],
                              groups=layer["groups"]), layer["mult"], layer["shift"])
        rows.append({
            "name": name, "what": _factory(name)[0], "macs": c["macs"], "ideal": c["ideal"],
            "total": c["total"], "compute": c["compute"], "stall": c["stall"],
            "tiles": c["tiles"], "utilisation": c["utilisation"],
            "total_plain": cb["total"], "utilisation_plain": cb["utilisation"],
            "ok": bool(np.array_equal(y, ref) and np.array_equal(yb, ref)),
        })
    return rows


def format_table(rows, config=None):
    cc = config or CoreConfig()
    lines = [
        f"Core: lanes (Tn) = {cc.lanes}, rows (Tm) = {cc.rows}, input buffer {cc.fmap_depth} words, "
        f"weight buffer {cc.weight_depth} blocks, parameter buffer {cc.param_depth} groups, "
        f"depthwise={cc.pe.depthwise!r}; Verilator, no stalls.",
        "",
        "| layer | MACs | ideal cycles | total (PSC) | compute | stall | tiles | utilisation (PSC) "
        "| total (plain) | utilisation (plain) | output check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {r['macs']} | {r['ideal']:.0f} | {r['total']} | {r['compute']} | "
            f"{r['stall']} | {r['tiles']} | {100 * r['utilisation']:.1f}% | {r['total_plain']} | "
            f"{100 * r['utilisation_plain']:.1f}% | {'bit-exact' if r['ok'] else 'MISMATCH'} |")
    if len(rows) > 1:
        t = {k: sum(r[k] for r in rows) for k in ("macs", "ideal", "total", "compute", "stall",
                                                  "tiles", "total_plain")}
        lines.append(
            f"| **all {len(rows)} layers** | {t['macs']} | {t['ideal']:.0f} | {t['total']} | "
            f"{t['compute']} | {t['stall']} | {t['tiles']} | {100 * t['ideal'] / t['total']:.1f}% | "
            f"{t['total_plain']} | {100 * t['ideal'] / t['total_plain']:.1f}% | "
            f"{'bit-exact' if all(r['ok'] for r in rows) else 'MISMATCH'} |")
    return "\n".join(lines)


def main(layers=None, config=None, *, seed=0):
    """``psc bench`` (parser in :mod:`psc.cli`): print the table for ``layers`` (default all)
    on ``config`` (default ``CoreConfig()``); exit status 0 when every output is bit-exact and
    the PSC and plain builds take the same cycles."""
    cc = config or CoreConfig()
    rows = bench(layers or None, config=cc, seed=seed)
    print(format_table(rows, cc))
    same = all(r["total"] == r["total_plain"] for r in rows)
    print()
    print(f"PSC build and plain build take the same cycles on every layer: {same}")
    return 0 if all(r["ok"] for r in rows) and same else 1
