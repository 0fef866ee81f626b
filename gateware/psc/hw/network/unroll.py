"""Network mode's unroll: a stem's input unrolled (im2col) in the activation memory.

A first layer with few input channels (a stem: 1 or 3 channels on 7 lanes)
keeps most of the array idle when it runs as a convolution; unrolled, it is a
pointwise layer over ``K * K * C`` channels (:func:`psc.host.scheduler.unroll`).
This unit builds that unrolled tensor from the stored input, so that the host
sends the input as it is (``K * K / stride**2`` times fewer bytes) and the
layer still runs unrolled. :meth:`psc.host.program.ActivationMemory.unroll`
defines what it writes, value by value; :func:`psc.host.program.unroll_fields`
makes its descriptor.
"""

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from psc.hw.network.countdown import Countdown, loop_widths

__all__ = ["unroll_layout", "Unroll", "KERNEL_BITS", "unrolls_on_chip"]

#: Bits of the kernel size, stride and padding fields.
KERNEL_BITS = 4


def unrolls_on_chip(config):
    """Whether a build (:class:`psc.config.CoreConfig`) has the unroll: its activation
    memory is two banks (``lanes`` not a multiple of ``rows``), which take a write of
    a pixel's channels from any lane (:class:`ActivationMemory`)."""
    return config.lanes % config.rows != 0


def unroll_layout(config, addr_width):
    """The unroll's descriptor: ``src``, the input's first word (its region holds one word
    per pixel, its ``c`` channels from lane 0), and ``lead``, ``pad * w + pad``, the words
    from input pixel ``(-pad, -pad)`` to it; ``w`` and ``h``, the input's width and height; ``k``, ``stride`` and ``pad``;
    ``row_stride``, ``stride * w``; ``n_x`` and ``n_y``, the output's width and height;
    ``dst``, the unrolled tensor's first word, and ``dst_step``, its words per pixel; ``c``,
    the input's channels, from 1 to ``lanes``."""
    count, _ = loop_widths(config, addr_width)
    return data.StructLayout({
        "src": addr_width, "lead": count, "w": count, "h": count,
        "k": KERNEL_BITS, "stride": KERNEL_BITS, "pad": KERNEL_BITS,
        "row_stride": addr_width, "n_x": count, "n_y": count,
        "dst": addr_width, "dst_step": count, "c": range(config.lanes + 1),
    })


