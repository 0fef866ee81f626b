"""Per-channel requantisation of accumulators to activations (DESIGN.md), as a stream stage."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import PSCConfig

__all__ = ["Requantizer", "SHIFT_WIDTH", "requant_input_layout"]

#: Bits of the per-channel right shift; the host allows 0..62 (psc.golden.requantize).
SHIFT_WIDTH = 6


def requant_input_layout(config):
    """Payload of :attr:`Requantizer.i`: ``rows`` accumulators with their channel's ``M`` and ``S``."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(config.acc_width), config.rows),
        "mult": data.ArrayLayout(unsigned(config.mult_width), config.rows),
        "shift": data.ArrayLayout(unsigned(SHIFT_WIDTH), config.rows),
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


def _sum_tree(terms):
    """Sum ``[(weight, value)]`` (``value << weight``): a balanced tree of :func:`_add_shifted`."""
    while len(terms) > 1:
        terms = sorted(terms, key=lambda t: t[0])
        nxt = [(terms[k][0], _add_shifted(terms[k][1], terms[k + 1][1],
                                          terms[k + 1][0] - terms[k][0]))
               for k in range(0, len(terms) - 1, 2)]
        terms = nxt + terms[len(terms) - len(terms) % 2:]
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
    """``rows`` parallel requantisers, bit-exact with :func:`psc.golden.requantize`.

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
    :class:`~psc.synth_harness.SynthHarness`, nextpnr median of 2 seeds) this
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
    6      ``2 * acc * M`` shifted right by ``S & ~7``, ``S & 7``
    7      ``t``: the rest of the shift
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
    first (an ``acc_width x k`` partial product, registered, then added into
    an accumulator whose low ``k`` bits are shifted out), so a value takes
    ``d = ceil(mult_width / k)`` cycles and the unit accepts one beat per
    ``d`` cycles. Stages: input (1), ``d`` partial products, the last
    accumulate (1), then the same shift/saturate stages 6-8: latency
    ``d + 5``. Same results, about ``k / mult_width`` of the multiplier: on
    the UP5K a ``rows=2, requantizers=1`` unit takes ~730 LUT4 at ~35 MHz with
    ``k=4`` (8 cycles per beat), ~990 LUT4 at ~28 MHz with ``k=8`` (its
    ``32 x 8`` partial product is the critical path), against ~1490 LUT4
    fully pipelined.

    With ``config.requantizers = q < rows`` (time-shared requantisers) the
    beat is held in a register and fed, ``q`` rows at a time, to a
    ``q``-row Requantizer as above; the results are collected into one
    ``rows``-wide output beat. Throughput is then one beat per
    ``n * d`` cycles (``n = rows / q``; ``d = 1`` unless digit-serial) and
    the latency ``1 + (n - 1) * d + L + 1``, ``L`` that of the ``q``-row
    unit (``n + 9`` at the default widths); the arithmetic is the same,
    with ``q`` multipliers and shifters instead of ``rows``.

    Parameters
    ----------
    config : psc.config.PSCConfig
        ``act_width``, ``acc_width``, ``mult_width``, ``rows``,
        ``requantizers`` and ``requant_mult_bits`` are used.

    Attributes
    ----------
    i : In(stream.Signature(requant_input_layout(config)))
    o : Out(stream.Signature(data.ArrayLayout(signed(act_width), rows)))
    relu : In(1)
        Rectify the outputs (held constant during a layer).
    """

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
        c = self._config
        return c.rows // c.requant_parallel * self._digits_serial(c)

    @property
    def latency(self):
        """Cycles from an accepted input beat to ``o.valid`` (``o`` not stalled)."""
        c = self._config
        d = self._digits_serial(c)
        if d > 1:
            # input, d partial products, last accumulate, two shift stages, saturation
            unit = 1 + d + 1 + 2 + 1
        else:
            # input, partial products, adder levels, two shift stages, saturation
            unit = 1 + 1 + self._tree_levels(c) + 2 + 1
        n = c.rows // c.requant_parallel
        return unit if n == 1 else 1 + (n - 1) * d + unit + 1

    def elaborate(self, platform):
        if self._config.requant_parallel < self._config.rows:
            return self._elaborate_shared()
        if self._digits_serial(self._config) > 1:
            return self._elaborate_serial()
        m = Module()
        c = self._config
        pw = c.acc_width + c.mult_width + 1          # width of the signed product
        stages = self.latency

        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        valid = [self.i.valid] + [Signal(name=f"v{k}") for k in range(1, stages)] + [self.o.valid]
        with m.If(en):
            m.d.sync += [valid[k + 1].eq(valid[k]) for k in range(stages)]

        def reg(value, name, shape=None):
            r = Signal(shape if shape is not None else value.shape(), reset_less=True, name=name)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r

        for r in range(c.rows):
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
                terms.sort(key=lambda t: t[0])
                nxt = []
                for k in range(0, len(terms) - 1, 2):
                    (k0, x), (k1, y) = terms[k], terms[k + 1]
                    nxt.append((k0, reg(_add_shifted(x, y, k1 - k0), f"sum{level}_{k0}_{r}")))
                if len(terms) % 2:
                    k0, x = terms[-1]
                    nxt.append((k0, reg(x, f"sum{level}_{k0}_{r}")))
                terms = nxt
                s = reg(s, f"s{3 + level}_{r}")
                level += 1
            (k0, prod), = terms
            assert k0 == 0
            self._tail(m, en, reg, prod[:pw], s, r)
        return m

    def _tail(self, m, en, reg, prod, s, r):
        """Shift, round, saturate and rectify ``prod`` by ``s`` into ``o.payload[r]`` (3 stages)."""
        c = self._config
        pw, a = c.acc_width + c.mult_width + 1, c.act_width
        lo, hi = -(1 << (a - 1)), (1 << (a - 1)) - 1
        # 2v, shifted right by S in two steps (multiples of 8, then 0..7)
        v2 = Cat(Const(0, 1), prod).as_signed()
        coarse = reg(v2 >> Cat(Const(0, 3), s[3:]), f"coarse_{r}", signed(pw + 1))
        s_fine = reg(s[:3], f"sfine_{r}")
        t = reg(coarse >> s_fine, f"t_{r}", signed(pw + 1))
        # saturation on t: in [2lo-1, 2hi] the result is (t + 1) >> 1, an
        # (a+2)-bit add; outside it, t's top bits are not a sign extension
        # of bit a+1, or the narrow compare decides.
        tl = t[:a + 2].as_signed()
        top = t[a + 1:]
        fits = (top == 0) | (top == (1 << top.shape().width) - 1)
        below = Mux(fits, tl < 2 * lo - 1, t[-1])
        above = Mux(fits, tl > 2 * hi, ~t[-1])
        y = Signal(signed(a), name=f"y_{r}")
        m.d.comb += y.eq(Mux(below, lo, Mux(above, hi, ((tl + 1) >> 1)[:a].as_signed())))
        with m.If(en):
            m.d.sync += self.o.payload[r].eq(Mux(self.relu & y[-1], 0, y))

    def _elaborate_serial(self):
        m = Module()
        c = self._config
        k, d = c.requant_mult_bits, self._digits_serial(c)
        pw = c.acc_width + c.mult_width + 1

        en = Signal()
        step = Signal(range(d))
        busy = Signal()
        last = Signal()
        m.d.comb += [
            en.eq(~self.o.valid | self.o.ready),
            last.eq(step == d - 1),
            self.i.ready.eq(en & (~busy | last)),
        ]
        take = self.i.valid & self.i.ready
        # control, stepping with the data: pp_v/pp_first/pp_last go with the
        # registered partial product, p_v marks a finished product, then the
        # three tail stages (coarse, t, o)
        pp_v, pp_first, pp_last, p_v, v5, v6 = (Signal(name=n) for n in
                                                 ("pp_v", "pp_first", "pp_last", "p_v", "v5", "v6"))
        with m.If(en):
            with m.If(take):
                m.d.sync += [busy.eq(1), step.eq(0)]
            with m.Elif(busy):
                m.d.sync += step.eq(step + 1)
                with m.If(last):
                    m.d.sync += busy.eq(0)
            m.d.sync += [
                pp_v.eq(busy), pp_first.eq(step == 0), pp_last.eq(last),
                p_v.eq(pp_v & pp_last), v5.eq(p_v), v6.eq(v5), self.o.valid.eq(v6),
            ]

        def reg(value, name, shape=None):
            r = Signal(shape if shape is not None else value.shape(), reset_less=True, name=name)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r

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
            # one acc_width x k partial product per cycle, least significant digit first
            pp = reg(_mul_digit(acc, mult[:k]), f"pp_{r}", signed(c.acc_width + k + 1))
            s_pp = reg(s_in, f"s2_{r}")
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

        # Serialiser: hold the whole beat, hand out q rows per accepted sub-beat.
        held = Signal(requant_input_layout(c))
        busy = Signal()
        phase_i = Signal(range(n))
        last_in = busy & (phase_i == n - 1) & inner.i.ready
        m.d.comb += [
            self.i.ready.eq(~busy | last_in),
            inner.i.valid.eq(busy),
        ]
        with m.Switch(phase_i):
            for k in range(n):
                with m.Case(k):
                    for r in range(q):
                        m.d.comb += [
                            inner.i.payload.acc[r].eq(held.acc[k * q + r]),
                            inner.i.payload.mult[r].eq(held.mult[k * q + r]),
                            inner.i.payload.shift[r].eq(held.shift[k * q + r]),
                        ]
        with m.If(inner.i.valid & inner.i.ready):
            m.d.sync += phase_i.eq(Mux(phase_i == n - 1, 0, phase_i + 1))
            with m.If(phase_i == n - 1):
                m.d.sync += busy.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload), busy.eq(1)]

        # Deserialiser: collect n sub-beats into o; o holds until taken.
        phase_o = Signal(range(n))
        m.d.comb += inner.o.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(inner.o.valid & inner.o.ready):
            with m.Switch(phase_o):
                for k in range(n):
                    with m.Case(k):
                        m.d.sync += [self.o.payload[k * q + r].eq(inner.o.payload[r])
                                     for r in range(q)]
            m.d.sync += phase_o.eq(Mux(phase_o == n - 1, 0, phase_o + 1))
            with m.If(phase_o == n - 1):
                m.d.sync += self.o.valid.eq(1)
        return m
