# amaranth: UnusedElaboratable=no
"""UART (Amaranth simulator), the serial driver's framing, and the bridge bench on Icarus/Verilator.

* The UART: random bytes through the transmitter into the receiver over a
  wire, and a bit-level check of both against a Python model of 8N1.
* :mod:`psc.host.serial_link` against a fake transport: the ID frame and its
  digest check (a host planning for another build is refused, a host naming
  no build gets the shipped preset with the board's digest), the frames it
  writes for a plan, and ``run_layer(target="serial:...")``.
* ``tb/test_bridge.py``: the bridge + core + UART top driven through its
  pins by the same serial_link code: hosts configured for other builds are
  refused before any tile is sent, then a whole layer against psc.model.golden.
"""

import json
import random
import shutil
import uuid

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

import core_cases
from psc import golden
from psc.build_dir import build_root
from psc import host
from psc.host import sim
from psc.host import serial_link
from psc.hw.link.bridge import (Bridge, BridgeConfig, DIGEST_ONLY_FIELDS, FLAGS, ID_BYTES, OP,
                                PROTOCOL_VERSION, beat_bytes, id_frame)
from psc.presets import PRESETS
from psc.hw.link.uart import UARTConfig, UARTReceiver, UARTTransmitter, divisor_for

DIV = 5   # odd, so the receiver's half-bit wait is rounded


def _frame_bits(byte):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [1]


def test_uart_loopback_random_bytes():
    """Random bytes TX -> wire -> RX, with random gaps; every byte arrives, in order."""
    m = Module()
    m.submodules.tx = tx = UARTTransmitter(DIV)
    m.submodules.rx = rx = UARTReceiver(DIV)
    m.d.comb += rx.rx.eq(tx.tx)
    rng = random.Random(3)
    data = [rng.randrange(256) for _ in range(40)] + [0x00, 0xFF, 0x55, 0xAA]
    got = []

    async def send(ctx):
        for b in data:
            for _ in range(rng.choice([0, 0, 1, 17])):
                await ctx.tick()
            ctx.set(tx.i.payload, b)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
            ctx.set(tx.i.valid, 0)

    async def recv(ctx):
        ctx.set(rx.o.ready, 1)
        while len(got) < len(data):
            await ctx.tick()
            if ctx.get(rx.o.valid):
                got.append(ctx.get(rx.o.payload))
            assert not ctx.get(rx.framing_error)
            assert not ctx.get(rx.overrun)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(recv)
    sim.run_until(1e-6 * 10 * DIV * (len(data) + 4) * 3)
    assert got == data


def test_uart_tx_bit_timing():
    """The transmitter's line, sampled every cycle, is exactly 8N1 at ``DIV`` cycles per bit."""
    tx = UARTTransmitter(DIV)
    data = [0xA5, 0x01, 0x80, 0xFF]
    line = []

    async def feed(ctx):
        ctx.set(tx.i.valid, 1)
        for b in data:
            ctx.set(tx.i.payload, b)
            await ctx.tick().until(tx.i.ready)
        ctx.set(tx.i.valid, 0)
        await ctx.tick().repeat(10 * DIV * len(data) + 5)

    async def sample(ctx):
        while True:
            line.append(ctx.get(tx.tx))
            await ctx.tick()

    sim = Simulator(tx)
    sim.add_clock(1e-6)
    sim.add_testbench(feed)
    sim.add_testbench(sample, background=True)
    sim.run()
    expect = []
    for b in data:
        for bit in _frame_bits(b):
            expect += [bit] * DIV
    start = line.index(0)
    assert start <= 2 and all(v == 1 for v in line[:start])
    # back to back: no idle cycles between frames
    assert line[start:start + len(expect)] == expect
    assert all(v == 1 for v in line[start + len(expect):])


