"""Tiled PSC convolution core: one layer (or one host-scheduled tile of a layer) per command.

See :class:`PSCConvCore` for the interfaces, the command format and the
timing; :mod:`psc.host` for the host-side scheduler that drives it.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig, PSCConfig, _check_range
from psc.hw.dot_product import DotProduct
from psc.hw.requantize import SHIFT_WIDTH, Requantizer

__all__ = [
    "CoreConfig", "PSCConvCore", "KIND_STANDARD", "KIND_DEPTHWISE", "KIND_POINTWISE",
    "KIND_FC", "KERNELS", "STRIDES", "FIELD_WIDTH", "COUNTER_WIDTH", "OUTPUT_COUNT_WIDTH",
    "MAX_OUTPUTS",
    "config_layout", "weight_layout", "param_layout", "act_in_layout", "act_out_layout",
]

KIND_STANDARD, KIND_DEPTHWISE, KIND_POINTWISE, KIND_FC = 0, 1, 2, 3
KERNELS = (1, 3, 5, 7)
STRIDES = (1, 2)
#: Width of the size fields of a layer command (heights, widths, channel groups).
FIELD_WIDTH = 16
#: Width of the cycle counters.
COUNTER_WIDTH = 32
#: Width of the core's count of a command's output beats (``out_h * out_w * gout``),
#: which are streamed, not stored, so no buffer bounds them. 24 bits hold every tile
#: :func:`psc.host.plan_layer` makes for the shipped builds: a tile's input holds at
#: most ``fmap_depth`` words, one input pixel (``k = 7``, padding 6) makes at most
#: 7 x 7 output pixels and a tile has at most ``param_depth`` output groups, so
#: ``49 * fmap_depth * param_depth`` outputs: 3.2M for the default and UP5K builds,
#: 12.8M for the ECP5 one, below 2**24 (16.7M, over 0.5 s of output at 30 MHz).
OUTPUT_COUNT_WIDTH = 24
#: Most output beats one command may make; the core refuses a larger one (``error``).
MAX_OUTPUTS = (1 << OUTPUT_COUNT_WIDTH) - 1


def config_layout(config=None):
    """Payload of :attr:`PSCConvCore.cfg`, one beat per layer (or tile).

    Fields (LSB first): ``in_h``, ``in_w`` (input tile size), ``out_h``,
    ``out_w`` (output tile size), ``gin``, ``gout`` (input and output channel
    groups: ``ceil(Cin / lanes)``, ``ceil(Cout / rows)``), ``k`` (kernel),
    ``stride``, ``pad_top``, ``pad_left`` (zero rows/columns before the tile;
    rows/columns after it are implied by ``out_h``/``out_w``), ``kind``
    (``KIND_*``), ``relu``, ``keep`` (reuse the weights and parameters of the
    previous command instead of loading new ones).
    """
    return data.StructLayout({
        "in_h": FIELD_WIDTH, "in_w": FIELD_WIDTH, "out_h": FIELD_WIDTH, "out_w": FIELD_WIDTH,
        "gin": FIELD_WIDTH, "gout": FIELD_WIDTH,
        "k": 4, "stride": 2, "pad_top": 3, "pad_left": 3, "kind": 2, "relu": 1, "keep": 1,
    })


def weight_layout(config):
    """Payload of :attr:`PSCConvCore.weights`: one ``rows x lanes`` block of weight words.

    Row ``r`` lane ``l`` is word ``r * lanes + l``: parified ``{W-, W+}``
    (``W+`` low, :func:`psc.model.packing.parify`) when ``psc``, else the signed
    weight. Same bits as the ``w`` field of :func:`psc.hw.dot_product.input_layout`.
    """
    p = config.pe if isinstance(config, CoreConfig) else config
    elem = unsigned(2 * p.weight_width) if p.psc else signed(p.weight_width)
    return data.ArrayLayout(data.ArrayLayout(elem, p.lanes), p.rows)


def param_layout(config):
    """Payload of :attr:`PSCConvCore.params`: ``bias``, ``mult``, ``shift`` of ``rows`` channels."""
    p = config.pe if isinstance(config, CoreConfig) else config
    return data.StructLayout({
        "bias": data.ArrayLayout(signed(p.acc_width), p.rows),
        "mult": data.ArrayLayout(unsigned(p.mult_width), p.rows),
        "shift": data.ArrayLayout(unsigned(SHIFT_WIDTH), p.rows),
    })


def act_in_layout(config):
    """Payload of :attr:`PSCConvCore.act_in`: ``lanes`` signed activations (a lane word)."""
    p = config.pe if isinstance(config, CoreConfig) else config
    return data.ArrayLayout(signed(p.act_width), p.lanes)


def act_out_layout(config):
    """Payload of :attr:`PSCConvCore.act_out`: ``rows`` signed activations."""
    p = config.pe if isinstance(config, CoreConfig) else config
    return data.ArrayLayout(signed(p.act_width), p.rows)


def _bits(n):
    return max(1, int(n).bit_length())


class PSCConvCore(wiring.Component):
    """Output-stationary PSC convolution core over on-chip buffers.

    One command (a :attr:`cfg` beat) runs one layer, or one tile of a layer
    cut by the host scheduler (:mod:`psc.host`). After the command the core
    takes, concurrently, ``gout * K*K * gin'`` weight blocks (``gin' = 1`` for
    depthwise, else ``gin``), ``gout`` parameter beats (both skipped when
    ``keep``) and ``in_h * in_w * gin`` activation lane words, and produces
    ``out_h * out_w * gout`` output beats. Channels travel channels-last:
    input beat order ``(y, x, g)``, output order ``(oy, ox, j)``.

    Command checks (``error`` and no output when one fails): ``k`` in
    {1, 3, 5, 7}; ``stride`` in {1, 2}; ``pad_top``, ``pad_left`` < ``k``;
    every size >= 1; ``kind`` pointwise/FC need ``k = 1`` (FC also a 1x1
    map); depthwise needs ``gin = gout`` and a build with ``lanes = rows``;
    input words <= ``fmap_depth``; weight blocks <= ``weight_depth``;
    ``gout`` <= ``param_depth``; ``gin' * lanes * k * k`` <= ``max_reduction``
    (the accumulator is sized for it); output beats ``out_h * out_w * gout``
    <= :data:`MAX_OUTPUTS`.

    Computation. For each output pixel ``(oy, ox)`` (row-major) and output
    group ``j`` the sequencer issues ``K*K*gin'`` beats to a
    :class:`~psc.hw.dot_product.DotProduct`, in the order ``ky, kx, g``: the
    input word of pixel ``(oy*s - pad_top + ky, ox*s - pad_left + kx)``,
    group ``g`` (zero when that falls outside the tile: padding is made by
    the address logic, never stored; depthwise uses ``g = j``) and the
    weight block at address ``j * K*K*gin' + (ky*K + kx) * gin' + g``, with
    ``first``/``last`` on the first/last beat. The accumulators start from
    zero; the bias of group ``j`` is added after the array, where the
    requantiser's parameters of the group are read anyway (one parameter
    read port, no bias registers along the MAC pipeline).
    Weight block ``(j, ky, kx, g)`` therefore holds
    ``W[j*rows + r, g*lanes + l, ky, kx]`` at row ``r``, lane ``l``; a
    depthwise block is diagonal. Results go through the
    :class:`~psc.hw.requantize.Requantizer` with the multiplier/shift of group
    ``j`` and leave as one ``rows``-channel beat, so the output is
    channels-last with no reordering.

    Depthwise layers on a ``depthwise="pixels"`` build (the default
    :class:`CoreConfig`) use the whole array instead of a diagonal block:
    lanes are channels, row ``r`` computes output pixel ``ox + r`` and every
    multiplier keeps its own accumulator (:class:`~psc.hw.dot_product.DotProduct`
    depthwise mode). The sequencer steps ``ox`` by ``rows`` and issues
    ``K*K`` beats per block of ``rows`` pixels and group ``j``; weight block
    ``(j, ky, kx)`` holds the group's ``lanes`` weights in every row. The
    input buffer is ``rows`` banks; a depthwise layer stores column ``x`` in
    bank ``(x // stride) % rows``, so the ``rows`` pixels of a beat read
    ``rows`` different banks (other layers interleave the banks word by
    word and read one). Such a tile needs
    ``rows * in_h * ceil(in_w / (stride*rows)) * stride * gin`` words of
    ``fmap_depth``. The output comes in blocks: order
    ``(oy, ox // rows, j, ox % rows)``, pixels past ``out_w`` dropped.

    Pipeline: sequencer counters -> a two-entry FIFO of buffer addresses (1
    cycle; it lets the sequencer's issue condition be a few registers, not
    the MAC array's ready) -> buffer reads (synchronous, 1 cycle; one
    more with ``read_register``) ->
    DotProduct (``dp.latency``: 3 for the generic multiplier, more with
    a DSP multiplier or ``tree_stages``; depthwise pixels mode
    ``dp.dw_latency``) -> parameter read (1) -> Requantizer (``rq.latency``:
    8 at the default widths, more when time-shared or digit-serial) ->
    ``act_out``: a ``last`` beat's result is on ``act_out``
    ``dp.latency + 3 + rq.latency`` cycles after its address left the
    sequencer when nothing stalls (two more with ``read_register``). The
    sequencer issues one beat per cycle from a cycle after the weights and
    parameters are loaded and the input rows its output row needs have
    arrived (so loading the input overlaps the computation),
    unless ``act_out`` stalls. Setup computes the command's derived sizes
    with a shift-and-add multiplier (one cycle per significant bit of each
    factor, a few tens of cycles) into registers sized by what the build can
    hold; a product too big for its register saturates to the register's
    largest value, which is above the limit it is checked against, so a
    command with huge fields is refused, never wrapped into one that passes.
    A command costs about
    ``setup + weights + params + first input rows
    + out_h*out_w*gout*K*K*gin' + latency`` cycles.

    Status: ``busy`` from a command's acceptance to its end; ``done`` is a
    one-cycle pulse at the end of every command (refused ones too), with
    ``error`` (held until the next command) telling which; the counters
    hold their values until the next command: ``cycles_total`` (cycles the
    command was busy), ``cycles_compute`` (beats that entered the MAC
    array), ``cycles_stall`` (cycles with weights loaded and beats left in
    which no beat entered: waiting for input rows or for ``act_out``).

    ``rst`` (synchronous) abandons a command at any point; the buffers are
    not cleared, so the command after a reset must not use ``keep``.

    Parameters
    ----------
    config : CoreConfig
    dot_product : type
        The MAC array's class, :class:`~psc.hw.dot_product.DotProduct` or a
        subclass with its ports (``psc compare`` builds the paper's naive
        datapath, :class:`~psc.hw.naive.NaiveDotProduct`, into the same core).

    Attributes
    ----------
    cfg : In(stream.Signature(config_layout()))
    weights : In(stream.Signature(weight_layout(config)))
    params : In(stream.Signature(param_layout(config)))
    act_in : In(stream.Signature(act_in_layout(config)))
    act_out : Out(stream.Signature(act_out_layout(config)))
    busy, done, error : Out(1)
    cycles_total, cycles_compute, cycles_stall : Out(COUNTER_WIDTH)
    """

    def __init__(self, config=None, *, dot_product=DotProduct):
        if config is None:
            config = CoreConfig()
        if not isinstance(config, CoreConfig):
            raise TypeError(f"config must be a psc.hw.core.CoreConfig, not {config!r}")
        if not (isinstance(dot_product, type) and issubclass(dot_product, DotProduct)):
            raise TypeError(f"dot_product must be psc.hw.dot_product.DotProduct or a subclass, "
                            f"not {dot_product!r}")
        self._config = config
        self._dot_product = dot_product
        super().__init__({
            "cfg": In(stream.Signature(config_layout(config))),
            "weights": In(stream.Signature(weight_layout(config))),
            "params": In(stream.Signature(param_layout(config))),
            "act_in": In(stream.Signature(act_in_layout(config))),
            "act_out": Out(stream.Signature(act_out_layout(config))),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "cycles_total": Out(COUNTER_WIDTH),
            "cycles_compute": Out(COUNTER_WIDTH),
            "cycles_stall": Out(COUNTER_WIDTH),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cc = self._config
        pe = cc.pe
        FW = FIELD_WIDTH
        abits = _bits(cc.fmap_depth)         # real addresses are < fmap_depth
        sa = signed(abits + 5)               # address registers (padding goes negative)
        sd = signed(FW + 2)                  # tap coordinates
        # Limits of the derived sizes of an accepted command (the checks in
        # `bad` refuse anything above them).
        red_max = pe.max_reduction // pe.lanes   # beats per reduction
        pad_max = (1 << 3) - 1                   # pad_top/pad_left fields (3 bits)

        def sized(limit, name):
            # One more value than `limit`: a saturated product (all ones) is > limit.
            return Signal(_bits(limit + 1), name=name)

        # --- buffers -------------------------------------------------------
        pix = pe.depthwise == "pixels"
        R = pe.rows
        lgr = R.bit_length() - 1                # log2(rows) when pix
        nbanks = R if pix else 1
        banks = []
        for b in range(nbanks):
            mem = Memory(shape=act_in_layout(cc), depth=cc.fmap_depth // nbanks, init=[])
            m.submodules["inbuf" if not pix else f"inbuf_{b}"] = mem
            banks.append((mem.write_port(), mem.read_port()))
        m.submodules.wbuf = wbuf = Memory(shape=weight_layout(cc), depth=cc.weight_depth, init=[])
        m.submodules.pbuf = pbuf = Memory(shape=param_layout(cc), depth=cc.param_depth, init=[])
        w_w_port = wbuf.write_port()
        w_r_port = wbuf.read_port()
        p_w_port = pbuf.write_port()
        p_r_req = pbuf.read_port()           # bias/multiplier/shift, for the requantiser

        m.submodules.dp = dp = self._dot_product(pe)
        m.submodules.rq = rq = Requantizer(pe)

        # --- command registers -----------------------------------------------
        cmd = Signal(config_layout(cc))
        dw = Signal()                        # depthwise
        gin_e = Signal(FW)                   # input groups per reduction
        # Each derived size is sized by its bound in an accepted command:
        # words per input row <= input words (in_h >= 1), and so on.
        wg = sized(cc.fmap_depth, "wg")      # words per input row
        n_in = sized(cc.fmap_depth, "n_in")
        ow = sized(MAX_OUTPUTS, "ow")        # output beats per output row
        n_out = sized(MAX_OUTPUTS, "n_out")
        kk = sized(red_max, "kk")            # kk <= red (gin' >= 1)
        red = sized(red_max, "red")          # beats per reduction
        n_w = sized(cc.weight_depth, "n_w")
        # Used only by an accepted command (wg, gin <= fmap_depth), never checked.
        pt_wg = sized(pad_max * cc.fmap_depth, "pt_wg")
        pl_g = sized(pad_max * cc.fmap_depth, "pl_g")
        # depthwise='pixels' builds: a depthwise layer's input words go to bank
        # (x // s) % rows at (g * plane + y * ws + (x // s // rows) * s + x % s),
        # so the rows (output pixels ox..ox+rows-1) read rows different banks.
        dwp = Signal()                       # depthwise layer on a pixels build
        bank_depth = cc.fmap_depth // (R if pix else 1)
        ws = Signal(FW + 1)                  # bank words per input row and group
        plane = sized(bank_depth, "plane")   # bank words per group
        n_dw = sized(bank_depth, "n_dw")     # bank words of the whole tile (checked)
        pt_ws = sized(pad_max * bank_depth, "pt_ws")
        if pix:
            sh = Mux(cmd.stride == 2, lgr + 1, lgr)
            blocks = (cmd.in_w + (Mux(cmd.stride == 2, 2 * R, R) - 1)) >> sh
            m.d.comb += ws.eq(Mux(cmd.stride == 2, blocks << 1, blocks))
        m.d.comb += [self.busy.eq(0)]

        # The command's derived sizes are products of its fields. They are
        # computed once per command by one shift-and-add multiplier (one bit
        # of the 16-bit factor per cycle, stopping when the rest is zero), so
        # setup costs one adder as wide as the widest derived size instead of
        # an array multiplier in LUTs (or a DSP) and a few tens of cycles per
        # command. The multiplier saturates: `ovf` is set when a partial sum
        # or the shifted multiplicand leaves its PW bits, and a product that
        # overflows (or does not fit its destination) is stored as the
        # destination's all-ones value, above every limit it is checked
        # against, so no product of huge fields wraps into a small one.
        steps = [
            (wg, cmd.in_w, cmd.gin),
            (n_in, cmd.in_h, wg),
            (ow, cmd.out_w, cmd.gout),
            (n_out, cmd.out_h, ow),
            (kk, cmd.k, cmd.k),
            (red, gin_e, kk),
            (n_w, cmd.gout, red),
            (pt_wg, cmd.pad_top, wg),
            (pl_g, cmd.pad_left, cmd.gin),
        ]
        if pix:
            steps += [(plane, cmd.in_h, ws), (n_dw, cmd.gin, plane), (pt_ws, cmd.pad_top, ws)]
        PW = max(len(dst) for dst, _, _ in steps)
        mul_a = Signal(FW)                   # factor, consumed LSB first
        mul_b = Signal(PW)                   # multiplicand, shifted left
        b_big = Signal()                     # the multiplicand has left its PW bits
        prod = Signal(PW)
        ovf = Signal()                       # sticky: the product has left its PW bits
        mul_sum = Signal(PW + 1)
        mul_run = Signal()
        m.d.comb += mul_sum.eq(prod + mul_b)
        step = Signal(range(len(steps) + 1))

        # --- sequencer state -------------------------------------------------
        seq_busy = Signal()
        gi = Signal(range(max(1, red_max)))  # < gin' <= red (accepted command)
        kx = Signal(4)
        ky = Signal(4)
        j = Signal(range(cc.param_depth))    # < gout <= param_depth
        ox = Signal(FW)
        oy = Signal(FW)
        ix = Signal(sd)
        iy = Signal(sd)
        ix0 = Signal(sd)
        iy0 = Signal(sd)
        need = Signal(sd)                    # input rows the current output row needs
        # depthwise: input group = output group (diagonal: j; pixels: j * plane)
        goff = Signal(range(max(cc.param_depth, bank_depth) + 1))
        goff_step = Signal.like(goff)
        row_step = Signal(sa)                # address step per kernel row
        tapbase = Signal(sa)
        rowbase = Signal(sa)
        pixbase = Signal(sa)
        linebase = Signal(sa)
        waddr = Signal(_bits(cc.weight_depth) + 1)
        g_step = Signal(sa)                  # words per input pixel
        sg = Signal(sa)                      # words per output column step
        swg = Signal(sa)                     # words per output row step
        ox_step = Signal(range(R + 1))       # output columns per step (rows for dw pixels)
        ix_step = Signal(range(2 * R + 1))

        # loaders
        # (each counts up to a size checked against the build: input words,
        # words per row, rows <= input words, weight blocks, groups, outputs)
        in_cnt = Signal(range(cc.fmap_depth + 1))
        col_cnt = Signal(range(cc.fmap_depth))
        rows_in = Signal(range(cc.fmap_depth + 1))
        w_cnt = Signal(range(cc.weight_depth + 1))
        p_cnt = Signal(range(cc.param_depth + 1))
        out_cnt = Signal(OUTPUT_COUNT_WIDTH)
        # Registered "stream complete" flags: the loaders' ready signals are
        # flip-flops, not comparators (the bridge's logic hangs off them).
        in_done, w_done, p_done = Signal(), Signal(), Signal()

        keep = cmd.keep
        # Registered: the sequencer's issue condition is a few flip-flops, not
        # the comparators behind them (they set the clock on ECP5 and iCE40).
        loaded = Signal()
        rows_ok = Signal()

        # The last value of each sequencer counter, set when a command starts,
        # and one flag per counter, registered, telling that it holds its last
        # value: the carry into the next counter is then an AND of flip-flops
        # (no subtract-and-compare against the command's fields in that path).
        lim_gi = Signal.like(gi)
        lim_k = Signal(4)
        lim_j = Signal.like(j)
        lim_ox = Signal(FW)
        lim_oy = Signal(FW)
        l_gi, l_kx, l_ky, l_j, l_ox, l_oy = (Signal(name=f"last_{n}") for n in
                                              ("gi", "kx", "ky", "j", "ox", "oy"))

        # --- stage 0 -> stage 1: a two-entry FIFO of buffer addresses --------
        # The sequencer writes the addresses of a beat into this FIFO; the
        # buffer reads take them when the MAC array can take a beat. The
        # array's ready (which comes back combinationally from act_out through
        # the requantiser and the DotProduct) then ends at the FIFO's read side
        # instead of fanning out into every sequencer register.
        bank_abits = _bits(cc.fmap_depth // nbanks - 1)
        addr_fields = {
            "addr": data.ArrayLayout(unsigned(bank_abits), nbanks),
            "waddr": unsigned(len(waddr)),
            "pad": unsigned(R if pix else 1),  # per row (pixels builds) or shared
            "first": 1, "last": 1,
        }
        if pix:
            addr_fields.update(sel=unsigned(max(1, lgr)), rot=unsigned(max(1, lgr)))
        addr_layout = data.StructLayout(addr_fields)
        m.submodules.addr_fifo = addr_fifo = SyncFIFO(width=addr_layout.size, depth=2)
        a0 = Signal(addr_layout)              # what the sequencer writes
        a1 = data.View(addr_layout, addr_fifo.r_data)

        # --- pipeline stage 1: buffer reads ----------------------------------
        v1 = Signal()
        first1 = Signal()
        last1 = Signal()
        adv1 = Signal()
        sel1 = Signal(range(nbanks))         # pixels builds: bank of the shared word
        rot1 = Signal(range(nbanks))         # pixels builds, dw: bank of row 0
        padr1 = Signal(R if pix else 1)      # padding per row (pixels builds) or shared

        # What stage 1 presents to the MAC array, padding not yet masked: with
        # read_register the mask comes after the register, so the block RAM's
        # clock-to-out ends at a flip-flop.
        beat = Signal.like(dp.i.payload)
        if cc.read_register:
            v2 = Signal()
            beat2 = Signal.like(dp.i.payload, reset_less=True)
            pad2 = Signal.like(padr1, reset_less=True)
            adv2 = ~v2 | dp.i.ready
            m.d.comb += [adv1.eq(~v1 | adv2), dp.i.valid.eq(v2)]
            with m.If(adv2):
                m.d.sync += [v2.eq(v1), beat2.eq(beat), pad2.eq(padr1)]
            beat_o, pad_o = beat2, pad2
        else:
            m.d.comb += [adv1.eq(~v1 | dp.i.ready), dp.i.valid.eq(v1)]
            beat_o, pad_o = beat, padr1

        issue = Signal()
        m.d.comb += issue.eq(seq_busy & loaded & rows_ok & addr_fifo.w_rdy)
        m.d.comb += [addr_fifo.w_en.eq(issue), addr_fifo.w_data.eq(a0), addr_fifo.r_en.eq(adv1)]
        pad0 = (iy < 0) | (iy >= cmd.in_h) | (ix < 0) | (ix >= cmd.in_w)

        lin = Signal(sa)                     # linear word address of the beat
        m.d.comb += lin.eq(tapbase + gi + goff)
        m.d.comb += [
            a0.waddr.eq(waddr),
            a0.first.eq((gi == 0) & (kx == 0) & (ky == 0)),
            a0.last.eq(l_gi & l_kx & l_ky),
        ]
        for b, (_, rp) in enumerate(banks):
            m.d.comb += [rp.en.eq(adv1), rp.addr.eq(a1.addr[b])]
        if not pix:
            m.d.comb += [a0.addr[0].eq(lin), a0.pad.eq(pad0)]
        else:
            # depthwise: column ix = c0 of row 0; q0 = c0 // s, row r reads column
            # c0 + s*r, in bank (q0 + r) % R at lin + (q0 // R + (b < q0 % R)) * s + c0 % s
            q0 = Signal(sd)
            m.d.comb += q0.eq(Mux(cmd.stride == 2, ix >> 1, ix))
            qm = q0[:lgr]
            qd = q0 >> lgr
            odd = Mux(cmd.stride == 2, ix[0], 0)
            for b in range(nbanks):
                col = Mux(cmd.stride == 2, (qd + (b < qm)) << 1, qd + (b < qm))
                m.d.comb += a0.addr[b].eq(Mux(dwp, lin + col + odd, lin >> lgr))
            padr = Cat(
                (iy < 0) | (iy >= cmd.in_h) | (ix + Mux(cmd.stride == 2, 2 * r, r) < 0)
                | (ix + Mux(cmd.stride == 2, 2 * r, r) >= cmd.in_w) for r in range(R))
            m.d.comb += [a0.sel.eq(lin[:lgr]), a0.rot.eq(qm),
                         a0.pad.eq(Mux(dwp, padr, pad0.replicate(R)))]
        m.d.comb += [
            w_r_port.addr.eq(a1.waddr),
            w_r_port.en.eq(adv1),
        ]
        with m.If(adv1):
            m.d.sync += [
                v1.eq(addr_fifo.r_rdy),
                padr1.eq(a1.pad),
                first1.eq(a1.first),
                last1.eq(a1.last),
            ]
            if pix:
                m.d.sync += [sel1.eq(a1.sel), rot1.eq(a1.rot)]
        # An AND, not a mux to 0: Yosys would turn the mux into a synchronous
        # reset of the PE's input register, which an SB_MAC16 input register
        # cannot absorb, leaving the multiply outside nextpnr's timing.
        word_bits = pe.lanes * pe.act_width
        if pix:
            bank_data = Array(rp.data.as_value() for _, rp in banks)
            for r in range(R):
                pick = Mux(dwp, (rot1 + r)[:lgr], sel1)
                m.d.comb += [
                    beat.x[r].eq(bank_data[pick]),
                    dp.i.payload.x[r].eq(beat_o.x[r].as_value() & ~pad_o[r].replicate(word_bits)),
                ]
            m.d.comb += dp.dw.eq(dwp)
        else:
            m.d.comb += [
                beat.x.eq(banks[0][1].data.as_value()),
                dp.i.payload.x.eq(beat_o.x.as_value() & ~pad_o[0].replicate(word_bits)),
            ]
        m.d.comb += [
            beat.w.eq(w_r_port.data),
            beat.bias.eq(0),
            beat.first.eq(first1),
            beat.last.eq(last1),
            dp.i.payload.w.eq(beat_o.w),
            dp.i.payload.bias.eq(beat_o.bias),
            dp.i.payload.first.eq(beat_o.first),
            dp.i.payload.last.eq(beat_o.last),
        ]

        # Each counter: on a carry into it, it wraps to 0 after its last value
        # (its flag then tells whether 0 is also the last: a limit of 0) or
        # steps, its flag comparing the stepped value with the limit. The
        # compares read registers only. `below[i]` is the AND of the flags of
        # the counters below counter i, registered too, so the carry into any
        # counter is `issue` and one flip-flop, not a chain of flags.
        levels = ((gi, l_gi, lim_gi, 1), (kx, l_kx, lim_k, 1), (ky, l_ky, lim_k, 1),
                  (j, l_j, lim_j, 1), (ox, l_ox, lim_ox, ox_step), (oy, l_oy, lim_oy, 1))
        below = [Const(1)] + [Signal(name=f"below_{n}") for n in ("kx", "ky", "j", "ox", "oy")]
        carry = [issue & b for b in below]
        flag_next = []
        for (ctr, flag, lim, inc), c in zip(levels, carry):
            nxt = ctr + inc
            with m.If(c):
                m.d.sync += ctr.eq(Mux(flag, 0, nxt))
            flag_next.append(Mux(c, Mux(flag, lim == 0, nxt == lim), flag))
        for i, flag in enumerate((l_gi, l_kx, l_ky, l_j, l_ox, l_oy)):
            m.d.sync += flag.eq(flag_next[i])
            if i < len(below) - 1:
                m.d.sync += below[i + 1].eq(Cat(*flag_next[:i + 1]).all())

        # The addresses follow the same carries; a deeper carry's assignment
        # comes later and wins.
        c_kx, c_ky, c_j, c_ox, c_oy = carry[1:]
        with m.If(issue):
            m.d.sync += waddr.eq(waddr + 1)
        with m.If(c_kx & ~l_kx):
            m.d.sync += [ix.eq(ix + 1), tapbase.eq(tapbase + g_step)]
        with m.If(c_ky):
            m.d.sync += ix.eq(ix0)
        with m.If(c_ky & ~l_ky):
            m.d.sync += [iy.eq(iy + 1), rowbase.eq(rowbase + row_step),
                         tapbase.eq(rowbase + row_step)]
        with m.If(c_j):
            m.d.sync += iy.eq(iy0)
        with m.If(c_j & ~l_j):
            m.d.sync += [goff.eq(goff + goff_step), rowbase.eq(pixbase), tapbase.eq(pixbase)]
        with m.If(c_ox):
            m.d.sync += [goff.eq(0), waddr.eq(0)]
        with m.If(c_ox & ~l_ox):
            m.d.sync += [ix0.eq(ix0 + ix_step), ix.eq(ix0 + ix_step), pixbase.eq(pixbase + sg),
                         rowbase.eq(pixbase + sg), tapbase.eq(pixbase + sg)]
        with m.If(c_oy):
            m.d.sync += [ix0.eq(-cmd.pad_left), ix.eq(-cmd.pad_left)]
        with m.If(c_oy & ~l_oy):
            m.d.sync += [iy0.eq(iy0 + cmd.stride), iy.eq(iy0 + cmd.stride),
                         need.eq(need + cmd.stride), linebase.eq(linebase + swg),
                         pixbase.eq(linebase + swg), rowbase.eq(linebase + swg),
                         tapbase.eq(linebase + swg)]
        with m.If(c_oy & l_oy):
            m.d.sync += seq_busy.eq(0)

        # --- output side: parameter read, requantiser ------------------------
        jo = Signal(range(cc.param_depth))   # < gout <= param_depth
        vj = Signal()
        accj = Signal.like(dp.o.payload)
        en_j = Signal()
        keep_o = Signal()                    # dw pixels: the beat's pixel is inside out_w
        ro = Signal(range(R))                # dw pixels: row (pixel) of the beat
        oxo = Signal(FW)                     # dw pixels: first pixel of the beat's block
        last_jo = jo == lim_j
        m.d.comb += keep_o.eq(~dwp | (oxo + ro < cmd.out_w) if pix else 1)
        if cc.read_register:
            # The parameters and the sums registered once more before the bias
            # add: a block RAM's clock-to-out plus a 32-bit add in one cycle is
            # what limits an ECP5 build otherwise.
            vb = Signal()
            accb = Signal.like(accj, reset_less=True)
            pb = Signal.like(p_r_req.data, reset_less=True)
            en_b = ~vb | rq.i.ready
            m.d.comb += en_j.eq(~vj | en_b)
            with m.If(en_b):
                m.d.sync += [vb.eq(vj), accb.eq(accj), pb.eq(p_r_req.data)]
        else:
            vb, accb, pb = vj, accj, p_r_req.data
            m.d.comb += en_j.eq(~vj | rq.i.ready)
        # The host keeps bias + any reduction inside acc_width, so the sum cannot wrap.
        m.d.comb += [rq.i.payload.acc[r].eq(accb[r] + pb.bias[r]) for r in range(R)]
        m.d.comb += [
            dp.o.ready.eq(en_j),
            p_r_req.addr.eq(jo),
            p_r_req.en.eq(en_j),
            rq.i.valid.eq(vb),
            rq.i.payload.mult.eq(pb.mult),
            rq.i.payload.shift.eq(pb.shift),
            rq.relu.eq(cmd.relu),
            self.act_out.valid.eq(rq.o.valid),
            self.act_out.payload.eq(rq.o.payload),
            rq.o.ready.eq(self.act_out.ready),
        ]
        with m.If(en_j):
            m.d.sync += [vj.eq(dp.o.valid & keep_o), accj.eq(dp.o.payload)]
            with m.If(dp.o.valid & (~dwp | (ro == R - 1))):
                m.d.sync += jo.eq(Mux(last_jo, 0, jo + 1))
            if pix:
                with m.If(dp.o.valid & dwp):
                    m.d.sync += ro.eq(ro + 1)
                    with m.If((ro == R - 1) & last_jo):
                        m.d.sync += oxo.eq(Mux(oxo + R >= cmd.out_w, 0, oxo + R))

        # --- loaders -----------------------------------------------------------
        in_fire = Signal()
        m.d.comb += in_fire.eq(self.act_in.valid & self.act_in.ready)
        lx = Signal(FW)                      # dw pixels: column of the incoming word
        lgi = Signal(FW)                     # dw pixels: group of the incoming word
        lrow = Signal(range(bank_depth + 1))  # dw pixels: y * ws
        lgoff = Signal(range(bank_depth + 1))  # dw pixels: g * plane
        for b, (wp, _) in enumerate(banks):
            m.d.comb += wp.data.eq(self.act_in.payload)
            if not pix:
                m.d.comb += [wp.addr.eq(in_cnt), wp.en.eq(in_fire)]
                continue
            lq = Mux(cmd.stride == 2, lx >> 1, lx)
            lcol = Mux(cmd.stride == 2, ((lq >> lgr) << 1) | lx[0], lq >> lgr)
            m.d.comb += [
                wp.addr.eq(Mux(dwp, lgoff + lrow + lcol, in_cnt >> lgr)),
                wp.en.eq(in_fire & Mux(dwp, lq[:lgr] == b, in_cnt[:lgr] == b)),
            ]
        if pix:
            with m.If(in_fire):
                with m.If(lgi == cmd.gin - 1):
                    m.d.sync += [lgi.eq(0), lgoff.eq(0)]
                    with m.If(col_cnt == wg - 1):
                        m.d.sync += [lx.eq(0), lrow.eq(lrow + ws)]
                    with m.Else():
                        m.d.sync += lx.eq(lx + 1)
                with m.Else():
                    m.d.sync += [lgi.eq(lgi + 1), lgoff.eq(lgoff + plane)]
        m.d.comb += [
            w_w_port.addr.eq(w_cnt),
            w_w_port.data.eq(self.weights.payload),
            p_w_port.addr.eq(p_cnt),
            p_w_port.data.eq(self.params.payload),
        ]

        # --- counters ----------------------------------------------------------
        tot = Signal(COUNTER_WIDTH)
        comp = Signal(COUNTER_WIDTH)
        stall = Signal(COUNTER_WIDTH)
        m.d.comb += [self.cycles_total.eq(tot), self.cycles_compute.eq(comp),
                     self.cycles_stall.eq(stall)]
        err = Signal()
        m.d.comb += self.error.eq(err)
        m.d.sync += self.done.eq(0)

        # --- command checks -----------------------------------------------------
        k = cmd.k
        bad = Signal()
        bad_r = Signal()
        fin = Signal()                       # every output sent, every input word taken
        m.d.comb += bad.eq(
            ~((k == 1) | (k == 3) | (k == 5) | (k == 7))
            | ~((cmd.stride == 1) | (cmd.stride == 2))
            | (cmd.pad_top >= k) | (cmd.pad_left >= k)
            | (cmd.in_h == 0) | (cmd.in_w == 0) | (cmd.out_h == 0) | (cmd.out_w == 0)
            | (cmd.gin == 0) | (cmd.gout == 0)
            | (((cmd.kind == KIND_POINTWISE) | (cmd.kind == KIND_FC)) & (k != 1))
            | ((cmd.kind == KIND_FC) & ((cmd.in_h != 1) | (cmd.in_w != 1)
                                        | (cmd.out_h != 1) | (cmd.out_w != 1)))
            | ((cmd.kind == KIND_DEPTHWISE) & ((cmd.gin != cmd.gout) | (pe.lanes != pe.rows)))
            | (n_in > cc.fmap_depth)
            | (dwp & (n_dw > cc.fmap_depth // R))
            | (~keep & (n_w > cc.weight_depth))
            | (cmd.gout > cc.param_depth)
            # red * lanes > max_reduction, without the multiply
            | (red > red_max)
            | (n_out > MAX_OUTPUTS)
        )

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cfg.ready.eq(1)
                with m.If(self.cfg.valid):
                    m.d.sync += [
                        cmd.eq(self.cfg.payload), step.eq(0), mul_run.eq(0), err.eq(0),
                        dw.eq(self.cfg.payload.kind == KIND_DEPTHWISE),
                        dwp.eq(pix & (self.cfg.payload.kind == KIND_DEPTHWISE)),
                        gin_e.eq(Mux(self.cfg.payload.kind == KIND_DEPTHWISE, 1,
                                     self.cfg.payload.gin)),
                        tot.eq(0), comp.eq(0), stall.eq(0),
                    ]
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += tot.eq(tot + 1)
                with m.If(~mul_run):
                    with m.Switch(step):
                        for i, (dst, a, b) in enumerate(steps):
                            with m.Case(i):
                                m.d.sync += [mul_a.eq(a), mul_b.eq(b), prod.eq(0), ovf.eq(0),
                                             b_big.eq(b[PW:] != 0 if len(b) > PW else 0),
                                             mul_run.eq(1)]
                        with m.Default():
                            m.next = "CHECK"
                with m.Elif(mul_a == 0):
                    m.d.sync += [step.eq(step + 1), mul_run.eq(0)]
                    with m.Switch(step):
                        for i, (dst, a, b) in enumerate(steps):
                            with m.Case(i):
                                w = len(dst)
                                big = ovf | (prod[w:] != 0) if w < PW else ovf
                                m.d.sync += dst.eq(Mux(big, (1 << w) - 1, prod[:w]))
                with m.Else():
                    m.d.sync += [mul_a.eq(mul_a >> 1), mul_b.eq(mul_b << 1),
                                 b_big.eq(b_big | mul_b[PW - 1])]
                    with m.If(mul_a[0]):
                        m.d.sync += prod.eq(mul_sum[:PW])
                        with m.If(b_big | mul_sum[PW]):
                            m.d.sync += ovf.eq(1)
            with m.State("CHECK"):
                # `bad` (a wide OR of comparisons) goes through a register before
                # it decides which of the many start values below get written.
                m.d.comb += self.busy.eq(1)
                m.d.sync += [tot.eq(tot + 1), bad_r.eq(bad)]
                m.next = "START"
            with m.State("START"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += tot.eq(tot + 1)
                with m.If(bad_r):
                    m.d.sync += [err.eq(1), self.done.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    base = Mux(dwp, -pt_ws, -pt_wg - pl_g)
                    last_ox_blk = (cmd.out_w - 1) & ~(R - 1) if pix else cmd.out_w - 1
                    # each counter starts at 0: last when its limit is 0
                    first_flags = (gin_e == 1, cmd.k == 1, cmd.k == 1, cmd.gout == 1,
                                   Mux(dwp, cmd.out_w <= R, cmd.out_w == 1), cmd.out_h == 1)
                    m.d.sync += [
                        lim_gi.eq(gin_e - 1), lim_k.eq(cmd.k - 1), lim_j.eq(cmd.gout - 1),
                        lim_ox.eq(Mux(dwp, last_ox_blk, cmd.out_w - 1)),
                        lim_oy.eq(cmd.out_h - 1),
                        *(f.eq(v) for f, v in zip((l_gi, l_kx, l_ky, l_j, l_ox, l_oy), first_flags)),
                        *(below[i + 1].eq(Cat(*first_flags[:i + 1]).all()) for i in range(5)),
                        loaded.eq(0), rows_ok.eq(0), fin.eq(0),
                        seq_busy.eq(1),
                        gi.eq(0), kx.eq(0), ky.eq(0), j.eq(0), ox.eq(0), oy.eq(0),
                        goff.eq(0), waddr.eq(0),
                        ix.eq(-cmd.pad_left), ix0.eq(-cmd.pad_left),
                        iy.eq(-cmd.pad_top), iy0.eq(-cmd.pad_top),
                        need.eq(cmd.k - cmd.pad_top),
                        tapbase.eq(base), rowbase.eq(base), pixbase.eq(base), linebase.eq(base),
                        g_step.eq(Mux(dwp, 0, cmd.gin)),
                        sg.eq(Mux(dwp, 0, Mux(cmd.stride == 2, cmd.gin << 1, cmd.gin))),
                        swg.eq(Mux(dwp, Mux(cmd.stride == 2, ws << 1, ws),
                                   Mux(cmd.stride == 2, wg << 1, wg))),
                        row_step.eq(Mux(dwp, ws, wg)),
                        goff_step.eq(Mux(dwp, plane, dw)),
                        ox_step.eq(Mux(dwp, R, 1)),
                        ix_step.eq(Mux(dwp, cmd.stride << lgr, cmd.stride)),
                        in_cnt.eq(0), col_cnt.eq(0), rows_in.eq(0), in_done.eq(0),
                        lx.eq(0), lgi.eq(0), lrow.eq(0), lgoff.eq(0), ro.eq(0), oxo.eq(0),
                        out_cnt.eq(0), jo.eq(0),
                    ]
                    with m.If(~keep):
                        m.d.sync += [w_cnt.eq(0), p_cnt.eq(0), w_done.eq(0), p_done.eq(0)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += tot.eq(tot + 1)
                with m.If(dp.i.valid & dp.i.ready):
                    m.d.sync += comp.eq(comp + 1)
                # Both a cycle late, which only delays (never hastens) an issue:
                # rows_in only grows, and `need` grows only on the beat that ends
                # an output row, for which the next row's need is checked ahead.
                row_end = below[5]                # the beat ends an output row
                m.d.sync += [
                    loaded.eq(keep | (w_done & p_done)),
                    rows_ok.eq((rows_in >= Mux(row_end, need + cmd.stride, need))
                               | (rows_in == cmd.in_h)),
                ]
                with m.If(seq_busy & loaded & ~issue):
                    m.d.sync += stall.eq(stall + 1)
                # loaders
                m.d.comb += [
                    self.act_in.ready.eq(~in_done),
                    self.weights.ready.eq(~keep & ~w_done),
                    self.params.ready.eq(~keep & ~p_done),
                    w_w_port.en.eq(self.weights.valid & self.weights.ready),
                    p_w_port.en.eq(self.params.valid & self.params.ready),
                ]
                with m.If(self.act_in.valid & self.act_in.ready):
                    m.d.sync += [in_cnt.eq(in_cnt + 1), in_done.eq(in_cnt + 1 == n_in)]
                    with m.If(col_cnt == wg - 1):
                        m.d.sync += [col_cnt.eq(0), rows_in.eq(rows_in + 1)]
                    with m.Else():
                        m.d.sync += col_cnt.eq(col_cnt + 1)
                with m.If(self.weights.valid & self.weights.ready):
                    m.d.sync += [w_cnt.eq(w_cnt + 1), w_done.eq(w_cnt + 1 == n_w)]
                with m.If(self.params.valid & self.params.ready):
                    m.d.sync += [p_cnt.eq(p_cnt + 1), p_done.eq(p_cnt + 1 == cmd.gout)]
                out_fire = self.act_out.valid & self.act_out.ready
                with m.If(out_fire):
                    m.d.sync += out_cnt.eq(out_cnt + 1)
                # A layer ends when every output has left and every input word
                # has arrived (a stride-2 layer may not read its last rows, but
                # they are part of this command's stream); registered, so the
                # comparators do not lead into the state register.
                # (depthwise pixels: the beats of columns past out_w still in the
                # DotProduct's drain are dropped first, so the next command starts clean)
                m.d.sync += fin.eq((out_cnt == n_out) & in_done)
                with m.If(fin & loaded & ~(dwp & dp.o.valid)):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
        return m
