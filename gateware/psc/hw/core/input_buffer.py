"""The core's input buffer: banked storage of a tile's input words, its loader and its addressing.

On a ``depthwise="pixels"`` build the buffer is ``rows`` banks. A depthwise
layer stores input column ``x`` of row ``y``, group ``g`` in bank
``(x // s) % rows`` at ``g * plane + y * ws + (x // s // rows) * s + x % s``
(``plane``, ``ws``: :func:`~psc.hw.core.layouts.sizes_layout`), so the
``rows`` pixels of a beat (columns ``c0 + s*r``) read ``rows`` different
banks; other layers interleave the banks word by word and read one.

On a ``depthwise="channels"`` build the buffer is ``rows`` banks of
``fmap_depth / rows`` words (a power of two). A depthwise layer (whose
command counts ``gin`` groups of ``rows`` lane words per pixel) stores lane
word ``j*rows + r`` of pixel ``p`` in bank ``r`` at ``p * gin + j``, so the
``rows`` words of a beat are at one address of every bank; other layers
fill the banks one after the other (bank: the address's high bits) and
read one.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Shape, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig
from psc.hw.dot_product import input_layout
from psc.hw.spram import SinglePortRAM

from .layouts import (FIELD_WIDTH, act_in_layout, bank_count, config_layout, fetch_layout,
                      input_read_layout, read_signature, sizes_layout, tap_layout)

__all__ = ["InputAddressMap", "InputBuffer"]


class _WritePort:
    """A write port's signals (``addr``, ``data``, ``en``) for a memory that is not a
    :class:`~amaranth.lib.memory.Memory`."""

    def __init__(self, width, depth):
        self.addr = Signal(range(depth))
        self.data = Signal(width)
        self.en = Signal()


def _check_config(config):
    if not isinstance(config, CoreConfig):
        raise TypeError(f"config must be a psc.hw.core.CoreConfig, not {config!r}")
    return config


class InputAddressMap(wiring.Component):
    """Maps a sequencer tap to the input buffer's bank addresses and the padding mask.

    Combinational (no latency, no register): ``o.valid`` is ``i.valid``,
    ``i.ready`` is ``o.ready``; the weight address, ``first`` and ``last``
    pass through. A tap outside the tile (``iy`` or ``ix`` out of
    ``in_h``/``in_w``) is padding: its word is masked to zero after the read,
    never stored. On a ``depthwise="pixels"`` build a depthwise tap reads
    the columns ``ix + s*r`` of row ``r`` from bank ``(ix // s + r) % rows``,
    each with its own padding bit; any other tap reads word ``lin`` from
    bank ``lin % rows`` (``sel``) for every row. On a
    ``depthwise="channels"`` build a depthwise tap reads address ``lin`` of
    every bank; any other tap word ``lin`` from bank ``lin // bank_depth``.

    Parameters
    ----------
    config : CoreConfig

    Attributes
    ----------
    i : In(stream.Signature(tap_layout(config)))
    o : Out(stream.Signature(fetch_layout(config)))
    cmd : In(config_layout())
        The running command (``stride``, ``in_h``, ``in_w``).
    dwp, dwc : In(1)
        Depthwise layer on a ``depthwise="pixels"``, ``"channels"`` build.
    """

    def __init__(self, config):
        self._config = _check_config(config)
        super().__init__({
            "i": In(stream.Signature(tap_layout(config))),
            "o": Out(stream.Signature(fetch_layout(config))),
            "cmd": In(config_layout(config)),
            "dwp": In(1),
            "dwc": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        R = self._config.pe.rows
        cmd, tap, a0 = self.cmd, self.i.payload, self.o.payload
        lin, ix, iy = tap.lin, tap.ix, tap.iy
        m.d.comb += [
            self.o.valid.eq(self.i.valid),
            self.i.ready.eq(self.o.ready),
            a0.waddr.eq(tap.waddr),
            a0.first.eq(tap.first),
            a0.last.eq(tap.last),
        ]
        pad0 = (iy < 0) | (iy >= cmd.in_h) | (ix < 0) | (ix >= cmd.in_w)
        if bank_count(self._config) == 1:
            m.d.comb += [a0.addr[0].eq(lin), a0.pad.eq(pad0)]
            return m
        if self._config.pe.depthwise == "channels":
            lgb = (self._config.fmap_depth // R).bit_length() - 1
            m.d.comb += [a0.addr[b].eq(Mux(self.dwc, lin, lin[:lgb])) for b in range(R)]
            m.d.comb += [a0.sel.eq(lin[lgb:]), a0.pad.eq(pad0)]
            return m
        # depthwise: column ix = c0 of row 0; q0 = c0 // s, row r reads column
        # c0 + s*r, in bank (q0 + r) % R at lin + (q0 // R + (b < q0 % R)) * s + c0 % s
        lgr = R.bit_length() - 1
        q0 = Signal(signed(FIELD_WIDTH + 2))
        m.d.comb += q0.eq(Mux(cmd.stride == 2, ix >> 1, ix))
        qm = q0[:lgr]
        qd = q0 >> lgr
        odd = Mux(cmd.stride == 2, ix[0], 0)
        for b in range(R):
            col = Mux(cmd.stride == 2, (qd + (b < qm)) << 1, qd + (b < qm))
            m.d.comb += a0.addr[b].eq(Mux(self.dwp, lin + col + odd, lin >> lgr))
        padr = Cat(
            (iy < 0) | (iy >= cmd.in_h) | (ix + Mux(cmd.stride == 2, 2 * r, r) < 0)
            | (ix + Mux(cmd.stride == 2, 2 * r, r) >= cmd.in_w) for r in range(R))
        m.d.comb += [a0.sel.eq(lin[:lgr]), a0.rot.eq(qm),
                     a0.pad.eq(Mux(self.dwp, padr, pad0.replicate(R)))]
        return m


class InputBuffer(wiring.Component):
    """The input buffer and its loader.

    Write side: while ``run``, :attr:`i` is taken one word per cycle
    (``i.ready`` is high until the command's ``n_in`` words have arrived,
    then low: ``done``) and stored in arrival order (``(y, x, g)``), or for a
    depthwise layer on a banked build at its bank position. (A depthwise
    layer on a ``depthwise="channels"`` build takes ``rows`` stream words
    per word it counts: ``n_in`` and ``wg`` count bank words.)
    ``rows_in`` counts the input rows that have fully arrived and
    ``words_in`` the words (bank words, as ``n_in``), so the sequencer can
    start on an output row, and on its first pixels, before the whole tile
    is in.
    ``start`` (one cycle) rewinds the loader.

    With ``fmap_ram="spram"`` the words live in single-ported
    ``SB_SPRAM256KA`` cells (:class:`~psc.hw.spram.SinglePortRAM`): the port
    writes while the tile loads and reads after, so ``rows_in`` stays 0
    until every word has arrived (``done``), ``words_in`` stays 0 always, and
    the sequencer, which waits for its rows, never reads during a write.

    Read side (:attr:`read`): bank addresses (``input_read_layout``) and
    ``en`` in a cycle, the beat's ``x`` (the :func:`~psc.hw.dot_product.input_layout`
    field: one lane word, or one per row on a banked build: in a depthwise
    layer row ``r`` gets its own bank, rotated on a pixels build) in the
    next, held while ``en`` is low. On a ``depthwise="channels"`` build
    ``x[r]`` is bank ``r``'s word in every layer, and the reader picks the
    shared word of a non-depthwise beat (bank ``sel``) itself, so that it
    can do so after a register: a block RAM's output into a ``rows``-way
    multiplexer into a register limits an ECP5 build.

    Parameters
    ----------
    config : CoreConfig

    Attributes
    ----------
    i : In(stream.Signature(act_in_layout(config)))
    start, run : In(1)
    cmd : In(config_layout())
    dwp, dwc : In(1)
    sizes : In(sizes_layout(config))
    ws : In(FIELD_WIDTH + 1)
    rows_in, words_in : Out(range(config.fmap_depth + 1))
    done : Out(1)
    read : In(read_signature(input_read_layout(config), input_layout(config.pe)["x"].shape))
    """

    def __init__(self, config):
        self._config = _check_config(config)
        super().__init__({
            "i": In(stream.Signature(act_in_layout(config))),
            "start": In(1),
            "run": In(1),
            "cmd": In(config_layout(config)),
            "dwp": In(1),
            "dwc": In(1),
            "sizes": In(sizes_layout(config)),
            "ws": In(FIELD_WIDTH + 1),
            "rows_in": Out(range(config.fmap_depth + 1)),
            "words_in": Out(range(config.fmap_depth + 1)),
            "done": Out(1),
            "read": In(read_signature(input_read_layout(config),
                                      input_layout(config.pe)["x"].shape)),
        })

    def elaborate(self, platform):
        m = Module()
        cc = self._config
        if cc.fmap_ram == "spram":
            return self._elaborate_spram(m)
        nbanks = bank_count(cc)
        banks = []
        for b in range(nbanks):
            mem = Memory(shape=act_in_layout(cc), depth=cc.fmap_depth // nbanks, init=[])
            m.submodules["inbuf" if nbanks == 1 else f"inbuf_{b}"] = mem
            banks.append((mem.write_port(), mem.read_port()))
        m.d.comb += self.rows_in.eq(self._write(m, [wp for wp, _ in banks]))
        self._read(m, [rp for _, rp in banks])
        return m

    def _elaborate_spram(self, m):
        cc = self._config
        width = Shape.cast(act_in_layout(cc)).width
        m.submodules.inbuf = ram = SinglePortRAM(width, cc.fmap_depth, kind="spram")
        wp = _WritePort(width, cc.fmap_depth)
        rows = self._write(m, [wp])
        m.d.comb += [
            self.rows_in.eq(Mux(self.done, rows, 0)),
            # the loader owns the port until the tile is in
            ram.addr.eq(Mux(self.done, self.read.addr.addr[0], wp.addr)),
            ram.wdata.eq(wp.data),
            ram.we.eq(wp.en),
            ram.en.eq(wp.en | (self.done & self.read.en)),
            self.read.data.eq(ram.rdata),
        ]
        return m

    def _write(self, m, ports):
        """The loader, writing through ``ports`` (one per bank); returns its count of the
        input rows that have fully arrived."""
        cc, cmd, sz = self._config, self.cmd, self.sizes
        rows = Signal.like(self.rows_in)
        nbanks = len(ports)
        lgr = nbanks.bit_length() - 1
        bank_depth = cc.fmap_depth // nbanks
        # (each counts up to a size checked against the build: input words,
        # words per row, rows <= input words)
        in_cnt = Signal(range(cc.fmap_depth + 1))
        if cc.fmap_ram != "spram":
            m.d.comb += self.words_in.eq(in_cnt)
        col_cnt = Signal(range(cc.fmap_depth))
        fire = Signal()
        m.d.comb += fire.eq(self.i.valid & self.i.ready)
        # The sizes less one, registered every cycle: the sizes are final before the start
        # and the first word comes after it, so the row and end compares below are
        # equalities of registers, with no subtract in front.
        wg_m1 = Signal.like(col_cnt, reset_less=True)
        n_in_m1 = Signal.like(in_cnt, reset_less=True)
        m.d.sync += [wg_m1.eq(sz.wg - 1), n_in_m1.eq(sz.n_in - 1)]
        row_end = col_cnt == wg_m1
        chn = cc.pe.depthwise == "channels"
        # a counted word: every stream word, but in a depthwise layer on a channels build
        # every rows-th (the word that fills the last bank at an address)
        count = Signal()
        lb = Signal(range(max(2, nbanks)))      # dw channels: bank of the incoming word
        m.d.comb += count.eq(fire & (~self.dwc | (lb == nbanks - 1)) if chn else fire)
        lx = Signal(FIELD_WIDTH)               # dw pixels: column of the incoming word
        lgi = Signal(FIELD_WIDTH)              # dw pixels: group of the incoming word
        lrow = Signal(range(bank_depth + 1))   # dw pixels: y * ws
        lgoff = Signal(range(bank_depth + 1))  # dw pixels: g * plane
        for b, wp in enumerate(ports):
            m.d.comb += wp.data.eq(self.i.payload)
            if nbanks == 1:
                m.d.comb += [wp.addr.eq(in_cnt), wp.en.eq(fire)]
                continue
            if chn:
                lgb = bank_depth.bit_length() - 1
                m.d.comb += [
                    wp.addr.eq(Mux(self.dwc, in_cnt, in_cnt[:lgb])),
                    wp.en.eq(fire & Mux(self.dwc, lb == b, in_cnt[lgb:] == b)),
                ]
                continue
            lq = Mux(cmd.stride == 2, lx >> 1, lx)
            lcol = Mux(cmd.stride == 2, ((lq >> lgr) << 1) | lx[0], lq >> lgr)
            m.d.comb += [
                wp.addr.eq(Mux(self.dwp, lgoff + lrow + lcol, in_cnt >> lgr)),
                wp.en.eq(fire & Mux(self.dwp, lq[:lgr] == b, in_cnt[:lgr] == b)),
            ]
        if chn:
            with m.If(fire):
                m.d.sync += lb.eq(Mux(lb == nbanks - 1, 0, lb + 1))
        elif nbanks > 1:
            with m.If(fire):
                with m.If(lgi == cmd.gin - 1):
                    m.d.sync += [lgi.eq(0), lgoff.eq(0)]
                    with m.If(row_end):
                        m.d.sync += [lx.eq(0), lrow.eq(lrow + self.ws)]
                    with m.Else():
                        m.d.sync += lx.eq(lx + 1)
                with m.Else():
                    m.d.sync += [lgi.eq(lgi + 1), lgoff.eq(lgoff + sz.plane)]
        with m.If(self.run):
            m.d.comb += self.i.ready.eq(~self.done)
            with m.If(count):
                m.d.sync += [in_cnt.eq(in_cnt + 1), self.done.eq(in_cnt == n_in_m1)]
                with m.If(row_end):
                    m.d.sync += [col_cnt.eq(0), rows.eq(rows + 1)]
                with m.Else():
                    m.d.sync += col_cnt.eq(col_cnt + 1)
        with m.If(self.start):
            m.d.sync += [in_cnt.eq(0), col_cnt.eq(0), rows.eq(0), self.done.eq(0),
                         lx.eq(0), lgi.eq(0), lrow.eq(0), lgoff.eq(0), lb.eq(0)]
        return rows

    def _read(self, m, ports):
        rd = self.read
        for b, rp in enumerate(ports):
            m.d.comb += [rp.en.eq(rd.en), rp.addr.eq(rd.addr.addr[b])]
        if len(ports) == 1:
            m.d.comb += rd.data.eq(ports[0].data.as_value())
            return
        R = len(ports)
        if self._config.pe.depthwise == "channels":
            # every bank's word as it is: the fetch picks the shared word of a
            # non-depthwise beat
            for r in range(R):
                m.d.comb += rd.data[r].eq(ports[r].data)
            return
        lgr = R.bit_length() - 1
        sel1 = Signal(range(R))              # bank of the shared word
        rot1 = Signal(range(R))              # dw: bank of row 0
        bank_data = Array(rp.data.as_value() for rp in ports)
        with m.If(rd.en):
            m.d.sync += [sel1.eq(rd.addr.sel), rot1.eq(rd.addr.rot)]
        for r in range(R):
            pick = Mux(self.dwp, (rot1 + r)[:lgr], sel1)
            m.d.comb += rd.data[r].eq(bank_data[pick])
