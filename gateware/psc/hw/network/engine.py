"""Network mode's engine: the core running a whole program from on-chip memory.

A program (:meth:`psc.host.program.Program.engine_image`) is a list of
instructions in the command store, the weight blocks of every tile in the
core's weight buffer (written once, read in place) or in a weight store beside
it (:attr:`EngineConfig.weight_store_depth`), the parameter words in
their store, and the network's tensors in the
:class:`~psc.hw.network.act_memory.ActivationMemory`. One :attr:`NetworkEngine.run`
executes the instructions from address 0 to the first ``END``:

* ``INPUT``: the host's beats (``rows`` activations each, the input tensor's
  pixels in raster order) are scattered into the input's region;
* ``INPUT_UNROLL``: an ``INPUT`` whose tensor is also unrolled (im2col) into
  a region of its own for a stem that reads it as a pointwise layer
  (:class:`~psc.hw.network.unroll.Unroll`), each output row as soon as the input
  rows it reads are stored: the host's beats come slower than the unroll's
  reads, so over a serial link the unroll ends soon after the input. A beat
  from the host takes the memory's write port before the unroll (which pauses
  for it);
* ``CONV``: one tile: its command to the core (which reads its weights from
  its own weight buffer, holding the whole network's, from the tile's first
  block on; or, with a weight store, takes them streamed from there), its
  parameters streamed from their store, its input window gathered from the
  activation memory and its output beats scattered into the output's region,
  all at once (the core takes each stream when it is ready for it); the next
  instruction starts when the core has ended the command and the last beat
  is written;
* ``OP``: a residual add or a global average pooling of tensors in the
  activation memory (:class:`~psc.hw.network.op_unit.OpUnit`);
* ``OUTPUT``: a window of the activation memory (the network's output)
  gathered to the host, in lane words;
* ``END``.

A command the core refuses stops the run with ``error`` set.
"""

from dataclasses import dataclass

from amaranth.hdl import Cat, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig
from psc.hw.core import PSCConvCore, act_in_layout, act_out_layout, config_layout
from psc.hw.core import param_layout, weight_layout
from psc.hw.core.setup import given_sizes_layout
from psc.hw.network.act_memory import ActivationMemory
from psc.hw.network.gather import Gather, gather_layout
from psc.hw.network.op_unit import OpUnit, op_layout
from psc.hw.network.scatter import Scatter, scatter_layout
from psc.hw.network.unroll import Unroll, unroll_layout, unrolls_on_chip
from psc.model.checks import BadTypeError, check_bool, check_int, show

__all__ = ["EngineConfig", "NetworkEngine", "OPCODES", "CMD_WORD", "instruction_layout",
           "instruction_words", "load_layout"]

#: Instruction opcodes.
OPCODES = {"END": 0, "INPUT": 1, "CONV": 2, "OUTPUT": 3, "OP": 4, "INPUT_UNROLL": 5}


def _width(depth):
    return max(1, (depth - 1).bit_length())


