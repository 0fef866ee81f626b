"""Each class of bad input, one test each: refused in one line naming the argument, before
any synthesis, simulation, file or transfer starts; and the configuration's limits are the
generator's (whatever PSCConfig/CoreConfig accepts builds; tests/test_fuzz.py draws the rest).
"""

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Shape
from amaranth.lib import wiring

import psc.host.api
from psc import cli, golden, host
from psc.build_dir import build_root, check_dir, check_not_tmp
from psc.config import MAX_VALUE_WIDTH, CoreConfig, PSCConfig
from psc.flow import board, generate, synth
from psc.flow.executor import Executor
from psc.host import serial_link
from psc.model.checks import BadTypeError
from psc.presets import PRESETS

pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")


class _Reached(BaseException):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """Where a command's work would start: synthesis, a board build, a simulation, a serial
    port, a Verilog file. Reaching any of them fails the test."""
    def reach(*args, **kwargs):
        raise _Reached
    for obj, name in ((synth, "run_yosys"), (Executor, "submit"), (board, "_platform"),
                      (psc.host.api, "run_plans"), (serial_link, "open_transport"),
                      (generate, "generate_verilog"),
                      (generate, "write_shipped")):
        monkeypatch.setattr(obj, name, reach)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a file, not a directory\n")
    return str(path)