def test_reply_transmitter_sends_each_frame_byte_exact():
    """The ReplyTransmitter's line into a receiver: words (little-endian), the ID frame and the
    status frame arrive byte for byte, a reply started while the line is idle and one queued
    behind a word alike; the status sent is the one held from the reply's acknowledge on (a
    bridge captures it then), not the one before."""
    from psc.hw.link.framing import ReplyTransmitter
    ident = bytes(range(0x40, 0x40 + 11))
    status = bytes([0x53, 0x11, 0x22, 0x33, 0x44, 0x55])
    m = Module()
    m.submodules.tx = tx = ReplyTransmitter(DIV, 3, ident, len(status), 8)
    m.submodules.rx = rx = UARTReceiver(DIV)
    m.d.comb += [rx.rx.eq(tx.tx), rx.o.ready.eq(1)]
    got = []

    async def drive(ctx):
        for reply in (1, 2):                      # the line idle: each starts at once
            ctx.set(tx.reply, reply)
            ctx.set(tx.status, 0x0F0E0D0C0B0A)      # what a bridge holds before the answer
            await ctx.tick().until(tx.reply_ack)
            # a bridge captures its status as the reply is acknowledged
            ctx.set(tx.status, int.from_bytes(status, "little"))
            ctx.set(tx.reply, 0)
            await ctx.tick().repeat(10 * DIV * len(ident) + 20)
        ctx.set(tx.expect, 1)
        ctx.set(tx.arm, 1)
        await ctx.tick()
        ctx.set(tx.arm, 0)
        ctx.set(tx.words.payload, 0xC0B0A0)
        ctx.set(tx.words.valid, 1)
        await ctx.tick().until(tx.words.ready)
        ctx.set(tx.words.valid, 0)
        ctx.set(tx.reply, 2)                      # queued behind the word's bytes
        await ctx.tick().until(tx.reply_ack)
        ctx.set(tx.reply, 0)

    async def recv(ctx):
        while True:
            await ctx.tick()
            if ctx.get(rx.o.valid):
                got.append(ctx.get(rx.o.payload))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(recv, background=True)
    sim.run_until(1e-6 * 10 * DIV * (2 * len(ident) + 3 + len(status) + 10) + 1e-3)
    assert bytes(got) == ident + status + bytes([0xA0, 0xB0, 0xC0]) + status


def test_uart_rx_from_model_with_framing_error():
    """A Python 8N1 driver (with a little clock skew) feeds the receiver; a bad stop bit is flagged."""
    rx = UARTReceiver(DIV)
    rng = random.Random(9)
    data = [rng.randrange(256) for _ in range(24)]
    got, errors = [], []

    async def drive(ctx):
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(7)
        for i, b in enumerate(data):
            bits = _frame_bits(b)
            if i == 10:
                bits[-1] = 0     # a broken stop bit: this byte must not come out
            for bit in bits:
                ctx.set(rx.rx, bit)
                await ctx.tick().repeat(DIV)
            ctx.set(rx.rx, 1)
            await ctx.tick().repeat(rng.choice([1, 2, 3, 2 * DIV]))
        await ctx.tick().repeat(3 * DIV)

    async def watch(ctx):
        ctx.set(rx.o.ready, 1)
        while True:
            await ctx.tick()
            if ctx.get(rx.o.valid):
                got.append(ctx.get(rx.o.payload))
            if ctx.get(rx.framing_error):
                errors.append(len(got))

    sim = Simulator(rx)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert got == data[:10] + data[11:]
    assert errors == [10]


def test_uart_config_checks():
    with pytest.raises(ValueError, match=r"divisor must be an integer in \[4, .*not 3"):
        UARTConfig(3)
    with pytest.raises(ValueError, match="baud must be at most"):
        divisor_for(12_000_000, 6_000_000)
    with pytest.raises(ValueError, match="off the nearest rate"):
        divisor_for(12_000_000, 2_500_000)
    assert divisor_for(12_000_000, 1_000_000) == 12
    assert divisor_for(25_000_000, 115_200) == 217


# --- serial_link framing and run_layer dispatch (fake transport, no simulator) --------------------

#: The simulated board: the ``tiny`` preset, whose small buffers make the layer need
#: several tiles (and ``keep``); a preset, so a host that names no build finds it.
SIM_CONFIG = PRESETS["tiny"]
#: Builds a host may wrongly plan for: they differ from SIM_CONFIG in the packing
#: (depthwise mapping) or the latency (read register), not in the array's size.
WRONG_CONFIGS = (SIM_CONFIG.replace(depthwise="pixels"), SIM_CONFIG.replace(read_register=True))
SIM_DIVISOR = 4
SIM_FRAME_TIMEOUT = 100    # bit times
TOPLEVEL = "psc_bridge_sim"


