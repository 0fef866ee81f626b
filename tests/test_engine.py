# amaranth: UnusedElaboratable=no
"""The network engine (psc.hw.network.NetworkEngine) on the Amaranth simulator: a program
loaded into its stores runs a whole network from on-chip memory, the input in and the
output out through the host streams with random gaps and stalls, bit for bit against the
golden network."""

import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from psc.host.program import ConvStep, UnrollStep, compile_network
from psc.hw.network.engine import NetworkEngine, instruction_words
from psc.model.network import Layer, Network
from psc.model.packing import pack_payload
from psc.presets import PRESETS, board_core
from core_cases import simulable
from test_network import residual_net


def conv_net(rng, cin=2, c=8, cout=6, size=5):
    """Standard 3x3 (ReLU), depthwise 3x3 and pointwise layers: convolutions only."""
    def r(shape, width=8):
        return rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=shape)
    layers = [
        Layer.conv("std", "x", "a", r((c, cin, 3, 3)), r((c, cin, 3, 3)), r(c, 10), 300, 17,
                   padding=1, relu=True),
        Layer.conv("dw", "a", "b", r((c, 1, 3, 3)), r((c, 1, 3, 3)), r(c, 10), 300, 16,
                   padding=1, groups=c),
        Layer.conv("pw", "b", "y", r((cout, c, 1, 1)), r((cout, c, 1, 1)), r(cout, 10), 300, 16),
    ]
    return Network("x", (cin, size, size), layers, "y")


def _run_engine(cc, net, images, seed, reset_at=None, edit=None, op_values=1, weight_store=None,
                unroll_input=True, given_sizes=None):
    """Load the network's program into an engine, run ``images`` through it; returns the
    program and, per image, ``(output words, error, cycles)``. ``edit`` may change the
    program's image before it is loaded; ``reset_at`` first abandons a run by a reset after
    that many input beats; ``weight_store`` as :meth:`Program.engine_config` takes it,
    ``unroll_input`` as :func:`compile_network`, ``given_sizes`` as
    :meth:`Program.engine_config`."""
    prog = compile_network(net, cc, unroll_input=unroll_input)
    image = prog.engine_image()
    if edit:
        edit(image)
    ec = prog.engine_config(op_values, weight_store, given_sizes)
    prog.check_engine(ec)
    dut = NetworkEngine(ec)
    top = Module()
    top.domains.sync = cd = ClockDomain()
    top.submodules.engine = dut
    cmd = [w for ins in image["instructions"] for w in instruction_words(ec, ins)]
    loads = ([(0, i, w) for i, w in enumerate(cmd)]
             + [(1, i, w) for i, w in enumerate(image["weights"])]
             + [(2, i, p) for i, p in enumerate(image["params"])])
    rnd = random.Random(seed)
    results = []

    async def bench(ctx):
        for sel, addr, word in loads:
            ctx.set(dut.load.payload.as_value(),
                    pack_payload(dut.load.payload.shape(), {"sel": sel, "addr": addr,
                                                            "data": word}))
            ctx.set(dut.load.valid, 1)
            await ctx.tick().until(dut.load.ready)
        ctx.set(dut.load.valid, 0)
        if reset_at is not None:
            # a run abandoned by a reset in its middle, the host's beats half sent
            ctx.set(dut.run, 1)
            await ctx.tick()
            ctx.set(dut.run, 0)
            ctx.set(dut.host_in.valid, 1)
            for beat in prog.input_beats(images[0])[:reset_at]:
                ctx.set(dut.host_in.payload.as_value(), beat)
                await ctx.tick()
            ctx.set(dut.host_in.valid, 0)
            await ctx.tick().repeat(reset_at)
            assert ctx.get(dut.busy)
            ctx.set(cd.rst, 1)
            await ctx.tick()
            ctx.set(cd.rst, 0)
            assert not ctx.get(dut.busy)
        for x in images:
            ctx.set(dut.run, 1)
            await ctx.tick()
            ctx.set(dut.run, 0)
            beats = prog.input_beats(x)
            words = []
            i = 0
            for _ in range(200_000):
                if i < len(beats) and rnd.random() < 0.8:
                    ctx.set(dut.host_in.payload.as_value(), beats[i])
                    ctx.set(dut.host_in.valid, 1)
                else:
                    ctx.set(dut.host_in.valid, 0)
                ready = rnd.random() < 0.7
                ctx.set(dut.host_out.ready, ready)
                sent = ctx.get(dut.host_in.valid) and ctx.get(dut.host_in.ready)
                if ready and ctx.get(dut.host_out.valid):
                    words.append(ctx.get(dut.host_out.payload.as_value()))
                done = ctx.get(dut.done)
                await ctx.tick()
                i += bool(sent)
                if done:
                    break
            else:
                raise AssertionError("the engine did not finish")
            ctx.set(dut.host_in.valid, 0)
            results.append((words, ctx.get(dut.error), ctx.get(dut.cycles)))

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return prog, results


