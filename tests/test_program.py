"""Network mode's program (psc.host.program): the memory map, the gathers and scatters that
replace the host's packing, and whole networks run from one activation memory on the
simulated core, bit for bit against the golden network."""

import itertools

import numpy as np
import pytest

from psc import data
from psc.host.program import (ActivationMemory, ConvStep, NetworkFitError, OpStep,
                              UnrollStep, compile_network)
from psc.host.scheduler import plan_layer
from psc.model.checks import BadTypeError
from psc.model.network import Layer, Network
from psc.onnx_import import import_onnx
from psc.presets import OP_VALUES, PRESETS, board_engine
from test_network import residual_net


def _digits():
    net = import_onnx(data.path("digits_psc.onnx"))
    _, _, x, _ = data.digits_split(0)
    return net, net.quantize_input(x[:2])


def _networks():
    rng = np.random.default_rng(5)
    return {"digits": _digits(),
            "residual": (residual_net(rng), rng.integers(-128, 128, size=(2, 1, 6, 6)))}


@pytest.mark.parametrize("name", list(PRESETS))
def test_gathers_are_the_tiles_inputs(name):
    """Every tile's input gathered from the stored tensor is the words the host packs for it,
    on every mapping (diagonal, pixels and channels depthwise, split reductions, a stem
    unrolled by the host or on chip); every live tensor has its own words."""
    cc = PRESETS[name]
    for (label, (net, images)), unroll in itertools.product(_networks().items(),
                                                            (True, "chip")):
        prog = compile_network(net, cc, unroll_input=unroll)
        ref = net.run(images[:1], keep=True)
        unrolls = [s for s in prog.steps if isinstance(s, UnrollStep)]
        steps = [s for s in prog.steps if not isinstance(s, UnrollStep)]
        assert len(steps) == len(net.layers) and len(unrolls) <= 1
        for i, step in enumerate(steps):
            live = [prog.regions[t] for t in _live(net, i)]
            spans = sorted((r.base, r.end) for r in {(r.base, r.end): r for r in live}.values())
            assert all(e <= b for (_, e), (b, _) in zip(spans, spans[1:])), (label, step.name)
            assert max(e for _, e in spans) <= prog.act_words
            if not isinstance(step, ConvStep):
                continue
            layer = net.layers[i]
            x = ref[layer.inputs[0]][0]
            unrolled = (prog.unrolled_input or unrolls) and i == 0
            real = plan_layer(x, **layer.conv_args(), config=cc, unroll_stem=bool(unrolled),
                              pixel_order=True)
            assert [t.fields for t in real.tiles] == [t.fields for t in step.plan.tiles]
            mem = ActivationMemory(prog.act_words, cc.lanes, cc.pe.act_width)
            if unrolled and unrolls:
                # the unroll unit's writes from the stored input: the host's unrolled words
                mem.store(unrolls[0].src, x)
                mem.unroll(unrolls[0], cc)
                assert unrolls[0].dst is step.src
            else:
                mem.store(step.src, prog.input_words(x) if unrolled else x)
            for j, (t, want) in enumerate(zip(step.plan.tiles, real.tiles)):
                assert mem.gather(step.src, t.window) == want.acts, (label, step.name, j)


def _live(net, i):
    """Tensors stored while layer ``i`` runs: written at or before it, read at or after it."""
    alias = {l.output: l.inputs[0] for l in net.layers if l.op == "flatten"}
    written = {net.input} | {l.output for l in net.layers[:i + 1]}
    read = {t for l in net.layers[i:] for t in l.inputs} | {net.output}
    return {alias.get(t, t) for t in written & read} | {alias.get(net.layers[i].output,
                                                                  net.layers[i].output)}


