"""Host driver of the UART bridge (:mod:`psc.hw.link.bridge`): runs :func:`psc.host.plan_layer` tiles on a board.

The protocol logic is written once, *sans I/O*, as generators
(:func:`ping_exchange`, :func:`tile_exchange`, :func:`run_tiles`,
:func:`session`) that yield
:class:`Write` and :class:`Read` requests and receive the bytes read. Two
drivers run them:

* :func:`drive` over any blocking transport with ``write(bytes)`` and
  ``read(n)`` (pyserial's ``Serial``, or a fake in tests);
* the cocotb bench ``tb/test_bridge.py`` drives the same generators over the
  simulated UART pins of the board top.

So the simulated and the real link run the very same framing, ID check and
result parsing. The tiles are the ones :func:`psc.host.plan_layer` makes
(its packed ints are the beats); the outputs are reassembled by
:meth:`psc.host.LayerPlan.assemble`, as for the simulators.

The ID check (:func:`board_config`): the board reports the digest of its
whole core configuration (:meth:`psc.config.CoreConfig.digest`). A host
that plans for a configuration must have the same digest, or it is refused
before any tile is sent (the readable fields of the ID name what differs);
a host that names none runs the shipped core (:func:`psc.presets.shipped_cores`)
with the board's digest, and refuses a board that runs none of them. The
host never builds a configuration from the readable fields: a build that
differs in something they do not carry would be driven with the wrong
packing.

Flow control (see :mod:`psc.hw.link.bridge`): one tile at a time; the frames of a
tile (CFG, WEIGHTS, PARAMS, ACTS, STATUS) are written in one go, then its
``n_out`` output beats and the status frame are read before the next tile.
"""

import os
from dataclasses import dataclass

from psc.config import DEPTHWISE_MODES, FMAP_RAMS, MULTIPLIERS, CoreConfig
from psc.hw.link.bridge import (FLAGS, ID_BYTES, ID_FIELDS, ID_HEADER_BYTES, ID_MAGIC,
                                MAX_FRAME_BEATS, OP, PROTOCOL_VERSION, STATUS_BYTES, beat_bytes,
                                id_frame)
from psc.hw.link.network_bridge import ENGINE_ID_FIELDS, ID_BYTES as NETWORK_ID_BYTES
from psc.hw.link.network_bridge import PROTOCOL_VERSION as NETWORK_VERSION
from psc.model.checks import BadTypeError, check_int, check_real, show
from psc.presets import DEFAULT_BAUD, PRESETS, shipped_cores

