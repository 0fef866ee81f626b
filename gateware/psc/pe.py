"""Processing element: one output row's multiply-accumulate over ``lanes`` activations."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import PSCConfig
from .weight_select import WeightSelect

__all__ = ["PSCMac"]


def _check_config(config):
    if not isinstance(config, PSCConfig):
        raise TypeError(f"config must be a psc.config.PSCConfig, not {config!r}")
    return config


def tree_sum(values):
    """Balanced adder tree; each level widens by one bit, so no sum wraps."""
    values = list(values)
    while len(values) > 1:
        pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        values = pairs + values[len(values) - len(values) % 2:]
    return values[0]


class PSCMac(wiring.Component):
    """Multiply-accumulate unit of one output row (one PE).

    Each enabled cycle takes ``lanes`` activations and ``lanes`` weight
    words, selects ``W+``/``W-`` per lane by the shared sign mask (``psc=True``
    only), multiplies, sums the products in an adder tree and accumulates into
    an ``acc_width``-bit register. ``config.rows`` is ignored.

    Pipeline (each stage a register, all advancing together on ``en``):

    ====== ============================================================
    stage  registers
    ====== ============================================================
    1      selected weights and activations (the multiplier's inputs),
           ``valid``/``first``/``last``, bias of a ``first`` beat
    2      products, ``valid``/``first``/``last``, bias of a ``first`` beat
    3      accumulator ``acc`` (adder tree in front), ``acc_valid``
    ====== ============================================================

    Registering the selected weight keeps the mux off the multiply path and
    lets the multiply use a DSP's input and output registers, so a PSC build
    meets the clock of the plain one (DESIGN.md timing rule). The bias goes
    only as far as the accumulator (two registers, loaded on ``first`` beats
    only); a later ``first`` cannot overwrite it before use because both
    registers advance with the beat.

    Latency: :attr:`latency` = 3 enabled cycles: a beat presented with ``en``
    in cycle ``t`` is in ``acc`` from cycle ``t + 3`` (counting enabled
    cycles only). Throughput: one beat per enabled cycle.

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
        Widths; ``lanes`` and ``psc`` are used, ``rows`` ignored. With
        ``psc=False`` there is no mux: words are ``weight_width`` bits, used
        as the weight, and ``mask`` is ignored.

    Attributes
    ----------
    x : View of ArrayLayout(signed(act_width), lanes), in
        Activations.
    mask : Signal(lanes), in
        Sign mask of ``x`` from a shared :class:`~psc.sign_mask.SignMask`.
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
    """

    #: Pipeline depth; :class:`~psc.dot_product.DotProduct` reads it without building a PE.
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
        })

    @property
    def config(self):
        return self._config

    @property
    def latency(self):
        """Enabled cycles from a beat at the inputs to its effect on ``acc``: 3."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        c = self._config
        wlayout = data.ArrayLayout(signed(c.weight_width), c.lanes)

        if c.psc:
            m.submodules.wsu = wsu = WeightSelect(c.lanes, c.weight_width)
            m.d.comb += [wsu.words.eq(self.words), wsu.mask.eq(self.mask)]
            w_sel = wsu.w
        else:
            w_sel = wlayout(self.words.as_value())

        # Data registers carry no reset: only the valid bits need one, which
        # saves the reset logic on several hundred flip-flops per row.
        x1 = Signal(data.ArrayLayout(signed(c.act_width), c.lanes), reset_less=True)
        w1 = Signal(wlayout, reset_less=True)
        b1 = Signal(signed(c.acc_width), reset_less=True)
        v1, f1, l1 = Signal(), Signal(), Signal()
        p2 = Signal(data.ArrayLayout(signed(c.product_width), c.lanes), reset_less=True)
        b2 = Signal(signed(c.acc_width), reset_less=True)
        v2, f2, l2 = Signal(), Signal(), Signal()
        acc = Signal(signed(c.acc_width), reset_less=True)
        m.d.comb += self.acc.eq(acc)

        # Named so that waveforms show the tree's sum and the restart mux. Truncating
        # to acc_width is safe: PSCConfig sizes it and the host rejects biases that overflow.
        tree = Signal(signed(c.acc_width))
        start = Signal(signed(c.acc_width))
        m.d.comb += [
            tree.eq(tree_sum(p2[lane] for lane in range(c.lanes))),
            start.eq(Mux(f2, b2, acc)),
        ]

        with m.If(self.en):
            m.d.sync += [
                x1.eq(self.x), w1.eq(w_sel),
                v1.eq(self.valid), f1.eq(self.first), l1.eq(self.last),
                v2.eq(v1), f2.eq(f1), l2.eq(l1),
                self.acc_valid.eq(v2 & l2),
            ]
            m.d.sync += [p2[lane].eq(x1[lane] * w1[lane]) for lane in range(c.lanes)]
            with m.If(self.valid & self.first):
                m.d.sync += b1.eq(self.bias)
            with m.If(v1 & f1):
                m.d.sync += b2.eq(b1)
            with m.If(v2):
                m.d.sync += acc.eq(start + tree)
        return m
