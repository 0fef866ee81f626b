"""Network mode's residual add and global average pooling, on tensors in the activation memory.

The operations are :func:`psc.model.network.add` and
:func:`psc.model.network.global_avg_pool`, bit for bit: the sums go through the
core's own requantiser (:class:`~psc.hw.core.output.OutputStage`, ``lent_rows``), which
is idle while an add or a pooling runs, ``values`` activations per beat.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from psc.hw.requantize import SHIFT_WIDTH, _mul_digit, requant_input_layout

__all__ = ["op_layout", "OpUnit", "OP_MODES"]

#: ``mode`` of an :class:`OpUnit` descriptor.
OP_MODES = {"add": 0, "gap": 1}


def _count_width(addr_width):
    # a count of words or pixels of the activation memory, up to its whole depth
    return addr_width + 1


def op_layout(config, addr_width):
    """The op unit's descriptor: ``mode`` (:data:`OP_MODES`); the regions ``a``, ``b``
    (add only) and ``dst``; ``n``, the words of each operand (add) or the pixels of the
    input (gap); ``groups``, words per pixel (both counts ``addr_width + 1`` bits); ``last_mask``, the lanes of a pixel's last
    word that hold channels (the others, padding, are not written); ``mult_a``,
    ``mult_b`` and ``shift`` (gap: ``mult_a`` and ``shift``); ``relu`` (add)."""
    pe = config.pe
    return data.StructLayout({
        "mode": 1, "a": addr_width, "b": addr_width, "dst": addr_width,
        "n": _count_width(addr_width), "groups": _count_width(addr_width),
        "last_mask": pe.lanes,
        "mult_a": pe.mult_width, "mult_b": pe.mult_width, "shift": SHIFT_WIDTH, "relu": 1,
    })


class OpUnit(wiring.Component):
    """Residual add or global average pooling of tensors in :class:`ActivationMemory`.

    ``add``: word ``k`` of ``dst`` from words ``k`` of ``a`` and ``b``, lane by lane
    ``requantize(a * mult_a + b * mult_b, 1, shift, relu)``. ``gap``: word ``g`` of
    ``dst`` from the sums over the ``n`` pixels of lane group ``g``,
    ``requantize(sum, mult_a, shift)``. Only lanes holding channels are written.

    Parameters
    ----------
    config : psc.config.CoreConfig
    addr_width : int
        The activation memory's address width.
    values : int
        Activations per requantiser beat, at most ``rows`` (the requantiser's rows): 1
        (two narrow multipliers) up to that. A word takes ``ceil(lanes / values)``
        beats; when ``values`` does not divide ``lanes``, its last beat carries the
        remaining lanes and zeros, whose results are dropped.

    Members
    -------
    start : In(stream.Signature(op_layout))
        An operation; taken when the unit is idle.
    read_addr, read_en : Out
    read_data : In
        The memory's read port (latency 1).
    write_addr, write_data, write_mask, write_en : Out
        The memory's write port (whole words, lane 0).
    rq_i : Out(stream.Signature(requant_input_layout(config.requant_config, values)))
    rq_relu : Out(1)
    rq_o : In(stream.Signature(data.ArrayLayout(signed(act_width), values)))
        The first ``values`` rows of the core's requantiser, lent while the core is idle
        (:class:`psc.hw.core.PSCConvCore`, ``lent_requantizer_rows``): sums in, their
        results back.
    busy : Out(1)

    Throughput: ``values`` activations per requantiser beat (``ceil(lanes / values)``
    beats per word), one beat per cycle on a build whose requantiser is pipelined; an add
    reads two words per output word (so an add takes at least two cycles per word), a
    pooling one word per cycle into its ``lanes`` running sums. On a build whose
    requantiser is digit-serial (``requant_mult_bits = k``), it takes a beat every
    ``ceil(mult_width / k)`` cycles (times ``rows / requantizers`` when time-shared), and
    the add's products are digit-serial too, ``k`` bits of each multiplier per cycle.
    """

    def __init__(self, config, addr_width, values=1):
        self.config, self.addr_width = config, addr_width
        pe = config.pe
        if not isinstance(values, int) or not 1 <= values <= pe.rows:
            raise ValueError(f"values must be an integer from 1 to rows={pe.rows} "
                             f"(activations per requantiser beat), not {values!r}")
        self.values = values
        # Sums as wide as their worst case, no wider: a pooling sum of up to 2**cw
        # activations, an add's two products of an activation and an unsigned multiplier.
        self._sum_width = pe.act_width + _count_width(addr_width)
        self._acc_width = max(self._sum_width, pe.act_width + pe.mult_width + 2)
        rq_width = config.requant_config.acc_width
        if self._acc_width > rq_width:
            raise ValueError(f"addr_width={addr_width} makes sums of {self._acc_width} bits, "
                             f"wider than the requantiser's {rq_width}")
        # Read pairs in flight: a digit-serial requantiser takes a value in several cycles,
        # so one pair ahead keeps it busy; a parallel one takes a value a cycle.
        self.fifo_depth = 2 if pe.requant_mult_bits is not None else 4
        super().__init__({
            "start": In(stream.Signature(op_layout(config, addr_width))),
            "read_addr": Out(addr_width), "read_en": Out(1),
            "read_data": In(pe.lanes * pe.act_width),
            "write_addr": Out(addr_width), "write_data": Out(pe.lanes * pe.act_width),
            "write_mask": Out(pe.lanes), "write_en": Out(1),
            "rq_i": Out(stream.Signature(requant_input_layout(config.requant_config, values))),
            "rq_relu": Out(1),
            "rq_o": In(stream.Signature(data.ArrayLayout(signed(pe.act_width), values))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        pe = self.config.pe
        lanes, aw = pe.lanes, pe.act_width
        width = lanes * aw
        d = Signal(op_layout(self.config, self.addr_width))
        gap = d.mode == OP_MODES["gap"]

        # --- reads: (a, b) word pairs for add, single words (and a group's end) for gap --
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=2 * width + 1, depth=self.fifo_depth)
        issuing = Signal()
        cw = _count_width(self.addr_width)
        k = Signal(cw)                          # add: word; gap: pixel
        g = Signal(cw)                          # gap: group
        ptr = Signal(self.addr_width)           # gap: the word of pixel k, group g
        second = Signal()                       # add: the b read of the pair is next
        got_a = Signal(width)
        rd_second, rd_end = Signal(), Signal()
        inflight = Signal()
        issue = Signal()
        # A pair needs its place in the FIFO before its first read. The words read are
        # registered before they go on (the block RAM's output has a cycle to itself), so
        # two pushes can be in flight: `room` counts the places neither filled nor promised
        # to a pair in flight, kept in a register so that the read enable is not behind
        # the FIFO's level through an adder.
        inflight2 = Signal()
        room = Signal(range(self.fifo_depth))
        m.d.comb += issue.eq(issuing & (second | (room != 0)))
        m.d.sync += [inflight.eq(issue & (gap | second)), inflight2.eq(inflight)]
        promised, freed = issue & (gap | second), fifo.r_en & fifo.r_rdy
        with m.If(promised & ~freed):
            m.d.sync += room.eq(room - 1)
        with m.Elif(freed & ~promised):
            m.d.sync += room.eq(room + 1)
        # the pair's addresses a + k and b + k in their own registers, so that the memory's
        # address comes from flip-flops, not through an adder
        addr_a, addr_b = Signal(self.addr_width), Signal(self.addr_width)
        m.d.comb += [self.read_en.eq(issue),
                     self.read_addr.eq(Mux(gap, ptr, Mux(second, addr_b, addr_a)))]
        # `k_last` (k is the last word or pixel, k + 1 == n) and `g_last` (g + 1 == groups),
        # registered as the counters step, so that the issue decisions are flip-flops,
        # not compares through a carry chain (n and groups are at least 1)
        k_last, g_last = Signal(), Signal()
        with m.If(issue):
            m.d.sync += [rd_second.eq(second), rd_end.eq(k_last)]
            with m.If(gap):
                with m.If(~k_last):
                    m.d.sync += [k.eq(k + 1), k_last.eq(k + 2 == d.n), ptr.eq(ptr + d.groups)]
                with m.Else():
                    m.d.sync += [k.eq(0), k_last.eq(d.n == 1), g.eq(g + 1),
                                 g_last.eq(g + 2 == d.groups), ptr.eq(d.a + g + 1)]
                    with m.If(g_last):
                        m.d.sync += issuing.eq(0)
            with m.Elif(~second):
                m.d.sync += second.eq(1)
            with m.Else():
                m.d.sync += [second.eq(0), k.eq(k + 1), k_last.eq(k + 2 == d.n),
                             addr_a.eq(addr_a + 1), addr_b.eq(addr_b + 1)]
                with m.If(k_last):
                    m.d.sync += issuing.eq(0)
        a_back, a_back2 = Signal(), Signal()    # the a word of a pair arrives, registered
        rd_q = Signal(width)
        rd_end2 = Signal()
        m.d.sync += [a_back.eq(issue & ~gap & ~second), a_back2.eq(a_back),
                     rd_q.eq(self.read_data), rd_end2.eq(rd_end)]
        with m.If(a_back2):
            m.d.sync += got_a.eq(rd_q)
        # a pooling's word goes where an add's b word does, so that no multiplexer picks
        # what the FIFO's a half takes
        m.d.comb += [fifo.w_en.eq(inflight2),
                     fifo.w_data.eq(Cat(got_a, rd_q, gap & rd_end2))]

        # --- values: `values` activations per beat into the requantiser -------------------
        P = self.values
        chunks = -(-lanes // P)
        pad = chunks * P - lanes                # lanes of zeros after a word's last
        chunk = Signal(range(chunks))
        entry_a, entry_b, entry_end = fifo.r_data[:width], fifo.r_data[width:2 * width], \
            fifo.r_data[-1]
        sums = [Signal(signed(self._sum_width), name=f"sum{i}") for i in range(lanes)]
        padded = sums + [Const(0, signed(self._sum_width))] * pad
        draining = Signal()                     # gap: the group's sums go to the requantiser
        last_chunk = chunk == chunks - 1

        def value(word, i):
            return word.word_select(i, aw).as_signed()

        a_c = Cat(entry_a, Const(0, pad * aw)).word_select(chunk, P * aw)
        b_c = Cat(entry_b, Const(0, pad * aw)).word_select(chunk, P * aw)
        sums_c = [Signal(signed(self._sum_width), name=f"sum_c{i}") for i in range(P)]
        with m.Switch(chunk):
            for c in range(chunks):
                with m.Case(c):
                    m.d.comb += [sums_c[i].eq(padded[c * P + i]) for i in range(P)]
        # Register stages in front of the requantiser: A, the values picked (a lane
        # multiplexer); B, the add's products (the pooling's sum passes); C, what the
        # requantiser takes.
        fire = Signal()                         # the value stage offers P values
        advance = Signal()                      # stage A can take them
        pva, pvb, pvc = Signal(), Signal(), Signal()   # stages A, B and C hold values
        adv_c = Signal()
        a_r = [Signal(signed(aw), name=f"a_r{i}") for i in range(P)]
        b_r = [Signal(signed(aw), name=f"b_r{i}") for i in range(P)]
        g_r = [Signal(signed(self._sum_width), name=f"g_r{i}") for i in range(P)]
        s1 = [Signal(signed(self._acc_width), name=f"s1_{i}") for i in range(P)]
        rq_i = self.rq_i
        m.d.comb += [adv_c.eq(~pvc | rq_i.ready), rq_i.valid.eq(pvc),
                     self.rq_relu.eq(d.relu & ~gap)]
        k_bits = pe.requant_mult_bits
        restart = []                            # B's own state, cleared at a start
        if k_bits is None:
            # B as two partial products each of a and b, on the low and the high half of the
            # multiplier (a LUT multiplier of the full width in one cycle limits an ECP5
            # network build), summed into C; the pooling's sum beside them (`gq`). C has a skid
            # register (`skv`) for B's value when the requantiser stalls, so that B and A move
            # on a flag of their own, not on the requantiser's ready through the stages.
            h = (pe.mult_width + 1) // 2
            adv_b = Signal()
            pp = [[Signal(signed(self._acc_width), name=f"pp{i}_{j}") for j in range(4)]
                  for i in range(P)]
            s2 = [Signal(signed(self._acc_width), name=f"s2_{i}") for i in range(P)]
            skv = Signal()
            k1 = [Signal(signed(self._acc_width), name=f"k1_{i}") for i in range(P)]
            k2 = [Signal(signed(self._acc_width), name=f"k2_{i}") for i in range(P)]
            # a pooling's sum (zero on an add) beside the products (zero on a pooling)
            gq = [Signal(signed(self._sum_width), name=f"gq{i}") for i in range(P)]
            new1 = [(pp[i][0] + (pp[i][1] << h)) | gq[i] for i in range(P)]
            new2 = [pp[i][2] + (pp[i][3] << h) for i in range(P)]
            m.d.comb += [adv_b.eq(~pvb | ~skv), advance.eq(~pva | adv_b)]
            with m.If(adv_c):
                # C takes the skid's value first, else B's
                m.d.sync += [pvc.eq(skv | pvb), skv.eq(0)]
                with m.If(skv):
                    m.d.sync += [s1[i].eq(k1[i]) for i in range(P)]
                    m.d.sync += [s2[i].eq(k2[i]) for i in range(P)]
                with m.Else():
                    m.d.sync += [s1[i].eq(new1[i]) for i in range(P)]
                    m.d.sync += [s2[i].eq(new2[i]) for i in range(P)]
            with m.Elif(pvb & ~skv):
                m.d.sync += skv.eq(1)
            with m.If(~skv):
                # an empty skid follows B: its enable is its own flag, not the requantiser's
                # ready
                m.d.sync += [k1[i].eq(new1[i]) for i in range(P)]
                m.d.sync += [k2[i].eq(new2[i]) for i in range(P)]
            restart.append(skv.eq(0))
            with m.If(adv_b):
                m.d.sync += pvb.eq(pva)
            with m.If(pva & adv_b):
                lo, hi = d.mult_a[:h], d.mult_a[h:]
                lo_b, hi_b = d.mult_b[:h], d.mult_b[h:]
                for i in range(P):
                    m.d.sync += [pp[i][0].eq(a_r[i] * lo), pp[i][1].eq(a_r[i] * hi),
                                 pp[i][2].eq(b_r[i] * lo_b), pp[i][3].eq(b_r[i] * hi_b),
                                 gq[i].eq(g_r[i])]
            # A pooling clears the products whatever the enable: a synchronous reset over the
            # enable is the flip-flop's own, so no LUT sits between a product and its register
            # (the mode holds through an operation). `gq` needs no clear: the pooling's sums
            # are zero outside a pooling.
            with m.If(gap):
                m.d.sync += [pp[i][j].eq(0) for i in range(P) for j in range(4)]
            acc_in = [s1[i] + s2[i] for i in range(P)]
        else:
            # A digit-serial requantiser takes a value in `digits` cycles: B matches it
            # with `k_bits` bits of each multiplier per cycle, most significant first
            # (acc = acc * 2**k_bits + a * digit_a + b * digit_b: a fixed shift, not a
            # barrel), in two steps, the digits' products registered (`part`), then
            # accumulated (`acc`, which B's result is). B takes A's values into its own
            # registers (`a_p`, `b_p`) as it starts on them, so that A, and the FIFO
            # behind it, run a value ahead. The pooling's sum passes as one digit.
            digits = -(-pe.mult_width // k_bits)
            pad = digits * k_bits - pe.mult_width
            j = Signal(range(digits), init=digits - 1)  # the digit issued next
            hold = Signal()                     # B holds a value with digits to issue
            free = ~hold | (j == 0)             # B can take A's next value
            run = Signal()                      # B moves: its result is free or taken
            pvp, first_q, last_q = Signal(), Signal(), Signal()
            part_w = max(self._sum_width, aw + k_bits + 2)
            part = [Signal(signed(part_w), name=f"part{i}") for i in range(P)]
            acc = [Signal(signed(self._acc_width), name=f"acc{i}") for i in range(P)]
            a_p = [Signal(signed(aw), name=f"a_p{i}") for i in range(P)]
            b_p = [Signal(signed(aw), name=f"b_p{i}") for i in range(P)]
            da = Cat(d.mult_a, Const(0, pad)).word_select(j, k_bits)
            db = Cat(d.mult_b, Const(0, pad)).word_select(j, k_bits)
            m.d.comb += [run.eq(~pvb | adv_c), advance.eq(~pva | (run & (gap | free)))]
            with m.If(adv_c):
                m.d.sync += pvc.eq(pvb)
            with m.If(pvb & adv_c):
                m.d.sync += [s1[i].eq(acc[i]) for i in range(P)]
            with m.If(run):
                m.d.sync += [pvp.eq(0), pvb.eq(pvp & last_q)]
                with m.If(gap):
                    with m.If(pva):
                        m.d.sync += [pvp.eq(1), first_q.eq(1), last_q.eq(1)]
                        m.d.sync += [part[i].eq(g_r[i]) for i in range(P)]
                with m.Else():
                    with m.If(hold):
                        m.d.sync += [pvp.eq(1), first_q.eq(j == digits - 1),
                                     last_q.eq(j == 0), j.eq(j - 1)]
                        m.d.sync += [part[i].eq(_mul_digit(a_p[i], da) + _mul_digit(b_p[i], db))
                                     for i in range(P)]
                        with m.If(j == 0):
                            m.d.sync += hold.eq(0)
                    with m.If(pva & free):
                        m.d.sync += [hold.eq(1), j.eq(digits - 1)]
                        m.d.sync += [a_p[i].eq(a_r[i]) for i in range(P)]
                        m.d.sync += [b_p[i].eq(b_r[i]) for i in range(P)]
                with m.If(pvp):
                    m.d.sync += [acc[i].eq(Mux(first_q, 0, acc[i] << k_bits) + part[i])
                                 for i in range(P)]
            restart += [j.eq(digits - 1), hold.eq(0), pvp.eq(0)]
            acc_in = s1
        with m.If(advance):
            m.d.sync += pva.eq(fire)
        with m.If(fire & advance):
            m.d.sync += [a_r[i].eq(value(a_c, i)) for i in range(P)]
            m.d.sync += [b_r[i].eq(value(b_c, i)) for i in range(P)]
            m.d.sync += [g_r[i].eq(sums_c[i]) for i in range(P)]
        for i in range(P):
            m.d.comb += [rq_i.payload.shift[i].eq(d.shift),
                         rq_i.payload.acc[i].eq(acc_in[i]),
                         rq_i.payload.mult[i].eq(Mux(gap, d.mult_a, 1))]
        with m.If(gap):
            m.d.comb += fire.eq(draining)
            with m.If(draining & advance):
                m.d.sync += chunk.eq(Mux(last_chunk, 0, chunk + 1))
                with m.If(last_chunk):
                    m.d.sync += draining.eq(0)
                    m.d.sync += [s.eq(0) for s in sums]
            with m.Elif(~draining & fifo.r_rdy):
                m.d.comb += fifo.r_en.eq(1)
                m.d.sync += [s.eq(s + value(entry_b, i)) for i, s in enumerate(sums)]
                with m.If(entry_end):
                    m.d.sync += draining.eq(1)
        with m.Else():
            m.d.comb += fire.eq(fifo.r_rdy)
            with m.If(fifo.r_rdy & advance):
                m.d.sync += chunk.eq(Mux(last_chunk, 0, chunk + 1))
                with m.If(last_chunk):
                    m.d.comb += fifo.r_en.eq(1)

        # --- words: lanes activations collected, then written ------------------------------
        out_chunk = Signal(range(chunks))
        out_word = Signal(chunks * P * aw)      # the word's beats, the padding's results last
        out_k = Signal(cw)                      # the word written next
        out_g = Signal(cw)                      # its group (add: k mod groups)
        # `out_g` is the last group: a flip-flop, so that the write mask is a multiplexer
        # of registers in front of the memory (a compare there limits an ECP5 build)
        out_g_last = Signal()
        total = Mux(gap, d.groups, d.n)
        writing = Signal()
        y = self.rq_o.payload.as_value()
        rq_o = self.rq_o
        full = Signal(chunks * P * aw)
        out_last = out_chunk == chunks - 1
        m.d.comb += [rq_o.ready.eq(1), full.eq(Cat(out_word[P * aw:], y) if chunks > 1 else y)]
        m.d.comb += [self.write_addr.eq(d.dst + out_k),
                     self.write_data.eq(full[:width]),
                     self.write_mask.eq(Mux(out_g_last, d.last_mask, (1 << lanes) - 1)),
                     self.write_en.eq(rq_o.valid & out_last & writing)]
        with m.If(rq_o.valid):
            m.d.sync += out_word.eq(full)
            m.d.sync += out_chunk.eq(Mux(out_last, 0, out_chunk + 1))
            with m.If(out_last):
                m.d.sync += [out_k.eq(out_k + 1), out_g.eq(Mux(out_g_last, 0, out_g + 1)),
                             out_g_last.eq(Mux(out_g_last, d.groups == 1,
                                               out_g + 2 == d.groups))]
                with m.If(out_k + 1 == total):
                    m.d.sync += writing.eq(0)

        m.d.comb += [self.start.ready.eq(~self.busy),
                     self.busy.eq(issuing | writing)]
        with m.If(self.start.valid & self.start.ready):
            p = self.start.payload
            m.d.sync += [d.eq(p), issuing.eq(1), writing.eq(1), k.eq(0), g.eq(0), ptr.eq(p.a),
                         k_last.eq(p.n == 1), g_last.eq(p.groups == 1),
                         room.eq(self.fifo_depth - 1),
                         addr_a.eq(p.a), addr_b.eq(p.b), second.eq(0), chunk.eq(0),
                         draining.eq(0), out_chunk.eq(0), pva.eq(0), pvb.eq(0), pvc.eq(0),
                         out_k.eq(0), out_g.eq(0), out_g_last.eq(p.groups == 1)] + restart
            m.d.sync += [s.eq(0) for s in sums]
        return m
