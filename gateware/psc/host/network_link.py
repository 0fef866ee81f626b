"""Host driver of network mode (:mod:`psc.hw.link.network_bridge`, protocol version 7).

Written like :mod:`psc.host.serial_link`, whose transport drivers (:func:`~psc.host.serial_link.drive`
over pyserial, the cocotb bench over simulated pins) run these generators too:

* :func:`engine_of` reads the engine's memories from the board's ID frame, so a
  :class:`~psc.host.program.Program` is checked against them
  (:meth:`~psc.host.program.Program.check_engine`) before anything is sent;
* :func:`network_image` makes the LOAD frames of the program's stores and its
  READY frame, with the program's identifier (the CRC-32 of its stores);
  :func:`load_exchange` sends them and checks, in the status frame, that the
  board holds it;
* :func:`infer_exchange` sends one input and reads its output words and the
  status: the run's cycles and compute cycles;
* :func:`network_session` does all three, loading only when the board does not
  already hold the program;
* :func:`link_program` compiles a network as it runs over a link.

A status that reports a corrupted or lost frame (``CRC_ERROR``, ``RX_ERROR``,
``BAD_OPCODE``), a refused load or an inference with no program is a
:class:`~psc.host.serial_link.LinkError` naming the flags.
"""

import zlib
from dataclasses import dataclass

from psc.config import CoreConfig
from psc.host.serial_link import LinkError, Read, Write, board_config, ping_exchange
from psc.hw.link.network_bridge import (COUNT_WIDTH, CRC, ENGINE_ID_FIELDS, FLAGS, OP,
                                        PROTOCOL_VERSION, STATUS_BYTES, io_bytes, load_bytes)
from psc.hw.network.engine import EngineConfig
from psc.model.checks import check_int

__all__ = ["link_program", "input_bytes", "engine_of", "frame", "NetworkImage",
           "network_image", "infer_frame", "parse_status", "status_exchange", "load_exchange", "infer_exchange",
           "network_session", "MAX_LOAD_WORDS", "TROUBLE"]

#: Words per LOAD frame: a frame with a bad CRC is resent whole, so keep them short.
MAX_LOAD_WORDS = 1024
#: Status flags that mean the board did not get what the host sent.
TROUBLE = ("CRC_ERROR", "RX_ERROR", "BAD_OPCODE", "LOAD_REFUSED")

_crc = CRC(data_width=8)


def _u(value, nbytes):
    return int(value).to_bytes(nbytes, "little")


def frame(body):
    """``body`` (opcode first) followed by its CRC, most significant byte first."""
    return bytes(body) + _crc.compute(bytes(body)).to_bytes(2, "big")


def link_program(net, config):
    """``net`` compiled for network mode on the build ``config`` as it runs over a link: a
    stem's input unrolled on chip only, where the build can (over the link the input's
    bytes cost more than the stem's cycles: the host sends the input as it is)."""
    from psc.host.program import compile_network
    return compile_network(net, config, unroll_input="chip")


def engine_of(ident, config=None):
    """The :class:`~psc.hw.network.EngineConfig` of a network-mode board from its parsed ID
    (:func:`psc.host.serial_link.ping_exchange`); its core is ``config`` checked against
    the board's digest, or the shipped preset with that digest."""
    if ident.get("version") != PROTOCOL_VERSION:
        raise LinkError(f"the board speaks protocol version {ident.get('version')}: tile "
                        f"mode, not network mode (build the network-mode bitstream)")
    core = board_config(ident, config)
    fields = {name: ident[name] for name, _ in ENGINE_ID_FIELDS}
    fields["given_sizes"] = bool(fields["given_sizes"])
    return EngineConfig(core, **fields)


def _store_frames(stores, engine_config):
    sizes = load_bytes(engine_config)
    out = []
    for sel, words in enumerate(stores):
        for at in range(0, len(words), MAX_LOAD_WORDS):
            chunk = words[at:at + MAX_LOAD_WORDS]
            body = bytearray([OP["LOAD"], sel]) + _u(at, 4) + _u(len(chunk), 2)
            for i, w in enumerate(chunk):
                check_int(f"store {sel} word {at + i}", w, 0, (1 << (8 * sizes[sel])) - 1)
                body += _u(w, sizes[sel])
            out.append(frame(body))
    return out