__all__ = ["LinkError", "Write", "Read", "parse_id", "preset_for_digest", "check_id",
           "board_config", "encode_tile", "parse_status", "ping_exchange", "tile_exchange",
           "run_tiles", "session", "drive", "SerialLink", "parse_target", "check_port",
           "open_transport",
           "DEFAULT_BAUD", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 10.0


class LinkError(RuntimeError):
    """The board did not answer as the protocol says (timeout, wrong ID, bad frame)."""


@dataclass(frozen=True)
class Write:
    """Request: send ``data`` to the board."""
    data: bytes


@dataclass(frozen=True)
class Read:
    """Request: read exactly ``n`` bytes from the board (``what`` names them for errors)."""
    n: int
    what: str = ""


# --- frames -------------------------------------------------------------------------------------

def _u(value, nbytes):
    return int(value).to_bytes(nbytes, "little")


#: The protocol versions this host speaks: 3 (tile mode, :mod:`psc.hw.link.bridge`) and 4
#: (network mode, :mod:`psc.hw.link.network_bridge`).
VERSIONS = (PROTOCOL_VERSION, NETWORK_VERSION)


def _check_header(data):
    data = bytes(data)
    if len(data) < ID_HEADER_BYTES or data[0] != OP["PING"] or data[1:4] != ID_MAGIC:
        raise LinkError(f"no PSC bridge answered PING: got {data[:8].hex()}... "
                        f"({len(data)} bytes), expected 'P' 'PSC' ...")
    if data[4] not in VERSIONS:
        raise LinkError(f"the board speaks protocol version {data[4]}, this host "
                        f"{' or '.join(map(str, VERSIONS))}: rebuild the bitstream (psc build)")
    return data[4]


def _id_layout(version):
    """``(bytes, fields)`` of the ID frame of protocol ``version``."""
    if version == NETWORK_VERSION:
        return NETWORK_ID_BYTES, ID_FIELDS + ENGINE_ID_FIELDS
    return ID_BYTES, ID_FIELDS


def _decode(name, value):
    """A readable ID field as the configuration spells it (see :func:`psc.hw.link.bridge.id_values`)."""
    if name in ("psc", "read_register"):
        return bool(value)
    if name in ("requantizers", "requant_mult_bits"):
        return value or None
    for key, names in (("multiplier", MULTIPLIERS), ("depthwise", DEPTHWISE_MODES),
                       ("fmap_ram", FMAP_RAMS)):
        if name == key:
            return names[value] if value < len(names) else f"<unknown {key} #{value}>"
    return value


def parse_id(data):
    """Fields of an ID frame (:func:`psc.hw.link.bridge.id_frame`) as a dict; raises :class:`LinkError`.

    Keys are the names of :data:`psc.hw.link.bridge.ID_FIELDS`, valued as the
    configuration spells them (``multiplier="generic"``, ``requantizers=None``, ...);
    ``digest`` and ``divisor`` are integers.
    """
    data = bytes(data)
    version = _check_header(data)
    size, fields = _id_layout(version)
    if len(data) != size:
        raise LinkError(f"ID frame of {len(data)} bytes, expected {size}: the link lost bytes")
    out, at = {"version": version}, ID_HEADER_BYTES
    for name, nbytes in fields:
        out[name] = _decode(name, int.from_bytes(data[at:at + nbytes], "little"))
        at += nbytes
    return out


def _readable(config):
    """The readable ID fields of ``config`` (the digest and divisor left out)."""
    ident = parse_id(id_frame(config, 4))
    del ident["digest"], ident["divisor"], ident["version"]
    return ident


def preset_for_digest(digest):
    """``(name, config)`` of the shipped core (:func:`psc.presets.shipped_cores`: a preset or
    a board's network-mode core) with build digest ``digest``; raises :class:`LinkError`
    when none has it."""
    cores = shipped_cores()
    for name, config in cores.items():
        if config.digest() == digest:
            return name, config
    raise LinkError(f"board reports build digest {digest:#010x}, which matches no shipped core "
                    f"({', '.join(cores)}); pass config= (the configuration it was built with)")


def check_id(ident, config):
    """``config`` when the board's digest is its own; else :class:`LinkError` naming every
    readable field where they differ (and the board's preset when it runs one)."""
    want = config.digest()
    if ident["digest"] == want:
        return config
    host = _readable(config)
    diff = [f"{k}: board {ident[k]!r}, host {v!r}" for k, v in host.items() if ident[k] != v]
    what = "; ".join(diff) if diff else "no readable field differs"
    shipped = next((name for name, c in shipped_cores().items()
                    if c.digest() == ident["digest"]), None)
    runs = (f"; the board runs {'preset ' if shipped in PRESETS else ''}{shipped!r}" if shipped
            else "")
    raise LinkError(f"the board's build (digest {ident['digest']:#010x}) is not the host's "
                    f"configuration (digest {want:#010x}): {what}{runs}")


def board_config(ident, config=None):
    """The configuration to drive the board of ``ident`` with: ``config`` checked against it
    (:func:`check_id`), or with ``config=None`` the preset it runs (:func:`preset_for_digest`)."""
    if config is not None:
        return check_id(ident, config)
    return preset_for_digest(ident["digest"])[1]


def _check_beat(name, value, nbytes):
    check_int(f"tile {name}", value, 0, (1 << (8 * nbytes)) - 1)


def encode_tile(tile, config):
    """The bytes of one tile: CFG (with ``n_out``), WEIGHTS, PARAMS, ACTS frames, then STATUS."""
    nb = beat_bytes(config)
    # A beat that does not fit its bytes was packed for another build: refuse it whole,
    # before the first byte goes out, rather than fail half-way through the tile.
    _check_beat("n_out", tile.n_out, 4)
    _check_beat("cfg", tile.cfg, nb["cfg"])
    for key in ("weights", "params", "acts"):
        for i, beat in enumerate(getattr(tile, key)):
            _check_beat(f"{key}[{i}]", beat, nb[key])
    out = bytearray([OP["CFG"]])
    out += _u(tile.n_out, 4) + _u(tile.cfg, nb["cfg"])
    for op, key, beats in (("WEIGHTS", "weights", tile.weights), ("PARAMS", "params", tile.params),
                           ("ACTS", "acts", tile.acts)):
        for i in range(0, len(beats), MAX_FRAME_BEATS):
            chunk = beats[i:i + MAX_FRAME_BEATS]
            out.append(OP[op])
            out += _u(len(chunk), 2)
            for beat in chunk:
                out += _u(beat, nb[key])
    out.append(OP["STATUS"])
    return bytes(out)


def parse_status(data):
    """A status frame as a dict: ``flags`` (names set), ``outputs``, ``total``, ``compute``, ``stall``."""
    data = bytes(data)
    if len(data) != STATUS_BYTES or data[0] != OP["STATUS"]:
        raise LinkError(f"bad status frame {data.hex()} (expected {STATUS_BYTES} bytes "
                        f"starting with 'S'): the link lost bytes")
    flags = {n for n, bit in FLAGS.items() if data[1] >> bit & 1}
    vals = [int.from_bytes(data[2 + 4 * i:6 + 4 * i], "little") for i in range(4)]
    return {"flags": flags, "outputs": vals[0], "total": vals[1], "compute": vals[2],
            "stall": vals[3]}


# --- protocol generators ------------------------------------------------------------------------

def ping_exchange():
    """Generator: PING, returns the parsed ID frame.

    The header is read first, so a board of another protocol version is
    refused by name rather than by a timeout on a frame of another length.
    """
    yield Write(bytes([OP["PING"]]))
    head = yield Read(ID_HEADER_BYTES, "ID frame")
    size, _ = _id_layout(_check_header(head))
    rest = yield Read(size - ID_HEADER_BYTES, "ID frame")
    return parse_id(head + rest)


def tile_exchange(tile, config):
    """Generator: run one tile; returns a result dict like :func:`psc.host.run_plans` gives.

    Keys: ``outputs`` (ints), ``error``, ``done``, ``total``, ``compute``,
    ``stall``, ``flags``, ``outputs_real``.
    """
    if getattr(tile, "reset_after", None) is not None:
        raise ValueError("reset_after (a simulation-only test hook) cannot run over the link")
    ob = beat_bytes(config)["out"]
    yield Write(encode_tile(tile, config))
    raw = yield Read(tile.n_out * ob, f"{tile.n_out} output beats")
    status = parse_status((yield Read(STATUS_BYTES, "status frame")))
    outs = [int.from_bytes(raw[i * ob:(i + 1) * ob], "little") for i in range(tile.n_out)]
    flags = status["flags"]
    if flags & {"RX_ERROR", "BAD_OPCODE"}:
        raise LinkError(f"the board saw a corrupted byte stream (flags {sorted(flags)})")
    return {"outputs": outs, "error": int("ERROR" in flags), "done": "DONE" in flags,
            "total": status["total"], "compute": status["compute"], "stall": status["stall"],
            "flags": sorted(flags), "outputs_real": status["outputs"]}


def run_tiles(plans, config):
    """Generator: every tile of ``plans`` (a list of lists of tiles, as
    :func:`psc.host.run_plans`); returns the per-plan lists of tile results."""
    out = []
    for tiles in plans:
        res = []
        for tile in tiles:
            res.append((yield from tile_exchange(tile, config)))
        out.append(res)
    return out


def session(plans, config=None):
    """Generator: PING, the configuration from :func:`board_config` (``config`` checked, or
    the board's preset), then :func:`run_tiles`; nothing is sent when the ID is refused."""
    ident = yield from ping_exchange()
    if ident["version"] != PROTOCOL_VERSION:
        raise LinkError(f"the board runs network mode (protocol {ident['version']}), which "
                        f"does not take tiles: run the whole network "
                        f"(psc.network.run), or build the tile-mode bitstream")
    return (yield from run_tiles(plans, board_config(ident, config)))


def drive(gen, transport, *, chunk=512):
    """Run a protocol generator over a blocking ``transport`` (``write(bytes)``, ``read(n)``).

    Writes go out in ``chunk``-byte pieces; when the transport tells how much
    it has received (pyserial's ``in_waiting``), that is read in between, so
    output beats that arrive while a long tile is being sent never pile up in
    the operating system's or the USB bridge's buffers (the link has no
    hardware flow control).
    """
    chunk = check_int("chunk", chunk, 1)
    rx = bytearray()

    def poll():
        waiting = getattr(transport, "in_waiting", 0)
        if waiting:
            rx.extend(transport.read(waiting))

    try:
        req = next(gen)
        while True:
            if isinstance(req, Write):
                for i in range(0, len(req.data), chunk):
                    transport.write(req.data[i:i + chunk])
                    poll()
                if hasattr(transport, "flush"):
                    transport.flush()
                req = gen.send(None)
            else:
                while len(rx) < req.n:
                    got = transport.read(req.n - len(rx))
                    if not got:
                        raise LinkError(f"timeout reading the {req.what or 'reply'}: got "
                                        f"{len(rx)} of {req.n} bytes")
                    rx.extend(got)
                data = bytes(rx[:req.n])
                del rx[:req.n]
                req = gen.send(data)
    except StopIteration as stop:
        return stop.value


# --- ports --------------------------------------------------------------------------------------

def parse_target(target):
    """``"serial:PORT[@BAUD]"`` -> ``(PORT, BAUD)``; ``ValueError`` naming the part that is wrong."""
    form = "'serial:/dev/ttyUSB1' or 'serial:/dev/ttyUSB1@1000000'"
    if not isinstance(target, str) or not target.startswith("serial:") or len(target) <= 7:
        raise ValueError(f"a serial target must look like {form}, not {show(target)}")
    port, at, baud = target[7:].partition("@")
    if not port:
        raise ValueError(f"a serial target must name a port, as {form}, not {target!r}")
    if at:
        if not baud.isdigit() or int(baud) <= 0:
            raise ValueError(f"the baud rate of serial target {target!r} must be a positive "
                             f"integer, not {baud!r}")
        return port, int(baud)
    return port, DEFAULT_BAUD


def check_port(port):
    """Refuse a port that is a path to nothing (``ValueError``): the user mistyped it, or
    the board is not plugged in. Ports pyserial opens by URL (``socket://``, ``rfc2217://``)
    or by name (``COM3``) are left to it."""
    if not isinstance(port, str) or not port:
        raise ValueError(f"port must be a serial device such as '/dev/ttyUSB1', "
                         f"not {show(port)}")
    if os.path.isabs(port) and not os.path.exists(port):
        raise ValueError(f"serial port {port!r} does not exist (is the board plugged in? "
                         f"see `ls /dev/tty*`)")
    return port


def open_transport(port, baud, timeout=DEFAULT_TIMEOUT):
    """Open a serial port with pyserial (8N1, no flow control); the object is the transport.

    A port that does not exist is a ``ValueError`` (:func:`check_port`); one that
    exists but cannot be opened (busy, no permission) a :class:`LinkError`.
    """
    import serial
    check_port(port)
    check_int("baud", baud, 1)
    if timeout is not None:
        check_real("timeout", timeout, 0.0, float("inf"))
    try:
        # serial_for_url opens a device path as Serial does, and a URL (socket://, rfc2217://)
        return serial.serial_for_url(port, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                                     timeout=timeout, rtscts=False, xonxoff=False)
    except (serial.SerialException, OSError) as e:
        raise LinkError(f"could not open serial port {port!r}: "
                        f"{' '.join(str(e).split())}") from None


class SerialLink:
    """A board behind the bridge, over ``transport`` (blocking ``write``/``read``).

    Parameters
    ----------
    transport
        Object with ``write(bytes)`` and ``read(n)`` (returns ``b""`` on timeout).
    config : psc.config.CoreConfig or None
        The build the host plans for, refused unless the board's digest is its
        own; ``None`` runs the shipped preset whose digest the board reports
        (:func:`board_config`).
    """

    def __init__(self, transport, config=None, *, settle=0.2):
        if config is not None and not isinstance(config, CoreConfig):
            raise BadTypeError(f"config must be a psc.config.CoreConfig or None, "
                               f"not {show(config)}")
        for method in ("write", "read"):
            if not callable(getattr(transport, method, None)):
                raise BadTypeError(f"transport must have write(bytes) and read(n), "
                                   f"not {show(transport)}")
        self.transport = transport
        if hasattr(transport, "reset_input_buffer"):
            # A bridge left mid-frame by a previous session abandons the frame after
            # its frame timeout (50 ms at 1 Mbaud); then forget what it sent.
            import time
            time.sleep(settle)
            transport.reset_input_buffer()
        try:
            self.ident = drive(ping_exchange(), transport)
            self.config = board_config(self.ident, config)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, target, config=None):
        """Open ``"serial:PORT[@BAUD]"`` with :func:`open_transport` (read timeout
        :data:`DEFAULT_TIMEOUT` seconds, looked up now: a simulated board, far slower
        than a real one, raises it while it runs)."""
        port, baud = parse_target(target)
        return cls(open_transport(port, baud, DEFAULT_TIMEOUT), config)

    def run_plans(self, plans):
        """Run a list of lists of tiles; per-plan lists of results (as :func:`psc.host.run_plans`)."""
        return drive(run_tiles(plans, self.config), self.transport)

    def close(self):
        close = getattr(self.transport, "close", None)
        if close:
            close()