class FakeBoard:
    """A transport that answers like a bridge: the ID of ``config``, and for every tile
    ``n_out`` output beats numbered 1, 2, ... and a status frame. Records what was written."""

    def __init__(self, config, divisor=12, ident=None):
        self.config = config
        self.ident = ident or id_frame(config, divisor)
        self.written = bytearray()
        self.pending = bytearray()
        self.closed = False
        self.beat = 0
        self._buf = bytearray()

    def write(self, data):
        self.written += data
        self._buf += data
        nb = beat_bytes(self.config)
        while self._buf:
            op = self._buf[0]
            if op == OP["PING"]:
                self.pending += self.ident
                del self._buf[:1]
            elif op == OP["CFG"]:
                if len(self._buf) < 5 + nb["cfg"]:
                    return
                self.n_out = int.from_bytes(self._buf[1:5], "little")
                del self._buf[:5 + nb["cfg"]]
            elif op in (OP["WEIGHTS"], OP["PARAMS"], OP["ACTS"]):
                key = {OP["WEIGHTS"]: "weights", OP["PARAMS"]: "params", OP["ACTS"]: "acts"}[op]
                if len(self._buf) < 3:
                    return
                n = int.from_bytes(self._buf[1:3], "little")
                if len(self._buf) < 3 + n * nb[key]:
                    return
                del self._buf[:3 + n * nb[key]]
            elif op == OP["STATUS"]:
                for _ in range(self.n_out):
                    self.beat += 1
                    self.pending += self.beat.to_bytes(nb["out"], "little")
                self.pending += bytes([OP["STATUS"], 1 << FLAGS["DONE"]]) + \
                    self.n_out.to_bytes(4, "little") + bytes(range(1, 13))
                del self._buf[:1]
            else:
                raise AssertionError(f"bad opcode {op}")

    def read(self, n):
        out, self.pending = bytes(self.pending[:n]), self.pending[n:]
        return out

    def close(self):
        self.closed = True


def _small_layer(seed=3):
    return core_cases.CASES["std_k3_s1_p1"](np.random.default_rng(seed))


def test_encode_tile_frames_the_plan():
    """The bytes of a tile are exactly the plan's ints, little-endian, in the documented frames."""
    layer = _small_layer()
    plan = host.plan_layer(**layer, config=SIM_CONFIG)
    nb = beat_bytes(SIM_CONFIG)
    tile = plan.tiles[0]
    data = serial_link.encode_tile(tile, SIM_CONFIG)
    expect = bytes([OP["CFG"]]) + tile.n_out.to_bytes(4, "little") + tile.cfg.to_bytes(nb["cfg"], "little")
    for op, key, beats in ((OP["WEIGHTS"], "weights", tile.weights), (OP["PARAMS"], "params", tile.params),
                           (OP["ACTS"], "acts", tile.acts)):
        expect += bytes([op]) + len(beats).to_bytes(2, "little")
        expect += b"".join(b.to_bytes(nb[key], "little") for b in beats)
    assert data == expect + bytes([OP["STATUS"]])