def test_scatter_places_every_value_once():
    """The output beats of every tile of a depthwise layer on each mapping write every value
    of the output tensor exactly once, padding channels nowhere."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, size=(11, 7, 9))
    w = rng.integers(-128, 128, size=(11, 1, 3, 3))
    for name, cc in PRESETS.items():
        plan = plan_layer(x, w, -w, np.zeros(11, dtype=np.int64), 1, 0, padding=1, groups=11,
                          config=cc)
        hits = np.zeros(plan.out_shape, dtype=np.int64)
        for tile in plan.tiles:
            oy, ox, c, keep = plan.beat_places(tile)
            np.add.at(hits, (c[keep], oy[keep], ox[keep]), 1)
        assert (hits == 1).all(), name


# the digits network on the ECP5 build runs end to end on its engine in test_engine.py; on
# the core with this model, in the opt-in soak
@pytest.mark.parametrize("name, label, stall", [
    pytest.param("ecp5-25k", "digits", 0.0, marks=pytest.mark.soak),
    ("default", "residual", 0.3)])
def test_program_runs_the_network_bit_exact(name, label, stall):
    """A whole network from one activation memory per image on Verilator: every tile's input
    gathered, its output scattered, adds and poolings on the stored tensors; the outputs
    are the golden network's and the cycles are the core's."""
    net, images = _networks()[label]
    prog = compile_network(net, PRESETS[name])
    out, report = prog.run(images, target="verilator", stall=stall, seed=4)
    np.testing.assert_array_equal(out, net.run(images))
    assert report["cycles"] == sum(l["cycles"] for l in report["layers"]) > 0
    assert 0 < report["utilisation"] <= 1
    assert [l["name"] for l in report["layers"]] == [s.name for s in prog.steps
                                                     if isinstance(s, ConvStep)]


def test_footprint_and_fit():
    net, _ = _digits()
    prog = compile_network(net, PRESETS["ice40-up5k"])
    f = prog.footprint()
    assert prog.unrolled_input                       # the 1-channel stem runs unrolled
    assert f["input_words"] == prog.regions[net.input].words
    assert f["op_steps"] == sum(isinstance(s, OpStep) for s in prog.steps) == 3
    assert f["store_bytes"] > f["weight_beats"] > 0
    prog.check_fits(act_words=f["act_words"], store_bytes=f["store_bytes"])
    with pytest.raises(NetworkFitError, match=rf"needs {f['act_words']} activation words "
                                              rf"\(the build has {f['act_words'] - 1}\)"):
        prog.check_fits(act_words=f["act_words"] - 1, store_bytes=f["store_bytes"])
    with pytest.raises(NetworkFitError, match=r"bytes of commands, weights and parameters "
                                              r"\(the build has 100\)"):
        prog.check_fits(act_words=f["act_words"], store_bytes=100)
    with pytest.raises(ValueError, match="act_words"):
        prog.check_fits(act_words=-1, store_bytes=100)


def test_what_network_mode_refuses():
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, size=(3, 12, 1, 1))
    net = Network("x", (3, 2, 2), [Layer.flatten("flat", "x", "f"),
                                   Layer.conv("fc", "f", "y", w, w, np.zeros(3, dtype=int), 1, 0)],
                  "y")
    with pytest.raises(NetworkFitError, match=r"layer 'flat'.*\(C, 1, 1\).*\(3, 2, 2\)"):
        compile_network(net, PRESETS["tiny"])
    with pytest.raises(BadTypeError, match="net must be a psc.model.network.Network"):
        compile_network("digits", PRESETS["tiny"])
    with pytest.raises(BadTypeError, match="config must be a psc.config.CoreConfig"):
        compile_network(_digits()[0], "tiny")


def test_an_engine_too_small_is_refused_naming_each_memory():
    from psc.hw.network import EngineConfig
    net, _ = _digits()
    prog = compile_network(net, PRESETS["ecp5-25k"])
    ec = prog.engine_config()
    prog.check_engine(ec)
    # the shipped target's engine values per op beat; any other core's, one
    assert ec.op_values == OP_VALUES["ecp5-25k"] == board_engine("ulx3s").op_values
    assert compile_network(net, PRESETS["ecp5-25k"].replace(psum_depth=256)) \
        .engine_config().op_values == 1
    small = EngineConfig(ec.core.replace(weight_depth=256), act_depth=64,
                         cmd_depth=ec.cmd_depth, param_store_depth=ec.param_store_depth)
    prog = compile_network(net, small.core)
    with pytest.raises(NetworkFitError, match=rf"needs {ec.act_depth} activation words \(the "
                                              rf"build has 64\), 344 weight blocks \(the "
                                              rf"build has 256\)"):
        prog.check_engine(small)
    with pytest.raises(NetworkFitError, match="compiled for"):
        prog.check_engine(EngineConfig(PRESETS["tiny"]))
    with pytest.raises(TypeError, match="weight_store must be True or False, not 'yes'"):
        prog.engine_config(weight_store="yes")
    # the add and pooling unit's values go through the core's requantiser: at most its rows
    with pytest.raises(ValueError, match=r"op_values must be at most rows=4 \(activations "
                                         r"per beat of the core's requantiser\), not 7"):
        prog.engine_config(op_values=7)


def test_where_the_stem_input_is_unrolled():
    """``unroll_input``: the host (True) or the engine ("chip", on the ECP5 build's two-bank
    memory only: the UP5K's stem then reads its input as it is) or nobody (False); the
    host's input is the image itself unless the host unrolls it."""
    net, images = _digits()
    for name, unroll, host, chip in (("ecp5-25k", True, True, False),
                                     ("ecp5-25k", "chip", False, True),
                                     ("ecp5-25k", False, False, False),
                                     ("ice40-up5k", "chip", False, False)):
        prog = compile_network(net, PRESETS[name], unroll_input=unroll)
        steps = [s for s in prog.steps if isinstance(s, UnrollStep)]
        assert (prog.unrolled_input, len(steps)) == (host, int(chip)), (name, unroll)
        assert (prog.input_words(images[0]).shape == images[0].shape) == (not host)
        if chip:
            assert steps[0].src is prog.regions[net.input]
            assert prog.steps[1].src is steps[0].dst and steps[0].dst.shape[0] == 9
    with pytest.raises(ValueError, match=r"unroll_input must be one of True, 'chip', False, "
                                         r"not 'host'"):
        compile_network(net, PRESETS["ecp5-25k"], unroll_input="host")