# --- the command lines -----------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["build", "--board", "icebreaker", "--lanes", "0"], ["psc build", "lanes", "not 0"]),
    (["generate", "--lanes", "64", "--rows", "64"], ["psc generate", "lanes=64, rows=64",
                                                     "at most 65536"]),
    (["compare", "--target", "ecp5-25k", "--cycles", "nosuch"], ["psc compare", "'nosuch'"]),
    (["compare", "--target", "ice40-up5k", "--weight-depth", "4", "--cycles", "std3x3_32x32_16"],
     ["psc compare", "std3x3_32x32_16", "weight_depth=4"]),
    (["bench", "nosuch"], ["psc bench", "'nosuch'"]),
    (["soak", "--builds", "tiny,huge"], ["psc soak", "builds must be one of", "'huge'"]),
    (["soak", "--layers", "0"], ["psc soak", "--layers", "'0'"]),
    (["explore", "--target", "ice40-up5k", "--build-dir", "/tmp/psc"], ["psc explore", "/tmp"]),
    (["explore", "--target", "ice40-up5k", "--space", "{file}"], ["psc explore", "space:",
                                                                   "is not valid TOML"]),
    (["bench", "--lanes", "4"], ["psc bench", "lanes == rows"]),
    (["generate", "-o", "{file}"], ["psc generate", "-o/--output", "it is a file"]),
    (["generate", "--top", "pe", "-o", "{file}/sub"], ["psc generate", "is inside", "a file"]),
    (["synth", "--target", "ice40-up5k", "--build-dir", "{file}"], ["psc synth", "--build-dir",
                                                                    "it is a file"]),
    (["synth", "--target", "ice40-up5k", "--build-dir", "/tmp/psc"], ["psc synth", "/tmp"]),
    (["synth", "--target", "ice40-up5k", "--seeds", "-1"], ["psc synth", "--seeds", "'-1'"]),
    (["build", "--board", "ulx3s", "--build-dir", "{file}"], ["psc build", "it is a file"]),
    (["build", "--board", "icebreaker", "--baud", "40000000"], ["psc build", "baud must be at most"]),
    (["demo", "--target", "serial:/dev/nonexistent"], ["psc demo", "--target", "does not exist"]),
    (["demo", "--target", "serial:/dev/null@fast"], ["psc demo", "baud rate", "'fast'"]),
    (["demo", "--seed", "-3"], ["psc demo", "--seed"]),
])
def test_cli_refuses_before_any_work(no_work, capsys, a_file, argv, words):
    argv = [a.replace("{file}", a_file) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def test_debug_shows_the_traceback(no_work):
    with pytest.raises(ValueError, match="lanes=64, rows=64"):
        cli.main(["--debug", "generate", "--lanes", "64", "--rows", "64"])


def test_a_failure_while_working_is_one_line_and_exit_1(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise serial_link.LinkError("timeout reading the ID frame: got 0 of 5 bytes")
    monkeypatch.setattr(serial_link, "open_transport", fail)
    assert cli.main(["demo", "--target", "serial:/dev/null"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("psc demo: LinkError: timeout") and "\n" not in err, err


# --- the API: shapes, types and ranges, refused before anything is sent -----------------------------

def _layer(cin=4, h=6, w=6, cout=4, k=3, **changes):
    layer = dict(x=np.zeros((cin, h, w), dtype=np.int64),
                 w_pos=np.zeros((cout, cin, k, k), dtype=np.int64),
                 w_neg=np.zeros((cout, cin, k, k), dtype=np.int64), bias=None, mult=1, shift=0)
    layer.update(changes)
    return layer


@pytest.fixture
def no_send(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("run_plans called: something was sent")
    monkeypatch.setattr(psc.host.api, "run_plans", refuse)


@pytest.mark.parametrize("layer, words", [
    (_layer(cin=0), ["x", "Cin is 0"]),                        # was ZeroDivisionError
    (_layer(cout=0), ["w_pos", "Cout is 0"]),                  # was a range() error
    (_layer(h=0, padding=2), ["x", "H is 0"]),                 # was refused by the core, after sending
    (_layer(x=np.zeros((4, 6, 6))), ["x", "dtype float64"]),
    (_layer(x=np.ones((4, 6, 6), dtype=bool)), ["x", "dtype bool"]),
    (_layer(x=np.zeros((4, 6, 6), dtype=object)), ["x", "dtype object"]),
    (_layer(x=np.full((4, 6, 6), 1 << 63, dtype=np.uint64)), ["x", "9223372036854775808"]),
    (_layer(relu="no"), ["relu", "True or False", "'no'"]),
    (_layer(stride=1.0), ["stride", "1.0"]),
    (_layer(mult=True), ["mult", "bool"]),
    (_layer(shift=np.zeros(5, dtype=int)), ["shift", "(4,)"]),
])
def test_run_layer_refuses_before_sending(no_send, layer, words):
    with pytest.raises(host.LayerError) as error:
        host.run_layer(**layer, config=PRESETS["tiny"])
    text = str(error.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("kwargs, error", [
    (dict(target="nosuch"), "target must be one of"), (dict(stall=2.0), "stall"),
    (dict(seed=-1), "seed"), (dict(waves="yes"), "waves"), (dict(config="tiny"), "config"),
])
def test_run_layer_refuses_bad_run_arguments(no_send, kwargs, error):
    with pytest.raises(ValueError, match=error):
        host.run_layer(**_layer(), **kwargs)


def test_wrong_types_are_type_and_value_errors():
    with pytest.raises(BadTypeError) as error:
        golden.psc_conv2d(np.zeros((1, 1, 1)), np.zeros((1, 1, 1, 1), dtype=int),
                          np.zeros((1, 1, 1, 1), dtype=int))
    assert isinstance(error.value, TypeError) and isinstance(error.value, ValueError)


def test_golden_model_refuses_empty_dimensions_and_truthiness():
    z = np.zeros
    with pytest.raises(ValueError, match="x must have no empty dimension"):
        golden.psc_conv2d(z((0, 6, 6), int), z((4, 0, 3, 3), int), z((4, 0, 3, 3), int))
    with pytest.raises(ValueError, match="relu must be True or False, not 'no'"):
        golden.requantize(z((1, 1, 1), int), 1, 0, relu="no")
    with pytest.raises(ValueError, match="positive must hold bools"):
        golden.spsc(z((2, 1, 1, 1), int), ["yes", "no"])
    # a batch of no maps is a batch
    assert golden.psc_conv2d(z((0, 2, 3, 3), int), z((1, 2, 1, 1), int),
                             z((1, 2, 1, 1), int)).shape == (0, 1, 3, 3)


def test_build_directories_are_checked_by_path_components(a_file):
    assert check_not_tmp("d", "/tmpfoo/x") == check_dir("d", "/tmpfoo/x")
    with pytest.raises(ValueError, match="must not be under /tmp"):
        check_not_tmp("d", "/tmp/../tmp/x")
    with pytest.raises(ValueError, match="d must be a directory"):
        check_dir("d", a_file)
    with pytest.raises(ValueError, match="d must be a directory path, not None"):
        check_dir("d", None)


# --- the configuration's limits are the generator's ------------------------------------------------

def _input_bits(component):
    """Input bits of ``component`` as a top: its In ports, clock and reset."""
    return 2 + sum(Shape.cast(m.shape).width for _, m in component.signature.members.flatten()
                   if m.is_port and m.flow == wiring.In)


@pytest.mark.parametrize("config", [
    PRESETS["default"], PRESETS["tiny"], PRESETS["ice40-up5k"], PRESETS["ecp5-25k"],
    CoreConfig(pe=PSCConfig(lanes=16, rows=16, act_width=16, weight_width=12, acc_width=64,
                            mult_width=32, depthwise="pixels")),
    CoreConfig(pe=PSCConfig(lanes=3, rows=5, act_width=31, weight_width=32, acc_width=64,
                            mult_width=32, max_reduction=3, psc=False), fmap_depth=8),
], ids=lambda c: c.key())
def test_input_bits_bounds_every_top(config):
    """PSCConfig.input_bits (what the configuration checks) bounds the inputs of every top."""
    for top in ("sign_mask", "weight_select", "pe", "dot_product", "core"):
        assert _input_bits(generate.build_top(top, config)) <= config.pe.input_bits, top


def test_configuration_refuses_what_amaranth_cannot_build():
    with pytest.raises(ValueError, match=r"lanes=64, rows=64 .* need up to \d+ input bits"):
        PSCConfig(lanes=64, rows=64)
    assert PSCConfig(lanes=64, rows=64, weight_width=7).input_bits <= MAX_VALUE_WIDTH
    with pytest.raises(ValueError, match=r"max_reduction must be at least lanes \(8\)"):
        CoreConfig(pe=PSCConfig(max_reduction=4))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lane'\]"):
        PRESETS["default"].replace(lane=4)
    # numpy integers are taken as ints, so the configuration stays plain JSON
    assert type(PSCConfig(lanes=np.int64(4), rows=4).lanes) is int


def _builds(top, config):
    rtlil.convert(generate.build_top(top, config), name="top", emit_src=False)


@pytest.mark.parametrize("top, config", [
    ("core", CoreConfig(pe=PSCConfig(lanes=1, rows=1, act_width=2, weight_width=2, acc_width=8,
                                     mult_width=1, max_reduction=1, depthwise="diagonal"),
                        fmap_depth=2, weight_depth=2, param_depth=2)),
    ("core", CoreConfig(pe=PSCConfig(lanes=2, rows=1, act_width=31, weight_width=32,
                                     acc_width=64, mult_width=32, max_reduction=2,
                                     requant_mult_bits=1),
                        fmap_depth=16, read_register=True)),
    ("core", CoreConfig(pe=PSCConfig(lanes=2, rows=2, multiplier="ice40_dual8x8",
                                     tree_stages=2, depthwise="pixels"), fmap_depth=4)),
    ("core", CoreConfig(pe=PSCConfig(lanes=1, rows=3, act_width=18, weight_width=18,
                                     acc_width=64, multiplier="ecp5_mult18",
                                     requantizers=1))),
], ids=["smallest", "widest", "ice40-pixels", "ecp5-widest"])
def test_accepted_corners_build(top, config):
    _builds(top, config)


# the whole core at these limits (minutes to elaborate) runs in the opt-in soak
@pytest.mark.slow
@pytest.mark.parametrize("top", ["dot_product", pytest.param("core", marks=pytest.mark.soak)])
def test_the_largest_accepted_array_builds(top):
    """64 x 64 with the widest weights the configuration accepts, next to Amaranth's limit."""
    config = CoreConfig(pe=PSCConfig(lanes=64, rows=64, psc=False, act_width=15,
                                     weight_width=14, acc_width=48))
    assert config.pe.input_bits > MAX_VALUE_WIDTH - 4096
    _builds(top, config)


@pytest.mark.soak
def test_the_deepest_accepted_buffers_build():
    _builds("core", CoreConfig(pe=PSCConfig(lanes=1, rows=1, max_reduction=1 << 24,
                                            acc_width=40),
                               fmap_depth=1 << 20, weight_depth=1 << 20, param_depth=1 << 16))