@pytest.mark.parametrize("name", ["tiny", "ice40-up5k", "ecp5-25k"])
def test_engine_runs_a_network_from_on_chip_memory(name):
    rng = np.random.default_rng(21)
    net = conv_net(rng)
    images = rng.integers(-128, 128, size=(2,) + net.input_shape)
    prog, results = _run_engine(simulable(name), net, images, seed=3)
    want = net.run(images)
    assert len(np.unique(want)) > 50            # the outputs are not saturated constants
    for i, (words, error, cycles) in enumerate(results):
        assert not error and cycles > 0, (i, error, cycles)
        assert len(words) == prog.regions[net.output].words, (i, len(words))
        np.testing.assert_array_equal(prog.output_from_words(words), want[i],
                                      err_msg=f"image {i} on {name}")


@pytest.mark.parametrize("name", ["tiny", "ice40-up5k", "ecp5-25k"])
def test_weights_streamed_from_a_weight_store(name):
    """A network with more weight blocks than the core's buffer holds: every command's
    blocks streamed from the engine's weight store (some commands keep the last ones; on
    the ECP5 build each command computes while its blocks arrive, ``early_weights``)."""
    rng = np.random.default_rng(24)
    net = conv_net(rng, c=16, cout=24) if name == "tiny" else conv_net(rng, c=32, cout=48)
    cc = simulable(name)
    if name == "ecp5-25k":
        cc = cc.replace(weight_depth=128)    # a buffer the small network overflows
    prog = compile_network(net, cc)
    blocks = [ins["w_n"] for ins in prog.engine_image()["instructions"] if ins["op"] == 2]
    # more blocks than the core holds, commands that load several (and on the tiny build
    # some that keep theirs)
    assert sum(blocks) > cc.weight_depth and max(blocks) > 1, blocks
    assert name != "tiny" or 0 in blocks, blocks
    ec = prog.engine_config()
    assert ec.weight_store_depth == sum(blocks)
    images = rng.integers(-128, 128, size=(2,) + net.input_shape)
    want = net.run(images)
    _, results = _run_engine(cc, net, images, seed=9)
    for i, (words, error, cycles) in enumerate(results):
        assert not error and cycles > 0
        np.testing.assert_array_equal(prog.output_from_words(words), want[i],
                                      err_msg=f"image {i} on {name}")


def test_reset_in_the_middle_of_a_run_then_a_clean_run():
    rng = np.random.default_rng(22)
    net = conv_net(rng)
    images = rng.integers(-128, 128, size=(1,) + net.input_shape)
    prog, results = _run_engine(simulable("ecp5-25k"), net, images, seed=4, reset_at=30)
    words, error, _ = results[0]
    assert not error
    np.testing.assert_array_equal(prog.output_from_words(words), net.run(images)[0])


def test_a_refused_command_stops_the_run_with_error():
    """A CONV whose command the core refuses (a kernel of 2) ends the run with ``error`` and
    no output."""
    rng = np.random.default_rng(23)
    net = conv_net(rng)
    images = rng.integers(-128, 128, size=(1,) + net.input_shape)

    def break_first_conv(image):
        conv = image["instructions"][1]
        conv["cfg"] = dict(conv["cfg"], k=2)

    _, results = _run_engine(simulable("tiny"), net, images, seed=5, edit=break_first_conv)
    assert results[0][:2] == ([], 1)


def _residual(rng, output):
    """psc's test residual network with a quieter pooling and classifier (outputs spread over
    the int8 range, not saturated), its output the pooled vector ``"f"`` or ``"logits"``."""
    net = residual_net(rng, classes=16)
    fc = net.layers[-1]
    layers = net.layers[:-3] + [
        Layer.gap("pool", "d", "e", 20000, 20), Layer.flatten("flat", "e", "f"),
        Layer.conv("fc", "f", "logits", fc.arrays["w_pos"], fc.arrays["w_neg"],
                   fc.arrays["bias"], fc.arrays["mult"], 22)]
    return Network("image", net.input_shape, layers, output)


@pytest.mark.parametrize("name, output, op_values, unroll, given",
                         [("ice40-up5k", "f", 1, True, True),
                          ("ecp5-25k", "logits", 1, True, False),
                          ("ecp5-25k", "logits", 3, "chip", True),
                          ("tiny", "f", 2, True, True)])
def test_engine_runs_every_op_of_a_residual_network(name, output, op_values, unroll, given):
    """Stem (its input unrolled by the host, or on the ECP5 build by the engine),
    depthwise, pointwise, residual add, pooling, flatten and classifier, all on the
    engine, its instructions carrying their commands' sizes or its cores deriving them:
    the outputs (the pooled vector, or the logits) are the golden network's."""
    rng = np.random.default_rng(7)
    net = _residual(rng, output)
    images = rng.integers(-128, 128, size=(2,) + net.input_shape)
    want = net.run(images)
    assert len(np.unique(want)) >= want.size // 2      # few saturated or repeated values
    prog, results = _run_engine(simulable(name), net, images, seed=6, op_values=op_values,
                                unroll_input=unroll, given_sizes=given)
    assert any(isinstance(s, UnrollStep) for s in prog.steps) == (unroll == "chip")
    for i, (words, error, cycles) in enumerate(results):
        assert not error and cycles > 0
        np.testing.assert_array_equal(prog.output_from_words(words), want[i],
                                      err_msg=f"image {i} on {name}")


