"""Network mode over the UART (protocol version 7): the host's frames and ID parsing, and
the network bridge (psc.hw.link.network_bridge) driven through its UART pins by the host's
own generators (psc.host.network_link) under Verilator: a program loaded once, inferences
bit-exact with the golden network, and each fault answered with a clear status and
followed by a correct inference."""

import time

import numpy as np
import pytest

from psc.host import network_link as nl
from psc.host import serial_link
from psc.host.program import compile_network
from psc.hw.link import bridge, network_bridge
from psc.presets import PRESETS
from core_cases import simulable
from test_engine import conv_net


def _program(name="tiny", seed=1):
    rng = np.random.default_rng(seed)
    net = conv_net(rng)
    return compile_network(net, simulable(name)), rng


def test_frames_end_with_their_crc():
    """Every frame's CRC is the catalogue's CRC-16/CCITT-FALSE of the frame, sent most
    significant byte first (the residue check of amaranth.lib.crc.Processor)."""
    body = b"123456789"
    assert nl.frame(body) == body + bytes([0x29, 0xB1])
    prog, rng = _program()
    ec = prog.engine_config()
    image = nl.network_image(prog, ec)
    n_in, n_out = prog.io_counts
    assert (image.n_in, image.n_out) == (n_in, n_out) and image.program
    ready = image.frames[-1]
    assert ready[0] == network_bridge.OP["READY"] and len(ready) == 1 + 13 + 2
    infer = nl.infer_frame(prog, rng.integers(-128, 128, size=prog.net.input_shape), ec)
    ib, _ = network_bridge.io_bytes(ec)
    # 2 input channels on 4 rows: a beat's 2 bytes of padding stay off the line
    assert (ib, image.in_bytes, ready[-3]) == (4, 2, 2)
    assert len(infer) == 1 + 9 + n_in * image.in_bytes + 2 and infer[9] == 2
    # the identifier follows the stores: another program has another one
    other, _ = _program(seed=2)
    assert nl.network_image(other, other.engine_config()).program != image.program


def test_id_of_a_network_board():
    """A version 7 ID carries the engine's memories: the host rebuilds its EngineConfig; a
    tile-mode board is refused by network mode and a network-mode board by tile mode."""
    prog, _ = _program()
    ec = prog.engine_config()
    ident = serial_link.parse_id(network_bridge.id_frame(ec, 7))
    assert ident["version"] == network_bridge.PROTOCOL_VERSION and ident["divisor"] == 7
    assert nl.engine_of(ident) == ec     # the tiny preset, found by its digest
    streamed = prog.engine_config(weight_store=True)
    assert streamed.weight_store_depth and streamed != ec
    assert nl.engine_of(serial_link.parse_id(network_bridge.id_frame(streamed, 7))) == streamed
    tile = serial_link.parse_id(bridge.id_frame(PRESETS["tiny"], 7))
    with pytest.raises(serial_link.LinkError, match="tile mode, not network mode"):
        nl.engine_of(tile)
    gen = serial_link.session([[]])
    next(gen)
    gen.send(None)
    frame = network_bridge.id_frame(ec, 7)
    gen.send(frame[:serial_link.ID_HEADER_BYTES])
    with pytest.raises(serial_link.LinkError, match="network mode"):
        gen.send(frame[serial_link.ID_HEADER_BYTES:])


def test_a_program_too_big_for_the_board_is_refused_before_anything_is_sent():
    prog, _ = _program()
    small = prog.engine_config().__class__(prog.config, act_depth=8)
    gen = nl.network_session(prog, [])
    next(gen)
    gen.send(None)
    frame = network_bridge.id_frame(small, 7)
    gen.send(frame[:serial_link.ID_HEADER_BYTES])
    with pytest.raises(Exception, match="activation words"):
        gen.send(frame[serial_link.ID_HEADER_BYTES:])


def test_network_mode_through_the_uart_pins():
    """The tiny build's network bridge under Verilator: PING, the program loaded, two
    inferences equal to the golden network; then an inference before any load, a
    corrupted input byte (CRC_ERROR), a truncated INFER (RX_ERROR, its run aborted), a
    reset in the middle of an inference (the program forgotten: NOT_LOADED, then loaded
    again), a reload while idle and a load with a word for no store (LOAD_REFUSED), each
    followed by a correct inference."""
    prog, rng = _program()
    images = rng.integers(-128, 128, size=(2,) + prog.net.input_shape)
    want = prog.net.run(images)
    res = nl.simulate_link(prog, images, faults=True)
    assert res["ident"]["version"] == network_bridge.PROTOCOL_VERSION and res["framing_errors"] == 0
    assert "LOADED" in res["load"]["status"]["flags"]
    for i, (out, r) in enumerate(zip(res["outputs"], res["images"])):
        np.testing.assert_array_equal(out, want[i], err_msg=f"image {i}")
        status = r["status"]
        assert status["flags"] == ["DONE", "LOADED"], status
        assert status["outputs"] == prog.io_counts[1]
        assert 0 < status["compute"] < status["window"] < status["cycles"] < r["cycles"]
    f = res["faults"]
    assert "holds no program" in f["before_load"]["error"]
    assert "NOT_LOADED" in f["before_load"]["status"]["flags"]
    assert "CRC_ERROR" in f["corrupted"]["error"]
    assert "RX_ERROR" in f["truncated"]["status"]["flags"]
    assert "holds no program" in f["reset"]["error"]
    assert f["reset"]["status"]["program"] == 0
    assert "LOAD_REFUSED" in f["refused"]["error"]
    assert "LOADED" not in f["refused"]["status"]["flags"]     # the spoilt load not taken
    for name in ("corrupted", "truncated", "reset", "reloaded", "refused"):
        np.testing.assert_array_equal(f[name]["next"]["output"],
                                      want[-1 if name == "reloaded" else 0], err_msg=name)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "16"])