@dataclass(frozen=True)
class EngineConfig:
    """Build-time parameters of :class:`NetworkEngine`.

    Parameters
    ----------
    core : psc.config.CoreConfig
    act_depth : int
        Words of the activation memory (even).
    cmd_depth, param_store_depth : int
        Instructions and parameter words the stores hold.
    weight_store_depth : int
        Where the weight blocks are. 0: in the core's own weight buffer
        (``core.weight_depth`` of them), written once and read in place, so no weight
        moves during an inference. Otherwise a weight store of this many blocks beside
        the core, from which each command's blocks are streamed into the core's weight
        buffer before it runs (one block per cycle), so that a network may have more
        blocks than the core's buffer holds (the core's buffer then bounds one
        command's, as in tile mode).
    op_values : int
        Activations per requantiser beat of the add and pooling unit
        (:class:`~psc.hw.network.op_unit.OpUnit`, which uses the core's requantiser
        between commands), from 1 to ``core.rows``; a word of ``core.lanes``
        activations takes ``ceil(lanes / op_values)`` beats.
    given_sizes : bool or None
        Each ``CONV`` instruction carries its command's derived sizes, computed by the
        host, and the engine's core is built with
        :attr:`~psc.config.CoreConfig.given_sizes` (the instruction's ``cfg`` and
        ``sizes`` are its command beat): the core's setup skips its multipliers
        (:func:`~psc.hw.core.setup.setup_cycles` per command), for :func:`~psc.hw.core.setup.given_sizes_layout`'s bits more per instruction.
        ``None`` (the default): as the core, ``core.given_sizes``, which needs it.
    """
    core: CoreConfig
    act_depth: int = 1024
    cmd_depth: int = 256
    param_store_depth: int = 256
    weight_store_depth: int = 0
    op_values: int = 1
    given_sizes: bool | None = None

    def __post_init__(self):
        if not isinstance(self.core, CoreConfig):
            raise BadTypeError(f"core must be a psc.config.CoreConfig, not {show(self.core)}")
        check_int("act_depth", self.act_depth, 2)
        if self.act_depth % 2:
            raise ValueError(f"act_depth must be even (two banks of words), "
                             f"not {self.act_depth}")
        for name in ("cmd_depth", "param_store_depth"):
            check_int(name, getattr(self, name), 1, 1 << 20)
        check_int("weight_store_depth", self.weight_store_depth, 0, 1 << 20)
        check_int("op_values", self.op_values, 1)
        if self.given_sizes is None:
            object.__setattr__(self, "given_sizes", self.core.given_sizes)
        check_bool("given_sizes", self.given_sizes)
        if self.core.given_sizes and not self.given_sizes:
            raise ValueError("given_sizes must be True for a core whose commands carry their "
                             "sizes (core.given_sizes)")
        if self.op_values > self.core.rows:
            raise ValueError(f"op_values must be at most rows={self.core.rows} (activations "
                             f"per beat of the core's requantiser), not {self.op_values}")

    def key(self):
        """A short name of this build, for directories: the core's key and the memories."""
        return (f"{self.core.key()}_a{self.act_depth}c{self.cmd_depth}p{self.param_store_depth}"
                + (f"w{self.weight_store_depth}" if self.weight_store_depth else "")
                + f"v{self.op_values}" + ("s" if self.given_sizes else ""))

    @property
    def weight_blocks(self):
        """Weight blocks a program may have: the weight store's, or the core's buffer's."""
        return self.weight_store_depth or self.core.weight_depth

    @property
    def act_addr_width(self):
        return _width(self.act_depth)


def instruction_layout(config):
    """One instruction: ``op`` (:data:`OPCODES`); for ``CONV`` the core's ``cfg`` beat, the
    first of its weight blocks ``w_off`` (in the core's weight buffer, or with a weight
    store its blocks ``[w_off, w_off + w_n)`` there, ``w_n`` 0 for a command that keeps
    the last ones), its parameter words ``[p_off, p_off + p_n)`` of the parameter store,
    the ``gather`` and ``scatter`` descriptors and ``out`` (the tile makes output beats);
    ``INPUT`` uses ``scatter``, ``OUTPUT`` ``gather``, ``OP`` ``eltwise``,
    ``INPUT_UNROLL`` ``scatter`` and ``unroll`` (a field only of a build with the unroll unit,
    :func:`~psc.hw.network.unroll.unrolls_on_chip`); with
    :attr:`EngineConfig.given_sizes`, ``sizes``: the ``CONV`` command's derived sizes
    (:func:`~psc.hw.core.setup.derived_sizes`)."""
    cc, aw = config.core, config.act_addr_width
    weights = {"w_off": _width(config.weight_blocks)}
    if config.weight_store_depth:
        weights["w_n"] = _width(cc.weight_depth) + 1
    return data.StructLayout({
        "op": 3,
        "cfg": config_layout(cc),
        **weights,
        "p_off": _width(config.param_store_depth), "p_n": _width(config.param_store_depth) + 1,
        "gather": gather_layout(cc, aw), "scatter": scatter_layout(cc, aw), "out": 1,
        "eltwise": op_layout(cc, aw),
        **({"unroll": unroll_layout(cc, aw)} if unrolls_on_chip(cc) else {}),
        **({"sizes": given_sizes_layout(cc)} if config.given_sizes else {}),
    })


#: Bits of a word of the command store; an instruction takes :func:`instruction_words` of them
#: (a store as narrow as a block RAM's port, not as wide as an instruction).
CMD_WORD = 32