class Unroll(wiring.Component):
    """Write the unrolled (im2col) form of a stored input into :class:`ActivationMemory`.

    For each output pixel ``(oy, ox)`` in raster order and each kernel position ``(ky,
    kx)`` in raster order, it reads input pixel ``(oy*stride + ky - pad, ox*stride + kx -
    pad)`` (zero outside the input) and writes its ``c`` channels to channels ``(ky*k +
    kx)*c`` on of the output pixel, in ``dst_step`` words from ``dst + (oy*n_x +
    ox)*dst_step``. A write of ``c`` channels from any lane runs on into the next word,
    so the memory must have two banks (``lanes`` not a multiple of ``rows``).

    It may run while the input arrives: an output row's reads wait until
    ``rows_in`` input rows are stored (every row its window reaches, or all ``h``),
    and ``pause`` holds the walk so that the writer of the input gets the memory's
    write port (the unroll writes nothing from two cycles after ``pause`` rises).

    Parameters
    ----------
    config : psc.config.CoreConfig
    addr_width : int
        The activation memory's address width.

    Members
    -------
    start : In(stream.Signature(unroll_layout))
        An unroll to do; taken when the unit is idle (``busy`` low).
    read_addr, read_en : Out
    read_data : In
        The memory's read port (latency 1).
    write_addr, write_lane, write_data, write_mask, write_en : Out
        The memory's write port.
    rows_in : In(count)
        Input rows stored (``h`` when the input is all there).
    pause : In(1)
        Hold the walk: no read is issued in the next cycle.
    busy : Out(1)
        Reads or writes of the unroll are still to come.

    Throughput one input pixel per cycle while neither ``pause`` nor missing rows
    hold it, and a cycle more per output row: ``n_x * n_y * k * k + n_y`` cycles; the
    last write is presented two cycles after the last read is issued (the read, its
    register, the write).
    """

    def __init__(self, config, addr_width):
        self.config = config
        self.addr_width = addr_width
        lanes, aw = config.lanes, config.pe.act_width
        super().__init__({
            "start": In(stream.Signature(unroll_layout(config, addr_width))),
            "read_addr": Out(addr_width), "read_en": Out(1),
            "read_data": In(lanes * aw),
            "write_addr": Out(addr_width), "write_lane": Out(range(lanes)),
            "write_data": Out(lanes * aw), "write_mask": Out(lanes), "write_en": Out(1),
            "rows_in": In(loop_widths(config, addr_width)[0]), "pause": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, aw = self.config.lanes, self.config.pe.act_width
        width = self.addr_width
        d = Signal(unroll_layout(self.config, width))
        count, _ = loop_widths(self.config, width)
        kx, ky = Countdown(KERNEL_BITS, "kx"), Countdown(KERNEL_BITS, "ky")
        x, y = Countdown(count, "x"), Countdown(count, "y")
        # the input's address walk: `addr` the pixel read, `krow` the kernel row's first,
        # `corner` the output pixel's window's first, `rcorner` the output row's
        addr, krow, corner, rcorner = (Signal(width, name=n)
                                       for n in ("addr", "krow", "corner", "rcorner"))
        # and its coordinates, to tell padding from the input
        iy, ix, cy, cx = (Signal(signed(count + KERNEL_BITS + 1), name=n)
                          for n in ("iy", "ix", "cy", "cx"))
        # where the pixel's channels go: word and lane, like the scatter's beats
        word, pix = Signal(width), Signal(width)
        lane = Signal(range(lanes))
        mask = Signal(lanes)
        running = Signal()
        # input rows the output row's windows reach (`cy + k`, at most `h`), and whether
        # they are stored: registered, and cleared for the cycle after a row ends, when
        # `need` has just moved on
        need = Signal(count + KERNEL_BITS + 1)
        rows_ok = Signal()
        advance = Signal()
        m.d.sync += rows_ok.eq((self.rows_in >= need) | (self.rows_in == d.h))
        m.d.comb += advance.eq(running & rows_ok & ~self.pause)

        m.d.comb += self.start.ready.eq(~self.busy)
        with m.If(self.start.valid & self.start.ready):
            p = self.start.payload
            pad = Signal(signed(KERNEL_BITS + 1))
            m.d.comb += pad.eq(p.pad)
            m.d.sync += [d.eq(p), running.eq(1),
                         *kx.load(p.k), *ky.load(p.k), *x.load(p.n_x), *y.load(p.n_y),
                         *(r.eq(p.src - p.lead) for r in (addr, krow, corner, rcorner)),
                         iy.eq(-pad), ix.eq(-pad), cy.eq(-pad), cx.eq(-pad),
                         word.eq(p.dst), pix.eq(p.dst), lane.eq(0),
                         need.eq(p.k - pad), rows_ok.eq(0),
                         mask.eq(Cat(p.c > i for i in range(lanes)))]

        # every cycle of the walk reads; a pixel in the padding is written as zeros
        inside = Signal()
        m.d.comb += [inside.eq((iy >= 0) & (iy < d.h) & (ix >= 0) & (ix < d.w)),
                     self.read_addr.eq(addr), self.read_en.eq(advance)]
        with m.If(advance):
            with m.If(kx.last & ky.last):
                m.d.sync += [pix.eq(pix + d.dst_step), word.eq(pix + d.dst_step), lane.eq(0)]
            with m.Elif(lane + d.c >= lanes):
                m.d.sync += [lane.eq(lane + d.c - lanes), word.eq(word + 1)]
            with m.Else():
                m.d.sync += lane.eq(lane + d.c)
            with m.If(~kx.last):
                m.d.sync += [*kx.step(), addr.eq(addr + 1), ix.eq(ix + 1)]
            with m.Else():
                m.d.sync += [*kx.restart(), ix.eq(cx)]
                with m.If(~ky.last):
                    m.d.sync += [*ky.step(), krow.eq(krow + d.w), addr.eq(krow + d.w),
                                 iy.eq(iy + 1)]
                with m.Else():
                    m.d.sync += [*ky.restart(), iy.eq(cy)]
                    with m.If(~x.last):
                        nxt = corner + d.stride
                        m.d.sync += [*x.step(), corner.eq(nxt), krow.eq(nxt), addr.eq(nxt),
                                     cx.eq(cx + d.stride), ix.eq(cx + d.stride)]
                    with m.Else():
                        nxt = rcorner + d.row_stride
                        m.d.sync += [*x.restart(), rcorner.eq(nxt), corner.eq(nxt),
                                     krow.eq(nxt), addr.eq(nxt), ix.eq(-d.pad), cx.eq(-d.pad),
                                     cy.eq(cy + d.stride), iy.eq(cy + d.stride),
                                     need.eq(need + d.stride), rows_ok.eq(0)]
                        with m.If(~y.last):
                            m.d.sync += y.step()
                        with m.Else():
                            m.d.sync += running.eq(0)

        # the read arrives a cycle after it is issued and is registered before it is
        # placed, so that the block RAM's output has a cycle to itself
        r_valid, r_inside = Signal(), Signal()
        r_word, r_lane = Signal(width), Signal(range(lanes))
        q_valid, q_inside = Signal(), Signal()
        q_word, q_lane = Signal(width), Signal(range(lanes))
        q = Signal(lanes * aw)
        m.d.sync += [r_valid.eq(advance), r_inside.eq(inside), r_word.eq(word), r_lane.eq(lane),
                     q_valid.eq(r_valid), q_inside.eq(r_inside), q_word.eq(r_word),
                     q_lane.eq(r_lane), q.eq(self.read_data)]
        m.d.comb += [self.write_addr.eq(q_word), self.write_lane.eq(q_lane),
                     self.write_data.eq(q & q_inside.replicate(lanes * aw)),
                     self.write_mask.eq(mask), self.write_en.eq(q_valid),
                     self.busy.eq(running | r_valid | q_valid)]
        return m
