"""Property-based fuzzing of every public boundary: the golden model, the packer,
plan_layer, run_layers on the simulated core, and every ``psc`` sub-command.

Each case is a valid argument set, drawn at random, with at most one defect
injected into it (a wrong type, an empty dimension, a value out of range, an
option the build cannot take). The property, per call:

* no defect: the call succeeds and its result equals an independent reference
  (the float64 dynamic-kernel model, the unpacker, the golden model for the
  core); the planner may still refuse a layer for the build's capacity;
* a defect: the call raises the documented error (a ``ValueError``:
  ``BadTypeError``/``LayerError`` included; exit status 2 for the command
  line) with a one-line message that names the argument, and nothing was
  simulated, sent, synthesised or written.

Bounded by default (a few seconds per test); ``PSC_FUZZ_EXAMPLES=N`` runs N
examples per test (``scripts/fuzz.sh``), the simulated core a twenty-fifth
of that.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import psc.host.api
from psc import cli, golden, host
from psc.build_dir import build_root
from psc.config import required_acc_width
from psc.flow import board, generate, synth
from psc.flow.executor import Executor
from psc.host import serial_link
from psc.model import packing
from psc.model.checks import signed_range
from psc.presets import PRESETS

# the designs a valid synth/compare command line builds are never elaborated (the tools
# are stopped first), which Amaranth reports
pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore:.*created but never used")]

TINY = PRESETS["tiny"]
_LONG = int(os.environ.get("PSC_FUZZ_EXAMPLES", "0"))


def _settings(default, share=1.0):
    n = max(1, int(_LONG * share)) if _LONG else default
    return settings(max_examples=n, deadline=None, derandomize=not _LONG,
                    suppress_health_check=list(HealthCheck))


def _refused(error, *words):
    """The error is documented (a ValueError), one line, and names ``words``."""
    assert isinstance(error, ValueError), repr(error)
    text = str(error)
    assert text and "\n" not in text, repr(text)
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs), None
    except ValueError as e:
        return None, e


# --- defects: (label, the word the message must hold, how to apply it) ---------------------------

BAD_INTS = [0.0, 1.5, True, "1", None, np.float64(2)]


_KINDS = ("float", "bool", "object", "uint64", "range", "empty", "str", "ragged")


def _bad_array(draw, arr, width, *, named=None, kinds=_KINDS):
    """A replacement for an integer array: a wrong dtype, a value out of range or past
    int64, or an empty dimension among its last ``named`` axes (default all); returns
    ``(array, is_shape_defect)``."""
    kind = draw(st.sampled_from(kinds))
    if kind == "float":
        return arr.astype(np.float64), False
    if kind == "bool":
        return arr != 0, False
    if kind == "object":
        return arr.astype(object), False
    if kind == "uint64":
        return np.full(arr.shape, (1 << 63) + draw(st.integers(0, 99)), dtype=np.uint64), False
    if kind == "range":
        out = arr.copy()
        out.flat[draw(st.integers(0, out.size - 1))] = draw(st.sampled_from(
            [1 << (width - 1), -(1 << (width - 1)) - 1, 1 << 40]))
        return out, False
    if kind == "str":
        return "x" * arr.ndim, False
    if kind == "ragged":
        return [[1, 2], [3]], False
    axis = draw(st.integers(arr.ndim - (named or arr.ndim), arr.ndim - 1))
    return np.take(arr, [], axis=axis), True


# --- the golden model -------------------------------------------------------------------------------

@st.composite
def conv_case(draw):
    a, wb = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    cin = draw(st.integers(1, 4))
    depthwise = draw(st.booleans())
    groups = cin if depthwise else 1
    cout = cin * draw(st.integers(1, 2)) if depthwise else draw(st.integers(1, 4))
    k, stride, padding = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, k - 2 * padding), 6))
    w = draw(st.integers(max(1, k - 2 * padding), 6))
    batch = draw(st.sampled_from([(), (1,), (2,)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from([np.int64, np.int32, np.int16]))
    lo_a, hi_a = signed_range(a)
    lo_w, hi_w = signed_range(wb)
    acc = draw(st.integers(required_acc_width(a, wb, cin // groups * k * k), 40))
    lo_b, hi_b = signed_range(acc)
    args = [rng.integers(lo_a, hi_a + 1, size=batch + (cin, h, w)).astype(dtype),
            rng.integers(lo_w, hi_w + 1, size=(cout, cin // groups, k, k)),
            rng.integers(lo_w, hi_w + 1, size=(cout, cin // groups, k, k)),
            None if draw(st.booleans()) else rng.integers(lo_b, hi_b + 1, size=cout)]
    kwargs = dict(stride=stride, padding=padding, groups=groups, act_width=a, weight_width=wb,
                  acc_width=acc)
    return args, kwargs


def _conv_defect(draw, args, kwargs):
    """Inject one defect; returns the words its message must hold."""
    what = draw(st.sampled_from(["x", "w_pos", "w_neg", "bias", "stride", "padding", "groups",
                                 "act_width", "weight_width", "acc_width", "x_ndim", "w_shape"]))
    if what in ("x", "w_pos", "w_neg"):
        i = ["x", "w_pos", "w_neg"].index(what)
        width = kwargs["act_width" if what == "x" else "weight_width"]
        args[i], shape_defect = _bad_array(draw, args[i], width, named=3 if what == "x" else 4)
        if shape_defect and what == "w_pos":
            args[2] = args[1].copy()        # an empty weight, not a mismatch
        return [what]
    if what == "bias":
        cout = args[1].shape[0]
        args[3] = draw(st.sampled_from([np.zeros(cout + 1, dtype=int), np.zeros(cout) + 0.5,
                                        np.full(cout, 1 << 45)]))
        return ["bias"]
    if what in ("stride", "padding", "groups"):
        kwargs[what] = draw(st.sampled_from(BAD_INTS + [-1] + ([0] if what != "padding" else [])))
        return [what]
    if what.endswith("_width"):
        kwargs[what] = draw(st.sampled_from(BAD_INTS + [1, 65]))
        return [what]
    if what == "x_ndim":
        args[0] = args[0].reshape(-1)
        return ["x"]
    args[2] = args[2][..., :0] if draw(st.booleans()) else np.concatenate([args[2], args[2]])
    return ["w_neg"]


@_settings(300)
@given(case=conv_case(), defect=st.booleans(), data=st.data())
def test_golden_model(case, defect, data):
    args, kwargs = case
    words = _conv_defect(data.draw, args, kwargs) if defect else None
    got, error = _call(golden.psc_conv2d, *args, **kwargs)
    if words is None:
        assert error is None, error
        ref = golden.psc_conv2d_float(*args, stride=kwargs["stride"], padding=kwargs["padding"],
                                      groups=kwargs["groups"])
        np.testing.assert_array_equal(got, ref)
        assert got.dtype == np.int64
    else:
        _refused(error, *words)


@st.composite
def requant_case(draw):
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mw = draw(st.integers(2, 20))
    acc = rng.integers(-(1 << 30), 1 << 30, size=(c, h, w))
    mult = rng.integers(0, 1 << mw, size=c) if draw(st.booleans()) else int(rng.integers(0, 1 << mw))
    shift = rng.integers(0, 40, size=c)
    return [acc, mult, shift], dict(act_width=draw(st.integers(2, 16)), mult_width=mw,
                                    relu=draw(st.sampled_from([True, False, np.bool_(True)])))


@_settings(200)
@given(case=requant_case(), defect=st.booleans(), data=st.data())
def test_requantize(case, defect, data):
    args, kwargs = case
    words = None
    if defect:
        what = data.draw(st.sampled_from(["acc", "mult", "shift", "relu", "act_width",
                                          "mult_width"]))
        words = [what]
        if what == "acc":
            # any int64 accumulator is in range: only types, int64 overflow and shapes
            args[0], _ = _bad_array(data.draw, args[0], 62,
                                    kinds=("float", "bool", "object", "uint64", "empty", "str"))
        elif what in ("mult", "shift"):
            i = 1 if what == "mult" else 2
            args[i] = data.draw(st.sampled_from([-1, 0.5, True, "3", np.zeros(9, dtype=int),
                                                 1 << 62 if what == "mult" else 63]))
        elif what == "relu":
            kwargs["relu"] = data.draw(st.sampled_from(["no", 1, None, "False"]))
        else:
            kwargs[what] = data.draw(st.sampled_from(BAD_INTS + [1, 63]))
    got, error = _call(golden.requantize, *args, **kwargs)
    if words is None:
        assert error is None, error
        ref = golden.requantize_float(*args, act_width=kwargs["act_width"], relu=kwargs["relu"])
        np.testing.assert_array_equal(got, ref)
    else:
        _refused(error, *words)


# --- the packer -------------------------------------------------------------------------------------

@_settings(300)
@given(c=st.integers(1, 9), h=st.integers(1, 3), w=st.integers(1, 3), lanes=st.integers(1, 8),
       width=st.integers(2, 16), seed=st.integers(0, 2**32 - 1), defect=st.booleans(),
       data=st.data())
def test_packer(c, h, w, lanes, width, seed, defect, data):
    rng = np.random.default_rng(seed)
    lo, hi = signed_range(width)
    x = rng.integers(lo, hi + 1, size=(c, h, w))
    words = None
    if defect:
        what = data.draw(st.sampled_from(["x", "lanes", "act_width", "channels", "words"]))
        if what == "x":
            x, _ = _bad_array(data.draw, x, width)
            words = ["x"]
    if words is None and defect:
        bad = data.draw(st.sampled_from(BAD_INTS + [0, -2]))
        packed = packing.pack_activations(rng.integers(lo, hi + 1, size=(c, h, w)), lanes, width)
        call = {"lanes": lambda: packing.pack_activations(x, bad, width),
                "act_width": lambda: packing.pack_activations(x, lanes, bad),
                "channels": lambda: packing.unpack_activations(packed, bad, lanes, width),
                "words": lambda: packing.unpack_lanes(
                    np.full(3, data.draw(st.sampled_from([-1, 0.5, True, 1 << (lanes * width)])),
                            dtype=object), lanes, width)}[what]
        _, error = _call(call)
        _refused(error, {"act_width": "width"}.get(what, what))
        return
    got, error = _call(packing.pack_activations, x, lanes, width)
    if words is None:
        assert error is None, error
        np.testing.assert_array_equal(packing.unpack_activations(got, c, lanes, width), x)
        wp, wn = x[:, :1, :1], x[::-1, :1, :1]
        np.testing.assert_array_equal(packing.unparify(packing.parify(wp, wn, width), width),
                                      (wp, wn))
    else:
        _refused(error, *words)


# --- plan_layer and run_layers ---------------------------------------------------------------------

@st.composite
def core_layer(draw, max_hw=6):
    """A layer the core supports by its kinds (the build may still lack the room)."""
    cin = draw(st.integers(1, 8))
    depthwise = draw(st.booleans())
    cout = cin if depthwise else draw(st.integers(1, 8))
    k = draw(st.sampled_from([1, 3, 5]))
    padding = draw(st.integers(max(0, -(-(k - max_hw) // 2)), k - 1))
    stride = draw(st.sampled_from([1, 2]))
    h = draw(st.integers(max(1, k - 2 * padding), max_hw))
    w = draw(st.integers(max(1, k - 2 * padding), max_hw))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (cout, 1 if depthwise else cin, k, k)
    layer = dict(x=rng.integers(-128, 128, size=(cin, h, w)),
                 w_pos=rng.integers(-128, 128, size=shape), w_neg=rng.integers(-128, 128, size=shape),
                 bias=None if draw(st.booleans()) else rng.integers(-5000, 5000, size=cout),
                 mult=rng.integers(0, 1 << 16, size=cout) if draw(st.booleans())
                 else int(rng.integers(0, 1 << 16)),
                 shift=rng.integers(8, 20, size=cout), stride=stride, padding=padding,
                 groups=cin if depthwise else 1, relu=draw(st.sampled_from([False, True,
                                                                            np.bool_(True)])))
    return layer


def _layer_defect(draw, layer):
    what = draw(st.sampled_from(["x", "w_pos", "w_neg", "bias", "mult", "shift", "stride",
                                 "padding", "groups", "relu", "kernel", "h0"]))
    if what in ("x", "w_pos", "w_neg"):
        layer[what], shape_defect = _bad_array(draw, layer[what], 8)
        if shape_defect and what == "w_pos":
            layer["w_neg"] = layer["w_pos"].copy()
        return [what]
    cout = layer["w_pos"].shape[0]
    if what in ("bias", "mult", "shift"):
        layer[what] = draw(st.sampled_from(
            [np.zeros(cout + 1, dtype=int), np.zeros(cout) + 0.5, True,
             {"bias": np.full(cout, 1 << 40), "mult": 1 << 16, "shift": 63}[what]]))
        return [what]
    if what in ("stride", "padding", "groups"):
        layer[what] = draw(st.sampled_from(BAD_INTS + [-1, 3 if what == "stride" else 9]))
        if what == "groups" and layer[what] == 9:
            layer[what] = 2 if layer["x"].shape[0] != 2 else 3
        return [what]
    if what == "relu":
        layer["relu"] = draw(st.sampled_from(["yes", 1, None, 0.0]))
        return ["relu"]
    if what == "kernel":
        k = draw(st.sampled_from([2, 4, 9]))
        layer["w_pos"] = np.zeros(layer["w_pos"].shape[:2] + (k, k), dtype=np.int64)
        layer["w_neg"] = layer["w_pos"].copy()
        layer["padding"] = 0
        return ["kernel"]
    # an empty input row with padding that would cover the kernel (the case)
    layer["x"] = layer["x"][:, :0]
    layer["padding"] = layer["w_pos"].shape[-1] - 1
    return ["x", "H"]


_CAPACITY = ("does not fit this build", "does not fit the command", "partial-sum buffer")


@_settings(150)
@given(layer=core_layer(max_hw=12), defect=st.booleans(), data=st.data())
def test_plan_layer(layer, defect, data):
    words = _layer_defect(data.draw, layer) if defect else None
    plan, error = _call(host.plan_layer, **layer, config=TINY)
    if words is not None:
        assert isinstance(error, host.LayerError), repr(error)
        _refused(error, *words)
    elif error is not None:
        assert isinstance(error, host.LayerError) and any(w in str(error) for w in _CAPACITY), error
        _refused(error)
    else:
        hits = np.zeros(plan.out_shape, dtype=int)
        for tile in plan.tiles:
            if not tile.n_out:
                continue
            c0, c1, oy0, oy1, ox0, ox1 = tile.place
            hits[c0:c1, oy0:oy1, ox0:ox1] += 1
        assert (hits == 1).all()


@pytest.fixture
def sends(monkeypatch):
    """Calls of run_plans (the simulator), recorded and passed on."""
    calls = []
    real = psc.host.api.run_plans

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(psc.host.api, "run_plans", spy)
    return calls


@pytest.mark.slow
@_settings(6, share=0.04)
@given(layers=st.lists(core_layer(max_hw=5), min_size=1, max_size=3), defect=st.booleans(),
       data=st.data())
def test_run_layers_on_the_simulated_core(sends, layers, defect, data):
    """Valid layers (one simulation for the list) equal the golden model; a defect in any
    layer is refused, naming it, before the simulator runs. One Verilator build of the
    ``tiny`` preset serves every example (psc.host.sim builds once per key)."""
    sends.clear()
    words = None
    if defect:
        i = data.draw(st.integers(0, len(layers) - 1))
        words = _layer_defect(data.draw, layers[i]) + ([f"layers[{i}]"] if len(layers) > 1 else [])
    try:
        got = host.run_layers(layers, config=TINY, target="verilator")
    except host.LayerError as e:
        assert not sends, "refused after the simulator ran"
        if words is None:
            assert any(w in str(e) for w in _CAPACITY), e
        _refused(e, *(words or []))
        return
    assert words is None, f"accepted a defect in {words}"
    for layer, (y, counters) in zip(layers, got):
        acc = golden.psc_conv2d(layer["x"], layer["w_pos"], layer["w_neg"], layer["bias"],
                                stride=layer["stride"], padding=layer["padding"],
                                groups=layer["groups"])
        np.testing.assert_array_equal(
            y, golden.requantize(acc, layer["mult"], layer["shift"], relu=bool(layer["relu"])))


@_settings(60)
@given(layer=core_layer(max_hw=4), what=st.sampled_from(["target", "stall", "seed", "waves",
                                                         "config", "layers"]),
       data=st.data())
def test_run_layers_refuses_bad_run_arguments(sends, layer, what, data):
    sends.clear()
    kwargs = dict(config=TINY, target="verilator", stall=0.0, seed=0, waves=None)
    layers = [layer]
    bad = {"target": ["nosuch", None, 3, "serial:", "serial:/dev/ttyX@fast"],
           "stall": [-0.1, 1.5, "x", float("nan"), True],
           "seed": [-1, 1.5, "0", True], "waves": ["yes", 1],
           "config": ["tiny", TINY.pe, 4], "layers": [[], "x", 5, [5], [dict(x=1)]]}[what]
    value = data.draw(st.sampled_from(bad))
    if what == "layers":
        layers = value
    else:
        kwargs[what] = value
    _, error = _call(host.run_layers, layers, **kwargs)
    _refused(error, "layers" if what == "layers" else what)
    assert not sends


# --- the command line --------------------------------------------------------------------------------

class _Reached(BaseException):
    """A tool, a simulator or a board would have started."""


@pytest.fixture
def no_tools(monkeypatch):
    """Every place where work would start raises _Reached (through the handlers' own
    error handling); psc generate writes for real, into a temporary directory."""
    def reach(*args, **kwargs):
        raise _Reached
    monkeypatch.setattr(synth, "run_yosys", reach)
    monkeypatch.setattr(Executor, "submit", reach)
    monkeypatch.setattr(board, "_platform", reach)
    monkeypatch.setattr(psc.host.api, "run_plans", reach)
    monkeypatch.setattr(serial_link, "open_transport", reach)
    written = []
    real = generate.generate_verilog

    def spy(*args, **kwargs):
        written.append(args[0])
        return real(*args, **kwargs)
    monkeypatch.setattr(generate, "generate_verilog", spy)
    return written


def _board_dir():
    return str(build_root() / "fuzz" / "board")


def _a_file(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "a_file.txt"
    path.write_text("not a directory\n")
    return str(path)


@st.composite
def cli_case(draw, out_dir, a_file):
    """``(argv, defect words or None)``: a valid command line, and maybe one bad option."""
    cmd = draw(st.sampled_from(["generate", "synth", "compare", "build", "bench", "demo"]))
    opts = {}
    if cmd == "generate":
        preset = draw(st.sampled_from(["default", "tiny"]))
        size = draw(st.sampled_from([1, 2, 4, 8])) if preset == "tiny" else \
            draw(st.sampled_from([2, 4, 8]))
        opts = {"--top": draw(st.sampled_from(["sign_mask", "weight_select", "pe"])),
                "--preset": preset, "--lanes": size, "--rows": size,
                "--act-width": draw(st.integers(2, 8)), "--weight-width": draw(st.integers(2, 8)),
                "-o": out_dir}
        bad = [({"--lanes": 64, "--rows": 64, "--act-width": 8, "--weight-width": 8},
                ["lanes=64", "Amaranth"]),
               ({"--lanes": 0}, ["lanes", "not 0"]), ({"--top": "nosuch"}, ["--top"]),
               ({"--preset": "nosuch"}, ["--preset"]), ({"--act-width": 33}, ["act_width"]),
               ({"-o": a_file}, ["-o/--output", "file"]),
               ({"--requantizers": 3, "--rows": 8, "--lanes": 8}, ["requantizers"]),
               ({"--multiplier": "ice40_dual8x8", "--lanes": 3, "--rows": 3, "--preset": "tiny"},
                ["lanes must be even"]),
               ({"--top": "bridge", "--preset": "tiny"}, ["bridge"]),
               ({"--acc-width": 12}, ["acc_width"])]
    elif cmd in ("synth", "compare"):
        target = draw(st.sampled_from(["ice40-up5k", "ecp5-25k"]))
        opts = {"--target": target, "--seeds": draw(st.integers(0, 3)), "--no-pnr": None}
        if draw(st.booleans()):
            opts["--tree-stages"] = draw(st.integers(0, 2))
        if cmd == "compare":
            opts["--cycles"] = draw(st.sampled_from(["none", "pw_32x32_16", "fc_256x64"]))
        else:
            opts["--variant"] = draw(st.sampled_from(synth.VARIANTS))
        bad = [({"--target": "nosuch"}, ["--target"]), ({"--seeds": -1}, ["--seeds"]),
               ({"--seeds": "x"}, ["--seeds"]), ({"--build-dir": a_file}, ["--build-dir", "file"]),
               ({"--build-dir": "/tmp/psc-fuzz"}, ["--build-dir", "/tmp"]),
               ({"--lanes": 65}, ["lanes"]), ({"--tree-stages": 3}, ["tree_stages"]),
               ({"--fmap-depth": 1}, ["fmap_depth"]), ({"--level": "chip"}, ["--level"]),
               ({"--multiplier": "x"}, ["--multiplier"])]
        if cmd == "compare":
            bad += [({"--cycles": "nosuch"}, ["--cycles", "nosuch"]),
                    ({"--cycles": "std3x3_32x32_16", "--weight-depth": 8},
                     ["std3x3_32x32_16", "weight buffer"])]
    elif cmd == "build":
        opts = {"--board": draw(st.sampled_from(["icebreaker", "ulx3s"])),
                "--seed": draw(st.integers(0, 9)), "--build-dir": _board_dir()}
        bad = [({"--board": "arty"}, ["--board"]), ({"--lanes": 0}, ["lanes"]),
               ({"--rows": "x"}, ["--rows"]), ({"--baud": 0}, ["--baud"]),
               ({"--baud": 4_000_000}, ["psc build: baud"]), ({"--seed": -1}, ["--seed"]),
               ({"--build-dir": a_file}, ["--build-dir", "file"]),
               ({"--build-dir": "/tmp/psc-fuzz"}, ["--build-dir", "/tmp"])]
    elif cmd == "bench":
        opts = {"fc_256x64": None, "--seed": draw(st.integers(0, 9))}
        bad = [({"nosuch": None}, ["nosuch"]), ({"--lanes": 4}, ["lanes == rows"]),
               ({"--seed": -1}, ["--seed"]),
               ({"std3x3_32x32_16": None, "--lanes": 1, "--rows": 1, "--depthwise": "diagonal"},
                ["std3x3_32x32_16", "weight buffer"])]
    else:
        opts = {"--seed": draw(st.integers(0, 9)),
                "--target": draw(st.sampled_from(["verilator", "icarus", "serial:/dev/null"]))}
        bad = [({"--target": "spi:/dev/x"}, ["--target"]),
               ({"--target": "serial:/dev/nonexistent"}, ["--target", "does not exist"]),
               ({"--target": "serial:"}, ["--target"]),
               ({"--target": "serial:/dev/null@fast"}, ["--target", "baud"]),
               ({"--seed": -1}, ["--seed"])]
    words = None
    if draw(st.booleans()):
        change, words = draw(st.sampled_from(bad))
        opts = {**opts, **change}
    argv = [cmd] + [key for key in opts if not key.startswith("-")]    # positionals first
    for key, value in opts.items():
        if key.startswith("-"):
            argv += [key] if value is None else [key, str(value)]
    return argv, words


def _run_cli(argv, capsys):
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except _Reached:
        return None, ""
    return code, capsys.readouterr().err.strip()


@_settings(60)
@given(data=st.data())
def test_cli(no_tools, capsys, tmp_path_factory, data):
    out_dir = str(tmp_path_factory.getbasetemp() / "fuzz_rtl")
    argv, words = data.draw(cli_case(out_dir, _a_file(tmp_path_factory)))
    no_tools.clear()
    code, err = _run_cli(argv, capsys)
    if words is None:
        # valid: it reached the tools, or (generate) wrote its files
        assert code in (None, 0), (argv, err)
        if code == 0:
            assert no_tools and argv[0] == "generate"
    else:
        assert code == 2, (argv, code, err)
        assert err and "\n" not in err and "Traceback" not in err, err
        # "psc: unrecognized arguments" when a layer name follows the options
        assert err.startswith(f"psc {argv[0]}") or err.startswith("psc: "), err
        for word in words:
            assert word in err, (argv, word, err)
        assert not no_tools, "Verilog generated for a bad command line"


@_settings(40)
@given(argv=st.lists(st.sampled_from(["synth", "build", "--lanes", "-o", "--target", "0", "x",
                                      "--seeds", "-1", "nosuch", "--board", "demo", "--json",
                                      "generate", "bench", "compare", "--cycles", "--top"]),
                     max_size=6))
def test_cli_garbage(no_tools, monkeypatch, capsys, argv):
    """Any jumble of words: exit 2 with one line, or the work would start (never a traceback)."""
    def reach(*args, **kwargs):
        raise _Reached
    # a valid jumble of these words writes into rtl/ or a directory named by a word
    monkeypatch.setattr(generate, "write_rtl", reach)
    monkeypatch.setattr(generate, "write_shipped", reach)
    try:
        code, err = _run_cli(argv, capsys)
    except SystemExit as stop:       # --help is not drawn; argparse exits only on success
        pytest.fail(f"{argv} exited {stop.code}")
    if code is not None and code != 0:
        assert code == 2 and err and "\n" not in err, (argv, err)


def test_debug_shows_the_traceback(no_tools, capsys):
    assert cli.main(["bench", "--lanes", "4"]) == 2
    with pytest.raises(ValueError, match="lanes == rows"):
        cli.main(["--debug", "bench", "--lanes", "4"])