def instruction_words(config, fields=None):
    """The command-store words of one instruction (``fields``: a dict of
    :func:`instruction_layout`'s fields; ``w_n`` is dropped where the build has no weight
    store, ``unroll`` where it has no unroll unit, ``sizes`` where it computes them on
    chip), first word first; without ``fields``,
    how many there are."""
    il = instruction_layout(config)
    n = -(-il.size // CMD_WORD)
    if fields is None:
        return n
    from psc.model.packing import pack_payload
    names = {name for name, _ in il}
    # the fields only some builds have: a program's image always carries them
    bits = pack_payload(il, {k: v for k, v in fields.items()
                             if k in names or k not in ("w_n", "unroll", "sizes")})
    return [(bits >> (CMD_WORD * i)) & ((1 << CMD_WORD) - 1) for i in range(n)]


def load_layout(config):
    """A word of :attr:`NetworkEngine.load`: ``sel`` (0 the command store, whose words are
    :data:`CMD_WORD` bits, :func:`instruction_words` per instruction; 1 the weight store,
    or the core's weight buffer where the build has none; 2 the parameter store),
    ``addr`` and ``data`` (the word, low bits)."""
    cc = config.core
    widest = max(CMD_WORD, weight_layout(cc).size, param_layout(cc).size)
    depth = max(config.cmd_depth * instruction_words(config), config.weight_blocks,
                config.param_store_depth)
    return data.StructLayout({"sel": 2, "addr": _width(depth), "data": widest})


class _StoreReader(wiring.Component):
    """Words ``[off, off + n)`` of a memory read port (latency 1) as a stream of ``shape``
    (``start`` loads ``off`` and ``n``). The read port's own register is the stream's
    payload: the next word is read in a cycle in which the one it holds is taken (or it
    holds none), so a stalled consumer loses nothing, no FIFO is needed and a consumer
    that is always ready takes a word per cycle. The consumer's ``ready`` reaches the
    read port's enable through one gate: the core's buffers drive it from flip-flops."""

    def __init__(self, shape, addr_width):
        super().__init__({"off": In(addr_width), "n": In(addr_width + 1), "start": In(1),
                          "addr": Out(addr_width), "en": Out(1),
                          "data": In(data.Layout.cast(shape).size),
                          "o": Out(stream.Signature(shape)), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        left = Signal.like(self.n)
        free = Signal()                      # the port's register may take the next word
        issue = Signal()
        m.d.comb += [free.eq(~self.o.valid | self.o.ready), issue.eq(free & (left != 0)),
                     self.en.eq(free), self.o.payload.eq(self.data)]
        with m.If(free):
            m.d.sync += self.o.valid.eq(left != 0)
        with m.If(self.start):
            m.d.sync += [self.addr.eq(self.off), left.eq(self.n), self.o.valid.eq(0)]
        with m.Elif(issue):
            m.d.sync += [self.addr.eq(self.addr + 1), left.eq(left - 1)]
        m.d.comb += self.busy.eq((left != 0) | self.o.valid)
        return m


class NetworkEngine(wiring.Component):
    """The core, its network-mode memories and the sequencer that runs a program.

    Parameters
    ----------
    config : EngineConfig

    Members
    -------
    load : In(stream.Signature(load_layout(config)))
        Words written while idle (in the cycle after the one that takes them): ``sel`` 0
        the command store, 1 the weight store (the core's weight buffer where the build has
        none), 2 the parameter store;
        ``addr``; ``data`` (the word, low bits).
    run : In(1)
        Pulse: execute the program from instruction 0 (ignored while busy).
    host_in : In(stream.Signature(act_out_layout))
        The input's beats for an ``INPUT`` or ``INPUT_UNROLL`` instruction, taken only
        while one runs, one per cycle (on a ``read_register`` build into a FIFO of three
        beats in front of the scatter).
    host_out : Out(stream.Signature(act_in_layout))
        The output's lane words of an ``OUTPUT`` instruction.
    busy : Out(1)
    done : Out(1)
        One-cycle pulse at ``END`` or at a refused command.
    error : Out(1)
        The last run stopped at a command the core refused (held until the next run).
    cycles : Out(32)
        Cycles of the last run, from ``run`` to ``done``.
    compute : Out(32)
        Cycles of the last run in which a beat entered the core's MAC array (the sum of
        its commands' ``cycles_compute``): ``compute / cycles`` is the array's
        utilisation over the run.
    window : Out(32)
        Cycles of the last run after its input was received (``cycles`` less those in
        which the input instruction waits on the host's beats): every layer, an unroll's
        tail and the output sent.
    """

    @property
    def units(self):
        """The submodules that are units of their own (``psc program --synth --units`` counts
        each apart); ``unroll`` only on a build that has it."""
        return ("core", "act", "gather", "scatter", "op_unit") + (
            ("unroll",) if unrolls_on_chip(self.config.core) else ())

    def __init__(self, config):
        if not isinstance(config, EngineConfig):
            raise BadTypeError(f"config must be a psc.hw.network.EngineConfig, "
                               f"not {show(config)}")
        self.config = config
        cc = config.core
        super().__init__({
            "load": In(stream.Signature(load_layout(config))),
            "run": In(1),
            "host_in": In(stream.Signature(act_out_layout(cc))),
            "host_out": Out(stream.Signature(act_in_layout(cc))),
            "busy": Out(1), "done": Out(1), "error": Out(1), "cycles": Out(32),
            "compute": Out(32), "window": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        ec = self.config
        cc = ec.core
        il = instruction_layout(ec)
        streamed = bool(ec.weight_store_depth)
        # A build that registers its buffers' reads for its clock (read_register) also cuts
        # the array's stall from the fetch, and registers the activation memory's writes
        # before placing them: the network build fills its device, and the units end up far
        # apart. (A written word is read no sooner than three cycles on: the next
        # instruction's first read, or the unroll's after a row's count.)
        # with given sizes, an instruction's `cfg` and `sizes` make the core's command beat
        m.submodules.core = core = PSCConvCore(cc.replace(given_sizes=ec.given_sizes),
                                               resident_weights=not streamed,
                                               lent_requantizer_rows=ec.op_values,
                                               early_params=True, fetch_skid=cc.read_register)
        m.submodules.act = act = ActivationMemory(cc, ec.act_depth,
                                                  write_register=cc.read_register)
        m.submodules.gather = gather = Gather(cc, act.addr_width)
        m.submodules.scatter = scatter = Scatter(cc, act.addr_width)
        m.submodules.op_unit = op = OpUnit(cc, act.addr_width, ec.op_values)
        # the memory's ports: the op unit's during an OP; during an INPUT_UNROLL the
        # unroll's read port, and the write port the unroll's in a cycle it writes, else
        # the scatter's (which then waits); else the gather's and the scatter's
        op_active = Signal()               # registered with the routing below
        unroll_active = Signal()
        m.d.comb += [gather.read_data.eq(act.read_data), op.read_data.eq(act.read_data)]
        unroll = None
        if unrolls_on_chip(cc):
            m.submodules.unroll = unroll = Unroll(cc, act.addr_width)
            m.d.comb += unroll.read_data.eq(act.read_data)
        # and the core's requantiser, idle during an OP (the core runs no command then)
        wiring.connect(m, op.rq_i, core.rq_i)
        wiring.connect(m, core.rq_o, op.rq_o)
        m.d.comb += [core.rq_share.eq(op_active), core.rq_relu.eq(op.rq_relu)]
        with m.If(op_active):
            m.d.comb += [act.read_addr.eq(op.read_addr), act.read_en.eq(op.read_en)]
            for name in ("addr", "data", "mask", "en"):
                m.d.comb += getattr(act, f"write_{name}").eq(getattr(op, f"write_{name}"))
        if unroll is not None:
            with m.Elif(unroll_active):
                m.d.comb += [act.read_addr.eq(unroll.read_addr), act.read_en.eq(unroll.read_en)]
                for name in ("addr", "lane", "data", "mask", "en"):
                    m.d.comb += getattr(act, f"write_{name}").eq(
                        Mux(unroll.write_en, getattr(unroll, f"write_{name}"),
                            getattr(scatter, f"write_{name}")))
        with m.Else():
            m.d.comb += [act.read_addr.eq(gather.read_addr), act.read_en.eq(gather.read_en)]
            for name in ("addr", "lane", "data", "mask", "en"):
                m.d.comb += getattr(act, f"write_{name}").eq(getattr(scatter, f"write_{name}"))

        # --- the stores: written by `load` while idle, read by the sequencer ---------------
        stores = {}
        n_words = instruction_words(ec)
        # A word is written a cycle after it is taken: a link's parser makes it through
        # multiplexers, too long a path to end at block RAMs across the device.
        loaded = Signal(load_layout(ec), reset_less=True)
        loading = Signal()
        m.d.sync += [loaded.eq(self.load.payload),
                     loading.eq(self.load.valid & self.load.ready)]
        kept = [(0, "cmd", CMD_WORD, ec.cmd_depth * n_words),
                (2, "params", param_layout(cc), ec.param_store_depth)]
        if streamed:
            kept.append((1, "weights", weight_layout(cc), ec.weight_store_depth))
        else:
            m.d.comb += [core.weight_write_addr.eq(loaded.addr),
                         core.weight_write_data.eq(loaded.data),
                         core.weight_write_en.eq(loading & (loaded.sel == 1))]
        for sel, name, shape, depth in kept:
            mem = Memory(shape=shape, depth=depth, init=[])
            m.submodules[f"{name}_store"] = mem
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.addr.eq(loaded.addr), wp.data.eq(
                loaded.data[:Shape.cast(shape).width if name == "cmd" else
                            data.Layout.cast(shape).size]),
                wp.en.eq(loading & (loaded.sel == sel))]
            stores[name] = rp
        m.d.comb += self.load.ready.eq(~self.busy)

        readers = {}
        for name, sink in (("params", core.params), ("weights", core.weights)):
            if name in stores:
                rp = stores[name]
                reader = m.submodules[f"{name}_reader"] = _StoreReader(rp.data.shape(),
                                                                       len(rp.addr))
                m.d.comb += [rp.addr.eq(reader.addr), rp.en.eq(reader.en),
                             reader.data.eq(rp.data)]
                wiring.connect(m, reader.o, sink)
                readers[name] = reader
        params = readers["params"]

        # --- the sequencer ------------------------------------------------------------------
        # The next instruction is read word by word into `nxt` (first word ending at the
        # bottom) while the current one, in `raw`, runs.
        caddr = Signal(_width(ec.cmd_depth * n_words) + 1)
        fetched = Signal(range(n_words + 1))
        nxt = Signal(n_words * CMD_WORD)
        nxt_valid = Signal()
        raw = Signal(n_words * CMD_WORD)
        ins = il(raw[:il.size])
        cmd = stores["cmd"]
        m.d.comb += cmd.addr.eq(caddr)
        with m.If(self.busy & ~nxt_valid):
            # a read per cycle; each word arrives in the next and shifts in at the top
            m.d.comb += cmd.en.eq(fetched != n_words)
            with m.If(fetched != n_words):
                m.d.sync += caddr.eq(caddr + 1)
            with m.If(fetched != 0):
                m.d.sync += nxt.eq(Cat(nxt[CMD_WORD:], cmd.data))
            m.d.sync += fetched.eq(fetched + 1)
            with m.If(fetched == n_words):
                m.d.sync += [fetched.eq(0), nxt_valid.eq(1)]
        core_ended = Signal()
        with m.If(core.done):
            # the core's counters are final when it signals done
            m.d.sync += [core_ended.eq(1), self.compute.eq(self.compute + core.cycles_compute)]
        inputting = Signal()                 # the INPUT instruction runs
        with m.If(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(~inputting):
                m.d.sync += self.window.eq(self.window + 1)

        # routing: the scatter's beats from the core or the host, the gather's words to the
        # core or the host. Registered in START, before any unit takes a beat: decoded from
        # the instruction, the choice would sit in front of the core's output stall chain.
        to_host = Signal()
        from_host = Signal()
        with m.If(to_host):
            wiring.connect(m, gather.act_in, wiring.flipped(self.host_out))
        with m.Else():
            wiring.connect(m, gather.act_in, core.act_in)
        # During an INPUT_UNROLL a host beat waits while the unroll writes, and the unroll
        # pauses (registered) while a beat waits, so that neither starves. `rows_in`: the
        # input rows stored, which the unroll's rows wait for.
        # On a read_register build the host's beats pass a small FIFO on their way to the
        # scatter, so that the scatter's acceptance, which steps all its address registers,
        # starts at flip-flops beside it rather than at the link's.
        host_valid, host_take = Signal(), Signal()
        host_data = Signal.like(self.host_in.payload)
        if cc.read_register:
            m.submodules.host_fifo = host_fifo = SyncFIFOBuffered(
                width=len(self.host_in.payload.as_value()), depth=3)
            m.d.comb += [host_fifo.w_data.eq(self.host_in.payload),
                         host_fifo.w_en.eq(from_host & self.host_in.valid),
                         self.host_in.ready.eq(from_host & host_fifo.w_rdy),
                         host_valid.eq(host_fifo.r_rdy), host_data.eq(host_fifo.r_data),
                         host_fifo.r_en.eq(host_take)]
        else:
            m.d.comb += [host_valid.eq(self.host_in.valid), host_data.eq(self.host_in.payload),
                         self.host_in.ready.eq(host_take)]
        hold = Signal()
        if unroll is not None:
            rows_in = Signal.like(unroll.rows_in)
            pause = Signal()
            # the unroll writes only while its INPUT_UNROLL runs
            m.d.comb += [hold.eq(unroll.write_en), unroll.rows_in.eq(rows_in),
                         unroll.pause.eq(pause)]
            m.d.sync += pause.eq(unroll_active & host_valid)
            # counted a cycle late (the unroll then waits a cycle more for a row): the row's
            # end comes from the host beat's acceptance through the scatter's position
            # compare, too long a path to end in an adder
            row_end = Signal()
            m.d.sync += row_end.eq(unroll_active & scatter.row_end)
            with m.If(row_end):
                m.d.sync += rows_in.eq(rows_in + 1)
        with m.If(from_host):
            m.d.comb += [scatter.act_out.payload.eq(host_data),
                         scatter.act_out.valid.eq(host_valid & ~hold),
                         host_take.eq(scatter.act_out.ready & ~hold)]
        with m.Else():
            wiring.connect(m, core.act_out, scatter.act_out)
        m.d.comb += [gather.start.payload.eq(ins.gather), scatter.start.payload.eq(ins.scatter),
                     op.start.payload.eq(ins.eltwise),
                     core.cfg.payload.eq(Cat(ins.cfg, ins.sizes) if ec.given_sizes else ins.cfg)]
        if unroll is not None:
            m.d.comb += unroll.start.payload.eq(ins.unroll)
        m.d.comb += [params.off.eq(ins.p_off), params.n.eq(ins.p_n)]
        if streamed:
            m.d.comb += [readers["weights"].off.eq(ins.w_off), readers["weights"].n.eq(ins.w_n)]
        else:
            m.d.comb += core.weight_base.eq(ins.w_off)

        # the instruction's opcode decoded as it is fetched: decoded in START, it would sit in
        # front of every unit's start
        is_op = {name: Signal(name=f"is_{name.lower()}") for name in OPCODES
                 if name != "END" and (name != "INPUT_UNROLL" or unroll is not None)}
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.run):
                    m.d.sync += [caddr.eq(0), fetched.eq(0), nxt_valid.eq(0), self.busy.eq(1),
                                 self.error.eq(0), self.cycles.eq(0), self.compute.eq(0),
                                 self.window.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(nxt_valid):
                    m.d.sync += [raw.eq(nxt), nxt_valid.eq(0), core_ended.eq(0),
                                 *(f.eq(il(nxt[:il.size]).op == OPCODES[name])
                                   for name, f in is_op.items())]
                    m.next = "START"
            with m.State("START"):
                # the units start now and move beats from the next cycle on
                m.d.sync += [to_host.eq(is_op["OUTPUT"]),
                             from_host.eq(is_op["INPUT"] | is_op.get("INPUT_UNROLL", 0)),
                             op_active.eq(is_op["OP"]),
                             unroll_active.eq(is_op.get("INPUT_UNROLL", 0))]
                with m.If(is_op["INPUT"]):
                    m.d.comb += scatter.start.valid.eq(1)
                    m.next = "WAIT"
                with m.Elif(is_op["OUTPUT"]):
                    m.d.comb += gather.start.valid.eq(1)
                    m.next = "WAIT"
                with m.Elif(is_op["OP"]):
                    m.d.comb += op.start.valid.eq(1)
                    m.next = "WAIT"
                if unroll is not None:
                    with m.Elif(is_op["INPUT_UNROLL"]):
                        m.d.comb += [scatter.start.valid.eq(1), unroll.start.valid.eq(1)]
                        m.d.sync += rows_in.eq(0)
                        m.next = "WAIT"
                with m.Elif(is_op["CONV"]):
                    m.d.comb += [gather.start.valid.eq(1), scatter.start.valid.eq(ins.out),
                                 *(r.start.eq(1) for r in readers.values())]
                    m.next = "CFG"
                with m.Else():
                    # END, or an opcode the build does not run
                    m.d.sync += self.busy.eq(0)
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
            with m.State("CFG"):
                m.d.comb += core.cfg.valid.eq(1)
                with m.If(core.cfg.ready):
                    m.next = "WAIT"
            with m.State("WAIT"):
                # until the input's last beat is stored (an unroll may run on after it)
                m.d.comb += inputting.eq(from_host & scatter.busy)
                units = [gather, scatter, op] + ([unroll] if unroll is not None else [])
                units_idle = (~Cat(u.busy for u in units).any()
                              & ~Cat(r.busy for r in readers.values()).any())
                with m.If(is_op["CONV"]):
                    with m.If(core_ended & core.error):
                        m.d.sync += [self.busy.eq(0), self.error.eq(1)]
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
                    with m.Elif(core_ended & ~core.busy & units_idle):
                        m.next = "FETCH"
                with m.Elif(units_idle):
                    m.next = "FETCH"
        return m