def test_a_bad_output_fifo_depth_is_refused(bad):
    with pytest.raises(ValueError, match="out_fifo_depth must be an integer >= 0, not "):
        network_bridge.NetworkBridgeConfig(_program()[0].engine_config(), out_fifo_depth=bad)


@pytest.mark.parametrize("depth", [0, pytest.param(1, marks=pytest.mark.soak)])
def test_network_mode_with_a_small_output_fifo_or_none(depth):
    """The bridge without its output FIFO (the engine waits for the line) and with one word
    of it (the engine waits for the FIFO): the same outputs, every word sent once."""
    prog, rng = _program()
    images = rng.integers(-128, 128, size=(2,) + prog.net.input_shape)
    assert prog.io_counts[1] > 1
    want = prog.net.run(images)
    res = nl.simulate_link(prog, images, out_fifo_depth=depth)
    for i, (out, r) in enumerate(zip(res["outputs"], res["images"])):
        np.testing.assert_array_equal(out, want[i], err_msg=f"image {i}")
        assert r["status"]["flags"] == ["DONE", "LOADED"], r["status"]
        assert r["status"]["outputs"] == prog.io_counts[1]


class _Pieces:
    """A host transport that writes each frame in two pieces, its first 5 bytes (not yet an
    INFER's head, so the board waits idle) and then, after a pause, the rest."""

    def __init__(self, transport):
        self.transport = transport

    def write(self, data):
        self.transport.write(data[:5])
        self.transport.flush()
        time.sleep(0.2)
        if data[5:]:
            self.transport.write(data[5:])

    def flush(self):
        self.transport.flush()

    def read(self, n):
        return self.transport.read(n)

    @property
    def in_waiting(self):
        return self.transport.in_waiting


def test_psc_network_run_on_a_simulated_board(monkeypatch):
    """``psc.network.run(target="serial:socket://...")`` on a simulated board (the network
    bridge under Verilator, its serial port a TCP socket opened by pyserial): the host
    code finds protocol 7, loads the program, runs the images on chip, equal to the golden
    network; a second run finds the program already loaded. The exchanges' cycles come
    back from the bench: one INFER exchange per image, longer than the engine's run,
    with each of the host's frames reaching the socket in two pieces a pause apart (as
    TCP may deliver it), which must not split an exchange."""
    from psc import network
    from psc.host.board_sim import SimulatedBoard
    drive = serial_link.drive
    monkeypatch.setattr(serial_link, "drive",
                        lambda gen, transport, **kw: drive(gen, _Pieces(transport), **kw))
    prog, rng = _program()
    net, cc = prog.net, prog.config
    images = rng.integers(-128, 128, size=(2,) + net.input_shape)
    bc = network_bridge.NetworkBridgeConfig(prog.engine_config(), divisor=8,
                                            frame_timeout=1000)
    with SimulatedBoard(bc) as board:
        first = network.run(net, images, board.target, config=cc)
        second = network.run(net, images[:1], board.target, config=cc, mode="network")
    want = net.run(images)
    np.testing.assert_array_equal(first.outputs, want)
    np.testing.assert_array_equal(second.outputs, want[:1])
    assert first.totals["loaded"] and not second.totals["loaded"]
    assert {row["where"] for row in first.layers} == {"chip"}
    as_run = nl.link_program(net, cc)
    size = len(nl.infer_frame(as_run, images[0], bc.engine)) + 1
    infers = [t for t in board.turns if t["in"] == size]
    assert len(infers) == 3
    assert all(t["end"] - t["start"] > first.totals["cycles"] for t in infers)


def test_psc_network_run_in_network_mode_on_the_simulated_engine():
    """``mode="network"`` on a simulator runs the compiled program on the network engine;
    its totals carry the engine's cycles and those after the input; on ``"golden"`` the
    mode is refused."""
    from psc import network
    prog, rng = _program()
    images = rng.integers(-128, 128, size=(1,) + prog.net.input_shape)
    run = network.run(prog.net, images, "verilator", config=prog.config, mode="network")
    np.testing.assert_array_equal(run.outputs, prog.net.run(images))
    t = run.totals
    assert 0 < t["compute"] < t["window"] <= t["cycles"] and t["utilisation"] > 0
    with pytest.raises(ValueError, match="mode 'network' runs on a simulator or a board"):
        network.run(prog.net, images, "golden", mode="network")
    with pytest.raises(ValueError, match="mode must be one of"):
        network.run(prog.net, images, "golden", mode="tiles")