def test_the_digits_network_on_the_ecp5_engine_under_verilator():
    """The shipped digits network, stores loaded once, two images through the ULX3S's
    network-mode engine (the ECP5 core as 8 x 3) with its real multiplier cells
    (Verilator), random pauses on the host's streams, its stem's input unrolled on chip
    as over a link: the outputs are the golden network's. (The ``ecp5-25k`` preset's
    7 x 4 engine runs the residual network above.)"""
    from psc import data
    from psc.onnx_import import import_onnx
    net = import_onnx(data.path("digits_psc.onnx"))
    _, _, x, _ = data.digits_split(0)
    images = net.quantize_input(x[:2])
    prog = compile_network(net, board_core("ulx3s", "network"), unroll_input="chip")
    assert isinstance(prog.steps[0], UnrollStep)
    out, report = prog.simulate(images, target="verilator", stall=0.2, seed=3, trace=True)
    np.testing.assert_array_equal(out, net.run(images))
    assert 0 < report["utilisation"] < 1 and len(report["per_image"]) == 2
    _check_trace(prog, report)


def _check_trace(prog, report):
    """The trace of the first image accounts for its every cycle and beat, step by step."""
    rows = report["trace"]
    convs = [s.name for s in prog.steps if isinstance(s, ConvStep)]
    assert [r["name"] for r in rows if r["beats"]] == convs
    assert rows[0]["name"] == "input" and rows[-1]["name"] == "output"
    assert sum(r["cycles"] for r in rows) == report["per_image"][0]
    assert sum(r["beats"] for r in rows) == report["compute"]
    for r in rows:
        assert r["instructions"] >= 1 and r["cycles"] >= r["beats"] + r["setup"] + r["drain"]
        assert (r["ideal"] > 0) == (r["name"] in convs) and r["ideal"] <= r["beats"], r


def test_a_residual_network_on_the_engine_under_icarus():
    """The residual network (every op) on the tiny build's engine, on Icarus, with random
    pauses on the host's streams."""
    rng = np.random.default_rng(9)
    net = _residual(rng, "logits")
    images = rng.integers(-128, 128, size=(1,) + net.input_shape)
    prog = compile_network(net, PRESETS["tiny"])
    out, report = prog.simulate(images, target="icarus", stall=0.3, seed=2, trace=True)
    np.testing.assert_array_equal(out, net.run(images))
    _check_trace(prog, report)


def _edge_ops_net(rng, c, h, w):
    """Two pointwise layers, their residual add and its pooling on an ``h x w`` map of ``c``
    channels: with a map of one or two pixels and ``c`` up to two words of lanes, the op
    unit's adds of one or two words and poolings of one or two pixels (its first word or
    pixel is its last)."""
    def r(shape, width=8):
        return rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=shape)
    layers = [
        Layer.conv("p1", "x", "a", r((c, c, 1, 1)), r((c, c, 1, 1)), r(c, 10), 300, 16),
        Layer.conv("p2", "a", "b", r((c, c, 1, 1)), r((c, c, 1, 1)), r(c, 10), 300, 15),
        Layer.add("res", "a", "b", "d", 20000, 30000, 15),
        Layer.gap("pool", "d", "e", 40000, 16),
        Layer.flatten("flat", "e", "f"),
    ]
    return Network("x", (c, h, w), layers, "f")


@pytest.mark.parametrize("name, op_values", [("tiny", 1), ("ice40-up5k", 1), ("ice40-up5k", 2),
                                            ("ecp5-25k", 1), ("ecp5-25k", 2), ("ecp5-25k", 4)])
@pytest.mark.parametrize("words, hw", [(1, (1, 1)), (1, (1, 2)), (2, (1, 1)), (2, (2, 1))])
def test_adds_and_poolings_of_one_or_two_words(name, op_values, words, hw):
    """An add of ``n`` words and a pooling of ``n`` pixels for ``n`` of 1 and 2, over one and
    two words of channels (``words``), the last one partly padding: the op unit's end of
    an operation on its first or second step."""
    cc = simulable(name)
    c = cc.lanes - 1 if words == 1 else cc.lanes + 2
    rng = np.random.default_rng(31 + words)
    net = _edge_ops_net(rng, c, *hw)
    images = rng.integers(-128, 128, size=(2,) + net.input_shape)
    want = net.run(images, keep=True)
    assert len(np.unique(want["d"])) > want["d"].size // 2   # the sums spread, not saturated
    prog, results = _run_engine(cc, net, images, seed=8, op_values=op_values)
    assert prog.regions["d"].words == words * hw[0] * hw[1]
    for i, (out_words, error, _) in enumerate(results):
        assert not error
        np.testing.assert_array_equal(prog.output_from_words(out_words), want["f"][i],
                                      err_msg=f"image {i}: d = {want['d'][i].tolist()}")
