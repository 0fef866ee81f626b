"""Per-channel requantisation of accumulators to activations (:func:`psc.golden.requantize`), as a stream stage."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from psc.config import PSCConfig
from psc.hw.ice40_mul import Ice40Mul16

__all__ = ["Requantizer", "SHIFT_WIDTH", "requant_input_layout"]

#: Bits of the per-channel right shift; the host allows 0..62 (psc.model.golden.requantize).
SHIFT_WIDTH = 6


def requant_input_layout(config, rows=None):
    """Payload of :attr:`Requantizer.i`: ``rows`` accumulators with their channel's ``M`` and
    ``S`` (``rows`` defaults to ``config.rows``)."""
    rows = config.rows if rows is None else rows
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(config.acc_width), rows),
        "mult": data.ArrayLayout(unsigned(config.mult_width), rows),
        "shift": data.ArrayLayout(unsigned(SHIFT_WIDTH), rows),
    })


#: Bits of an accumulator digit and of a multiplier digit in the pipelined
#: multiply: each stage computes at most a 16x4 partial product (or one add).
#: 4-bit digits of M rather than 8: ~142 instead of ~109 MHz stand-alone on
#: ECP5 for one more stage and ~170 more FFs per row, the same LUTs.
ACC_DIGIT = 16
MULT_DIGIT = 4


def _digits(value, width, digit, signed_top):
    """``[(offset, slice)]`` of ``value`` in ``digit``-bit pieces, the top one signed if asked."""
    out = []
    for lo in range(0, width, digit):
        hi = min(lo + digit, width)
        piece = value[lo:hi]
        out.append((lo, piece.as_signed() if signed_top and hi == width else piece))
    return out


def _add_shifted(x, y, k):
    """``x + (y << k)``, adding only where ``y`` overlaps (the low ``k`` bits pass through)."""
    if k == 0:
        return x + y
    if x.shape().width <= k:
        # extend x so that x[:k] is its low k bits and x >> k its sign (or 0)
        x = x + Const(0, signed(k + 1) if x.shape().signed else unsigned(k + 1))
    high = (x >> k) + y
    total = Cat(x[:k], high)
    return total.as_signed() if high.shape().signed else total


def _tree_level(terms):
    """One level of an adder tree over ``[(weight, value)]`` (``value << weight``):
    neighbours by weight summed in pairs by :func:`_add_shifted`, an odd one passed on."""
    terms = sorted(terms, key=lambda t: t[0])
    nxt = [(terms[k][0], _add_shifted(terms[k][1], terms[k + 1][1],
                                      terms[k + 1][0] - terms[k][0]))
           for k in range(0, len(terms) - 1, 2)]
    return nxt + terms[len(terms) - len(terms) % 2:]


def _sum_tree(terms):
    """Sum ``[(weight, value)]`` (``value << weight``): a balanced tree of :func:`_add_shifted`."""
    while len(terms) > 1:
        terms = _tree_level(terms)
    return terms[0]


def _mul_digit(a, d):
    """``a * d`` for an unsigned digit ``d``: one conditional copy of ``a`` per bit of ``d``,
    summed by a balanced adder tree (``ceil(log2(len(d)))`` adders deep, where Yosys'
    generic LUT multiplier chains ``len(d) - 1`` adders), written as adds so that no
    synthesis flow maps it to a hard multiplier."""
    weight, value = _sum_tree([(j, Mux(d[j], a, 0)) for j in range(len(d))])
    assert weight == 0
    return value


class Requantizer(wiring.Component):
    """``rows`` parallel requantisers, bit-exact with :func:`psc.model.golden.requantize`.

    Per row::

        v = acc * M
        if S > 0: v = (v + 2**(S-1)) >> S      (arithmetic shift: round half up)
        y = clamp(v, -2**(act_width-1), 2**(act_width-1) - 1)
        if relu: y = max(y, 0)

    ``acc * M`` is kept at full width (``acc_width + mult_width + 1`` bits,
    signed), so nothing wraps. The rounding is done without a wide adder:
    ``t = (2 * v) >> S`` (which is ``v >> (S-1)`` for ``S > 0`` and ``2v`` for
    ``S = 0``), then ``y = (t + 1) >> 1``, which is exact (``floor((v +
    2**(S-1)) / 2**S) = floor((floor(v / 2**(S-1)) + 1) / 2)``). Saturation is
    decided on ``t`` (``t < 2*lo - 1`` gives ``lo``, ``t > 2*hi`` gives
    ``hi``), so the ``+ 1`` is only ``act_width + 2`` bits wide; a shift at
    least as wide as the product gives 0, as the model does.

    The multiply is split into digits so that no stage holds more than a
    16 x 4 partial product or one add, for a clock far above the multiply's
    one-cycle form when it is built from LUTs (both shipped cores give their
    hard multipliers to the MAC array): ``acc`` in 16-bit digits (the top one
    signed), ``M`` in 4-bit digits; the ``ceil(acc_width/16) *
    ceil(mult_width/4)`` partial products (8 at the default 32 x 16) are
    summed by a tree of two-input adders with a register after each level.
    Each partial product is itself written as a balanced tree of shifted
    conditional adds (2 adders deep for 4 bits of ``M``; Yosys' generic LUT
    multiplier would chain 3), which is also no ``$mul`` cell, so no flow
    maps it to a DSP the MAC array needs. Stand-alone (in
    :class:`~psc.flow.harness.SynthHarness`, nextpnr median of 2 seeds) this
    reaches ~142 MHz on ECP5-25F (was ~81 with the one-cycle multiply) in
    ~840 LUT4 + ~310 CCU2C + ~570 FF (was ~2000 + ~100 + ~120), and a
    time-shared ``rows=2, requantizers=1`` unit ~44 MHz on the UP5K in ~1490
    LUT4 and ~700 FF (was ~21 MHz, ~1900 LUT4, 250 FF).

    Pipeline (one register per stage, one global enable
    ``en = ~o.valid | o.ready``, ``i.ready = en``), at the default widths:

    ====== ==========================================================
    stage  registers
    ====== ==========================================================
    1      ``acc``, ``M``, ``S`` as received (no logic before the
           multiply: in the core they come from a block RAM read)
    2      the eight 16 x 4 partial products, ``S``
    3      four sums of two partial products, ``S``
    4      two sums of those, ``S``
    5      product ``acc * M``, ``S``
    6      ``2 * acc * M`` shifted right by ``S & ~7`` (only the bits
           that can still reach the result, and a flag for those
           that cannot), its sign, ``S & 7``
    7      ``t``: the rest of the shift (low ``act_width + 1`` bits,
           sign, flag)
    8      rounded, saturated and (optionally) rectified result (``o``)
    ====== ==========================================================

    Other widths give ``ceil(log2(partial products))`` adder stages
    (stage 2 holds the product itself when there is one digit each).

    Latency: :attr:`latency` cycles (8 at the default widths) from an
    accepted input beat to ``o.valid`` when ``o`` is not stalled.
    Throughput: one beat per cycle (:attr:`cycles_per_beat`). ``o.valid`` is
    a register and does not depend on ``o.ready``.

    Digit-serial multiply (``config.requant_mult_bits = k``): each row
    multiplies ``acc`` by ``k`` bits of ``M`` per cycle, least significant
    first (an ``acc_width x k`` partial product: ``k`` conditional copies of
    ``acc`` summed by a tree with a register after each of its
    ``p = max(1, ceil(log2(k)))`` levels, so one carry chain per cycle; then
    added into an accumulator whose low ``k`` bits are shifted out), so a
    value takes ``d = ceil(mult_width / k)`` cycles and the unit accepts one
    beat per ``d`` cycles. Stages: input (1), ``d`` partial products (the
    last one ``p`` stages deep), the last accumulate (1), then the same
    shift/saturate stages 6-8: latency ``d + 4 + p``. Same results, about
    ``k / mult_width`` of the multiplier: on the UP5K a ``rows=2,
    requantizers=1`` unit with ``k=4`` (8 cycles per beat) takes ~540 LUT4
    and ~310 FF at 32 x 16 bits, ~485 LUT4 and ~280 FF at 27 x 16 (the
    UP5K build), ~47 MHz (nextpnr, 2 seeds; icetime ~44 MHz) stand-alone;
    it took ~730 LUT4 at ~35 MHz with a full-width shifter, a copy of the
    input beat and a one-cycle partial product. With ``k=8`` it was ~990
    LUT4 at ~28 MHz, fully pipelined ~1490 LUT4.

    On SB_MAC16 (``config.requant_multiplier = "ice40_mac16"``) each row
    multiplies on two :class:`~psc.hw.ice40_mul.Ice40Mul16`, one per 16-bit
    half of ``acc`` (the top half signed; one DSP when ``acc`` has at most 16
    bits): their input, product and output registers are stages 1-3, the
    halves' sum (``(hi << 16) + lo``, the low 16 bits passing through) stage
    4, then the three stages of shift, rounding and saturation (6-8 in the
    table above): latency 7 (6 with one half),
    one beat per cycle, and no multiplier in the fabric.

    With ``config.requantizers = q < rows`` (time-shared requantisers) the
    beat's rows are fed, ``q`` at a time, straight from ``i.payload`` to a
    ``q``-row Requantizer as above (no copy of the beat: the stream
    contract holds the payload still while ``i.valid`` and not
    ``i.ready``), and the beat is accepted with its last ``q`` rows; the
    results of the first ``n - 1`` groups wait in a register and go into
    ``o`` with the last. Throughput is then one beat per ``n * d`` cycles
    (``n = rows / q``; ``d = 1`` unless digit-serial); the latency, from the
    accepted beat (whose first rows went in ``(n - 1) * d`` cycles
    earlier), is ``L + 1``, ``L`` that of the ``q``-row unit (9 in all at
    the default widths); the arithmetic is the same, with ``q`` multipliers and
    shifters instead of ``rows``. ``i.ready`` then depends on registers
    only, not on ``o.ready``, so a consumer's ready (the UART bridge's, on
    a board) does not reach back through the requantiser into the core.

    Parameters
    ----------
    config : psc.config.PSCConfig
        ``act_width``, ``acc_width``, ``mult_width``, ``rows``,
        ``requantizers``, ``requant_mult_bits`` and ``requant_multiplier`` are used.

    Attributes
    ----------
    i : In(stream.Signature(requant_input_layout(config)))
    o : Out(stream.Signature(data.ArrayLayout(signed(act_width), rows)))
    relu : In(1)
        Rectify the outputs (held constant during a layer).
    """

    #: The SB_MAC16 product of ``requant_multiplier="ice40_mac16"`` (a bench swaps it).
    _mac16 = Ice40Mul16

    def __init__(self, config):
        if not isinstance(config, PSCConfig):
            raise TypeError(f"config must be a psc.config.PSCConfig, not {config!r}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(requant_input_layout(config))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(config.act_width), config.rows))),
            "relu": In(1),
        })

    @staticmethod
    def _tree_levels(config):
        n = -(-config.acc_width // ACC_DIGIT) * -(-config.mult_width // MULT_DIGIT)
        return (n - 1).bit_length()

    @staticmethod
    def _digits_serial(config):
        """Cycles per value of one requantiser: digits of ``M`` (1 unless ``requant_mult_bits``)."""
        k = config.requant_mult_bits
        return 1 if k is None else -(-config.mult_width // k)

    @property
    def cycles_per_beat(self):
        """Cycles between accepted beats at full rate: ``rows / requantizers`` times the
        digits of ``M`` per requantiser (``ceil(mult_width / requant_mult_bits)``, else 1)."""
        return self.rate_of(self._config)

    @classmethod
    def rate_of(cls, config):
        """:attr:`cycles_per_beat` of a requantiser of ``config``, without building one."""
        return config.rows // config.requant_parallel * cls._digits_serial(config)

    @classmethod
    def dsps_of(cls, config):
        """Hard multipliers the requantisers of ``config`` take: two SB_MAC16 per
        requantiser with ``requant_multiplier="ice40_mac16"`` (one per 16-bit half of the
        sum), else none."""
        if config.requant_multiplier != "ice40_mac16":
            return 0
        return config.requant_parallel * -(-config.acc_width // ACC_DIGIT)

    @staticmethod
    def _pp_stages(config):
        """Digit-serial: registered levels of the ``acc_width x k`` partial product (one per
        adder level of its ``k`` conditional copies of ``acc``, at least one)."""
        return max(1, (config.requant_mult_bits - 1).bit_length())

    @property
    def latency(self):
        """Cycles from an accepted input beat to ``o.valid`` (``o`` not stalled)."""
        return self.latency_of(self._config)

    @classmethod
    def latency_of(cls, config):
        """:attr:`latency` of a requantiser of ``config``, without building one."""
        c, self = config, cls
        d = self._digits_serial(c)
        if c.requant_multiplier == "ice40_mac16":
            # the DSPs' three registers, the halves' sum, two shift stages, saturation
            unit = Ice40Mul16.LATENCY + (c.acc_width > ACC_DIGIT) + 2 + 1
        elif d > 1:
            # input, d partial products (the last one through every level of the
            # partial product's adder tree), last accumulate, two shift stages, saturation
            unit = 1 + d + (self._pp_stages(c) - 1) + 1 + 2 + 1
        else:
            # input, partial products, adder levels, two shift stages, saturation
            unit = 1 + 1 + self._tree_levels(c) + 2 + 1
        n = c.rows // c.requant_parallel
        # time-shared: the beat is accepted with its last rows, which leave the inner
        # unit `unit` cycles later, and are collected in o one cycle after that
        return unit if n == 1 else unit + 1

    def _stall_enable(self, m):
        """``(en, reg)``: the pipeline's global enable ``en = ~o.valid | o.ready`` and
        ``reg(value, name, shape=None)``, a reset-less register of ``value`` loaded when ``en``."""
        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)

        def reg(value, name, shape=None):
            r = Signal(shape if shape is not None else value.shape(), reset_less=True, name=name)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r
        return en, reg

    def elaborate(self, platform):
        if self._config.requant_parallel < self._config.rows:
            return self._elaborate_shared()
        if self._digits_serial(self._config) > 1:
            return self._elaborate_serial()
        m = Module()
        c = self._config
        pw = c.acc_width + c.mult_width + 1          # width of the signed product
        stages = self.latency

        en, reg = self._stall_enable(m)
        m.d.comb += self.i.ready.eq(en)
        valid = [self.i.valid] + [Signal(name=f"v{k}") for k in range(1, stages)] + [self.o.valid]
        with m.If(en):
            m.d.sync += [valid[k + 1].eq(valid[k]) for k in range(stages)]

        for r in range(c.rows):
            if c.requant_multiplier == "ice40_mac16":
                prod, s = self._mac16_product(m, en, reg, r)
                self._tail(m, en, reg, prod[:pw], s, r)
                continue
            # stage 1: inputs as received
            acc = reg(self.i.payload.acc[r], f"acc_{r}")
            mult = reg(self.i.payload.mult[r], f"mult_{r}")
            s = reg(self.i.payload.shift[r], f"s1_{r}")
            # stage 2: partial products (one 16 x 4 multiply each)
            terms = []
            for ka, da in _digits(acc, c.acc_width, ACC_DIGIT, True):
                for km, dm in _digits(mult, c.mult_width, MULT_DIGIT, False):
                    pp = reg(_mul_digit(da, dm), f"pp{ka}_{km}_{r}", (da * dm).shape())
                    terms.append((ka + km, pp))
            s = reg(s, f"s2_{r}")
            # adder tree, a register after each level; neighbours by weight
            level = 0
            while len(terms) > 1:
                terms = [(w, reg(v, f"sum{level}_{w}_{r}")) for w, v in _tree_level(terms)]
                s = reg(s, f"s{3 + level}_{r}")
                level += 1
            (k0, prod), = terms
            assert k0 == 0
            self._tail(m, en, reg, prod[:pw], s, r)
        return m

    def _mac16_product(self, m, en, reg, r):
        """Row ``r``'s ``acc * M`` on SB_MAC16 (``requant_multiplier="ice40_mac16"``), and
        its ``S`` delayed to match: one :class:`~psc.hw.ice40_mul.Ice40Mul16` per 16-bit
        half of ``acc`` (the top one signed), whose input, product and output registers
        are stages 1-3, then the halves' sum (stage 4) when there are two."""
        c = self._config
        terms = []
        for lo, piece in _digits(self.i.payload.acc[r], c.acc_width, ACC_DIGIT, True):
            mul = self._mac16(a_signed=piece.shape().signed)
            m.submodules[f"mac{lo}_{r}"] = mul
            m.d.comb += [mul.a.eq(piece), mul.b.eq(self.i.payload.mult[r]), mul.en.eq(en)]
            terms.append((lo, mul.p))
        s = self.i.payload.shift[r]
        for k in range(Ice40Mul16.LATENCY):
            s = reg(s, f"s{1 + k}_{r}")
        if len(terms) > 1:
            terms = [(w, reg(v, f"msum_{w}_{r}")) for w, v in _tree_level(terms)]
            s = reg(s, f"s{1 + Ice40Mul16.LATENCY}_{r}")
        (k0, prod), = terms
        assert k0 == 0
        return prod, s

    def _tail(self, m, en, reg, prod, s, r):
        """Shift, round, saturate and rectify ``prod`` by ``s`` into ``o.payload[r]`` (3 stages).

        ``t = (2 * prod) >> s`` by a logarithmic shifter, largest step first, that keeps
        only the bits that can still reach ``t[:act_width + 1]`` (``act_width + 1 + R``
        bits while ``R`` is the largest shift still to come) and folds the bits that
        leave that range into one flag, ``wide``: some bit of ``t`` above ``act_width``
        differs from the sign. That is ~120 LUT4 at 27 x 16 bits where a full-width
        shifter of the product took ~260; the saturation needs no more than the low
        ``act_width + 1`` bits, the sign and the flag. Registers after the
        ``s[3:]`` steps and after the ``s[:3]`` steps (stages 6 and 7).
        """
        c = self._config
        a = c.act_width
        lo, hi = -(1 << (a - 1)), (1 << (a - 1)) - 1
        x = Cat(Const(0, 1), prod).as_signed()         # 2v
        sign = x[-1]
        keep = a + 1
        bits = [x[i] for i in range(len(x) - 1)]       # below the sign bit; above it: sign
        wide = Const(0, 1)
        rest = (1 << SHIFT_WIDTH) - 1                   # largest shift still to come
        for j in reversed(range(SHIFT_WIDTH)):
            step = 1 << j
            rest -= step

            def bit(i):
                return bits[i] if i < len(bits) else sign
            # unshifted, bits keep+rest .. keep+rest+step-1 now lie above the window for good
            gone = [bits[i] for i in range(keep + rest, min(keep + rest + step, len(bits)))]
            if gone:
                wide = wide | (~s[j] & (Cat(*gone) != Cat(*[sign] * len(gone))))
            # (bits past the list are the sign: they need no multiplexer)
            bits = [Mux(s[j], bit(i + step), bits[i]) for i in range(min(keep + rest, len(bits)))]
            if j == 3:
                # stage 6: the coarse steps done
                bits = list(reg(Cat(*bits), f"coarse_{r}"))
                sign = reg(sign, f"csign_{r}")
                wide = reg(wide, f"cwide_{r}")
                s = Cat(reg(s[:3], f"sfine_{r}"), Const(0, SHIFT_WIDTH - 3))
        # stage 7: t's low keep bits, its sign and the flag
        t = reg(Cat(*bits[:keep], *[sign] * max(0, keep - len(bits))), f"t_{r}")
        sign = reg(sign, f"tsign_{r}")
        wide = reg(wide, f"twide_{r}")
        # saturation: when t fits act_width + 2 bits (not wide) the result is
        # (t + 1) >> 1, an (a+2)-bit add, and the narrow compares decide the bounds;
        # otherwise the sign does.
        tl = Cat(t, sign).as_signed()
        below = Mux(wide, sign, tl < 2 * lo - 1)
        above = Mux(wide, ~sign, tl > 2 * hi)
        y = Signal(signed(a), name=f"y_{r}")
        m.d.comb += y.eq(Mux(below, lo, Mux(above, hi, ((tl + 1) >> 1)[:a].as_signed())))
        with m.If(en):
            m.d.sync += self.o.payload[r].eq(Mux(self.relu & y[-1], 0, y))

    def _elaborate_serial(self):
        m = Module()
        c = self._config
        k, d = c.requant_mult_bits, self._digits_serial(c)
        pw = c.acc_width + c.mult_width + 1

        en, reg = self._stall_enable(m)
        step = Signal(range(d))
        busy = Signal()
        last = Signal()
        m.d.comb += [
            last.eq(step == d - 1),
            self.i.ready.eq(en & (~busy | last)),
        ]
        take = self.i.valid & self.i.ready
        # control, stepping with the data: pp_v/pp_first/pp_last go with the
        # registered partial product (after its last level), p_v marks a finished
        # product, then the three tail stages (coarse, t, o)
        p_v, v5, v6 = (Signal(name=n) for n in ("p_v", "v5", "v6"))
        pp_v, pp_first, pp_last = busy, step == 0, last
        with m.If(en):
            with m.If(take):
                m.d.sync += [busy.eq(1), step.eq(0)]
            with m.Elif(busy):
                m.d.sync += step.eq(step + 1)
                with m.If(last):
                    m.d.sync += busy.eq(0)
            for level in range(self._pp_stages(c)):
                nxt = [Signal(name=f"{n}{level}") for n in ("pp_v", "pp_first", "pp_last")]
                m.d.sync += [n.eq(v) for n, v in zip(nxt, (pp_v, pp_first, pp_last))]
                pp_v, pp_first, pp_last = nxt
            m.d.sync += [p_v.eq(pp_v & pp_last), v5.eq(p_v), v6.eq(v5), self.o.valid.eq(v6)]

        for r in range(c.rows):
            acc = Signal(signed(c.acc_width), reset_less=True, name=f"acc_{r}")
            mult = Signal(d * k, reset_less=True, name=f"mult_{r}")   # digits still to do
            s_in = Signal(SHIFT_WIDTH, reset_less=True, name=f"s1_{r}")
            with m.If(en):
                with m.If(take):
                    m.d.sync += [acc.eq(self.i.payload.acc[r]), mult.eq(self.i.payload.mult[r]),
                                 s_in.eq(self.i.payload.shift[r])]
                with m.Elif(busy):
                    m.d.sync += mult.eq(mult >> k)
            # one acc_width x k partial product per cycle, least significant digit
            # first: k conditional copies of acc, summed by a tree with a register
            # after each level (one carry chain per cycle, throughput unchanged)
            terms = [(j, Mux(mult[j], acc, 0)) for j in range(k)]
            s_pp = s_in
            for level in range(self._pp_stages(c)):
                if len(terms) > 1:
                    terms = _tree_level(terms)
                terms = [(w, reg(v, f"pp{level}_{w}_{r}")) for w, v in terms]
                s_pp = reg(s_pp, f"s2_{level}_{r}")
            (w, pp), = terms
            assert w == 0
            # accumulate: the sum's low k bits are final, shift them out
            hi_w = c.acc_width + k + 1
            p_hi = Signal(signed(hi_w), reset_less=True, name=f"p_hi_{r}")
            p_lo = Signal(d * k, reset_less=True, name=f"p_lo_{r}")
            s_p = Signal(SHIFT_WIDTH, reset_less=True, name=f"s3_{r}")
            total = Signal(signed(hi_w + 1), name=f"total_{r}")
            m.d.comb += total.eq(Mux(pp_first, 0, p_hi) + pp)
            with m.If(en & pp_v):
                m.d.sync += [p_hi.eq(total >> k), p_lo.eq(Cat(p_lo[k:], total[:k])), s_p.eq(s_pp)]
            prod = Cat(p_lo, p_hi).as_signed()
            self._tail(m, en, reg, prod[:pw], s_p, r)
        return m

    def _elaborate_shared(self):
        m = Module()
        c = self._config
        q = c.requant_parallel
        n = c.rows // q
        inner_config = c.replace(rows=q, requantizers=None, depthwise="diagonal")
        m.submodules.inner = inner = Requantizer(inner_config)
        m.d.comb += inner.relu.eq(self.relu)

        # Serialiser: q rows at a time straight from the input beat, which the
        # stream contract holds still until i.ready (no copy of the beat); the beat
        # is taken with its last q rows.
        phase_i = Signal(range(n))
        m.d.comb += [
            inner.i.valid.eq(self.i.valid),
            self.i.ready.eq(inner.i.ready & (phase_i == n - 1)),
        ]
        with m.Switch(phase_i):
            for k in range(n):
                with m.Case(k):
                    for r in range(q):
                        m.d.comb += [
                            inner.i.payload.acc[r].eq(self.i.payload.acc[k * q + r]),
                            inner.i.payload.mult[r].eq(self.i.payload.mult[k * q + r]),
                            inner.i.payload.shift[r].eq(self.i.payload.shift[k * q + r]),
                        ]
        with m.If(inner.i.valid & inner.i.ready):
            m.d.sync += phase_i.eq(Mux(phase_i == n - 1, 0, phase_i + 1))

        # Deserialiser: the first n - 1 sub-beats into `part`, the last one with
        # them into o, which holds until taken. inner.o.ready depends on registers
        # only, so o.ready (from the consumer, in the core from the UART bridge)
        # does not reach back through the requantiser to i.ready.
        phase_o = Signal(range(n))
        part = Signal(data.ArrayLayout(signed(c.act_width), (n - 1) * q))
        last_o = phase_o == n - 1
        m.d.comb += inner.o.ready.eq(~last_o | ~self.o.valid)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(inner.o.valid & inner.o.ready):
            with m.Switch(phase_o):
                for k in range(n - 1):
                    with m.Case(k):
                        m.d.sync += [part[k * q + r].eq(inner.o.payload[r]) for r in range(q)]
            with m.If(last_o):
                m.d.sync += [self.o.payload[k].eq(part[k]) for k in range((n - 1) * q)]
                m.d.sync += [self.o.payload[(n - 1) * q + r].eq(inner.o.payload[r])
                             for r in range(q)]
                m.d.sync += self.o.valid.eq(1)
            m.d.sync += phase_o.eq(Mux(last_o, 0, phase_o + 1))
        return m
