"""Per-channel requantisation of accumulators to activations (DESIGN.md), as a stream stage."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
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


class Requantizer(wiring.Component):
    """``rows`` parallel requantisers, bit-exact with :func:`psc.golden.requantize`.

    Per row::

        v = acc * M
        if S > 0: v = (v + 2**(S-1)) >> S      (arithmetic shift: round half up)
        y = clamp(v, -2**(act_width-1), 2**(act_width-1) - 1)
        if relu: y = max(y, 0)

    ``acc * M`` is kept at full width (``acc_width + mult_width + 1`` bits,
    signed), so nothing wraps; a shift at least that wide gives 0, as the
    model does.

    Pipeline (one register per stage, one global enable
    ``en = ~o.valid | o.ready``, ``i.ready = en``):

    ====== ==========================================================
    stage  registers
    ====== ==========================================================
    1      product ``acc * M``, ``S``
    2      product plus the rounding term, ``S``
    3      shifted, saturated and (optionally) rectified result (``o``)
    ====== ==========================================================

    The variable shift and the saturation share stage 3; the multiply has a
    stage of its own so a DSP can keep its output register.

    Latency: 3 cycles from an accepted input beat to ``o.valid`` when ``o`` is
    not stalled. Throughput: one beat per cycle. ``o.valid`` is a register and
    does not depend on ``o.ready``.

    With ``config.requantizers = q < rows`` (time-shared requantisers) the
    beat is held in a register and fed, ``q`` rows at a time, to a
    ``q``-row Requantizer as above; the results are collected into one
    ``rows``-wide output beat. Throughput is then one beat per
    ``n = rows / q`` cycles and the latency ``n + 4``; the arithmetic is the
    same, with ``q`` multipliers and shifters instead of ``rows``.

    Parameters
    ----------
    config : psc.config.PSCConfig
        ``act_width``, ``acc_width``, ``mult_width`` and ``rows`` are used.

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

    @property
    def latency(self):
        n = self._config.rows // self._config.requant_parallel
        return 3 if n == 1 else n + 4

    def elaborate(self, platform):
        if self._config.requant_parallel < self._config.rows:
            return self._elaborate_shared()
        m = Module()
        c = self._config
        pw = c.acc_width + c.mult_width + 1          # width of the signed product
        lo, hi = -(1 << (c.act_width - 1)), (1 << (c.act_width - 1)) - 1

        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        v1, v2 = Signal(), Signal()
        with m.If(en):
            m.d.sync += [v1.eq(self.i.valid), v2.eq(v1), self.o.valid.eq(v2)]

        for r in range(c.rows):
            prod = Signal(signed(pw), reset_less=True, name=f"prod_{r}")
            s1 = Signal(SHIFT_WIDTH, reset_less=True, name=f"s1_{r}")
            summ = Signal(signed(pw + 1), reset_less=True, name=f"sum_{r}")
            s2 = Signal(SHIFT_WIDTH, reset_less=True, name=f"s2_{r}")
            big = Signal(reset_less=True, name=f"big_{r}")
            # 2**(S-1) for 0 < S < pw; larger shifts are handled by `big`.
            rnd = Signal(unsigned(pw), name=f"rnd_{r}")
            m.d.comb += rnd.eq(Mux(s1 == 0, 0, (Const(1, unsigned(pw)) << s1) >> 1))
            shifted = Signal(signed(pw + 1), name=f"shifted_{r}")
            m.d.comb += shifted.eq(summ >> s2)
            sat = Mux(shifted < lo, lo, Mux(shifted > hi, hi, shifted))
            y = Mux(big, 0, sat)
            with m.If(en):
                m.d.sync += [
                    prod.eq(self.i.payload.acc[r] * self.i.payload.mult[r]),
                    s1.eq(self.i.payload.shift[r]),
                    summ.eq(prod + rnd),
                    s2.eq(s1),
                    big.eq(s1 >= pw),
                    self.o.payload[r].eq(Mux(self.relu & (y < 0), 0, y)),
                ]
        return m

    def _elaborate_shared(self):
        m = Module()
        c = self._config
        q = c.requant_parallel
        n = c.rows // q
        m.submodules.inner = inner = Requantizer(c.replace(rows=q, requantizers=None, depthwise="diagonal"))
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
