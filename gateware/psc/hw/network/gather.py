"""Network mode's gather: a tile's input lane words read from the activation memory.

The words are those :meth:`psc.host.program.ActivationMemory.gather` defines
for a :class:`psc.host.scheduler.Window` of a stored tensor, in the order the
core's ``act_in`` takes them; :func:`gather_fields` turns a window into this
unit's descriptor.
"""

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from psc.hw.core.layouts import act_in_layout
from psc.hw.network.countdown import Countdown, loop_widths

__all__ = ["gather_layout", "Gather", "GATHER_FIFO_DEPTH"]

#: Words the gather holds between the memory and ``act_in``; reads are issued only into
#: free places, so a stalled core never loses a word.
GATHER_FIFO_DEPTH = 4


def gather_layout(config, addr_width):
    """The gather's descriptor: the window's first word ``addr``; ``pixel_step`` and
    ``row_step`` between its pixels and its rows (``G`` and ``W * G`` of the stored
    tensor); ``n_g`` words per pixel, ``n_x`` pixels per row, ``n_y`` rows; ``rot``, the
    lane of the first channel in its word; ``valid``, the channels from it that are read
    (the rest are zero)."""
    count, channels = loop_widths(config, addr_width)
    return data.StructLayout({
        "addr": addr_width, "pixel_step": addr_width, "row_step": addr_width,
        "n_g": count, "n_x": count, "n_y": count,
        "rot": range(config.lanes), "valid": channels,
    })


class Gather(wiring.Component):
    """Read one window of lane words out of :class:`ActivationMemory` into ``act_in``.

    Parameters
    ----------
    config : psc.config.CoreConfig
    addr_width : int
        The activation memory's address width.

    Members
    -------
    start : In(stream.Signature(gather_layout))
        A window to read; taken when the unit is idle (``busy`` low).
    act_in : Out(stream.Signature(act_in_layout(config)))
        Its lane words, pixel-major and the pixel's words in order, lane ``l`` of a word
        holding the word's lane ``l + rot`` in memory, or zero for a channel past
        ``valid``.
    read_addr, read_en : Out
    read_data : In
        The memory's read port (latency 1).
    busy : Out(1)
        A window is being read or words of it are still to be taken.

    Throughput one word per cycle while ``act_in`` is ready; the first word is
    valid four cycles after ``start`` is taken (the read, its register, the FIFO).
    """

    def __init__(self, config, addr_width):
        self.config = config
        self.addr_width = addr_width
        aw = config.pe.act_width
        super().__init__({
            "start": In(stream.Signature(gather_layout(config, addr_width))),
            "act_in": Out(stream.Signature(act_in_layout(config))),
            "read_addr": Out(addr_width), "read_en": Out(1),
            "read_data": In(config.lanes * aw),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, aw = self.config.lanes, self.config.pe.act_width
        width = lanes * aw
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=width, depth=GATHER_FIFO_DEPTH)

        d = Signal(gather_layout(self.config, self.addr_width))
        issuing = Signal()
        count, channels = loop_widths(self.config, self.addr_width)
        g, x, y = (Countdown(count, n) for n in ("g", "x", "y"))
        pix, row = Signal(self.addr_width), Signal(self.addr_width)
        # pix + g, kept in its own register so that the memory's address comes from a
        # flip-flop, not through an adder
        addr = Signal(self.addr_width)
        left = Signal(signed(channels + 1))         # valid channels from this word's lane 0
        inflight = Signal()                          # a read issued last cycle
        rd_left = Signal.like(left)

        m.d.comb += self.start.ready.eq(~self.busy)
        with m.If(self.start.valid & self.start.ready):
            p = self.start.payload
            m.d.sync += [d.eq(p), issuing.eq(1), *g.load(p.n_g), *x.load(p.n_x), *y.load(p.n_y),
                         pix.eq(p.addr), row.eq(p.addr), addr.eq(p.addr), left.eq(p.valid)]

        # issue a read only into a free place of the FIFO: `room` counts the places neither
        # filled nor promised to a read in flight, in a register of its own so that the
        # decision (and the next address it steers) does not wait for the FIFO's level
        # through an adder. The word read is registered before it is rotated, so the
        # block RAM's output has a cycle to itself.
        issue = Signal()
        taken = Signal()
        room = Signal(range(GATHER_FIFO_DEPTH + 1), init=GATHER_FIFO_DEPTH)
        held = Signal()                              # a word in the read register
        held_left = Signal.like(left)
        m.d.comb += [issue.eq(issuing & (room != 0)), taken.eq(fifo.r_rdy & fifo.r_en),
                     self.read_addr.eq(addr), self.read_en.eq(issue)]
        with m.If(issue & ~taken):
            m.d.sync += room.eq(room - 1)
        with m.Elif(~issue & taken):
            m.d.sync += room.eq(room + 1)
        m.d.sync += inflight.eq(issue)
        with m.If(issue):
            m.d.sync += rd_left.eq(left)
            with m.If(~g.last):
                m.d.sync += [*g.step(), left.eq(left - lanes), addr.eq(addr + 1)]
            with m.Else():
                m.d.sync += [*g.restart(), left.eq(d.valid)]
                with m.If(~x.last):
                    m.d.sync += [*x.step(), pix.eq(pix + d.pixel_step),
                                 addr.eq(pix + d.pixel_step)]
                with m.Else():
                    m.d.sync += [*x.restart(), pix.eq(row + d.row_step),
                                 row.eq(row + d.row_step), addr.eq(row + d.row_step)]
                    with m.If(~y.last):
                        m.d.sync += y.step()
                    with m.Else():
                        m.d.sync += issuing.eq(0)

        read_q = Signal(width)
        m.d.sync += held.eq(inflight)
        with m.If(inflight):
            m.d.sync += [read_q.eq(self.read_data), held_left.eq(rd_left)]
        # the word read: its channels from lane rot moved to lane 0, those past valid zero
        rotated = Cat(read_q, read_q).bit_select(d.rot * aw, width)
        word = Cat(Signal(aw, name=f"lane{i}") for i in range(lanes))
        for i in range(lanes):
            m.d.comb += word[i * aw:(i + 1) * aw].eq(
                (held_left > i).replicate(aw) & rotated[i * aw:(i + 1) * aw])
        m.d.comb += [fifo.w_data.eq(word), fifo.w_en.eq(held),
                     self.act_in.payload.eq(fifo.r_data), self.act_in.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(self.act_in.ready),
                     self.busy.eq(issuing | inflight | held | fifo.r_rdy | (fifo.level != 0))]
        return m
