"""Tiled PSC convolution core: one layer (or one host-scheduled tile of a layer) per command.

See :class:`PSCConvCore` for the interfaces, the command format and the
timing; :mod:`psc.host` for the host-side scheduler that drives it. The
core is a composition of parts, each a component of its own:
:mod:`~psc.hw.core.setup` (command setup: derived sizes, checks, start and
end, cycle counters), :mod:`~psc.hw.core.sequencer` (the loop nest, one tap
per cycle), :mod:`~psc.hw.core.input_buffer` (banked input storage, its
loader and its read addressing), :mod:`~psc.hw.core.buffers` (weight and
parameter buffers with their loaders), :mod:`~psc.hw.core.fetch` (address
queue, buffer reads, padding mask) and :mod:`~psc.hw.core.output` (bias,
requantiser, depthwise pixel order); :mod:`~psc.hw.core.layouts` holds the
command format and the payloads they pass.
"""

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from psc.config import CoreConfig
from psc.hw.dot_product import DotProduct, output_layout
from psc.model.checks import check_bool, check_int

from .buffers import LoadBuffer
from .fetch import Fetch
from .input_buffer import InputAddressMap, InputBuffer
from .layouts import (COUNTER_WIDTH, FIELD_WIDTH, KERNELS, KIND_DEPTHWISE, KIND_FC,
                      KIND_POINTWISE, KIND_STANDARD, MAX_OUTPUTS, OUTPUT_COUNT_WIDTH, STRIDES,
                      LayerKind, Part, act_in_layout, act_out_layout, bank_count, config_layout,
                      param_address_width, param_layout, sizes_layout, weight_address_width,
                      weight_layout)
from .output import OutputStage, lent_requantizer_ports
from .sequencer import Sequencer
from .setup import GOUT_O_WIDTH, CommandSetup, CycleCounters, DerivedSizes, command_layout

