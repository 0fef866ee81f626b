"""The ``psc`` command line (psc.cli): options reach the handlers as parsed values and a
configuration built from the preset; a bad option or value is one line and exit status 2.

Fast: the handlers are replaced by recorders, nothing is built or simulated.
"""

import numpy as np
import pytest

from psc import cli, presets
from psc.flow import board, synth
from psc.host import bench


@pytest.fixture
def calls(monkeypatch):
    """Replace the handlers behind ``psc build/synth/compare/bench`` by recorders."""
    seen = []

    def recorder(name):
        def handler(*args, **kwargs):
            seen.append((name, args, kwargs))
            return 0
        return handler

    monkeypatch.setattr(board, "main", recorder("build"))
    monkeypatch.setattr(synth, "main_synth", recorder("synth"))
    monkeypatch.setattr(synth, "main_compare", recorder("compare"))
    monkeypatch.setattr(bench, "main", recorder("bench"))
    return seen


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_handlers_get_parsed_values_and_the_preset(calls):
    assert cli.main(["build", "--board", "icebreaker", "--lanes", "4", "--seed", "4", "--json",
                     "--clock", "30"]) == 0
    assert cli.main(["synth", "--target", "ecp5-25k", "--level", "datapath", "--no-pnr",
                     "--tree-stages", "2"]) == 0
    assert cli.main(["compare", "--target", "ice40-up5k", "--level", "core",
                     "--cycles", "fc_256x64,pw_32x32_16"]) == 0
    assert cli.main(["bench", "fc_256x64", "--lanes", "4", "--rows", "4"]) == 0
    (_, b_args, b_kw), (_, s_args, s_kw), (_, c_args, c_kw), (_, n_args, n_kw) = calls
    assert b_args == ("icebreaker", presets.preset("icebreaker").replace(lanes=4))
    assert b_kw == dict(baud=presets.DEFAULT_BAUD, build_dir=None, seed=4, as_json=True,
                        core_hz=30e6, mode="tile", seeds=None, scheduler=None, workers=None)
    assert s_args == ("ecp5-25k", presets.preset("ecp5-25k").replace(tree_stages=2))
    assert s_kw["level"] == "datapath" and s_kw["variant"] == "psc" and s_kw["pnr"] is False
    assert c_args == ("ice40-up5k", presets.preset("ice40-up5k"))
    assert c_kw["levels"] == ("core",) and c_kw["cycles_layers"] == ("fc_256x64", "pw_32x32_16")
    assert n_args == (["fc_256x64"], presets.preset("default").replace(lanes=4, rows=4))
    assert n_kw == {"seed": 0}
    cli.main(["build", "--board", "ulx3s", "--seeds", "3", "--workers", "0"])
    assert {k: calls[-1][2][k] for k in ("seed", "seeds", "workers")} == {
        "seed": None, "seeds": 3, "workers": 0}
    cli.main(["compare", "--target", "ecp5-25k", "--cycles", "none"])
    assert calls[-1][2]["levels"] == synth.LEVELS and calls[-1][2]["cycles_layers"] == ()
    # a preset, target or board names the bench's build
    # (one layer: the handler checks every layer it names against the build first)
    assert cli.main(["bench", "mbv2_stem", "--target", "ecp5-25k"]) == 0
    assert calls[-1][1] == (["mbv2_stem"], presets.preset("ecp5-25k"))
    assert cli.main(["bench", "mbv2_fc", "--preset", "icebreaker", "--lanes", "4"]) == 0
    assert calls[-1][1] == (["mbv2_fc"], presets.preset("ice40-up5k").replace(lanes=4))


