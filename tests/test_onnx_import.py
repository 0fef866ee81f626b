"""Tests of the ONNX importer (psc.onnx_import): float graphs built with onnx.helper, quantised by
onnxruntime's static quantiser (QDQ, per-channel symmetric int8), imported, and compared with
onnxruntime on the same file; every graph it cannot map is refused with the node's name."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from psc import data as psc_data
from psc.model.checks import BadTypeError
from psc.network import run
from psc.onnx_import import (OnnxImportError, import_onnx, onnxruntime_run, psc_pattern,
                             psc_weights, quantize)
from psc.presets import preset

C, HW, CLASSES = 4, 6, 5


def _init(name, a, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(a, dtype), name)


def float_model(rng, *, extra=None, gemm_psc=True, clip=None):
    """A small residual network in float: stem conv + ReLU (or Clip), a depthwise PSC conv, a
    plain pointwise conv, a residual add, global average pooling, flatten and a Gemm
    classifier (PSC or not). ``extra`` is a node put after the stem's activation."""
    nodes, inits, float_nodes = [], [], []
    inits += [_init("w_stem", rng.normal(0, 0.6, (C, 1, 3, 3))), _init("b_stem", rng.normal(0, .1, C))]
    nodes.append(helper.make_node("Conv", ["x", "w_stem", "b_stem"], ["c1"], name="stem",
                                  pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
    if clip is None:
        nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="stem_relu"))
    else:
        inits += [_init("clip_lo", 0.0), _init("clip_hi", clip)]
        nodes.append(helper.make_node("Clip", ["c1", "clip_lo", "clip_hi"], ["r1"],
                                      name="stem_clip"))
    a = "r1"
    if extra is not None:
        nodes.append(extra)
        a = extra.output[0]
    pn, pi, px, names = psc_pattern("dw", a, [0, -1, HW, HW])
    nodes += pn
    inits += pi
    float_nodes += names
    w_dw = psc_weights(rng.normal(0, 0.4, (C, 1, 3, 3)), rng.normal(0, 0.4, (C, 1, 3, 3)))
    inits += [_init("w_dw", w_dw), _init("b_dw", rng.normal(0, .1, C))]
    nodes.append(helper.make_node("Conv", [px, "w_dw", "b_dw"], ["c2"], name="dw",
                                  pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=C))
    inits += [_init("w_pw", rng.normal(0, 0.4, (C, C, 1, 1))), _init("b_pw", rng.normal(0, .1, C))]
    nodes.append(helper.make_node("Conv", ["c2", "w_pw", "b_pw"], ["c3"], name="pw"))
    nodes.append(helper.make_node("Add", ["c3", a], ["s"], name="res"))
    nodes.append(helper.make_node("GlobalAveragePool", ["s"], ["g"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1))
    fin = "f"
    cin = C
    if gemm_psc:
        pn, pi, fin, names = psc_pattern("fc", "f", [0, -1])
        nodes += pn
        inits += pi
        float_nodes += names
        cin = 2 * C
    inits += [_init("w_fc", rng.normal(0, 0.5, (CLASSES, cin))),
              _init("b_fc", rng.normal(0, .1, CLASSES))]
    nodes.append(helper.make_node("Gemm", [fin, "w_fc", "b_fc"], ["y"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "psc_test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, float_nodes


def quantized(tmp_path, rng, name="q", **kw):
    """Quantise ``float_model(**kw)`` as the project's exporter does; returns the path."""
    model, float_nodes = float_model(rng, **kw)
    dst = tmp_path / f"{name}.onnx"
    quantize(model, dst, rng.normal(0, 1, (32, 1, HW, HW)), keep_float=float_nodes)
    return dst


@pytest.fixture(scope="module")
def qmodel(tmp_path_factory):
    return quantized(tmp_path_factory.mktemp("onnx"), np.random.default_rng(5))


def test_import_maps_every_layer(qmodel):
    net = import_onnx(qmodel)
    rows = {r["name"]: r for r in net.summary()}
    assert [l.op for l in net.layers] == ["conv", "conv", "conv", "add", "gap", "conv"]
    assert rows["stem"]["psc"] is False and net.layers[0].attrs["relu"]
    assert rows["dw"]["psc"] and net.layers[1].attrs["groups"] == C
    assert rows["fc"]["psc"] and rows["fc"]["in_shape"] == (C, 1, 1)
    assert net.input_shape == (1, HW, HW) and net.input_scale > 0 and net.output_scale > 0


def test_psc_weights_are_deinterleaved(qmodel):
    net = import_onnx(qmodel)
    w = numpy_helper.to_array(next(i for i in onnx.load(qmodel).graph.initializer
                                   if i.name == "w_dw_quantized"))
    dw = net.layers[1]
    np.testing.assert_array_equal(dw.arrays["w_pos"][:, 0], w[:, 0])
    np.testing.assert_array_equal(dw.arrays["w_neg"][:, 0], w[:, 1])


def test_golden_agrees_with_onnxruntime(qmodel):
    net = import_onnx(qmodel)
    images = np.random.default_rng(9).normal(0, 1, (300, 1, HW, HW)).astype(np.float32)
    ref = onnxruntime_run(qmodel, images)
    got = net.run(net.quantize_input(images)).reshape(len(images), -1)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.99
    # one rounding where onnxruntime has several: a few output steps apart at most
    assert np.abs(got * net.output_scale - ref).max() <= 3 * net.output_scale


def test_clip_folds_when_the_output_range_is_within_it(tmp_path):
    path = quantized(tmp_path, np.random.default_rng(3), clip=1000.0)
    net = import_onnx(path)
    assert net.layers[0].attrs["relu"]


def test_plain_gemm_and_the_network_file(qmodel, tmp_path):
    path = quantized(tmp_path, np.random.default_rng(4), gemm_psc=False)
    net = import_onnx(path)
    assert not net.layers[-1].psc
    net.save(tmp_path / "net.npz")
    x = net.quantize_input(np.random.default_rng(1).normal(0, 1, (4, 1, HW, HW)))
    np.testing.assert_array_equal(type(net).load(tmp_path / "net.npz").run(x), net.run(x))


def test_imported_network_on_the_core_equals_golden(qmodel):
    net = import_onnx(qmodel)
    x = net.quantize_input(np.random.default_rng(2).normal(0, 1, (3, 1, HW, HW)))
    res = run(net, x, "verilator", feed="golden")
    np.testing.assert_array_equal(res.outputs, net.run(x))
    assert res.totals["exact"]


# --- refusals --------------------------------------------------------------------------

def _edit(path, tmp_path, fn):
    m = onnx.load(path)
    fn(m)
    out = tmp_path / "edited.onnx"
    onnx.save(m, out)
    return out


def _set_init(m, name, value):
    for i, init in enumerate(m.graph.initializer):
        if init.name == name:
            arr = np.asarray(value, dtype=numpy_helper.to_array(init).dtype)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
            return
    raise KeyError(name)


def _node(m, name):
    return next(n for n in m.graph.node if n.name == name)


def test_unsupported_operator_is_refused(tmp_path):
    pool = helper.make_node("MaxPool", ["r1"], ["mp"], name="the_pool", kernel_shape=[1, 1])
    path = quantized(tmp_path, np.random.default_rng(6), extra=pool)
    with pytest.raises(OnnxImportError, match=r"node 'the_pool' \(MaxPool\): operator MaxPool "
                                              r"is not supported"):
        import_onnx(path)


@pytest.mark.parametrize("case, match", [
    ("zero_point", r"node 'c1_QuantizeLinear' \(QuantizeLinear\): zero point must be 0"),
    ("uint8", r"node 'x_QuantizeLinear' \(QuantizeLinear\): zero point must be 0 in int8"),
    ("no_zero_point", r"node 'c1_QuantizeLinear' \(QuantizeLinear\): has no zero point, so "
                      r"its output is uint8"),
    ("requant", r"node 'f_QuantizeLinear' \(QuantizeLinear\): requantises a tensor from scale"),
    ("dilation", r"node 'pw' \(Conv\): dilations must be 1"),
    ("pads", r"node 'stem' \(Conv\): pads must be equal on all sides"),
    ("bias_scale", r"node 'stem' \(Conv\): bias scale must be input scale x weight scale"),
    ("concat_order", r"node 'dw_psc_concat' \(Concat\): only Concat\(axis=2\) of the unsqueezed"),
    ("min_const", r"node 'dw_psc_min' \(Min\): only Min\(x, 0\)"),
    ("psc_scale", r"node 'dw_psc_QuantizeLinear' \(QuantizeLinear\): requantises a tensor"),
    ("clip", r"node 'stem_clip' \(Clip\): only Clip with min 0"),
    ("output", r"output 'y' must be the DequantizeLinear of a quantised layer output"),
    ("weight_axis", r"node 'pw' \(Conv\): weight scales must be per tensor or per output"),
])
def test_bad_graphs_are_refused(qmodel, tmp_path, case, match):
    def edit(m):
        if case == "zero_point":
            _set_init(m, "c1_zero_point", 3)
        elif case == "uint8":
            for name in ("x_zero_point",):
                _set_init(m, name, 0)
                init = next(i for i in m.graph.initializer if i.name == name)
                init.CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), name))
        elif case == "requant":
            n = _node(m, "f_QuantizeLinear")
            m.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "s2"))
            n.input[1] = "s2"
            _node(m, "f_DequantizeLinear").input[1] = "s2"
        elif case == "no_zero_point":
            n = _node(m, "c1_QuantizeLinear")
            del n.input[2]
        elif case == "dilation":
            _node(m, "pw").attribute.append(helper.make_attribute("dilations", [2, 2]))
        elif case == "pads":
            n = _node(m, "stem")
            for a in n.attribute:
                if a.name == "pads":
                    a.ints[:] = [1, 1, 0, 0]
        elif case == "bias_scale":
            _set_init(m, "b_stem_quantized_scale",
                      2 * numpy_helper.to_array(next(i for i in m.graph.initializer
                                                     if i.name == "b_stem_quantized_scale")))
        elif case == "concat_order":
            n = _node(m, "dw_psc_concat")
            n.input[:] = [n.input[1], n.input[0]]
        elif case == "min_const":
            m.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
            _node(m, "dw_psc_min").input[1] = "one"
        elif case == "psc_scale":
            m.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "s3"))
            _node(m, "dw_psc_QuantizeLinear").input[1] = "s3"
            _node(m, "dw_psc_DequantizeLinear").input[1] = "s3"
        elif case == "clip":
            n = _node(m, "stem_relu")
            n.op_type = "Clip"
            n.name = "stem_clip"
            m.graph.initializer.extend([numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
                                        numpy_helper.from_array(np.array(6.0, np.float32), "hi")])
            n.input.extend(["lo", "hi"])
        elif case == "output":
            n = _node(m, "y_DequantizeLinear")
            m.graph.node.remove(n)
            m.graph.node.remove(_node(m, "y_QuantizeLinear"))
            _node(m, "fc").output[0] = "y"
        elif case == "weight_axis":
            n = _node(m, "w_pw_DequantizeLinear")
            for a in n.attribute:
                if a.name == "axis":
                    a.i = 1
    path = _edit(qmodel, tmp_path, edit)
    with pytest.raises(OnnxImportError, match=match) as e:
        import_onnx(path)
    assert "\n" not in str(e.value)