__all__ = [
    "CoreConfig", "PSCConvCore", "LayerKind", "Part", "KIND_STANDARD", "KIND_DEPTHWISE", "KIND_POINTWISE",
    "KIND_FC", "KERNELS", "STRIDES", "FIELD_WIDTH", "COUNTER_WIDTH", "OUTPUT_COUNT_WIDTH",
    "MAX_OUTPUTS",
    "config_layout", "command_layout", "weight_layout", "param_layout", "act_in_layout",
    "act_out_layout",
]


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
    map); depthwise needs ``gin = gout`` and a build with ``lanes = rows``
    or ``depthwise="channels"``; input words <= ``fmap_depth`` (a depthwise
    command on a channels build: ``in_h * in_w * gin`` <= ``fmap_depth /
    rows``); weight blocks <= ``weight_depth``; ``gout`` (``gout * lanes``
    for that command) <= ``param_depth``; ``gin' * lanes * k * k`` <= ``max_reduction``
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

    Depthwise layers on a ``depthwise="channels"`` build also use the whole
    array, for any ``lanes`` and ``rows``: a command group ``j`` is
    ``rows * lanes`` channels (``gin = gout`` counts such groups, the input
    has ``rows`` lane words per group and pixel, channels padded with
    zeros), row ``r`` takes lane word ``j*rows + r`` of the tap's pixel and
    every multiplier keeps its own accumulator. The sequencer issues ``K*K``
    beats per output pixel and group (the standard loop nest with
    ``gin' = 1``); weight block ``(j, ky, kx)`` holds channel
    ``(j*rows + r)*lanes + l``'s weight at row ``r``, lane ``l``. The input
    buffer is ``rows`` banks; such a tile stores lane word ``j*rows + r`` of
    pixel ``p`` in bank ``r`` at ``p * gin + j``, so a beat reads one
    address of every bank (other layers fill the banks one after another).
    Each reduction leaves as ``lanes`` beats of ``rows`` channels, in
    channels-last order (``gout * lanes`` output beats and parameter words
    per pixel), so the output is the ordinary one.

    Depthwise layers on a ``depthwise="shifted"`` build use the whole array
    from one input word per beat, with no banks (a single-ported buffer):
    lanes are the ``lanes`` channels of group ``j`` (``gin = gout`` counts
    such groups), row ``r`` computes output pixel ``ox + r`` and every
    multiplier keeps its own accumulator. The sequencer steps ``ox`` by
    ``rows`` and, per kernel row ``ky``, walks the ``U = K + (rows-1)*s``
    input columns that the block's windows cover: the beat of column ``u``
    reads pixel ``(oy*s - pad_top + ky, ox*s - pad_left + u)`` once, for
    every row, and weight block ``(j, ky, u)`` holds tap ``(ky, u - r*s)``
    of the group's channels in row ``r`` (zero outside the kernel), so
    ``K*U`` beats make ``rows`` pixels. Each reduction leaves as ``lanes``
    beats of ``rows`` channels, each group of ``rows`` channels pixel by
    pixel, so the output order is that of a pixels build, ``(oy, ox //
    rows, j', ox % rows)`` over the ``gout * lanes / rows`` output groups
    ``j'`` (also the parameter words), pixels past ``out_w`` dropped.

    Pipeline: sequencer counters -> a two-entry FIFO of buffer addresses (1
    cycle; it lets the sequencer's issue condition be a few registers, not
    the MAC array's ready) -> buffer reads (synchronous, 1 cycle; one
    more with ``read_register``) ->
    DotProduct (``dp.latency``: 3 for the generic multiplier, more with
    a DSP multiplier or ``tree_stages``; depthwise pixels mode
    ``dp.dw_latency``) -> with ``config.sums_fifo``, a two-entry FIFO of sums
    (1; the MAC array's enable then comes from its level, not from
    ``act_out.ready``) -> parameter read (1) -> Requantizer (``rq.latency``:
    8 at the default widths, more when time-shared or digit-serial) ->
    ``act_out``: a ``last`` beat's result is on ``act_out``
    ``dp.latency + 3 + rq.latency`` cycles after its address left the
    sequencer when nothing stalls (two more with ``read_register``, one more
    with ``sums_fifo``). The
    sequencer issues one beat per cycle from a cycle after the weights and
    parameters are loaded (with ``config.early_weights``: the beat's weight block and
    the next one; the first output pixel reads every block, in the order they
    arrive, so it computes while they load) and the input rows its output row needs have
    arrived, or (on a build whose input buffer is block RAM) the input
    words up to the next pixel's window (so loading the input overlaps the
    computation), unless ``act_out`` stalls. Setup computes the command's derived sizes
    with a few shift-and-add multipliers side by side (one cycle per
    significant bit of each factor, :func:`~psc.hw.core.setup.setup_cycles`
    in all, some ten cycles) into registers sized by what the build can
    hold; a product too big for its register saturates to the register's
    largest value, which is above the limit it is checked against, so a
    command with huge fields is refused, never wrapped into one that passes
    (with ``given_sizes`` the sizes come with the command, and setup takes no cycles).
    A command costs about
    ``setup + weights + params + first input words
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
    resident_weights : bool
        Network mode (:class:`psc.hw.network.NetworkEngine`): the weight buffer holds a
        whole network's weight blocks, written through ``weight_write_addr``,
        ``weight_write_data`` and ``weight_write_en`` while the core is idle; a command
        takes no :attr:`weights` and reads its blocks from ``weight_base`` on. The
        other ports and the command are unchanged; without it the core has no such
        ports. ``config.early_weights`` then changes nothing (no command loads weights).
    lent_requantizer_rows : int
        Network mode: the first rows of the output stage's requantiser are lent to
        another unit while the core is idle, through ``rq_share``, ``rq_i``,
        ``rq_relu`` and ``rq_o`` (:class:`~psc.hw.core.output.OutputStage`,
        ``lent_rows``); with 0 (the default) the core has no such ports.
    early_params : bool
        Network mode, where the parameters stream from a store on chip beside the
        input: a command's taps of an output group issue once that group's parameter
        word has arrived (a depthwise layer's: once all have), not once every word of
        the command has (:class:`~psc.hw.core.sequencer.Sequencer`).
    fetch_skid : bool
        A register stage with a skid register between the fetch and the MAC array
        (:class:`~psc.hw.core.fetch.Fetch`'s ``skid``): the array's stall no longer runs
        back into the fetch's FIFO and the buffers' read enables, and the array's
        operands come from flip-flops, for registers of two input beats (activations
        and weights) and a cycle of latency per command.

    Attributes
    ----------
    cfg : In(stream.Signature(command_layout(config)))
    weights : In(stream.Signature(weight_layout(config)))
    params : In(stream.Signature(param_layout(config)))
    act_in : In(stream.Signature(act_in_layout(config)))
    act_out : Out(stream.Signature(act_out_layout(config)))
    busy, done, error : Out(1)
    cycles_total, cycles_compute, cycles_stall : Out(COUNTER_WIDTH)
    """

    def __init__(self, config=None, *, dot_product=DotProduct, resident_weights=False,
                 lent_requantizer_rows=0, early_params=False,
                 fetch_skid=False):
        if config is None:
            config = CoreConfig()
        if not isinstance(config, CoreConfig):
            raise TypeError(f"config must be a psc.hw.core.CoreConfig, not {config!r}")
        if not (isinstance(dot_product, type) and issubclass(dot_product, DotProduct)):
            raise TypeError(f"dot_product must be psc.hw.dot_product.DotProduct or a subclass, "
                            f"not {dot_product!r}")
        self._config = config
        self._dot_product = dot_product
        members = {
            "cfg": In(stream.Signature(command_layout(config))),
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
        }
        self._resident = bool(resident_weights)
        if self._resident:
            aw = max(1, (config.weight_depth - 1).bit_length())
            members.update({"weight_base": In(aw), "weight_write_addr": In(aw),
                            "weight_write_data": In(weight_layout(config)),
                            "weight_write_en": In(1)})
        self._lent = check_int("lent_requantizer_rows", lent_requantizer_rows, 0,
                               config.pe.rows)
        if self._lent:
            members.update(lent_requantizer_ports(config, self._lent))
        self._early_params = check_bool("early_params", early_params)
        self._fetch_skid = check_bool("fetch_skid", fetch_skid)
        super().__init__(members)

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cc = self._config
        m.submodules.setup = setup = CommandSetup(cc)
        m.submodules.sizes = sizes = DerivedSizes(cc)
        if cc.given_sizes:
            m.d.comb += sizes.given.eq(self.cfg.payload.sizes)
        m.submodules.counters = counters = CycleCounters()
        # resident weights never load during a command
        early_weights = cc.early_weights and not self._resident
        m.submodules.seq = seq = Sequencer(cc, early_params=self._early_params,
                                           early_weights=early_weights)
        m.submodules.amap = amap = InputAddressMap(cc)
        m.submodules.fetch = fetch = Fetch(cc, skid=self._fetch_skid)
        m.submodules.ibuf = ibuf = InputBuffer(cc)
        m.submodules.wbuf = wbuf = LoadBuffer(
            weight_layout(cc), cc.weight_depth,
            count_width=sizes_layout(cc)["n_w"].shape.width,
            read_addr_width=weight_address_width(cc), resident=self._resident)
        if self._resident:
            m.d.comb += [wbuf.base.eq(self.weight_base), wbuf.write_addr.eq(self.weight_write_addr),
                         wbuf.write_data.eq(self.weight_write_data),
                         wbuf.write_en.eq(self.weight_write_en)]
        m.submodules.pbuf = pbuf = LoadBuffer(
            param_layout(cc), cc.param_depth,
            count_width=GOUT_O_WIDTH, read_addr_width=param_address_width(cc))
        m.submodules.dp = dp = self._dot_product(cc.pe)
        m.submodules.out = out = OutputStage(cc, lent_rows=self._lent)
        if self._lent:
            wiring.connect(m, wiring.flipped(self.rq_i), out.rq_i)
            wiring.connect(m, out.rq_o, wiring.flipped(self.rq_o))
            m.d.comb += [out.rq_share.eq(self.rq_share), out.rq_relu.eq(self.rq_relu)]

        # Streams: commands, loads, the beat pipeline, the output.
        wiring.connect(m, wiring.flipped(self.cfg), setup.cfg)
        wiring.connect(m, wiring.flipped(self.act_in), ibuf.i)
        wiring.connect(m, wiring.flipped(self.weights), wbuf.i)
        wiring.connect(m, wiring.flipped(self.params), pbuf.i)
        wiring.connect(m, seq.taps, amap.i)
        wiring.connect(m, amap.o, fetch.i)
        wiring.connect(m, fetch.o, dp.i)
        if cc.sums_fifo:
            # Two entries between the MAC array and the output stage: the
            # array's enable then depends on the FIFO's level (registers), not
            # on act_out.ready through the requantiser and the output stage,
            # one long path from the output port to the buffers' read enables
            # that limits an ECP5 and a UP5K build. Two entries keep one beat per cycle.
            # Its room is a flip-flop: `level != depth` of the next cycle, registered, so
            # the array's enable is one gate behind a register, not the FIFO's level
            # through a compare.
            sums_layout = output_layout(cc.pe)
            m.submodules.sums = sums = SyncFIFO(width=Shape.cast(sums_layout).width, depth=2)
            room = Signal(init=1, name="sums_room")
            level_next = (sums.level + (sums.w_en & sums.w_rdy)
                          - (sums.r_en & sums.r_rdy))
            m.d.sync += room.eq(level_next != sums.depth)
            m.d.comb += [
                sums.w_en.eq(dp.o.valid), dp.o.ready.eq(room),
                sums.w_data.eq(dp.o.payload),
                out.i.valid.eq(sums.r_rdy), sums.r_en.eq(out.i.ready),
                out.i.payload.eq(data.View(sums_layout, sums.r_data)),
            ]
            sums_valid = dp.o.valid | sums.r_rdy
        else:
            wiring.connect(m, dp.o, out.i)
            sums_valid = dp.o.valid
        wiring.connect(m, out.o, wiring.flipped(self.act_out))
        # Buffer reads.
        wiring.connect(m, fetch.inputs, ibuf.read)
        wiring.connect(m, fetch.weights, wbuf.read)
        wiring.connect(m, out.params, pbuf.read)

        # The command and its derived sizes, to every part that uses them.
        cmd = setup.cmd
        m.d.comb += [
            sizes.cmd.eq(cmd), sizes.gin_e.eq(setup.gin_e), sizes.gout_o.eq(setup.gout_o),
            sizes.clear.eq(setup.accept), sizes.enable.eq(setup.sizing),
            setup.sizes.eq(sizes.sizes), setup.sizes_ready.eq(sizes.ready),
            seq.cmd.eq(cmd), seq.dw.eq(setup.dw), seq.dwp.eq(setup.dwp),
            seq.gin_e.eq(setup.gin_e), seq.sizes.eq(sizes.sizes), seq.ws.eq(sizes.ws),
            amap.cmd.eq(cmd), amap.dwp.eq(setup.dwp), amap.dwc.eq(setup.dwc),
            ibuf.cmd.eq(cmd), ibuf.dwp.eq(setup.dwp), ibuf.dwc.eq(setup.dwc),
            ibuf.sizes.eq(sizes.sizes),
            ibuf.ws.eq(sizes.ws),
            wbuf.keep.eq(cmd.keep), wbuf.count.eq(sizes.sizes.n_w),
            pbuf.keep.eq(cmd.keep), pbuf.count.eq(setup.gout_o),
            out.cmd.eq(cmd),
            out.dwp.eq(setup.dws if cc.pe.depthwise == "shifted" else setup.dwp),
            out.n_out.eq(sizes.sizes.n_out),
            out.last_group.eq(setup.last_go),
        ]
        if cc.pe.depthwise == "shifted":
            # a shifted depthwise layer runs on the lane accumulators, its beats in blocks of
            # pixels as on a pixels build
            m.d.comb += [seq.dws.eq(setup.dws), dp.dw.eq(setup.dws)]
        elif cc.pe.lane_accumulators:
            m.d.comb += dp.dw.eq(setup.dwp | setup.dwc)
        if cc.pe.depthwise == "channels":
            m.d.comb += fetch.dwc.eq(setup.dwc)
        # Start and run.
        for part in (ibuf, wbuf, pbuf, out):
            m.d.comb += [part.start.eq(setup.start), part.run.eq(setup.run)]
        m.d.comb += [seq.start.eq(setup.start),
                     seq.run.eq(setup.run)]
        # Progress, for the start of the sequencer and the end of the command.
        m.d.comb += [
            seq.rows_in.eq(ibuf.rows_in), seq.words_in.eq(ibuf.words_in),
            seq.weights_done.eq(wbuf.done), seq.params_done.eq(pbuf.done),
            seq.params_in.eq(pbuf.arrived),
            setup.loaded.eq(seq.loaded), setup.inputs_done.eq(ibuf.done),
            setup.outputs_done.eq(out.all_sent), setup.mac_valid.eq(sums_valid),
        ]
        if early_weights:
            m.d.comb += seq.weights_in.eq(wbuf.arrived)
        # Status.
        m.d.comb += [
            counters.clear.eq(setup.accept), counters.busy.eq(setup.busy),
            counters.run.eq(setup.run), counters.beat.eq(fetch.beat),
            counters.waiting.eq(seq.waiting),
            self.busy.eq(setup.busy), self.done.eq(setup.done), self.error.eq(setup.error),
            self.cycles_total.eq(counters.total), self.cycles_compute.eq(counters.compute),
            self.cycles_stall.eq(counters.stall),
        ]
        return m