def test_id_check_names_the_difference():
    other = SIM_CONFIG.replace(rows=2, fmap_depth=128)
    ident = serial_link.parse_id(id_frame(other, 4))
    with pytest.raises(serial_link.LinkError, match=r"rows: board 2, host 4; fmap_depth: board 128, host 64"):
        serial_link.check_id(ident, SIM_CONFIG)
    assert serial_link.check_id(serial_link.parse_id(id_frame(SIM_CONFIG, 4)), SIM_CONFIG) is SIM_CONFIG
    with pytest.raises(serial_link.LinkError, match="no PSC bridge"):
        serial_link.parse_id(b"\0" * ID_BYTES)
    old = bytearray(id_frame(SIM_CONFIG, 4))
    old[4] = PROTOCOL_VERSION - 1
    with pytest.raises(serial_link.LinkError, match=f"protocol version {PROTOCOL_VERSION - 1}"):
        serial_link.parse_id(bytes(old))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_id_frame_carries_every_field(name):
    """The ID frame's readable fields spell the whole configuration, and its digest is the
    configuration's; the digest finds the preset, itself."""
    config = PRESETS[name]
    ident = serial_link.parse_id(id_frame(config, 12))
    assert ident.pop("digest") == config.digest() and ident.pop("divisor") == 12
    assert ident.pop("version") == PROTOCOL_VERSION
    assert ident == {k: v for k, v in {**config.pe.to_dict(), **config.to_dict()}.items()
                     if k != "pe" and k not in DIGEST_ONLY_FIELDS}
    assert serial_link.preset_for_digest(config.digest()) == (name, config)
    assert serial_link.board_config(serial_link.parse_id(id_frame(config, 12))) is config


@pytest.mark.parametrize("other", WRONG_CONFIGS, ids=["depthwise", "read_register"])
def test_id_check_refuses_fields_beyond_the_array_size(other):
    """A board built with another depthwise mapping or read register is refused, naming the
    field and the preset the board runs, though lanes, rows, widths and depths all agree."""
    ident = serial_link.parse_id(id_frame(SIM_CONFIG, 4))
    field = "depthwise" if other.pe.depthwise != SIM_CONFIG.pe.depthwise else "read_register"
    board, host_value = ((SIM_CONFIG.pe.depthwise, other.pe.depthwise) if field == "depthwise"
                         else (SIM_CONFIG.read_register, other.read_register))
    with pytest.raises(serial_link.LinkError,
                       match=rf"{field}: board {board!r}, host {host_value!r}; the board runs "
                             rf"preset 'tiny'"):
        serial_link.board_config(ident, other)


def test_digest_lookup_knows_the_network_mode_cores():
    """A board's network-mode core is looked up by its digest like a preset."""
    from psc.presets import board_core, shipped_cores
    core = board_core("ulx3s", "network")
    assert serial_link.preset_for_digest(core.digest()) == ("ulx3s network", core)
    assert serial_link.preset_for_digest(PRESETS["ecp5-25k"].digest())[0] == "ecp5-25k"
    assert len({c.digest() for c in shipped_cores().values()}) == len(shipped_cores())


def test_digest_lookup_refuses_an_unknown_build():
    """With no configuration, a board whose digest is no preset's is refused (never a
    configuration guessed from the readable fields), before any tile is sent."""
    unknown = SIM_CONFIG.replace(requant_mult_bits=4)
    assert all(unknown.digest() != c.digest() for c in PRESETS.values())
    msg = rf"board reports build digest {unknown.digest():#010x}, which matches no shipped core.*pass config="
    with pytest.raises(serial_link.LinkError, match=msg):
        serial_link.preset_for_digest(unknown.digest())
    fake = FakeBoard(unknown, ident=id_frame(unknown, 4))
    layer = _small_layer()
    plan = host.plan_layer(**layer, config=SIM_CONFIG)
    with pytest.raises(serial_link.LinkError, match=msg):
        serial_link.drive(serial_link.session([plan.tiles]), fake)
    assert bytes(fake.written) == bytes([OP["PING"]])
    # given the configuration it was built with, the same board is driven
    assert serial_link.SerialLink(FakeBoard(unknown), unknown).config is unknown


