"""The core's sequencer: the loop nest of a command, one tap per cycle."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig
from psc.model.checks import check_bool

from .layouts import (FIELD_WIDTH, address_width, bank_count, config_layout, sizes_layout,
                      tap_layout, weight_address_width)

__all__ = ["Sequencer"]


class Sequencer(wiring.Component):
    """Walks a command's loop nest and emits one tap per cycle on :attr:`taps`.

    Loop nest, outermost first: output row ``oy``, output column ``ox``
    (stepped by ``rows`` for a depthwise layer on a ``depthwise="pixels"``
    or ``"shifted"`` build), output group ``j``, kernel row ``ky``, kernel
    column ``kx`` (over ``K + (rows-1)*stride`` input columns for a depthwise
    layer on a ``"shifted"`` build: the ``rows`` pixels' windows), input
    group ``gi`` (``gin' = 1`` for depthwise). Each tap carries the
    linear input word address, the input coordinates (padding is decided
    downstream, from them), the weight block address and ``first``/``last``
    of a reduction.

    Each counter has a last value set at the start and a registered flag
    telling that it holds it; ``below`` (the AND of the flags under a
    counter) is registered too. Every next value (counters, flags,
    addresses) is computed from registers alone and the handshake only
    enables the update, so the tap handshake is one gate in front of the
    registers, not an input of the carry and address logic.

    Protocol: a cycle with ``start`` loads the
    command's start values (``cmd`` and ``sizes`` final from the cycle
    before: the first address is registered from them);
    while ``run``, ``loaded`` follows ``keep | (weights_done &
    params_done)`` (with ``early_params``: the weights loaded and the
    parameter word of the current output group arrived, ``params_in``; a
    layer other than depthwise then issues a group's taps without waiting
    for the later groups' words, which the output stage reads only after
    them; with ``early_weights``: the weight block of the tap after the
    current one arrived, ``weights_in``, or all of them) and ``rows_ok``
    whether the input rows the current output row needs have arrived
    (``rows_in``) or the input words the next pixel needs (``words_in``; on
    the last pixel of an output row, those of the next row's second pixel;
    not for a depthwise layer on a ``depthwise="pixels"`` build), both one
    cycle late (which only delays an issue). ``taps.valid`` is a few flip-flops: the
    sequencer has beats left, ``loaded`` and ``rows_ok``; a tap moves on
    ``taps.ready`` (one per cycle at most, no latency). ``waiting`` is high
    in a cycle with beats left and weights loaded in which no tap moves.

    Parameters
    ----------
    config : CoreConfig
    early_params : bool
        See :class:`~psc.hw.core.PSCConvCore`.
    early_weights : bool
        See :attr:`~psc.config.CoreConfig.early_weights`.

    Attributes
    ----------
    start : In(1)
        The start cycle of a command that passed its checks.
    run : In(1)
    cmd : In(config_layout())
    dw, dwp, dws : In(1)
        Depthwise; depthwise on a ``depthwise="pixels"`` build; on a ``"shifted"`` build
        (``dws`` only on such a build).
    gin_e : In(FIELD_WIDTH)
        Input groups per reduction.
    sizes : In(sizes_layout(config))
    ws : In(FIELD_WIDTH + 1)
        Bank words per input row and group (depthwise pixels).
    rows_in : In(range(config.fmap_depth + 1))
        Input rows arrived.
    words_in : In(range(config.fmap_depth + 1))
        Input words arrived (bank words, as ``sizes.n_in``; 0 on a build that does not
        read while it loads).
    weights_done, params_done : In(1)
    weights_in : In(range(config.weight_depth + 1))
        Weight blocks arrived (read only with ``early_weights``).
    params_in : In(range(config.param_depth + 1))
        Parameter words arrived (read only with ``early_params``).
    taps : Out(stream.Signature(tap_layout(config)))
    loaded, waiting : Out(1)
    last_group : Out(range(config.param_depth))
        ``gout - 1`` of the running command (the group counter's last value).
    """

    def __init__(self, config, *, early_params=False, early_weights=False):
        if not isinstance(config, CoreConfig):
            raise TypeError(f"config must be a psc.hw.core.CoreConfig, not {config!r}")
        self._config = config
        self._early = check_bool("early_params", early_params)
        self._early_weights = check_bool("early_weights", early_weights)
        super().__init__({
            "start": In(1),
            "run": In(1),
            "cmd": In(config_layout(config)),
            "dw": In(1),
            "dwp": In(1),
            **({"dws": In(1)} if config.pe.depthwise == "shifted" else {}),
            "gin_e": In(FIELD_WIDTH),
            "sizes": In(sizes_layout(config)),
            "ws": In(FIELD_WIDTH + 1),
            "rows_in": In(range(config.fmap_depth + 1)),
            "words_in": In(range(config.fmap_depth + 1)),
            "weights_done": In(1),
            "params_done": In(1),
            "weights_in": In(range(config.weight_depth + 1)),
            "params_in": In(range(config.param_depth + 1)),
            "taps": Out(stream.Signature(tap_layout(config))),
            "loaded": Out(1),
            "waiting": Out(1),
            "last_group": Out(range(config.param_depth)),
        })

    def elaborate(self, platform):
        m = Module()
        cc = self._config
        pe = cc.pe
        FW = FIELD_WIDTH
        R = pe.rows
        red_max = pe.max_reduction // pe.lanes
        bank_depth = cc.fmap_depth // bank_count(cc)
        sa = signed(address_width(cc))
        sd = signed(FW + 2)

        # Every register but `busy` and `rows_ok` is written at the start of a
        # command and read only while `busy`: no reset, so each is one enable
        # flip-flop (a reset would put a multiplexer in front of it).
        def reg(shape, name):
            return Signal(shape, name=name, reset_less=True)

        s = {}                               # the sequencer's registers, by name
        s["busy"] = Signal(name="seq_busy")
        s["gi"] = reg(range(max(1, red_max)), "gi")   # < gin' <= red (accepted command)
        s["kx"] = reg(4, "kx")
        s["ky"] = reg(4, "ky")
        s["j"] = reg(range(cc.param_depth), "j")      # < gout <= param_depth
        s["ox"] = reg(FW, "ox")
        s["oy"] = reg(FW, "oy")
        for n in ("ix", "iy", "ix0", "iy0"):
            s[n] = reg(sd, n)
        s["need"] = reg(sd, "need")                   # input rows the output row needs
        # depthwise: input group = output group (diagonal, channels: j; pixels: j * plane)
        s["goff"] = reg(range(max(cc.param_depth, bank_depth) + 1), "goff")
        s["goff_step"] = reg(s["goff"].shape(), "goff_step")
        for n in ("row_step",                         # address step per kernel row
                  "tapbase", "rowbase", "pixbase", "linebase",
                  "g_step",                           # words per input pixel
                  "sg",                               # words per output column step
                  "swg"):                             # words per output row step
            s[n] = reg(sa, n)
        s["waddr"] = reg(weight_address_width(cc), "waddr")
        s["ox_step"] = reg(range(R + 1), "ox_step")   # rows for depthwise pixels
        s["ix_step"] = reg(range(2 * R + 1), "ix_step")
        # Registered: the issue condition is a few flip-flops, not the
        # comparators behind them (they set the clock on ECP5 and iCE40).
        s["rows_ok"] = Signal(name="rows_ok")
        # The first tap's address, registered every cycle: the sizes it comes
        # from are final a cycle before the start, and the start cycle then
        # writes a register, not a subtract.
        s["base"] = reg(sa, "base")
        sz = self.sizes
        m.d.sync += s["base"].eq(Mux(self.dwp, -sz.pt_ws, -sz.pt_wg - sz.pl_g))
        # Input words the pixel after the current one needs (`nwa`: the rows above its
        # last input row, and of that row the columns up to its window's right edge,
        # uncapped: past the row's end it asks for words of the next row, which is
        # early enough), and the second pixel of the next output row (`nwr`: what the
        # row's last pixel waits for, the next row's first pixel ahead). The start
        # values registered every cycle, as `base`.
        nw = unsigned(address_width(cc) + 3)
        s["nwa"], s["nwr"] = reg(nw, "need_words"), reg(nw, "need_words_row")
        s["nwa0"], s["nwr0"] = reg(nw, "need_words0"), reg(nw, "need_words_row0")
        cmd = self.cmd
        nwa0 = sz.kr_wg + sz.c0_g + Mux(cmd.stride == 2, cmd.gin << 1, cmd.gin)
        m.d.sync += [s["nwa0"].eq(nwa0),
                     s["nwr0"].eq(nwa0 + Mux(cmd.stride == 2, sz.wg << 1, sz.wg))]
        # One flag per counter, registered, telling that it holds its last
        # value: the carry into the next counter is then an AND of flip-flops
        # (no subtract-and-compare against the command's fields in that path).
        s["lim_j"] = self.last_group
        names = ("gi", "kx", "ky", "j", "ox", "oy")
        s["flags"] = tuple(reg(1, f"last_{n}") for n in names)
        s["below"] = [Const(1)] + [reg(1, f"below_{n}") for n in names[1:]]
        # Per counter, registered too: `near` (one more step reaches the last value),
        # `lim_zero` (the last value is 0), `lim_inc` (it is the step) and `lim_2inc` (the
        # last value less two steps), so the next flag is a choice between flip-flops and
        # the next `near` an equality of registers: no adder in front of a compare.
        s["near"] = tuple(reg(1, f"near_{n}") for n in names)
        s["lim_zero"] = tuple(reg(1, f"lim_zero_{n}") for n in names)
        s["lim_inc"] = tuple(reg(1, f"lim_inc_{n}") for n in names)
        s["lim_2inc"] = tuple(reg(signed(s[n].shape().width + 2), f"lim_2inc_{n}")
                              for n in names)

        issue = Signal()
        m.d.comb += [
            self.taps.valid.eq(s["busy"] & self.loaded & s["rows_ok"]),
            issue.eq(self.taps.valid & self.taps.ready),
            self.waiting.eq(s["busy"] & self.loaded & ~issue),
        ]
        self._counters(m, s, issue)
        self._addresses(m, s, issue)
        with m.If(self.run):
            # Both a cycle late, which only delays (never hastens) an issue:
            # rows_in only grows, and `need` grows only on the beat that ends
            # an output row, for which the next row's need is checked ahead.
            # Or words: the next pixel's, or on a row's last pixel the next row's second
            # pixel's (a bound for every pixel until then).
            row_end = s["below"][5]          # the beat ends an output row
            # (shifted depthwise: the window of a block of pixels is wider; whole rows)
            no_words = self.dwp | self.dws if cc.pe.depthwise == "shifted" else self.dwp
            words_ok = ~no_words & Mux(s["flags"][4], self.words_in >= s["nwr"],
                                       self.words_in >= s["nwa"])
            if cc.fmap_ram == "spram":
                words_ok = 0                 # it never reads while it loads
            params_ok = self.params_done
            if self._early:
                # a cycle late too: `j` moves at most one group per cycle, so the word of
                # the group after the current one is asked for (a depthwise layer's group
                # drains as several output groups on a "channels" build: it waits for all)
                params_ok |= ~self.dw & (self.params_in > s["j"] + 1)
            weights_ok = self.weights_done
            if self._early_weights:
                # a cycle late too, so the block after the current tap's: the first output
                # pixel reads the blocks in the order they arrive, the later pixels all of
                # them again, arrived by then
                weights_ok |= self.weights_in > s["waddr"] + 1
            m.d.sync += [
                self.loaded.eq(self.cmd.keep | (weights_ok & params_ok)),
                s["rows_ok"].eq((self.rows_in >= Mux(row_end, s["need"] + self.cmd.stride,
                                                     s["need"]))
                                | (self.rows_in == self.cmd.in_h) | words_ok),
            ]
        with m.If(self.start):
            self._start(m, s)
        return m

    def _counters(self, m, s, issue):
        """The loop counters, their flags and the taps' weight address, ``first`` and ``last``."""
        l_gi, l_kx, l_ky, l_j, l_ox, l_oy = s["flags"]
        tap = self.taps.payload
        m.d.comb += [
            tap.lin.eq(s["tapbase"] + s["gi"] + s["goff"]),
            tap.ix.eq(s["ix"]),
            tap.iy.eq(s["iy"]),
            tap.waddr.eq(s["waddr"]),
            tap.first.eq((s["gi"] == 0) & (s["kx"] == 0) & (s["ky"] == 0)),
            tap.last.eq(l_gi & l_kx & l_ky),
        ]
        # Each counter: on a carry into it, it wraps to 0 after its last value
        # (its flag then tells whether 0 is also the last: a limit of 0) or
        # steps, its flag taking `near`. `near` itself is an equality of two
        # registers, the counter and its limit less two steps. `below[i]` is the AND of the flags of
        # the counters below counter i, registered too, so whether a tap
        # carries into counter i is one flip-flop. Every next value is a
        # function of registers alone and `issue` only enables the update:
        # the handshake is one gate in front of the registers' enables, not
        # an input of the carry and address logic.
        levels = ((s["gi"], 1), (s["kx"], 1), (s["ky"], 1), (s["j"], 1), (s["ox"], s["ox_step"]),
                  (s["oy"], 1))
        below = s["below"]
        flag_next = []
        with m.If(issue):
            for (ctr, inc), flag, b, near, lz, l1, l2 in zip(
                    levels, s["flags"], below, s["near"], s["lim_zero"], s["lim_inc"],
                    s["lim_2inc"]):
                with m.If(b):
                    m.d.sync += [ctr.eq(Mux(flag, 0, ctr + inc)),
                                 near.eq(Mux(flag, l1, ctr == l2))]
                flag_next.append(Mux(b, Mux(flag, lz, near), flag))
            for i, flag in enumerate(s["flags"]):
                m.d.sync += flag.eq(flag_next[i])
                if i < len(below) - 1:
                    m.d.sync += below[i + 1].eq(Cat(*flag_next[:i + 1]).all())

    def _addresses(self, m, s, issue):
        """Input coordinates and word addresses, following the counters' carries.

        A deeper carry's assignment comes later and wins.
        """
        l_gi, l_kx, l_ky, l_j, l_ox, l_oy = s["flags"]
        # Whether the tap carries into kx, ky, j, ox, oy (see _counters).
        c_kx, c_ky, c_j, c_ox, c_oy = s["below"][1:]
        cmd = self.cmd
        ix, iy, ix0, iy0 = s["ix"], s["iy"], s["ix0"], s["iy0"]
        tapbase, rowbase, pixbase, linebase = s["tapbase"], s["rowbase"], s["pixbase"], s["linebase"]
        nwa, nwr = s["nwa"], s["nwr"]
        with m.If(issue):
            m.d.sync += s["waddr"].eq(s["waddr"] + 1)
            with m.If(c_kx & ~l_kx):
                m.d.sync += [ix.eq(ix + 1), tapbase.eq(tapbase + s["g_step"])]
            with m.If(c_ky):
                m.d.sync += ix.eq(ix0)
            with m.If(c_ky & ~l_ky):
                m.d.sync += [iy.eq(iy + 1), rowbase.eq(rowbase + s["row_step"]),
                             tapbase.eq(rowbase + s["row_step"])]
            with m.If(c_j):
                m.d.sync += iy.eq(iy0)
            with m.If(c_j & ~l_j):
                m.d.sync += [s["goff"].eq(s["goff"] + s["goff_step"]), rowbase.eq(pixbase),
                             tapbase.eq(pixbase)]
            with m.If(c_ox):
                m.d.sync += [s["goff"].eq(0), s["waddr"].eq(0)]
            with m.If(c_ox & ~l_ox):
                m.d.sync += nwa.eq(nwa + s["sg"])
                nxt = pixbase + s["sg"]
                m.d.sync += [ix0.eq(ix0 + s["ix_step"]), ix.eq(ix0 + s["ix_step"]),
                             pixbase.eq(nxt), rowbase.eq(nxt), tapbase.eq(nxt)]
            with m.If(c_oy):
                m.d.sync += [ix0.eq(-cmd.pad_left), ix.eq(-cmd.pad_left)]
            with m.If(c_oy & ~l_oy):
                m.d.sync += [nwa.eq(nwr), nwr.eq(nwr + s["swg"])]
                nxt = linebase + s["swg"]
                m.d.sync += [iy0.eq(iy0 + cmd.stride), iy.eq(iy0 + cmd.stride),
                             s["need"].eq(s["need"] + cmd.stride), linebase.eq(nxt),
                             pixbase.eq(nxt), rowbase.eq(nxt), tapbase.eq(nxt)]
            with m.If(c_oy & l_oy):
                m.d.sync += s["busy"].eq(0)

    def _start(self, m, s):
        """Start values of a command."""
        cmd, sz, dwp, ws = self.cmd, self.sizes, self.dwp, self.ws
        R = self._config.pe.rows
        mode = self._config.pe.depthwise
        blocks = mode in ("pixels", "shifted")
        lgr = R.bit_length() - 1
        base = s["base"]
        # a depthwise layer on a pixels or shifted build: blocks of R output columns
        blk = dwp | self.dws if mode == "shifted" else dwp
        last_ox_blk = (cmd.out_w - 1) & ~(R - 1) if blocks else cmd.out_w - 1
        # shifted: a kernel row spans the R pixels' windows, k + (R-1)*stride columns
        lim_kx = (Mux(self.dws, cmd.k - 1 + Mux(cmd.stride == 2, 2 * (R - 1), R - 1), cmd.k - 1)
                  if mode == "shifted" else cmd.k - 1)
        # each counter starts at 0: last when its limit is 0
        first_kx = Mux(self.dws, 0, cmd.k == 1) if mode == "shifted" else cmd.k == 1
        first_flags = (self.gin_e == 1, first_kx, cmd.k == 1, cmd.gout == 1,
                       Mux(blk, cmd.out_w <= R, cmd.out_w == 1), cmd.out_h == 1)
        lim_ox = Mux(blk, last_ox_blk, cmd.out_w - 1)
        lims = (self.gin_e - 1, lim_kx, cmd.k - 1, cmd.gout - 1, lim_ox, cmd.out_h - 1)
        incs = (1, 1, 1, 1, Mux(blk, R, 1), 1)
        m.d.sync += [
            s["lim_j"].eq(lims[3]),
            *(r.eq(lim == inc) for r, lim, inc in zip(s["near"], lims, incs)),
            *(r.eq(lim == inc) for r, lim, inc in zip(s["lim_inc"], lims, incs)),
            *(r.eq(f) for r, f in zip(s["lim_zero"], first_flags)),
            *(r.eq(lim - 2 * inc) for r, lim, inc in zip(s["lim_2inc"], lims, incs)),
            *(f.eq(v) for f, v in zip(s["flags"], first_flags)),
            *(s["below"][i + 1].eq(Cat(*first_flags[:i + 1]).all()) for i in range(5)),
            self.loaded.eq(0), s["rows_ok"].eq(0),
            s["busy"].eq(1),
            *(s[n].eq(0) for n in ("gi", "kx", "ky", "j", "ox", "oy", "goff", "waddr")),
            s["ix"].eq(-cmd.pad_left), s["ix0"].eq(-cmd.pad_left),
            s["iy"].eq(-cmd.pad_top), s["iy0"].eq(-cmd.pad_top),
            s["need"].eq(cmd.k - cmd.pad_top),
            *(s[n].eq(base) for n in ("tapbase", "rowbase", "pixbase", "linebase")),
            s["nwa"].eq(s["nwa0"]), s["nwr"].eq(s["nwr0"]),
            s["g_step"].eq(Mux(dwp, 0, cmd.gin)),
            s["sg"].eq(Mux(dwp, 0, Mux(self.dws, Mux(cmd.stride == 2, cmd.gin << (lgr + 1),
                                                     cmd.gin << lgr),
                                       Mux(cmd.stride == 2, cmd.gin << 1, cmd.gin)))
                       if mode == "shifted" else
                       Mux(dwp, 0, Mux(cmd.stride == 2, cmd.gin << 1, cmd.gin))),
            s["swg"].eq(Mux(dwp, Mux(cmd.stride == 2, ws << 1, ws),
                            Mux(cmd.stride == 2, sz.wg << 1, sz.wg))),
            s["row_step"].eq(Mux(dwp, ws, sz.wg)),
            s["goff_step"].eq(Mux(dwp, sz.plane, self.dw)),
            s["ox_step"].eq(Mux(blk, R, 1)),
            s["ix_step"].eq(Mux(blk, cmd.stride << lgr, cmd.stride)),
        ]
