"""Command setup of the core: accepting a command, its derived sizes, its checks, start and end."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig

from .layouts import (COUNTER_WIDTH, FIELD_WIDTH, MAX_OUTPUTS, LayerKind, Part, bank_count,
                      config_layout, output_groups, sizes_layout)

__all__ = ["DerivedSizes", "CommandSetup", "CycleCounters", "GOUT_O_WIDTH", "SIZE_CHAINS",
           "PIXEL_SIZE_CHAINS", "WORD_SIZE_CHAINS", "size_chains", "size_factors",
           "setup_cycles", "derived_sizes", "given_sizes_layout", "command_layout",
           "command_fields"]

#: Bits of a command's output beats per pixel (``gout``, times ``lanes`` for a depthwise
#: layer on a ``depthwise="channels"`` build; ``lanes`` <= 64).
GOUT_O_WIDTH = FIELD_WIDTH + 6


def _check_config(config):
    if not isinstance(config, CoreConfig):
        raise TypeError(f"config must be a psc.hw.core.CoreConfig, not {config!r}")
    return config


def _times(value, constant):
    """``value * constant`` as a sum of shifted copies (a few adders; a ``*`` would become a
    LUT multiplier or take a DSP the MAC array needs)."""
    terms = [value << i for i in range(constant.bit_length()) if constant >> i & 1]
    return sum(terms[1:], terms[0])


#: The derived sizes as chains of products, each chain computed by its own shift-and-add
#: multiplier, side by side: ``(size, factor, multiplicand)``, in order. The factor is
#: consumed a bit per cycle, so each is the operand that is small in practice (channel
#: groups, rows, padding), and a multiplicand may be an earlier size of its own chain.
#: ``kk`` (``k * k``, one of four values) is looked up, not multiplied.
SIZE_CHAINS = (
    (("wg", "gin", "in_w"), ("n_in", "in_h", "wg"), ("pt_wg", "pad_top", "wg")),
    (("ow", "gout_o", "out_w"), ("n_out", "out_h", "ow"), ("pl_g", "pad_left", "gin")),
    (("red", "gin_e", "kk"), ("n_w", "gout", "red")),
)

#: What a build with ``depthwise="pixels"`` adds to :data:`SIZE_CHAINS`, chain by chain.
PIXEL_SIZE_CHAINS = (
    (("pt_ws", "pad_top", "ws"),),
    (),
    (("plane", "in_h", "ws"), ("n_dw", "gin", "plane")),
)

#: What a build whose input buffer is block RAM (written while it is read) adds: the words
#: the first pixel of an output row needs (the sequencer's start on words, not whole rows).
WORD_SIZE_CHAINS = (
    (("kr_wg", "k1_pt", "wg"),),
    (),
    (("c0_g", "c0", "gin"),),
)


def size_chains(config):
    """:data:`SIZE_CHAINS` of ``config``'s build (with :data:`PIXEL_SIZE_CHAINS` on a
    ``depthwise="pixels"`` build, :data:`WORD_SIZE_CHAINS` unless ``fmap_ram="spram"``)."""
    chains = SIZE_CHAINS
    if config.pe.depthwise == "pixels":
        chains = tuple(a + b for a, b in zip(chains, PIXEL_SIZE_CHAINS))
    if config.fmap_ram != "spram":
        chains = tuple(a + b for a, b in zip(chains, WORD_SIZE_CHAINS))
    return chains


def _kk(pe, k, stride, dw):
    """Beats of one reduction per input group: ``k * k``, or ``k`` kernel rows of
    :meth:`~psc.config.PSCConfig.kernel_span` beats for a depthwise command (more on a
    ``depthwise="shifted"`` build); a ``k`` the checks refuse counts as 1."""
    k = k if k in (3, 5, 7) else 1
    return k * pe.kernel_span(k, 2 if stride == 2 else 1) if dw else k * k


def size_factors(config, fields):
    """The factors of :func:`size_chains` of a command with ``fields`` (its
    :func:`~psc.hw.core.layouts.config_layout` fields, by name), as :class:`DerivedSizes`
    takes them: the fields, ``gin_e``, ``gout_o``, ``kk`` (``k * k`` for a ``k`` the
    checks accept, else 1; in its field's bits), ``k1_pt`` and ``c0`` (from 3 bits, as the gateware's, so a
    refused command's wrap too) and, on a ``depthwise="pixels"`` build, ``ws``."""
    dw = fields["kind"] == LayerKind.DEPTHWISE
    k, in_w = fields["k"], fields["in_w"]
    kl = (k - fields["pad_left"]) & 7
    kk_mask = (1 << sizes_layout(config)["kk"].shape.width) - 1
    out = dict(fields, gin_e=1 if dw else fields["gin"],
               gout_o=output_groups(config, fields["kind"], fields["gout"]),
               kk=_kk(config.pe, k, fields["stride"], dw) & kk_mask,
               k1_pt=(k - 1 - fields["pad_top"]) & 7, c0=min(in_w, kl))
    if config.pe.depthwise == "pixels":
        s = 2 if fields["stride"] == 2 else 1
        out["ws"] = -(-in_w // (s * config.pe.rows)) * s
    return out


def setup_cycles(config, fields):
    """Cycles :class:`DerivedSizes` takes for an accepted command with ``fields``: its
    longest chain, one cycle to load each product, one per significant bit of its factor
    and one to store it; on a build with :attr:`~psc.config.CoreConfig.given_sizes`, none:
    the sizes are stored as the command is taken."""
    if config.given_sizes:
        return 0
    factors = size_factors(config, fields)
    return max(sum(2 + int(factors[a]).bit_length() for _, a, _ in chain)
               for chain in size_chains(config))


def _size_names(config):
    return ("kk",) + tuple(dst for chain in size_chains(config) for dst, _, _ in chain)


def given_sizes_layout(config):
    """The sizes a ``config`` build computes (``kk`` and the products of
    :func:`size_chains`), as :class:`DerivedSizes` takes them on a
    :attr:`~psc.config.CoreConfig.given_sizes` build: the fields of
    :func:`~psc.hw.core.layouts.sizes_layout` it uses, in that order."""
    layout = sizes_layout(config)
    return data.StructLayout({name: layout[name].shape for name in _size_names(config)})


def command_layout(config):
    """Payload of :attr:`~psc.hw.core.PSCConvCore.cfg`: a command
    (:func:`~psc.hw.core.layouts.config_layout`), and on a build with
    :attr:`~psc.config.CoreConfig.given_sizes` its derived sizes after it (field ``sizes``,
    :func:`given_sizes_layout`, as :func:`derived_sizes` computes them)."""
    layout = config_layout(config)
    if not config.given_sizes:
        return layout
    return data.StructLayout({**{name: f.shape for name, f in layout},
                              "sizes": given_sizes_layout(config)})


def command_fields(config, fields):
    """The values of a :func:`command_layout` beat of the command with ``fields`` (a dict of
    :func:`~psc.hw.core.layouts.config_layout`'s fields): ``fields``, with the derived sizes
    on a :attr:`~psc.config.CoreConfig.given_sizes` build."""
    return {**fields, "sizes": derived_sizes(config, fields)} if config.given_sizes else fields


def derived_sizes(config, fields):
    """The sizes :class:`DerivedSizes` computes for a command with ``fields``, in Python: a
    dict of :func:`given_sizes_layout`'s fields. Each product is taken from the
    saturated earlier ones and saturates as the gateware's does (a product that does not
    fit its field is the field's all-ones value), so a host that gives the core its sizes
    gives exactly these, and the core refuses what it would refuse computing them."""
    layout = sizes_layout(config)
    factors = size_factors(config, fields)
    sizes = {"kk": factors["kk"]}
    for chain in size_chains(config):
        for dst, a, b in chain:
            b_value = factors[b] if b in factors else sizes[b]
            sizes[dst] = min(int(factors[a]) * int(b_value),
                             (1 << layout[dst].shape.width) - 1)
    return sizes


class DerivedSizes(wiring.Component):
    """The derived sizes of a command, by a few shift-and-add multipliers.

    The sizes (:func:`~psc.hw.core.layouts.sizes_layout`) are products of
    the command's fields, some of earlier products. They are computed once
    per command by one multiplier per chain of :func:`size_chains`, the
    chains side by side; each multiplier consumes one bit of its factor per
    cycle and stops when the rest is zero, so setup costs an adder per chain
    as wide as the chain's widest size instead of an array multiplier in
    LUTs (or a DSP), and some ten cycles per command
    (:func:`setup_cycles`). The multipliers saturate: a product that leaves
    its multiplier's width, or does not fit its field, is stored as the
    field's all-ones value, above every limit it is checked against, so no
    product of huge fields wraps into a small one.

    Protocol: ``clear`` (one cycle, when the command is taken) rewinds the
    chains; then, while ``enable`` is high, each product takes one cycle to
    load, one per significant bit of its factor and one to store. ``ready``
    rises (combinationally, while ``enable``) when the last product of every
    chain is stored (a chain's first product takes one cycle more when its
    factor is 0: a refused command); ``sizes`` then holds every size of the
    command until the next ``clear``. ``kk`` is looked up from ``k`` (and, for
    a depthwise command on a ``depthwise="shifted"`` build, the stride; any
    value for a ``k`` the checks refuse); ``ws`` (bank words per input row
    and group of a depthwise layer on a ``depthwise="pixels"`` build) is
    combinational from ``cmd``.

    On a :attr:`~psc.config.CoreConfig.given_sizes` build the sizes come with the
    command (the host computes them with :func:`derived_sizes`): ``clear`` stores
    :attr:`given`, and ``ready`` is ``enable``, so setup takes no cycle of its own
    (:func:`setup_cycles`) and there are no multipliers.

    Parameters
    ----------
    config : CoreConfig

    Attributes
    ----------
    given : In(given_sizes_layout(config))
        Only with ``config.given_sizes``: the command's sizes, read in the ``clear`` cycle.
    cmd : In(config_layout())
        The command, held from ``clear`` on.
    gin_e : In(FIELD_WIDTH)
        Input groups per reduction (``1`` for depthwise, else ``gin``).
    gout_o : In(GOUT_O_WIDTH)
        Output beats per output pixel (``gout``, or ``gout * lanes`` for a
        depthwise layer on a ``depthwise="channels"`` build).
    clear, enable : In(1)
    sizes : Out(sizes_layout(config))
    ws : Out(FIELD_WIDTH + 1)
    ready : Out(1)
    """

    def __init__(self, config):
        self._config = _check_config(config)
        self._given = config.given_sizes
        super().__init__({
            "cmd": In(config_layout(config)),
            "gin_e": In(FIELD_WIDTH),
            "gout_o": In(GOUT_O_WIDTH),
            "clear": In(1),
            "enable": In(1),
            "sizes": Out(sizes_layout(config)),
            "ws": Out(FIELD_WIDTH + 1),
            "ready": Out(1),
            **({"given": In(given_sizes_layout(config))} if self._given else {}),
        })

    def _ws(self, m):
        # A depthwise layer's input column x goes to bank (x // s) % rows,
        # at a bank row of ws words per input row and group.
        cmd, R = self.cmd, self._config.pe.rows
        lgr = R.bit_length() - 1
        sh = Mux(cmd.stride == 2, lgr + 1, lgr)
        blocks = (cmd.in_w + (Mux(cmd.stride == 2, 2 * R, R) - 1)) >> sh
        m.d.comb += self.ws.eq(Mux(cmd.stride == 2, blocks << 1, blocks))

    def elaborate(self, platform):
        m = Module()
        if self._config.pe.depthwise == "pixels":
            self._ws(m)
        if self._given:
            with m.If(self.clear):
                m.d.sync += [getattr(self.sizes, n).eq(getattr(self.given, n))
                             for n in _size_names(self._config)]
            m.d.comb += self.ready.eq(self.enable)
            return m
        k = self.cmd.k
        kk = Signal.like(self.sizes.kk)
        pe = self._config.pe

        def table(dw, stride):
            return Mux(k == 7, _kk(pe, 7, stride, dw),
                       Mux(k == 5, _kk(pe, 5, stride, dw),
                           Mux(k == 3, _kk(pe, 3, stride, dw), _kk(pe, 1, stride, dw))))
        if pe.depthwise == "shifted":
            dw = self.cmd.kind == LayerKind.DEPTHWISE
            m.d.comb += kk.eq(Mux(dw, Mux(self.cmd.stride == 2, table(True, 2), table(True, 1)),
                                  table(False, 1)))
        else:
            m.d.comb += kk.eq(table(False, 1))
        with m.If(self.enable):
            m.d.sync += self.sizes.kk.eq(kk)
        operands = {n: getattr(self.cmd, n) for n in ("gin", "gout", "in_w", "in_h", "out_w",
                                                       "out_h", "pad_top", "pad_left")}
        # k - 1 - pad_top and min(in_w, k - pad_left), from 3 bits (wrapping for a
        # command the checks refuse)
        k1_pt, c0, kl = Signal(3), Signal(3), Signal(3)
        cmd = self.cmd
        m.d.comb += [k1_pt.eq(k - 1 - cmd.pad_top), kl.eq(k - cmd.pad_left),
                     c0.eq(Mux(cmd.in_w < kl, cmd.in_w, kl))]
        operands.update(gin_e=self.gin_e, gout_o=self.gout_o, ws=self.ws, kk=kk,
                        k1_pt=k1_pt, c0=c0)
        done = []
        for c, chain in enumerate(size_chains(self._config)):
            steps = [(getattr(self.sizes, dst), operands[a],
                      operands[b] if b in operands else getattr(self.sizes, b))
                     for dst, a, b in chain]
            done.append(self._chain(m, c, steps))
        m.d.comb += self.ready.eq(self.enable & Cat(*done).all())
        return m

    def _chain(self, m, c, steps):
        """One chain's multiplier; returns its "every product stored" flag."""
        PW = max(len(dst) for dst, _, _ in steps)
        AW = max(len(a) for _, a, _ in steps)
        mul_a = Signal(AW, name=f"mul_a{c}")   # factor, consumed LSB first
        mul_b = Signal(PW, name=f"mul_b{c}")   # multiplicand, shifted left
        b_big = Signal(name=f"b_big{c}")       # the multiplicand has left its PW bits
        prod = Signal(PW, name=f"prod{c}")
        ovf = Signal(name=f"ovf{c}")           # sticky: the product has left its PW bits
        mul_sum = Signal(PW + 1, name=f"mul_sum{c}")
        mul_run = Signal(name=f"mul_run{c}")
        # `mul_a == 0`, registered: a wide compare would otherwise lead every
        # step's enable.
        a_zero = Signal(name=f"a_zero{c}")
        # Each factor's `== 0`, registered every cycle (the factors are fields of the
        # command, held from the first setup cycle on), so that loading `a_zero` is a
        # choice between flip-flops, not a compare behind the step's multiplexer. The
        # first step loads in the first setup cycle, before its flag is up to date: it
        # takes `a_zero` low, which for a zero factor (a refused command: every size is
        # at least 1) costs one cycle more and still gives the product 0.
        a_zeros = [Signal(name=f"a_zero{c}_{i}") for i in range(len(steps))]
        m.d.sync += [z.eq(a == 0) for z, (_, a, _) in zip(a_zeros, steps)]
        m.d.comb += mul_sum.eq(prod + mul_b)
        step = Signal(range(len(steps) + 1), name=f"step{c}")

        with m.If(self.enable):
            with m.If(~mul_run):
                with m.Switch(step):
                    for i, (dst, a, b) in enumerate(steps):
                        with m.Case(i):
                            m.d.sync += [mul_a.eq(a), mul_b.eq(b), prod.eq(0), ovf.eq(0),
                                         a_zero.eq(a_zeros[i] if i else 0),
                                         b_big.eq(b[PW:] != 0 if len(b) > PW else 0),
                                         mul_run.eq(1)]
            with m.Elif(a_zero):
                m.d.sync += [step.eq(step + 1), mul_run.eq(0)]
                with m.Switch(step):
                    for i, (dst, a, b) in enumerate(steps):
                        with m.Case(i):
                            w = len(dst)
                            big = ovf | (prod[w:] != 0) if w < PW else ovf
                            m.d.sync += dst.eq(Mux(big, (1 << w) - 1, prod[:w]))
            with m.Else():
                m.d.sync += [mul_a.eq(mul_a >> 1), mul_b.eq(mul_b << 1),
                             b_big.eq(b_big | mul_b[PW - 1]), a_zero.eq(mul_a[1:] == 0)]
                with m.If(mul_a[0]):
                    m.d.sync += prod.eq(mul_sum[:PW])
                    with m.If(b_big | mul_sum[PW]):
                        m.d.sync += ovf.eq(1)
        with m.If(self.clear):
            m.d.sync += [step.eq(0), mul_run.eq(0)]
        return step == len(steps)


class CommandSetup(wiring.Component):
    """Takes a command, checks it, starts it and ends it (the core's control).

    States: idle (``cfg.ready`` high) -> setup (:class:`DerivedSizes` runs,
    ``sizing`` high) -> check (one cycle: the checks go through a register)
    -> start (one cycle: refuse, or ``start`` high) -> run (``run`` high)
    -> idle. A refused command ends in its start cycle: ``done`` pulses with
    ``error`` set. A run ends one cycle after every output beat has left
    and every input word has arrived (``outputs_done & inputs_done``,
    registered), once the weights and parameters are loaded and no
    depthwise pixels beat is still leaving the MAC array (``mac_valid``):
    ``done`` pulses the cycle after. ``busy`` is high from the cycle after
    the command is taken to the end; ``error`` holds until the next command.

    Checks (``error`` when one fails): ``k`` in {1, 3, 5, 7}; ``stride`` in
    {1, 2}; ``pad_top``, ``pad_left`` < ``k``; every size >= 1; pointwise/FC
    need ``k = 1`` (FC also a 1x1 map); depthwise needs ``gin = gout`` and a
    build with ``lanes = rows`` or ``depthwise="channels"`` or ``"shifted"``; the input, weight
    and parameter words fit their buffers (a depthwise layer's input words on
    a ``"channels"`` build: one bank's) (the weights only when not ``keep``); a reduction fits
    ``max_reduction``; at most :data:`~psc.hw.core.layouts.MAX_OUTPUTS` output beats;
    a chunk of a split reduction (``part`` not ``WHOLE``) needs a partial-sum
    buffer, a kind other than depthwise and at most ``psum_depth`` output beats.

    Parameters
    ----------
    config : CoreConfig

    Attributes
    ----------
    cfg : In(stream.Signature(command_layout(config)))
    cmd : Out(config_layout())
        The command, registered when taken and held until the next one.
    dw, dwp, dwc, dws : Out(1)
        The command is depthwise; depthwise on a ``depthwise="pixels"``
        build; on a ``depthwise="channels"`` build; on a ``depthwise="shifted"`` build
        (``dws`` only on such a build).
    gin_e : Out(FIELD_WIDTH)
        Input groups per reduction (``1`` for depthwise, else ``gin``).
    gout_o : Out(GOUT_O_WIDTH)
        Output beats (parameter groups) per output pixel: ``gout``, or
        ``gout * lanes`` when ``dwc``, ``gout * lanes / rows`` when ``dws``.
    last_go : Out(range(config.param_depth))
        ``gout_o - 1`` (registered; the output stage's group counter wraps there).
    accept : Out(1)
        A command is taken this cycle.
    sizing : Out(1)
        Setup state: :class:`DerivedSizes` runs.
    sizes : In(sizes_layout(config))
    sizes_ready : In(1)
    start : Out(1)
        One cycle: an accepted command starts (every part loads its start values).
        A flip-flop: it fans out into every part's start values.
    run : Out(1)
        The command runs (loaders and sequencer on).
    loaded, inputs_done, outputs_done, mac_valid : In(1)
    busy, done, error : Out(1)
    """

    def __init__(self, config):
        self._config = _check_config(config)
        super().__init__({
            "cfg": In(stream.Signature(command_layout(config))),
            "cmd": Out(config_layout(config)),
            "dw": Out(1),
            "dwp": Out(1),
            "dwc": Out(1),
            **({"dws": Out(1)} if config.pe.depthwise == "shifted" else {}),
            "gin_e": Out(FIELD_WIDTH),
            "gout_o": Out(GOUT_O_WIDTH),
            "last_go": Out(range(config.param_depth)),
            "accept": Out(1),
            "sizing": Out(1),
            "sizes": In(sizes_layout(config)),
            "sizes_ready": In(1),
            "start": Out(1),
            "run": Out(1),
            "loaded": In(1),
            "inputs_done": In(1),
            "outputs_done": In(1),
            "mac_valid": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
        })

    def _bad(self):
        """The checks, as a list of terms: each is high when the command must be refused for
        that reason. The command's fields come first, then its sizes."""
        cc, pe = self._config, self._config.pe
        cmd, s, k = self.cmd, self.sizes, self.cmd.k
        red_max = pe.max_reduction // pe.lanes
        chunk = cmd.part != Part.WHOLE
        return [
            ~((k == 1) | (k == 3) | (k == 5) | (k == 7)),
            ~((cmd.stride == 1) | (cmd.stride == 2)),
            cmd.pad_top >= k,
            cmd.pad_left >= k,
            (cmd.in_h == 0) | (cmd.in_w == 0),
            (cmd.out_h == 0) | (cmd.out_w == 0),
            (cmd.gin == 0) | (cmd.gout == 0),
            ((cmd.kind == LayerKind.POINTWISE) | (cmd.kind == LayerKind.FC)) & (k != 1),
            (cmd.kind == LayerKind.FC) & ((cmd.in_h != 1) | (cmd.in_w != 1)),
            (cmd.kind == LayerKind.FC) & ((cmd.out_h != 1) | (cmd.out_w != 1)),
            (cmd.kind == LayerKind.DEPTHWISE) & (cmd.gin != cmd.gout),
            (cmd.kind == LayerKind.DEPTHWISE)
            & (pe.lanes != pe.rows and pe.depthwise not in ("channels", "shifted")),
            self.gout_o > cc.param_depth,
            chunk & ((cmd.kind == LayerKind.DEPTHWISE) | (cc.psum_depth == 0)),
            s.n_in > Mux(self.dwc, cc.fmap_depth // bank_count(cc), cc.fmap_depth),
            self.dwp & (s.n_dw > cc.fmap_depth // bank_count(cc)),
            ~cmd.keep & (s.n_w > cc.weight_depth),
            # red * lanes > max_reduction, without the multiply
            s.red > red_max,
            s.n_out > MAX_OUTPUTS,
            chunk & (s.n_out > cc.psum_depth),
        ]

    def elaborate(self, platform):
        m = Module()
        pe = self._config.pe
        pix = pe.depthwise == "pixels"
        chn = pe.depthwise == "channels"
        shf = pe.depthwise == "shifted"
        # Every check term has its own flip-flop, written every cycle: in CHECK they
        # hold the checks of the command and of its final sizes (which are final in
        # the last SETUP cycle). The terms' comparators and the OR of their verdicts
        # are then a cycle apart; the command register fans out into the whole core,
        # so one wide OR of comparators behind it would gather from across the die.
        terms = self._bad()
        bad = Signal(len(terms))
        m.d.sync += bad.eq(Cat(*terms))
        # high in START when the checks passed (low there: the command is refused): `start`
        # comes from this flip-flop, not through the state's decode
        start = Signal()
        m.d.sync += start.eq(0)
        m.d.comb += self.start.eq(start)
        fin = Signal()                       # every output sent, every input word taken
        # high in RUN: `run` gates every buffer's write enable, so it comes from this
        # flip-flop rather than through the state's decode
        run = Signal()
        m.d.comb += self.run.eq(run)
        m.d.sync += self.done.eq(0)
        payload = self.cfg.payload
        gout_o = payload.gout
        if shf:
            gout_o = Mux(payload.kind == LayerKind.DEPTHWISE,
                         _times(payload.gout, pe.lanes // pe.rows), payload.gout)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.cfg.ready.eq(1), self.accept.eq(self.cfg.valid)]
                with m.If(self.cfg.valid):
                    m.d.sync += [
                        # (on a given_sizes build, the command part of the beat)
                        self.cmd.eq(payload.as_value()[:self.cmd.shape().size]
                                    if self._config.given_sizes else payload),
                        self.error.eq(0),
                        self.dw.eq(payload.kind == LayerKind.DEPTHWISE),
                        self.dwp.eq(pix & (payload.kind == LayerKind.DEPTHWISE)),
                        self.dwc.eq(chn & (payload.kind == LayerKind.DEPTHWISE)),
                        self.gin_e.eq(Mux(payload.kind == LayerKind.DEPTHWISE, 1, payload.gin)),
                        self.gout_o.eq(Mux(chn & (payload.kind == LayerKind.DEPTHWISE),
                                           _times(payload.gout, pe.lanes), gout_o)),
                    ]
                    if shf:
                        m.d.sync += self.dws.eq(payload.kind == LayerKind.DEPTHWISE)
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += [self.busy.eq(1), self.sizing.eq(1)]
                with m.If(self.sizes_ready):
                    m.next = "CHECK"
            with m.State("CHECK"):
                # the verdict goes through a register before it decides which of
                # the many start values get written.
                m.d.comb += self.busy.eq(1)
                m.d.sync += [start.eq(~bad.any()),
                             self.last_go.eq(self.gout_o - 1)]
                m.next = "START"
            with m.State("START"):
                m.d.comb += self.busy.eq(1)
                with m.If(~start):
                    m.d.sync += [self.error.eq(1), self.done.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [fin.eq(0), run.eq(1)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                # A command ends when every output has left and every input word
                # has arrived (a stride-2 layer may not read its last rows, but
                # they are part of this command's stream); registered, so the
                # comparators do not lead into the state register. (Depthwise
                # pixels: the beats of columns past out_w still in the MAC
                # array's drain are dropped first, so the next command starts clean.)
                m.d.sync += fin.eq(self.outputs_done & self.inputs_done)
                blocks = self.dwp | self.dws if shf else self.dwp
                with m.If(fin & self.loaded & ~(blocks & self.mac_valid)):
                    m.d.sync += [self.done.eq(1), run.eq(0)]
                    m.next = "IDLE"
        return m


class CycleCounters(wiring.Component):
    """The cycle counters of a command.

    ``clear`` (the cycle a command is taken) zeroes them; then ``total``
    counts the cycles with ``busy``, ``compute`` the cycles with ``run`` and
    ``beat`` (a beat entered the MAC array) and ``stall`` the cycles with
    ``run`` and ``waiting`` (weights loaded, beats left, none issued). They
    hold their values until the next ``clear``; one cycle latency.

    Attributes
    ----------
    clear, busy, run, beat, waiting : In(1)
    total, compute, stall : Out(COUNTER_WIDTH)
    """

    def __init__(self):
        super().__init__({
            "clear": In(1), "busy": In(1), "run": In(1), "beat": In(1), "waiting": In(1),
            "total": Out(COUNTER_WIDTH), "compute": Out(COUNTER_WIDTH), "stall": Out(COUNTER_WIDTH),
        })

    def elaborate(self, platform):
        m = Module()
        with m.If(self.busy):
            m.d.sync += self.total.eq(self.total + 1)
        with m.If(self.run & self.beat):
            m.d.sync += self.compute.eq(self.compute + 1)
        with m.If(self.run & self.waiting):
            m.d.sync += self.stall.eq(self.stall + 1)
        with m.If(self.clear):
            m.d.sync += [self.total.eq(0), self.compute.eq(0), self.stall.eq(0)]
        return m