def test_bench_mobilenet_v2_layer_list():
    """MobileNetV2 0.35 at 96x96: the stem, 17 inverted residual blocks (16 with an
    expansion), the last 1x1 convolution and the classifier, with its channel counts."""
    layers = bench.MBV2_LAYERS
    assert len(layers) == 1 + 16 + 17 + 17 + 2
    rng = np.random.default_rng(0)
    shapes = {n: (f(rng)["x"].shape, f(rng)["w_pos"].shape) for n, (_, f) in layers.items()}
    assert shapes["mbv2_stem"] == ((3, 96, 96), (16, 3, 3, 3))
    assert shapes["mbv2_1.0_dw"] == ((16, 48, 48), (16, 1, 3, 3))
    assert shapes["mbv2_7.0_project"] == ((336, 3, 3), (112, 336, 1, 1))
    assert shapes["mbv2_last"] == ((112, 3, 3), (1280, 112, 1, 1))
    assert shapes["mbv2_fc"] == ((1280, 1, 1), (1000, 1280, 1, 1))
    assert bench.check(["mbv2"], presets.preset("default"))[0] == "mbv2_stem"


@pytest.mark.parametrize("argv, words", [
    # an override the configuration refuses is not silently dropped
    (["build", "--board", "icebreaker", "--lanes", "0"], ["psc build", "lanes", "not 0"]),
    (["build", "--board", "arty"], ["psc build", "--board", "'arty'", "icebreaker"]),
    (["build", "--board", "ulx3s", "--rows", "x"], ["psc build", "--rows", "'x'"]),
    (["build", "--board", "ulx3s", "--clock", "0"], ["psc build", "--clock", "above 0", "'0'"]),
    (["build", "--board", "ulx3s", "--clock", "1000"], ["psc build", "out_hz", "400 MHz"]),
    (["synth", "--target", "ice40-up5k", "--lanes", "3"], ["psc synth", "lanes must be even"]),
    (["synth", "--level", "core"], ["psc synth", "--target"]),
    (["compare", "--target", "ecp5-25k", "--cycles", "pw_32x32_16,huge"],
     ["psc compare", "--cycles", "'huge'"]),
    (["bench", "nosuch"], ["psc bench", "'nosuch'", "fc_256x64"]),
    (["bench", "--lanes", "4"], ["psc bench", "depthwise='pixels' needs lanes == rows"]),
    (["demo", "--target", "spi:/dev/x"], ["psc demo", "--target", "serial:PORT"]),
    (["nosuch"], ["psc:", "'nosuch'"]),
    (["program", "net.txt"], ["psc program", "NETWORK", "'mbv2'", ".onnx or .npz", "'net.txt'"]),
    (["program", "--run", "modelsim"], ["psc program", "--run", "'modelsim'"]),
    (["program", "--target", "tiny", "--synth"], ["psc program", "--synth", "'tiny'"]),
    (["program", "--units"], ["psc program", "--units needs --synth"]),
    (["program", "--trace"], ["psc program", "--trace needs --run"]),
    (["build", "--board", "icebreaker", "--mode", "network"],
     ["psc build", "network mode is built for ulx3s", "'icebreaker'"]),
    (["program", "--board", "icebreaker"], ["psc program", "'icebreaker'", "--tile"]),
    (["build", "--board", "ulx3s", "--seed", "2", "--seeds", "3"],
     ["psc build", "--seed and --seeds are exclusive"]),
    (["build", "--board", "ulx3s", "--workers", "2"], ["psc build", "--workers needs --seeds"]),
])
def test_bad_options_are_one_line_and_exit_2(calls, capsys, argv, words):
    assert cli.main(argv) == 2
    _one_line_error(capsys, *words)
    assert calls == []          # refused before any handler ran


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["build", "--help"])
    assert stop.value.code == 0
    out = " ".join(capsys.readouterr().out.split())     # argparse wraps to the terminal
    for name, target in presets.BOARDS.items():
        assert f"{name}: {target}" in out


def test_program_prints_the_memory_map_and_footprint(capsys):
    """No simulation: the shipped digits network compiled for network mode on the UP5K build."""
    assert cli.main(["program", "--target", "ice40-up5k"]) == 0
    out = capsys.readouterr().out
    assert "(unrolled input)" in out and "activation memory: 1088 words" in out, out
    assert "29 commands" in out, out
    # 1111 weight blocks against the preset's 256-block buffer: a weight store
    assert "a weight store of 1111 beside the core's 256-block weight buffer" in out, out