def test_run_layer_serial_target_uses_serial_link(monkeypatch):
    """run_layer(target="serial:...") plans with host.plan_layer, sends it through serial_link,
    and reassembles the board's beats with LayerPlan.assemble."""
    fakes = []

    def fake_open(port, baud, timeout=serial_link.DEFAULT_TIMEOUT):
        assert (port, baud) == ("/dev/ttyUSB1", 115200)
        fakes.append(FakeBoard(SIM_CONFIG))
        return fakes[-1]

    monkeypatch.setattr(serial_link, "open_transport", fake_open)
    layer = _small_layer()
    y, counters = host.run_layer(**layer, target="serial:/dev/ttyUSB1@115200")   # config from the ID
    fake, = fakes
    assert fake.closed
    plan = host.plan_layer(**layer, config=SIM_CONFIG)
    # every tile, as planned, after one PING
    assert bytes(fake.written) == bytes([OP["PING"]]) + b"".join(
        serial_link.encode_tile(t, SIM_CONFIG) for t in plan.tiles)
    # the fake numbered its beats 1, 2, ...: reassembly is the plan's own
    beats, res = 0, []
    for t in plan.tiles:
        res.append({"outputs": list(range(beats + 1, beats + 1 + t.n_out))})
        beats += t.n_out
    assert np.array_equal(y, plan.assemble(res))
    assert counters["tiles"] == len(plan.tiles) > 1
    assert counters["total"] == len(plan.tiles) * int.from_bytes(bytes(range(1, 5)), "little")
    # a board built differently is refused before any tile is sent
    monkeypatch.setattr(serial_link, "open_transport",
                        lambda *a, **k: FakeBoard(SIM_CONFIG, ident=id_frame(SIM_CONFIG.replace(lanes=2), 4)))
    with pytest.raises(serial_link.LinkError, match="lanes: board 2, host 4"):
        host.run_layer(**layer, config=SIM_CONFIG, target="serial:/dev/ttyUSB1")
    with pytest.raises(ValueError, match="serial:PORT"):
        host.run_layer(**layer, target="spi:/dev/x")


def test_drive_times_out_on_silence():
    class Silent:
        def write(self, data):
            pass

        def read(self, n):
            return b""
    with pytest.raises(serial_link.LinkError, match="timeout reading the ID frame: got 0 of 5"):
        serial_link.drive(serial_link.ping_exchange(), Silent())


# --- the bridge top on Icarus and Verilator, through its UART pins --------------------------------

def _build_sim(target):
    """Verilog of Bridge(SIM_CONFIG, divisor 4) and its simulator build, in <build>/bridge/<target>/."""
    from amaranth.back import verilog
    base = build_root() / "bridge" / SIM_CONFIG.key() / target
    bc = BridgeConfig(core=SIM_CONFIG, divisor=SIM_DIVISOR, frame_timeout=SIM_FRAME_TIMEOUT)
    src = verilog.convert(Bridge(bc), name=TOPLEVEL, emit_src=False)
    if target == "icarus":
        src = sim.icarus_time_zero(src)
    vfile = base / f"{TOPLEVEL}.v"
    sim.write_if_changed(vfile, src)
    return sim.build(target, [vfile], TOPLEVEL, base / "sim", log_file=base / "build.log"), base


