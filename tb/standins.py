"""Small Amaranth designs the bench library is tested against.

``StreamRegister`` is a correct one-deep stream register; ``BrokenStreamRegister``
withdraws ``valid`` under backpressure, which the monitor must catch.
``StandinDotProduct`` and ``StandinPSCMac`` are deliberately naive models with
the ports of :mod:`psc.hw.dot_product` and :mod:`psc.hw.pe`, used to bring
the benches up before the real gateware existed and to show that the benches
accept a different, correct implementation. The arithmetic in them is the
hardware under test, not a reference: expected values still come from
``psc.model.golden``.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PAYLOAD", "StreamRegister", "BrokenStreamRegister", "StandinDotProduct", "StandinPSCMac",
           "StandinSignMask", "StandinWeightSelect"]

PAYLOAD = data.StructLayout({"a": signed(8), "b": unsigned(12)})


class StreamRegister(wiring.Component):
    """One-deep stream register: ``o.valid`` and the payload are flip-flops."""

    def __init__(self, broken=False):
        self._broken = broken
        super().__init__({"i": In(stream.Signature(PAYLOAD)), "o": Out(stream.Signature(PAYLOAD))})

    latency = 1

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += self.o.valid.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += self.o.payload.eq(self.i.payload)
        if self._broken:
            # Withdraw a stalled beat every 8th cycle: a contract violation.
            count = Signal(3)
            m.d.sync += count.eq(count + 1)
            with m.If(self.o.valid & ~self.o.ready & (count == 7)):
                m.d.sync += self.o.valid.eq(0)
        return m


class BrokenStreamRegister(StreamRegister):
    def __init__(self):
        super().__init__(broken=True)


def _dot_layout(config):
    return data.StructLayout({
        "x": data.ArrayLayout(signed(config.act_width), config.lanes),
        "w": data.ArrayLayout(data.ArrayLayout(unsigned(config.word_width), config.lanes), config.rows),
        "bias": data.ArrayLayout(signed(config.acc_width), config.rows),
        "first": 1, "last": 1})


def _select(config, word, x):
    if config.psc:
        wp = word[:config.weight_width].as_signed()
        wn = word[config.weight_width:].as_signed()
        return Mux(x[-1], wn, wp)
    return word.as_signed()


class StandinDotProduct(wiring.Component):
    """Naive one-cycle DotProduct with the SPEC ports (not the project's design)."""

    latency = 1

    def __init__(self, config):
        self.config = config
        super().__init__({
            "i": In(stream.Signature(_dot_layout(config))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(config.acc_width), config.rows))),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        p = self.i.payload
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        for r in range(c.rows):
            acc = Signal(signed(c.acc_width), name=f"acc{r}")
            total = Mux(p.first, p.bias[r], acc)
            for lane in range(c.lanes):
                total = total + _select(c, p.w[r][lane], p.x[lane]) * p.x[lane]
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += acc.eq(total)
                with m.If(p.last):
                    m.d.sync += self.o.payload[r].eq(total)
        with m.If(self.i.valid & self.i.ready & p.last):
            m.d.sync += self.o.valid.eq(1)
        return m


class StandinPSCMac(wiring.Component):
    """Naive PE with the SPEC ports: one register stage, ``en`` stalls everything."""

    latency = 1

    def __init__(self, config):
        self.config = config
        c = config
        super().__init__({
            "x": In(data.ArrayLayout(signed(c.act_width), c.lanes)),
            "mask": In(c.lanes),
            "words": In(data.ArrayLayout(unsigned(c.word_width), c.lanes)),
            "bias": In(signed(c.acc_width)),
            "valid": In(1), "first": In(1), "last": In(1), "en": In(1),
            "acc": Out(signed(c.acc_width)),
            "acc_valid": Out(1),
        })

    def elaborate(self, platform):
        c = self.config
        m = Module()
        acc = Signal(signed(c.acc_width))
        total = Mux(self.first, self.bias, acc)
        for lane in range(c.lanes):
            x = self.x[lane]
            if c.psc:
                word = self.words[lane]
                w = Mux(self.mask[lane], word[c.weight_width:].as_signed(), word[:c.weight_width].as_signed())
            else:
                w = self.words[lane].as_signed()
            total = total + w * x
        with m.If(self.en):
            m.d.sync += self.acc_valid.eq(self.valid & self.last)
            with m.If(self.valid):
                m.d.sync += acc.eq(total)
                with m.If(self.last):
                    m.d.sync += self.acc.eq(total)
        return m


class StandinSignMask(wiring.Component):
    """Naive SignMask with the SPEC ports."""

    def __init__(self, lanes, act_width):
        self.lanes = lanes
        super().__init__({"x": In(data.ArrayLayout(signed(act_width), lanes)), "mask": Out(lanes)})

    def elaborate(self, platform):
        m = Module()
        for lane in range(self.lanes):
            m.d.comb += self.mask[lane].eq(self.x[lane] < 0)
        return m


class StandinWeightSelect(wiring.Component):
    """Naive WeightSelect with the SPEC ports (``bug=True`` uses lane 0's mask bit everywhere)."""

    def __init__(self, lanes, weight_width, bug=False):
        self.lanes, self.weight_width, self.bug = lanes, weight_width, bug
        super().__init__({
            "words": In(data.ArrayLayout(unsigned(2 * weight_width), lanes)),
            "mask": In(lanes),
            "w": Out(data.ArrayLayout(signed(weight_width), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        ww = self.weight_width
        for lane in range(self.lanes):
            word = self.words[lane]
            sel = self.mask[0] if self.bug else self.mask[lane]
            m.d.comb += self.w[lane].eq(Mux(sel, word[ww:], word[:ww]))
        return m
