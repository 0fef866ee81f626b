"""Network mode's activation memory: every tensor of a network, stored channels-last in lane words.

The layout is :class:`psc.host.program.ActivationMemory`'s, which defines it
value by value: a word holds ``lanes`` activations; a tensor's pixel
``(y, x)`` takes ``G`` consecutive words from its region's base, channel
``c`` in word ``c // lanes``, lane ``c % lanes``.
"""

from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig
from psc.model.checks import BadTypeError, check_bool, check_int, show

__all__ = ["ActivationMemory"]


class ActivationMemory(wiring.Component):
    """``depth`` lane words of ``lanes`` activations, one word read and one write (an output
    beat, or up to a word from any lane) per cycle.

    A write stores an output beat of the core (``rows`` activations) at any lane of a
    word: where ``lanes`` is not a multiple of ``rows`` a beat can run on into the
    next word. So the memory is then two banks, even and odd words, each with one read
    and one write port of ``act_width`` granularity: a write touches at most one word
    of each bank, and a read one word of one of them. Where ``rows`` divides ``lanes``,
    a beat starts at a multiple of ``rows`` (a command's output channels come in groups
    of ``rows``) and never runs on: the memory is one bank, and a write is placed by a
    shift of ``lanes / rows`` positions.

    Parameters
    ----------
    config : psc.config.CoreConfig
        The build: ``lanes``, ``rows`` and ``act_width``.
    depth : int
        Words, even, at least 2.
    write_register : bool
        Register the write as it is presented too, before it is placed in its lanes: the
        writers' multiplexers and the placement then each have a cycle of their own
        (:attr:`write_latency` 2), for a build whose units sit far apart.

    Members
    -------
    read_addr : In(addr_width)
    read_en : In(1)
        Read word ``read_addr``; its value is on ``read_data`` in the next cycle
        (latency 1), held until the next read.
    read_data : Out(lanes * act_width)
    write_addr : In(addr_width)
    write_lane : In(range(lanes))
    write_data : In(lanes * act_width)
    write_mask : In(lanes)
    write_en : In(1)
        Write value ``i`` of ``write_data`` where bit ``i`` of ``write_mask`` is set, to
        lane ``write_lane + i`` of word ``write_addr``, or lane ``write_lane + i - lanes``
        of word ``write_addr + 1`` past the word's last lane; the other lanes keep their
        values. An output beat uses the low ``rows`` values; a whole word has
        ``write_lane`` 0. Where ``rows`` divides ``lanes``, ``write_lane`` is a multiple
        of ``rows`` and a write stays in its word (another ``write_lane`` writes from
        lane 0). The write is registered: it reaches the memory :attr:`write_latency`
        cycles after it is presented, so a read of its words returns the new values
        from ``write_latency + 1`` cycles after it on (before that, the old ones).
    """

    def __init__(self, config, depth, *, write_register=False):
        if not isinstance(config, CoreConfig):
            raise BadTypeError(f"config must be a psc.config.CoreConfig, not {show(config)}")
        depth = check_int("depth", depth, 2)
        if depth % 2:
            raise ValueError(f"depth must be even (two banks of words), not {depth}")
        if config.rows > config.lanes:
            raise ValueError(f"an output beat of rows={config.rows} activations must fit "
                             f"the lanes={config.lanes} of a word")
        self.config, self.depth = config, depth
        self._write_register = check_bool("write_register", write_register)
        lanes, aw = config.lanes, config.pe.act_width
        self.addr_width = max(1, (depth - 1).bit_length())
        super().__init__({
            "read_addr": In(self.addr_width), "read_en": In(1),
            "read_data": Out(lanes * aw),
            "write_addr": In(self.addr_width), "write_lane": In(range(lanes)),
            "write_data": In(lanes * aw), "write_mask": In(lanes), "write_en": In(1),
        })

    @property
    def write_latency(self):
        """Cycles from a write presented to the cycle in which the memory holds it: 1, or 2
        with ``write_register``."""
        return 1 + self._write_register

    def _write(self, m):
        """The write as presented, or registered (``write_register``)."""
        names = ("addr", "lane", "data", "mask", "en")
        ports = {n: getattr(self, f"write_{n}") for n in names}
        if not self._write_register:
            return ports
        regs = {n: Signal.like(p, name=f"w_{n}", reset_less=n != "en")
                for n, p in ports.items()}
        m.d.sync += [regs[n].eq(ports[n]) for n in names]
        return regs

    def elaborate(self, platform):
        m = Module()
        cc = self.config
        lanes, aw = cc.lanes, cc.pe.act_width
        w = self._write(m)
        if lanes % cc.rows == 0:
            return self._one_bank(m, w)
        banks = []
        for b in range(2):
            mem = Memory(shape=unsigned(lanes * aw), depth=self.depth // 2, init=[])
            m.submodules[f"bank{b}"] = mem
            banks.append((mem.read_port(), mem.write_port(granularity=aw)))

        # read: both banks at the word's row, the word's bank picked after the port
        odd = Signal()
        for rp, _ in banks:
            m.d.comb += [rp.addr.eq(self.read_addr[1:]), rp.en.eq(self.read_en)]
        with m.If(self.read_en):
            m.d.sync += odd.eq(self.read_addr[0])
        m.d.comb += self.read_data.eq(Mux(odd, banks[1][0].data, banks[0][0].data))

        # write: the beat placed in a two-word window from its lane; the first word goes
        # to the bank of write_addr's parity, the second to the other bank
        data2 = Signal(2 * lanes * aw)
        mask2 = Signal(2 * lanes)
        m.d.comb += [data2.eq(w["data"] << (w["lane"] * aw)),
                     mask2.eq(w["mask"] << w["lane"])]
        first, second = data2[:lanes * aw], data2[lanes * aw:]
        first_en, second_en = mask2[:lanes], mask2[lanes:]
        row = w["addr"][1:]
        on_odd = w["addr"][0]
        (_, w0), (_, w1) = banks
        en = Const(0, lanes)
        # even word w: bank 0 row w/2, then bank 1 row w/2; odd word w: bank 1 row w//2,
        # then bank 0 row w//2 + 1
        # The banks' write ports are registered: a unit's address and lane logic and the
        # placement above get a cycle to themselves, the block RAMs' ports another.
        m.d.sync += [
            w0.addr.eq(Mux(on_odd, row + 1, row)),
            w0.data.eq(Mux(on_odd, second, first)),
            w0.en.eq(Mux(w["en"], Mux(on_odd, second_en, first_en), en)),
            w1.addr.eq(row),
            w1.data.eq(Mux(on_odd, first, second)),
            w1.en.eq(Mux(w["en"], Mux(on_odd, first_en, second_en), en)),
        ]
        return m

    def _one_bank(self, m, w):
        # rows divides lanes: a write never leaves its word, so one bank, and the write
        # placed by a shift of lanes / rows positions (not a two-word window from any lane)
        cc = self.config
        lanes, aw, rows = cc.lanes, cc.pe.act_width, cc.rows
        m.submodules.bank = mem = Memory(shape=unsigned(lanes * aw), depth=self.depth, init=[])
        rp, wp = mem.read_port(), mem.write_port(granularity=aw)
        m.d.comb += [rp.addr.eq(self.read_addr), rp.en.eq(self.read_en),
                     self.read_data.eq(rp.data)]
        data, en = Signal(lanes * aw), Signal(lanes)
        with m.Switch(w["lane"]):
            for lane in range(rows, lanes, rows):
                with m.Case(lane):
                    m.d.comb += [data.eq(w["data"] << (lane * aw)),
                                 en.eq(w["mask"] << lane)]
            with m.Default():
                m.d.comb += [data.eq(w["data"]), en.eq(w["mask"])]
        # registered, as the two banks' ports are
        m.d.sync += [wp.addr.eq(w["addr"]), wp.data.eq(data),
                     wp.en.eq(Mux(w["en"], en, 0))]
        return m