def _run_bench(target, plans, refused=None, wrong_configs=()):
    runner, base = _build_sim(target)
    run_dir = base / "runs" / uuid.uuid4().hex[:12]
    run_dir.mkdir(parents=True)
    job = {"config": SIM_CONFIG.to_dict(), "wrong_configs": [c.to_dict() for c in wrong_configs],
           "divisor": SIM_DIVISOR, "plans": [[t.as_json() for t in tiles] for tiles in plans],
           "refused": refused.as_json() if refused else None,
           "frame_timeout": SIM_FRAME_TIMEOUT,
           # a WEIGHTS frame cut short after 3 of its 5 x 32 bytes
           "partial": bytes([OP["WEIGHTS"], 5, 0, 1, 2, 3]).hex(),
           "bad_opcode": ord("Z")}
    assert ord("Z") not in OP.values()
    (run_dir / "job.json").write_text(json.dumps(job))
    result = run_dir / "result.json"
    try:
        sim.run(runner, target, TOPLEVEL, "tb.test_bridge", run_dir, log_file=run_dir / "sim.log",
                env={"PSC_JOB": run_dir / "job.json", "PSC_RESULT": result})
    except sim.SimulationFailed:
        if not result.exists():
            raise
    res = json.loads(result.read_text())
    if res.get("failure"):
        raise AssertionError(f"bench failure: {res['failure']}; log: {run_dir / 'sim.log'}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return res


@pytest.mark.parametrize("target", ["icarus", "verilator"])
def test_bridge_layer_through_uart_pins(target):
    """Hosts planning for another build (depthwise mapping, read register) are refused after
    their PING, before any tile is sent. Then a whole layer (8 channels, 6x6, 3x3, several
    tiles) through the UART pins of the bridge top, driven by psc.host.serial_link with the
    board's preset found by its digest, equals psc.model.golden; a refused command is
    reported (ERROR, DROPPED, SHORT) and padded, and the link still answers afterwards;
    so it does after a frame cut short (frame timeout)."""
    layer = _small_layer()
    plan = host.plan_layer(**layer, config=SIM_CONFIG)
    assert len(plan.tiles) > 1 and any(t.fields["keep"] for t in plan.tiles)
    bad_fields = dict(plan.tiles[0].fields, k=2, pad_top=0, pad_left=0)   # kernel 2: refused
    from psc.hw.core import config_layout
    from psc.model.packing import pack_payload
    refused = host.Tile(cfg=pack_payload(config_layout(SIM_CONFIG), bad_fields),
                        weights=plan.tiles[0].weights[:3], params=plan.tiles[0].params[:1],
                        acts=plan.tiles[0].acts[:2], n_out=3, fields=bad_fields)
    res = _run_bench(target, [plan.tiles], refused, WRONG_CONFIGS)
    for wrong, field in zip(res["wrong"], ("depthwise", "read_register")):
        assert wrong["written"] == 1, wrong          # the PING, no tile
        assert wrong["error"] and f"{field}: board" in wrong["error"] \
            and "the board runs preset 'tiny'" in wrong["error"], wrong["error"]
    tiles = res["results"][0]
    for r in tiles:
        assert r["done"] and not r["error"] and r["flags"] == ["DONE"], r["flags"]
        assert r["outputs_real"] == len(r["outputs"])
        # the counters arrive in their fields: busy cycles cover compute and stall cycles
        assert r["total"] >= r["compute"] + r["stall"] and r["compute"] > 0
    y = plan.assemble(tiles)
    acc = golden.psc_conv2d(layer["x"], layer["w_pos"], layer["w_neg"], layer["bias"],
                            stride=layer["stride"], padding=layer["padding"], groups=layer["groups"])
    ref = golden.requantize(acc, layer["mult"], layer["shift"], relu=layer["relu"])
    bad = np.argwhere(y != ref)
    assert not len(bad), f"{len(bad)} of {ref.size} outputs differ; first at {tuple(bad[0])}"
    # every MAC beat of the layer entered the array once
    assert sum(r["compute"] for r in tiles) == 6 * 6 * 2 * 9 * 2
    rf = res["refused"]
    assert rf["error"] and set(rf["flags"]) == {"ERROR", "DONE", "DROPPED", "SHORT"}
    assert rf["outputs"] == [0, 0, 0] and rf["outputs_real"] == 0
    assert serial_link.check_id(res["ident_after"], SIM_CONFIG) is SIM_CONFIG
    assert res["framing_errors"] == 0
    # a frame cut short is abandoned after the frame timeout; the next PING is understood
    assert serial_link.board_config(res["ident_after_partial"]) is SIM_CONFIG
    flags = set(res["status_after_partial"]["flags"])
    assert "RX_ERROR" in flags and "BAD_OPCODE" not in flags
    # an unknown opcode is flagged once (the status that reports it clears it); PING still works
    assert set(res["status_after_bad_opcode"]["flags"]) >= {"BAD_OPCODE"}
    assert "RX_ERROR" not in res["status_after_bad_opcode"]["flags"]
    assert serial_link.board_config(res["ident_after_bad_opcode"]) is SIM_CONFIG


def test_a_board_without_early_weights_is_refused_by_its_digest():
    """``early_weights`` is not among the ID frame's readable fields (it changes no beat):
    a host whose configuration differs from the board's only there is refused by the digest,
    naming the preset the board runs."""
    board = PRESETS["ecp5-25k"]
    host = board.replace(early_weights=False)
    ident = serial_link.parse_id(id_frame(board, 4))
    with pytest.raises(serial_link.LinkError,
                       match=r"no readable field differs; the board runs preset 'ecp5-25k'"):
        serial_link.board_config(ident, host)
