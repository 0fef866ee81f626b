"""Processing element: one output row's multiply-accumulate over ``lanes`` activations."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from psc.config import PSCConfig
from psc.hw.ecp5_mul import Ecp5Mult18
from psc.hw.ice40_mul import Ice40DualMul
from psc.hw.weight_select import WeightSelect

__all__ = ["PSCMac", "pe_latency", "tree_sum", "pipelined_tree_sum"]


def _check_config(config):
    if not isinstance(config, PSCConfig):
        raise TypeError(f"config must be a psc.config.PSCConfig, not {config!r}")
    return config


def tree_sum(values):
    """Balanced adder tree; each level widens by one bit, so no sum wraps."""
    values = list(values)
    while len(values) > 1:
        values = _tree_level(values)
    return values[0]


def _tree_level(values):
    pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
    return pairs + values[len(values) - len(values) % 2:]


def pipelined_tree_sum(m, values, stages, en):
    """:func:`tree_sum` with ``stages`` registers (advancing on ``en``) inside it.

    The tree's levels and the accumulator add that follows it are split into
    ``stages + 1`` runs of (nearly) equal depth, with a register of the
    partial sums between runs. The accumulator add counts as one level:
    registering the whole tree's sum instead puts all the tree's levels
    behind the DSP outputs, whose routing is slow (UP5K, 8 lanes, one stage:
    39 MHz that way against 44 MHz balanced). A tree of one value still gets
    its registers. Returns the (combinational) sum of the last run; its value
    is that of the inputs ``stages`` enabled cycles earlier.
    """
    values = list(values)
    levels = (len(values) - 1).bit_length()         # ceil(log2(len))
    # Level after which each register goes, out of levels + 1 (the accumulator's add).
    cuts = [min(levels, round((levels + 1) * (k + 1) / (stages + 1))) for k in range(stages)]
    level = 0
    for k, cut in enumerate(cuts):
        while level < cut:
            values = _tree_level(values)
            level += 1
        regs = [Signal(signed(len(v)), name=f"tree{k}_{i}", reset_less=True)
                for i, v in enumerate(values)]
        with m.If(en):
            m.d.sync += [r.eq(v) for r, v in zip(regs, values)]
        values = regs
    return tree_sum(values)


class PSCMac(wiring.Component):
    """Multiply-accumulate unit of one output row (one PE).

    Each enabled cycle takes ``lanes`` activations and ``lanes`` weight
    words, selects ``W+``/``W-`` per lane by the shared sign mask (``psc=True``
    only), multiplies, sums the products in an adder tree and accumulates into
    an ``acc_width``-bit register. ``config.rows`` is ignored.

    Pipeline (each stage a register, all advancing together on ``en``),
    with ``multiplier="generic"`` (the default):

    ====== ============================================================
    stage  registers
    ====== ============================================================
    1      selected weights and activations (the multiplier's inputs),
           ``valid``/``first``/``last``, bias of a ``first`` beat
    2      products, ``valid``/``first``/``last``, bias of a ``first`` beat
    3      accumulator ``acc`` (adder tree in front), ``acc_valid``
    ====== ============================================================

    With ``multiplier="ice40_dual8x8"`` each pair of lanes is one
    :class:`~psc.hw.ice40_mul.Ice40DualMul` (one SB_MAC16): stage 1 is the DSP's
    A/B input registers, stage 2 its product registers and a new stage 3 its
    output registers; the accumulator is stage 4. ``tree_stages`` registers
    of partial sums (:func:`pipelined_tree_sum`) go between the products and
    the accumulator, one stage each. The control bits and the bias advance
    beside the data through every stage.

    Registering the selected weight keeps the mux off the multiply path and
    lets the multiply use a DSP's input and output registers, so a PSC build
    meets the clock of the plain one. The bias goes
    only as far as the accumulator (one register per stage, loaded on
    ``first`` beats only); a later ``first`` cannot overwrite it before use
    because all the registers advance with the beat.

    Latency: :attr:`latency` enabled cycles (:func:`pe_latency`: 3, plus 1
    with ``multiplier="ice40_dual8x8"`` or ``"ecp5_mult18"``, plus ``tree_stages``): a beat
    presented with ``en`` in cycle ``t`` is in ``acc`` from cycle
    ``t + latency`` (counting enabled cycles only). Throughput: one beat per
    enabled cycle.

    Protocol: a reduction is a run of ``valid`` beats, the first with
    ``first``, the last with ``last`` (both on one beat for a reduction of
    one beat). Beats with ``valid`` low are bubbles and change nothing. The
    ``acc`` of a reduction is ``bias`` (of its ``first`` beat) plus the sum over
    its beats and lanes of ``Wsel * x``; it appears with ``acc_valid`` high
    for exactly one enabled cycle, and stays while ``en`` is low. ``en`` low
    freezes every register. No wrap-around: :class:`~psc.config.PSCConfig`
    sizes ``acc_width`` for ``max_reduction`` products and the host rejects
    biases that would overflow.

    Parameters
    ----------
    config : psc.config.PSCConfig
        Widths; ``lanes``, ``psc``, ``multiplier`` and ``tree_stages`` are
        used, ``rows`` ignored. With
        ``psc=False`` there is no mux: words are ``weight_width`` bits, used
        as the weight, and ``mask`` is ignored.

    Attributes
    ----------
    x : View of ArrayLayout(signed(act_width), lanes), in
        Activations.
    mask : Signal(lanes), in
        Sign mask of ``x`` from a shared :class:`~psc.hw.sign_mask.SignMask`.
    words : View of ArrayLayout(unsigned(word_width), lanes), in
        Weight words, ``{W-, W+}`` (``W+`` low) when ``psc``, else ``W``.
    bias : Signal(signed(acc_width)), in
        Start value of the accumulator; read on ``first`` beats only.
    valid, first, last : Signal(1), in
        Beat qualifiers (see protocol).
    en : Signal(1), in
        Pipeline advance; 0 holds every register.
    acc : Signal(signed(acc_width)), out
        Accumulator (a register).
    acc_valid : Signal(1), out
        ``acc`` holds a finished reduction (a register).
    lane_acc : View of ArrayLayout(signed(dw_acc_width), lanes), out
        Only with ``depthwise="pixels"`` or ``"channels"``: one accumulator per lane (no adder
        tree, no bias), for depthwise layers where each lane is a channel.
        Loaded like ``acc`` but ``tree_stages`` cycles earlier: latency
        :attr:`lane_latency`.
    lane_valid : Signal(1), out
        Only with ``depthwise="pixels"`` or ``"channels"``: ``lane_acc`` holds a finished
        reduction (a register), for one enabled cycle.
    """

    #: Pipeline depth of the default build (generic multiplier, no tree stage);
    #: use :attr:`latency`, which accounts for the configuration.
    LATENCY = 3

    def __init__(self, config):
        self._config = c = _check_config(config)
        super().__init__({
            "x": In(data.ArrayLayout(signed(c.act_width), c.lanes)),
            "mask": In(c.lanes),
            "words": In(data.ArrayLayout(unsigned(c.word_width), c.lanes)),
            "bias": In(signed(c.acc_width)),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "en": In(1),
            "acc": Out(signed(c.acc_width)),
            "acc_valid": Out(1),
            **({"lane_acc": Out(data.ArrayLayout(signed(c.dw_acc_width), c.lanes)),
                "lane_valid": Out(1)} if c.lane_accumulators else {}),
        })

    @property
    def config(self):
        return self._config

    @property
    def latency(self):
        """Enabled cycles from a beat at the inputs to its effect on ``acc``.

        3, plus 1 with ``multiplier="ice40_dual8x8"`` or ``"ecp5_mult18"``, plus ``tree_stages``.
        """
        return pe_latency(self._config)

    @property
    def lane_latency(self):
        """Enabled cycles from a beat at the inputs to its effect on ``lane_acc``."""
        return pe_latency(self._config) - self._config.tree_stages

    def elaborate(self, platform):
        m = Module()
        c = self._config
        wlayout = data.ArrayLayout(signed(c.weight_width), c.lanes)
        players = data.ArrayLayout(signed(c.product_width), c.lanes)

        if c.psc:
            m.submodules.wsu = wsu = WeightSelect(c.lanes, c.weight_width)
            m.d.comb += [wsu.words.eq(self.words), wsu.mask.eq(self.mask)]
            w_sel = wsu.w
        else:
            w_sel = wlayout(self.words.as_value())

        # The products, ``mul_stages`` enabled cycles after the inputs.
        # Data registers carry no reset: only the valid bits need one, which
        # saves the reset logic on several hundred flip-flops per row.
        if c.multiplier == "ice40_dual8x8":
            products = Signal(players)
            for pair in range(c.lanes // 2):
                mul = Ice40DualMul(c.act_width, c.weight_width)
                m.submodules[f"mul_{pair}"] = mul
                lanes = (2 * pair, 2 * pair + 1)
                # The selected weight goes straight into the DSP's B input
                # register, the activation into A: the mux ends at a register.
                m.d.comb += [mul.en.eq(self.en)]
                m.d.comb += [mul.a[i].eq(self.x[lane]) for i, lane in enumerate(lanes)]
                m.d.comb += [mul.b[i].eq(w_sel[lane]) for i, lane in enumerate(lanes)]
                m.d.comb += [products[lane].eq(mul.p[i]) for i, lane in enumerate(lanes)]
            mul_stages = Ice40DualMul.LATENCY
        elif c.multiplier == "ecp5_mult18":
            products = Signal(players)
            for lane in range(c.lanes):
                mul = Ecp5Mult18(c.act_width, c.weight_width)
                m.submodules[f"mul_{lane}"] = mul
                # As above: the selected weight ends at the DSP's B input
                # register, the activation at A; the DSP's output register
                # drives the adder tree.
                m.d.comb += [mul.en.eq(self.en), mul.a.eq(self.x[lane]), mul.b.eq(w_sel[lane]),
                             products[lane].eq(mul.p)]
            mul_stages = Ecp5Mult18.LATENCY
        else:
            x1 = Signal(data.ArrayLayout(signed(c.act_width), c.lanes), reset_less=True)
            w1 = Signal(wlayout, reset_less=True)
            products = Signal(players, reset_less=True)
            with m.If(self.en):
                m.d.sync += [x1.eq(self.x), w1.eq(w_sel)]
                m.d.sync += [products[lane].eq(x1[lane] * w1[lane]) for lane in range(c.lanes)]
            mul_stages = 2

        ctl = self._accumulate(m, [products[lane] for lane in range(c.lanes)], mul_stages)
        if c.lane_accumulators:
            self._lane_accumulate(m, products, ctl, mul_stages)
        return m

    def _lane_accumulate(self, m, products, ctl, stage):
        """One accumulator per lane, fed by the products (registered ``stage`` after the inputs).

        Depthwise layers make every lane a different channel, so the adder
        tree (which mixes lanes) is bypassed. They start from zero: the core
        adds the bias after the drain, where it reads the channel's other
        parameters anyway. ``dw_acc_width`` holds one 7x7 window; in other
        layers these registers run on and wrap, unread.
        """
        c = self._config
        valid, first, last = (x[stage] for x in ctl)
        for lane in range(c.lanes):
            acc = Signal(signed(c.dw_acc_width), reset_less=True, name=f"lane_acc_{lane}")
            m.d.comb += self.lane_acc[lane].eq(acc)
            with m.If(self.en & valid):
                m.d.sync += acc.eq(Mux(first, 0, acc) + products[lane])
        with m.If(self.en):
            m.d.sync += self.lane_valid.eq(valid & last)

    def _accumulate(self, m, products, mul_stages):
        """Adder tree over ``products`` (registered ``mul_stages`` after the inputs) into ``acc``.

        Shared with :class:`~psc.hw.naive.NaiveMac`, which sums twice as many products.
        """
        c = self._config
        # Control and bias travel beside the data, one register per stage up to
        # the accumulator. The bias registers load on ``first`` beats only; a
        # later ``first`` cannot overwrite one before use because all of them
        # advance with the beat.
        depth = mul_stages + c.tree_stages
        valid = [self.valid] + [Signal(name=f"v{i}") for i in range(1, depth + 1)]
        first = [self.first] + [Signal(name=f"f{i}") for i in range(1, depth + 1)]
        last = [self.last] + [Signal(name=f"l{i}") for i in range(1, depth + 1)]
        bias = [self.bias] + [Signal(signed(c.acc_width), name=f"b{i}", reset_less=True)
                              for i in range(1, depth + 1)]
        with m.If(self.en):
            for i in range(1, depth + 1):
                m.d.sync += [valid[i].eq(valid[i - 1]), first[i].eq(first[i - 1]),
                             last[i].eq(last[i - 1])]
                with m.If(valid[i - 1] & first[i - 1]):
                    m.d.sync += bias[i].eq(bias[i - 1])
            m.d.sync += self.acc_valid.eq(valid[depth] & last[depth])

        acc = Signal(signed(c.acc_width), reset_less=True)
        m.d.comb += self.acc.eq(acc)

        # Named so that waveforms show the tree's sum and the restart mux. Truncating
        # to acc_width is safe: PSCConfig sizes it and the host rejects biases that overflow.
        tree = Signal(signed(c.acc_width))
        start = Signal(signed(c.acc_width))
        m.d.comb += [
            tree.eq(pipelined_tree_sum(m, products, c.tree_stages, self.en)),
            start.eq(Mux(first[depth], bias[depth], acc)),
        ]
        with m.If(self.en & valid[depth]):
            m.d.sync += acc.eq(start + tree)
        return valid, first, last


def pe_latency(config):
    """Latency of :class:`PSCMac` (and :class:`~psc.hw.dot_product.DotProduct`) for ``config``.

    Multiplier stages (2 generic: operand and product registers; 3 for
    ``"ice40_dual8x8"`` and ``"ecp5_mult18"``: the DSP's input, product/pipeline
    and output registers), plus ``tree_stages``, plus the accumulator.
    """
    c = _check_config(config)
    mul = {"ice40_dual8x8": Ice40DualMul.LATENCY,
           "ecp5_mult18": Ecp5Mult18.LATENCY}.get(c.multiplier, 2)
    return mul + c.tree_stages + 1