def _matmul_model(rng, bias):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"], name="pool"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "wm"], ["m" if bias else "y"], name="mm")]
    inits = [_init("w", rng.normal(0, 1, (4, 1, 1, 1))), _init("wm", rng.normal(0, 1, (4, 3)))]
    if bias:
        nodes.append(helper.make_node("Add", ["m", "bm"], ["y"], name="mm_bias"))
        inits.append(_init("bm", rng.normal(0, 1, 3)))
    graph = helper.make_graph(
        nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_matmul_imports_and_its_bias_add_is_refused(tmp_path):
    rng = np.random.default_rng(12)
    x = rng.normal(0, 1, (64, 1, 4, 4))
    quantize(_matmul_model(rng, False), tmp_path / "mm.onnx", x)
    net = import_onnx(tmp_path / "mm.onnx")
    assert [l.op for l in net.layers] == ["conv", "gap", "conv"]
    got = net.run(net.quantize_input(x)).reshape(len(x), -1)
    ref = onnxruntime_run(tmp_path / "mm.onnx", x)
    assert np.abs(got * net.output_scale - ref).max() <= 3 * net.output_scale
    quantize(_matmul_model(rng, True), tmp_path / "mmb.onnx", x)
    with pytest.raises(OnnxImportError, match=r"node 'mm_bias' \(Add\): adds a constant"):
        import_onnx(tmp_path / "mmb.onnx")


def test_bad_model_arguments_are_refused(tmp_path):
    with pytest.raises(BadTypeError, match="model must be an onnx.ModelProto or a path"):
        import_onnx(42)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not onnx")
    with pytest.raises(OnnxImportError, match="is not a readable ONNX model"):
        import_onnx(junk)


def test_non_static_input_is_refused(tmp_path):
    model, _ = float_model(np.random.default_rng(0))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(OnnxImportError, match=r"input 'x' must have the static shape"):
        import_onnx(model)


# --- the shipped networks (scripts/train_digits.py) ------------------------------------

@pytest.mark.parametrize("name", psc_data.NETWORKS)
def test_shipped_network_accuracy_and_onnxruntime_agreement(name):
    recorded = json.loads(psc_data.path("digits_results.json").read_text())["shipped"][name]
    path = psc_data.path(f"digits_{name}.onnx")
    net = import_onnx(path)
    _, _, x, y = psc_data.digits_split(0)
    pred = net.classify(net.quantize_input(x))
    assert (pred == y).mean() >= recorded["int8_golden"]
    assert (onnxruntime_run(path, x).argmax(1) == pred).mean() >= 0.99
    if name == "psc":
        assert any(layer.psc for layer in net.layers)


@pytest.mark.parametrize("build, count", [("default", 5), ("ice40-up5k", 2)])
def test_shipped_psc_network_on_the_core_equals_golden(build, count):
    net = import_onnx(psc_data.path("digits_psc.onnx"))
    _, _, x, _ = psc_data.digits_split(0)
    images = net.quantize_input(x[:count])
    res = run(net, images, "verilator", config=preset(build), feed="golden")
    np.testing.assert_array_equal(res.outputs, net.run(images))
    assert res.totals["exact"]
    assert {r["where"] for r in res.layers if r["op"] == "conv"} == {"core"}


@pytest.mark.slow   # one simulation per convolution layer of the network
@pytest.mark.soak   # many minutes; the same network runs on the core layer by layer above
def test_shipped_psc_network_end_to_end_on_the_core():
    net = import_onnx(psc_data.path("digits_psc.onnx"))
    _, _, x, _ = psc_data.digits_split(0)
    images = net.quantize_input(x[:3])
    np.testing.assert_array_equal(run(net, images, "verilator").outputs, net.run(images))