@dataclass(frozen=True)
class NetworkImage:
    """What the host sends to load a program and run it: the LOAD and READY ``frames``, the
    ``program`` identifier the board then reports, the counts of one inference (``n_in``
    beats, ``n_out`` words), ``in_bytes`` per input beat on the line and ``out_bytes``
    per output word."""
    frames: tuple
    program: int
    n_in: int
    n_out: int
    in_bytes: int
    out_bytes: int


def input_bytes(program, engine_config):
    """Bytes of each input beat on the line: those of the input's channels where it has
    fewer than ``rows`` (a beat's other values are padding), else the whole beat's."""
    cc = engine_config.core
    c = program.regions[program.net.input].shape[0]
    ib, _ = io_bytes(engine_config)
    return -(-c * cc.pe.act_width // 8) if c < cc.rows else ib


def network_image(program, engine_config):
    """The :class:`NetworkImage` of ``program`` for a board with ``engine_config``; raises
    :class:`~psc.host.program.NetworkFitError` unless the program fits it."""
    stores = _store_frames(program.store_words(engine_config), engine_config)
    pid = zlib.crc32(b"".join(stores)) or 1
    n_in, n_out = program.io_counts
    for name, n in (("input beats", n_in), ("output words", n_out)):
        if n >= 1 << COUNT_WIDTH:
            raise ValueError(f"the network's {n} {name} exceed the protocol's "
                             f"{(1 << COUNT_WIDTH) - 1}")
    in_bytes = input_bytes(program, engine_config)
    ready = frame(bytes([OP["READY"]]) + _u(pid, 4) + _u(n_in, 4) + _u(n_out, 4)
                  + _u(in_bytes, 1))
    return NetworkImage(tuple(stores) + (ready,), pid, n_in, n_out, in_bytes,
                        io_bytes(engine_config)[1])


def infer_frame(program, image, engine_config):
    """The INFER frame of one ``image``."""
    beats = program.input_beats(image)
    n_in, n_out = program.io_counts
    if len(beats) != n_in:
        raise ValueError(f"the image makes {len(beats)} input beats, the program takes {n_in}")
    ib, _ = io_bytes(engine_config)
    n = input_bytes(program, engine_config)
    # the bytes left out are the beats' padding channels, zero
    assert all(b >> (8 * n) == 0 for b in beats), "an input beat's padding is not zero"
    return frame(bytes([OP["INFER"]]) + _u(n_in, 4) + _u(n_out, 4) + _u(n, 1)
                 + b"".join(_u(b, ib)[:n] for b in beats))


def parse_status(data):
    """A network-mode status frame as a dict: ``flags`` (names set), ``program``,
    ``outputs``, ``cycles``, ``window`` (the cycles after the input was received),
    ``compute``."""
    data = bytes(data)
    if len(data) != STATUS_BYTES or data[0] != OP["STATUS"]:
        raise LinkError(f"bad status frame {data.hex()} (expected {STATUS_BYTES} bytes "
                        f"starting with 'S'): the link lost bytes")
    bits = int.from_bytes(data[1:3], "little")
    vals = [int.from_bytes(data[3 + 4 * i:7 + 4 * i], "little") for i in range(5)]
    return {"flags": {n for n, bit in FLAGS.items() if bits >> bit & 1}, "program": vals[0],
            "outputs": vals[1], "cycles": vals[2], "window": vals[3], "compute": vals[4]}


def status_exchange():
    """Generator: STATUS; returns the parsed status frame."""
    yield Write(bytes([OP["STATUS"]]))
    return parse_status((yield Read(STATUS_BYTES, "status frame")))


def _trouble(status, what):
    bad = sorted(status["flags"] & set(TROUBLE))
    if bad:
        raise LinkError(f"{what}: the board reports {', '.join(bad)} (a corrupted or lost "
                        f"frame); resend it")


def load_exchange(image):
    """Generator: load a :class:`NetworkImage` and check that the board holds it; returns
    the status."""
    for f in image.frames:
        yield Write(f)
    status = yield from status_exchange()
    _trouble(status, "loading the program")
    if "LOADED" not in status["flags"] or status["program"] != image.program:
        raise LinkError(f"the board does not hold the program after loading it "
                        f"(status {sorted(status['flags'])}, program {status['program']:#x}, "
                        f"expected {image.program:#x})")
    return status


def infer_exchange(infer, image):
    """Generator: one inference (``infer``, its frame) of the loaded :class:`NetworkImage`;
    returns ``{"words", "status"}`` (the output's lane words)."""
    n_out, ob = image.n_out, image.out_bytes
    yield Write(bytes(infer) + bytes([OP["STATUS"]]))
    raw = yield Read(n_out * ob, f"{n_out} output words")
    status = parse_status((yield Read(STATUS_BYTES, "status frame")))
    _trouble(status, "the inference")
    if "NOT_LOADED" in status["flags"]:
        raise LinkError("the board holds no program for this inference (it was reset, or "
                        "another program was loaded): load it again")
    if "ERROR" in status["flags"] or "DONE" not in status["flags"]:
        raise LinkError(f"the inference stopped early (status {sorted(status['flags'])})")
    words = [int.from_bytes(raw[i * ob:(i + 1) * ob], "little") for i in range(n_out)]
    return {"words": words, "status": status}


def network_session(program, images, config=None):
    """Generator: PING, the engine checked to hold ``program`` (nothing is sent otherwise),
    the program loaded unless the board already holds it, then every image; returns
    ``(outputs, statuses, loaded)``: the network's output per image, the status of each
    inference and whether the program was loaded."""
    if config is not None and not isinstance(config, CoreConfig):
        raise TypeError(f"config must be a psc.config.CoreConfig or None, not {config!r}")
    ident = yield from ping_exchange()
    ec = engine_of(ident, config or program.config)
    image = network_image(program, ec)
    status = yield from status_exchange()
    loaded = not ("LOADED" in status["flags"] and status["program"] == image.program)
    if loaded:
        yield from load_exchange(image)
    outputs, statuses = [], []
    for x in images:
        r = yield from infer_exchange(infer_frame(program, x, ec), image)
        outputs.append(program.output_from_words(r["words"]))
        statuses.append(r["status"])
    return outputs, statuses, loaded


def simulate_link(program, images, *, engine_config=None, divisor=4, frame_timeout=200,
                  out_fifo_depth=16, target="verilator", faults=False, idle_limit=None):
    """Run ``images`` in network mode through the UART pins of a simulated
    :class:`~psc.hw.link.network_bridge.NetworkBridge` (:mod:`psc.host.link_bench`): PING,
    the program loaded, then each image, driven by this module's generators.

    ``engine_config`` defaults to the smallest that holds the program
    (:meth:`~psc.host.program.Program.engine_config`); ``divisor`` is the UART's clock
    cycles per bit, ``out_fifo_depth`` the words of the bridge's output FIFO. With
    ``faults`` the bench also plays the faults it knows (see :mod:`psc.host.link_bench`). Returns the bench's result with ``outputs``, the
    network's output per image, added (and ``next``'s outputs in each fault).
    """
    from psc.host.sim import run_link_job
    from psc.hw.link.network_bridge import NetworkBridgeConfig
    ec = engine_config or program.engine_config()
    bc = NetworkBridgeConfig(ec, divisor=divisor, frame_timeout=frame_timeout,
                             out_fifo_depth=out_fifo_depth)
    xs = program.net.check_images(images)
    image = network_image(program, ec)
    bound = idle_limit or 4 * program.cycle_bound() + 100 * divisor
    job = {"divisor": divisor, "frame_timeout": frame_timeout, "idle_limit": int(bound),
           "load": [f.hex() for f in image.frames], "program": image.program,
           "n_in": image.n_in, "n_out": image.n_out, "in_bytes": image.in_bytes,
           "out_bytes": image.out_bytes,
           "infers": [infer_frame(program, x, ec).hex() for x in xs], "faults": bool(faults)}
    res = run_link_job(job, bc, target=target)["steps"][0]
    res["outputs"] = [program.output_from_words(r["words"]) for r in res["images"]]
    for fault in res.get("faults", {}).values():
        if "next" in fault:
            fault["next"]["output"] = program.output_from_words(fault["next"]["words"])
    return res
