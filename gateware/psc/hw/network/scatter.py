"""Network mode's scatter: a tile's output beats written into the activation memory.

Each beat goes where :meth:`psc.host.program.ActivationMemory.scatter` puts
it (:meth:`psc.host.scheduler.LayerPlan.beat_places`): the tile's output
pixels in raster order, each pixel's beats of ``rows`` channels in order,
padding channels dropped. :func:`psc.host.program.scatter_fields` turns a
tile into this unit's descriptor.
"""

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from psc.hw.core.layouts import act_out_layout
from psc.hw.network.countdown import Countdown, loop_widths

__all__ = ["scatter_layout", "Scatter"]


def scatter_layout(config, addr_width):
    """The scatter's descriptor: ``addr`` and ``lane``, the word and lane of the tile's
    first output channel at its first pixel; ``pixel_step`` and ``row_step`` between its
    pixels and its rows (``G`` and ``W * G`` of the stored tensor); ``n_b`` beats per
    pixel, ``n_x`` pixels per row, ``n_y`` rows; ``valid``, the channels from the first
    that are written (the rest are padding)."""
    count, channels = loop_widths(config, addr_width)
    return data.StructLayout({
        "addr": addr_width, "lane": range(config.lanes),
        "pixel_step": addr_width, "row_step": addr_width,
        "n_b": channels, "n_x": count, "n_y": count, "valid": channels,
    })


class Scatter(wiring.Component):
    """Write one tile's output beats into :class:`ActivationMemory`.

    Parameters
    ----------
    config : psc.config.CoreConfig
    addr_width : int
        The activation memory's address width.

    Members
    -------
    start : In(stream.Signature(scatter_layout))
        A tile's places; taken when the unit is idle (``busy`` low).
    act_out : In(stream.Signature(act_out_layout(config)))
        The core's output beats, taken one per cycle while a tile is in progress.
    write_addr, write_lane, write_data, write_mask, write_en : Out
        The memory's write port.
    busy : Out(1)
        Beats of the tile are still to come.
    row_end : Out(1)
        The beat taken in this cycle is the last of a row of pixels.

    Latency: a beat is written in the cycle it is taken.
    """

    def __init__(self, config, addr_width):
        self.config = config
        self.addr_width = addr_width
        rows, aw = config.rows, config.pe.act_width
        super().__init__({
            "start": In(stream.Signature(scatter_layout(config, addr_width))),
            "act_out": In(stream.Signature(act_out_layout(config))),
            "write_addr": Out(addr_width), "write_lane": Out(range(config.lanes)),
            "write_data": Out(rows * aw), "write_mask": Out(rows), "write_en": Out(1),
            "busy": Out(1), "row_end": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, rows = self.config.lanes, self.config.rows
        d = Signal(scatter_layout(self.config, self.addr_width))
        count, channels = loop_widths(self.config, self.addr_width)
        b, x, y = (Countdown(channels, "b"), Countdown(count, "x"), Countdown(count, "y"))
        word, pix, row = (Signal(self.addr_width, name=n) for n in ("word", "pix", "row"))
        lane = Signal(range(lanes))
        left = Signal(signed(channels + 1))      # channels still to write at this pixel
        # the beat's write mask, ``left > i`` for each of its channels, kept in a register
        # (set from the value ``left`` takes) so that no compare sits in front of the memory
        mask = Signal(rows)

        def thermometer(count, minus=0):
            return [count > i + minus for i in range(rows)]

        m.d.comb += self.start.ready.eq(~self.busy)
        with m.If(self.start.valid & self.start.ready):
            p = self.start.payload
            m.d.sync += [d.eq(p), self.busy.eq(1),
                         *b.load(p.n_b), *x.load(p.n_x), *y.load(p.n_y),
                         word.eq(p.addr), pix.eq(p.addr), row.eq(p.addr), lane.eq(p.lane),
                         left.eq(p.valid), mask.eq(Cat(thermometer(p.valid)))]

        take = Signal()
        m.d.comb += [self.act_out.ready.eq(self.busy), take.eq(self.act_out.valid & self.busy),
                     self.write_addr.eq(word), self.write_lane.eq(lane),
                     self.write_data.eq(self.act_out.payload), self.write_en.eq(take)]
        m.d.comb += [self.write_mask.eq(mask), self.row_end.eq(take & b.last & x.last)]
        with m.If(take):
            with m.If(~b.last):
                # the next beat's channels: rows lanes on, into the next word past its last
                m.d.sync += [*b.step(), left.eq(left - rows),
                             mask.eq(Cat(thermometer(left, rows)))]
                with m.If(lane + rows >= lanes):
                    m.d.sync += [lane.eq(lane + rows - lanes), word.eq(word + 1)]
                with m.Else():
                    m.d.sync += lane.eq(lane + rows)
            with m.Else():
                m.d.sync += [*b.restart(), left.eq(d.valid), lane.eq(d.lane),
                             mask.eq(Cat(thermometer(d.valid)))]
                with m.If(~x.last):
                    m.d.sync += [*x.step(), pix.eq(pix + d.pixel_step),
                                 word.eq(pix + d.pixel_step)]
                with m.Else():
                    m.d.sync += [*x.restart(), pix.eq(row + d.row_step),
                                 row.eq(row + d.row_step), word.eq(row + d.row_step)]
                    with m.If(~y.last):
                        m.d.sync += y.step()
                    with m.Else():
                        m.d.sync += self.busy.eq(0)
        return m
