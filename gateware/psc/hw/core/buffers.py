"""The core's weight and parameter buffers, each with its loader."""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .layouts import read_signature

__all__ = ["LoadBuffer"]


class LoadBuffer(wiring.Component):
    """A buffer loaded from a stream, once per command, and read by address.

    Load: ``start`` (one cycle) rewinds the loader unless ``keep`` (the
    command reuses what the buffer holds). While ``run`` and not ``keep``,
    :attr:`i` is taken one word per cycle (``i.ready`` is a flip-flop's
    inverse: high until ``count`` words have arrived, then ``done``) and
    word ``n`` is stored at address ``n``. With ``keep`` nothing is taken
    and ``done`` keeps its value.

    Read (:attr:`read`): address and ``en`` in a cycle, the word in the
    next, held while ``en`` is low. A read and a write of the same address
    in one cycle return the old word.

    Parameters
    ----------
    shape : shape-castable
        A word (one stream beat).
    depth : int
        Words the buffer holds.
    count_width : int
        Width of ``count``.
    read_addr_width : int
        Width of the read address (the buffer uses its low bits).

    Attributes
    ----------
    i : In(stream.Signature(shape))
    start, run, keep : In(1)
    count : In(count_width)
        Words of the command (at most ``depth``: the command checks refuse more).
    done : Out(1)
    arrived : Out(range(depth + 1))
        Words taken since the last ``start`` (unchanged with ``keep``; 0 with ``resident``):
        word ``n`` may be read once ``arrived > n``.
    read : In(read_signature(read_addr_width, shape))
    base, write_addr, write_data, write_en : In
        With ``resident``: the buffer holds words written through ``write_*`` (a whole
        network's weights, in network mode), takes nothing from :attr:`i`, is always
        ``done``, and a read of address ``a`` reads word ``base + a``.
    """

    def __init__(self, shape, depth, *, count_width, read_addr_width, resident=False):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, not {depth!r}")
        for name, value in (("count_width", count_width), ("read_addr_width", read_addr_width)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        self._shape = shape
        self._depth = depth
        self._resident = bool(resident)
        members = {
            "i": In(stream.Signature(shape)),
            "start": In(1),
            "run": In(1),
            "keep": In(1),
            "count": In(count_width),
            "done": Out(1),
            "arrived": Out(range(depth + 1)),
            "read": In(read_signature(read_addr_width, shape)),
        }
        if self._resident:
            aw = max(1, (depth - 1).bit_length())
            members.update({"base": In(aw), "write_addr": In(aw), "write_data": In(shape),
                            "write_en": In(1)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=self._shape, depth=self._depth, init=[])
        wp = mem.write_port()
        rp = mem.read_port()
        if self._resident:
            # written from outside while idle, never loaded by a command; a command reads
            # from its base
            m.d.comb += [
                wp.addr.eq(self.write_addr), wp.data.eq(self.write_data),
                wp.en.eq(self.write_en),
                rp.addr.eq(self.base + self.read.addr), rp.en.eq(self.read.en),
                self.read.data.eq(rp.data), self.done.eq(1),
            ]
            return m
        cnt = self.arrived
        m.d.comb += [
            wp.addr.eq(cnt),
            wp.data.eq(self.i.payload),
            rp.addr.eq(self.read.addr),
            rp.en.eq(self.read.en),
            self.read.data.eq(rp.data),
        ]
        with m.If(self.run):
            m.d.comb += [
                self.i.ready.eq(~self.keep & ~self.done),
                wp.en.eq(self.i.valid & self.i.ready),
            ]
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [cnt.eq(cnt + 1), self.done.eq(cnt + 1 == self.count)]
        with m.If(self.start & ~self.keep):
            m.d.sync += [cnt.eq(0), self.done.eq(0)]
        return m
