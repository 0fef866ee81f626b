"""Network mode's program: a whole :class:`~psc.model.network.Network` compiled for one build,
its activations kept in one on-chip activation memory.

In network mode the host loads a network once; after that one inference
is the input image in and the output out, every layer running from
on-chip memory. :func:`compile_network` decides everything that mode
needs, before anything is sent:

* the **activation memory map**: every tensor of the network gets a
  :class:`Region` of the activation memory, whose words are lane words of
  ``lanes`` activations, the tensor stored channels-last (word
  ``base + (y*W + x)*G + c // lanes``, lane ``c % lanes``, ``G`` lane words
  per pixel). A tensor lives from the layer that writes it to the last one
  that reads it (a skip connection stays while its block runs), and regions
  are reused first-fit after that: for a chain of layers this is ping-pong
  between two regions. A ``flatten`` of a ``(C, 1, 1)`` tensor is the same
  words, so its output shares its input's region;
* the **steps**, in order: a :class:`ConvStep` is a convolution's tiles as
  :func:`psc.host.scheduler.plan_layer` cuts them (commands, weights and
  parameters, stored once), each tile's input a
  :class:`~psc.host.scheduler.Window` gathered from the input's region and
  its output beats scattered into the output's region
  (:meth:`~psc.host.scheduler.LayerPlan.beat_places`); an :class:`OpStep` is
  a residual add, a global average pooling or a flatten, on regions;
* its **footprint** (:meth:`Program.footprint`): activation words, and the
  bytes of commands, weight blocks and parameter words that stay on chip.
  :meth:`Program.check_fits` refuses a network larger than a memory with
  :class:`NetworkFitError`, naming what it needs against what there is.

Only the network's first layer may read its input unrolled (a stem with few
channels running as a pointwise layer over its im2col input,
:func:`psc.host.scheduler.unroll`): the host sends that input already
unrolled (:meth:`Program.input_words`), or, over a link, an
:class:`UnrollStep` builds it on chip from the stored input
(:class:`psc.hw.network.Unroll`; :func:`compile_network`'s ``unroll_input``).
Every other convolution reads windows of a stored tensor.

:meth:`Program.run` executes the program on a simulated core with an
:class:`ActivationMemory` per image doing the gathers and scatters, the
definition the gateware implements: its results are bit-exact with
:meth:`psc.model.network.Network.run` (tested). :meth:`Program.engine_image`
is the same program for :class:`psc.hw.network.NetworkEngine` (instructions,
the weight blocks for the core's resident weight buffer or the engine's weight
store, parameter words),
and :meth:`Program.simulate` runs it on a simulated engine: every layer on
chip, the input in and the output out.
"""

from dataclasses import dataclass, replace

import numpy as np

from psc import presets
from psc.config import CoreConfig
from psc.host.scheduler import LayerError, LayerPlan, Window, plan_layer, unroll, validate
from psc.hw.core import KIND_DEPTHWISE, config_layout, param_layout, weight_layout
from psc.hw.core.setup import derived_sizes, given_sizes_layout
from psc.hw.network.unroll import unrolls_on_chip
from psc.model.checks import BadTypeError, check_bool, check_int, show
from psc.model.network import Network
from psc.model.packing import (channel_groups, pack_activations, pack_lanes, pack_payload,
                               unpack_activations, unpack_lanes)

__all__ = ["NetworkFitError", "Region", "ConvStep", "OpStep", "UnrollStep", "Program",
           "ActivationMemory", "compile_network", "describe", "gather_fields", "scatter_fields",
           "unroll_fields", "op_fields", "UNROLL_INPUT"]

#: How :func:`compile_network` may unroll a stem's input, where it pays: by the host (True),
#: on chip where the build can ("chip"), never (False).
UNROLL_INPUT = (True, "chip", False)


class NetworkFitError(LayerError):
    """A network that does not fit a build's on-chip memory, or that network mode cannot run;
    raised before anything is sent."""


@dataclass(frozen=True)
class Region:
    """Where a ``(C, H, W)`` tensor is stored: ``H * W * groups`` lane words from word ``base``,
    pixel ``(y, x)``'s channel ``c`` in word ``base + (y*W + x)*groups + c // lanes``, lane
    ``c % lanes``."""
    base: int
    shape: tuple
    groups: int

    @property
    def words(self):
        _, h, w = self.shape
        return h * w * self.groups

    @property
    def end(self):
        return self.base + self.words


@dataclass
class ConvStep:
    """A convolution on the core: ``plan``'s tiles read windows of region ``src`` (the
    unrolled input for an unrolled first layer) and write their beats into region ``dst``."""
    name: str
    src: Region
    dst: Region
    plan: LayerPlan


@dataclass
class UnrollStep:
    """The network's input in region ``src`` unrolled on chip into region ``dst`` for the
    first layer, ``layer`` (a :class:`psc.model.network.Layer`: its kernel, stride and
    padding), which reads it as a pointwise layer."""
    name: str
    src: Region
    dst: Region
    layer: object

    @property
    def cycles(self):
        """The unroll unit's cycles with its input all stored: one per input pixel read
        and one per output row."""
        _, ho, wo = self.dst.shape
        return ho * wo * self.layer.conv_args()["w_pos"].shape[-1] ** 2 + ho


@dataclass
class OpStep:
    """An operation the board runs outside the array: ``op`` (``"add"``, ``"gap"`` or
    ``"flatten"``) of the regions ``srcs`` into ``dst``, with the layer's ``attrs``."""
    name: str
    op: str
    srcs: tuple
    dst: Region
    attrs: dict


class ActivationMemory:
    """The activation memory of one inference: ``depth`` lane words of ``lanes`` activations.

    It defines network mode's data movement, value by value, as the board's
    sequencer does it: :meth:`gather` reads a tile's input words out of a
    region, :meth:`scatter` writes its output beats into one.
    """

    def __init__(self, depth, lanes, act_width):
        self.lanes, self.act_width = lanes, act_width
        self.values = np.zeros((depth, lanes), dtype=np.int64)

    def _cells(self, region, c, y, x):
        """Word and lane of channel ``c`` at pixel ``(y, x)`` of ``region`` (arrays broadcast)."""
        _, _, w = region.shape
        word = region.base + (y * w + x) * region.groups + c // self.lanes
        return word, c % self.lanes

    def store(self, region, x):
        """Write ``x`` ``(C, H, W)`` into ``region`` (the host's input, an add's or a pooling's
        result); padding lanes keep their values, as in every write."""
        c, h, w = x.shape
        assert (c, h, w) == tuple(region.shape), (x.shape, region.shape)
        hwc = self.values[region.base:region.end].reshape(h, w, region.groups * self.lanes)
        hwc[:, :, :c] = x.transpose(1, 2, 0)

    def load(self, region):
        """The ``(C, H, W)`` tensor stored in ``region``."""
        c, h, w = region.shape
        hwc = self.values[region.base:region.end].reshape(h, w, -1)
        return hwc[:, :, :c].transpose(2, 0, 1).copy()

    def gather(self, region, window):
        """The lane words of ``window`` (:class:`~psc.host.scheduler.Window`) read from the
        tensor in ``region``: a flat list, pixel-major, as the core's ``act_in`` takes them."""
        cin = region.shape[0]
        ch = window.c_lo + np.arange(window.groups * self.lanes)
        y = np.arange(window.r0, window.r1)[:, None, None]
        x = np.arange(window.q0, window.q1)[None, :, None]
        word, lane = self._cells(region, ch[None, None, :], y, x)
        valid = np.broadcast_to(ch < min(window.c_hi, cin), word.shape)
        vals = np.where(valid, self.values[np.where(valid, word, 0), lane], 0)
        shape = vals.shape[:2] + (window.groups, self.lanes)
        return [int(v) for v in pack_lanes(vals.reshape(shape), self.act_width).reshape(-1)]

    def unroll(self, step, config):
        """Write the unrolled input of :class:`UnrollStep` ``step`` into its region, as
        :class:`psc.hw.network.Unroll` does: every channel of every pixel, the padding
        lanes left alone."""
        self.store(step.dst, _unrolled(step.layer, self.load(step.src), config))

    def scatter(self, region, plan, tile, words):
        """Write ``tile``'s output ``words`` (beats of ``rows`` activations) into ``region``,
        dropping padding channels."""
        oy, ox, c, keep = plan.beat_places(tile)
        vals = unpack_lanes(np.array(words, dtype=object), plan.config.rows, self.act_width)
        word, lane = self._cells(region, c[keep], oy[keep], ox[keep])
        self.values[word, lane] = vals[keep]


def gather_fields(region, window, lanes):
    """The :class:`psc.hw.network.Gather` descriptor (a dict of
    :func:`psc.hw.network.gather_layout`'s fields) that reads ``window`` of the tensor in
    ``region``.

    Raises :class:`NetworkFitError` for a window the unit cannot read in one word per lane
    word: channels from a lane other than 0 that run on into the next word.
    """
    _, _, w = region.shape
    rot = window.c_lo % lanes
    valid = max(0, min(window.c_hi, region.shape[0]) - window.c_lo)
    if rot and rot + valid > lanes:
        raise NetworkFitError(f"a window of {valid} channels from lane {rot} spans two words "
                              f"of {lanes} lanes; the gather reads one word per lane word")
    return {"addr": region.base + (window.r0 * w + window.q0) * region.groups
            + window.c_lo // lanes,
            "pixel_step": region.groups, "row_step": w * region.groups,
            "n_g": window.groups, "n_x": window.q1 - window.q0, "n_y": window.r1 - window.r0,
            "rot": rot, "valid": valid}


def scatter_fields(region, plan, tile):
    """The :class:`psc.hw.network.Scatter` descriptor (a dict of
    :func:`psc.hw.network.scatter_layout`'s fields) that writes ``tile``'s output beats
    (``plan`` a :class:`~psc.host.scheduler.LayerPlan`) into ``region``.

    Raises :class:`NetworkFitError` for a tile whose beats are not in pixel order (a
    depthwise tile of a ``depthwise="pixels"`` or ``"shifted"`` build, which sends blocks
    of pixels), or
    whose first channel is not a multiple of ``rows`` where ``rows`` divides ``lanes``
    (see :class:`psc.hw.network.ActivationMemory`).
    """
    cc = plan.config
    c0, c1, oy0, oy1, ox0, ox1 = tile.place
    oh, ow = oy1 - oy0, ox1 - ox0
    if plan.kind == KIND_DEPTHWISE and cc.pe.depthwise in ("pixels", "shifted"):
        raise NetworkFitError(f"a depthwise tile on a depthwise={cc.pe.depthwise!r} build "
                              f"sends its beats in blocks of pixels; the scatter writes them "
                              f"in pixel order")
    if cc.lanes % cc.rows == 0 and c0 % cc.rows:
        # such a build's activation memory places a beat at a multiple of rows only
        raise NetworkFitError(f"a tile's output from channel {c0}: with rows={cc.rows} "
                              f"dividing lanes={cc.lanes}, output beats start at a multiple "
                              f"of {cc.rows} channels")
    _, _, w = region.shape
    return {"addr": region.base + (oy0 * w + ox0) * region.groups + c0 // cc.lanes,
            "lane": c0 % cc.lanes, "pixel_step": region.groups, "row_step": w * region.groups,
            "n_b": tile.n_out // (oh * ow), "n_x": ow, "n_y": oh, "valid": c1 - c0}


def unroll_fields(step, lanes):
    """The :class:`psc.hw.network.Unroll` descriptor (a dict of
    :func:`psc.hw.network.unroll_layout`'s fields) of :class:`UnrollStep` ``step``, all
    zero for None."""
    if step is None:
        return {k: 0 for k in ("src", "lead", "w", "h", "k", "stride", "pad", "row_stride", "n_x",
                               "n_y", "dst", "dst_step", "c")}
    src, dst = step.src, step.dst
    c, h, w = src.shape
    args = step.layer.conv_args()
    k, s, p = args["w_pos"].shape[-1], args["stride"], args["padding"]
    _, ho, wo = dst.shape
    assert src.groups == 1 and c <= lanes, (src, lanes)
    return {"src": src.base, "lead": p * w + p, "w": w, "h": h, "k": k, "stride": s,
            "pad": p, "row_stride": s * w, "n_x": wo, "n_y": ho, "dst": dst.base,
            "dst_step": dst.groups, "c": c}


def _unrolled(layer, x, config):
    """``x`` unrolled for the network's first layer ``layer`` (:func:`unroll`)."""
    return unroll(validate(x, config=config, **layer.conv_args())).x


def op_fields(step, lanes):
    """The :class:`psc.hw.network.OpUnit` descriptor of an add or pooling ``step`` (all
    zero for None)."""
    from psc.hw.network.op_unit import OP_MODES
    if step is None:
        return {k: 0 for k in ("mode", "a", "b", "dst", "n", "groups", "last_mask", "mult_a",
                               "mult_b", "shift", "relu")}
    src, dst, a = step.srcs[0], step.dst, step.attrs
    c, h, w = src.shape
    if min(c, h, w) < 1:
        # the unit counts its words and groups down to the last: none would never end
        raise ValueError(f"{step.op} {step.name!r}: source shape must have every dimension "
                         f"at least 1, not {src.shape!r}")
    last = c - (src.groups - 1) * lanes
    fields = {"a": src.base, "dst": dst.base, "groups": src.groups,
              "last_mask": (1 << last) - 1, "shift": a["shift"]}
    if step.op == "add":
        return dict(fields, mode=OP_MODES["add"], b=step.srcs[1].base, n=src.words,
                    mult_a=a["mult_a"], mult_b=a["mult_b"], relu=int(a["relu"]))
    return dict(fields, mode=OP_MODES["gap"], b=0, n=h * w, mult_a=a["mult"], mult_b=0, relu=0)


@dataclass
class Program:
    """A network compiled for network mode on one build (:func:`compile_network`).

    Attributes
    ----------
    net : psc.model.network.Network
    config : psc.config.CoreConfig
    steps : list of :class:`UnrollStep`, :class:`ConvStep` and :class:`OpStep`, in execution
        order
    regions : dict
        Tensor name to :class:`Region`.
    act_words : int
        Activation memory the program needs: the end of its highest region.
    """
    net: Network
    config: CoreConfig
    steps: list
    regions: dict
    act_words: int
    #: the host sends the input unrolled for the first layer (:meth:`input_words`)
    unrolled_input: bool = False

    # --- what it needs --------------------------------------------------------

    def footprint(self):
        """What the program keeps on chip, as a dict:

        ``act_words`` (lane words of ``lanes * act_width`` bits) and ``act_bytes``;
        ``commands``, ``weight_beats``, ``param_beats`` (the core's stream beats of
        every tile, each tile's own, a ``keep`` tile's none) and ``store_bytes``
        (their bits, each beat rounded up to whole bytes as the link sends them);
        ``op_steps`` (adds, poolings, flattens); ``input_words`` (what the host sends
        per inference) and ``output_words``.
        """
        cc = self.config
        nbytes = {k: -(-layout.size // 8) for k, layout in
                  (("cfg", config_layout(cc)), ("w", weight_layout(cc)), ("p", param_layout(cc)))}
        tiles = [t for s in self.steps if isinstance(s, ConvStep) for t in s.plan.tiles]
        n_w = sum(len(t.weights) for t in tiles)
        n_p = sum(len(t.params) for t in tiles)
        lane_bytes = cc.lanes * cc.pe.act_width // 8
        return {"act_words": self.act_words, "act_bytes": self.act_words * lane_bytes,
                "commands": len(tiles), "weight_beats": n_w, "param_beats": n_p,
                "store_bytes": len(tiles) * nbytes["cfg"] + n_w * nbytes["w"] + n_p * nbytes["p"],
                "op_steps": sum(isinstance(s, OpStep) for s in self.steps),
                "input_words": self.regions[self.net.input].words,
                "output_words": self.regions[self.net.output].words}

    def check_fits(self, *, act_words, store_bytes):
        """Raise :class:`NetworkFitError` unless the program fits an activation memory of
        ``act_words`` lane words and a store of ``store_bytes`` bytes."""
        check_int("act_words", act_words, 0)
        check_int("store_bytes", store_bytes, 0)
        f = self.footprint()
        short = [f"{f[k]} {what} (the build has {have})"
                 for k, what, have in (("act_words", "activation words", act_words),
                                       ("store_bytes", "bytes of commands, weights and "
                                        "parameters", store_bytes)) if f[k] > have]
        if short:
            raise NetworkFitError(f"the network does not fit the build's on-chip memory: it "
                                  f"needs {' and '.join(short)}; run it tile by tile instead")

    # --- the engine's image -----------------------------------------------------

    def engine_image(self):
        """The program as :class:`psc.hw.network.NetworkEngine` runs it: a dict with
        ``instructions`` (dicts of :func:`psc.hw.network.engine.instruction_layout`'s
        fields: ``INPUT`` (``INPUT_UNROLL`` where the engine unrolls the input), one
        ``CONV`` per tile, an ``OP`` per add or
        pooling, ``OUTPUT``, ``END``), ``steps`` (per instruction the name of the step it
        belongs to: ``"input"``, a layer's, ``"output"`` for ``OUTPUT`` and ``END``),
        ``weights`` and
        ``params`` (the stores' words, every tile's own in order) and ``act_words``.

        Raises :class:`NetworkFitError` for a step the engine does not run yet (an add
        or a pooling: they run on the host in tile mode) or a tile its gather or scatter
        cannot move.
        """
        from psc.hw.network.engine import OPCODES
        cc = self.config
        zero_g = {k: 0 for k in ("addr", "pixel_step", "row_step", "n_g", "n_x", "n_y", "rot",
                                 "valid")}
        zero_s = {k: 0 for k in ("addr", "lane", "pixel_step", "row_step", "n_b", "n_x", "n_y",
                                 "valid")}
        zero_cfg = {name: 0 for name, _ in config_layout(cc)}
        zero_op = op_fields(None, cc.lanes)
        zero_u = unroll_fields(None, cc.lanes)
        zero_sizes = {name: 0 for name, _ in given_sizes_layout(cc)}

        def ins(op, **fields):
            out = {"op": OPCODES[op], "cfg": zero_cfg, "w_off": 0, "w_n": 0, "p_off": 0,
                   "p_n": 0, "gather": zero_g, "scatter": zero_s, "out": 0, "eltwise": zero_op,
                   "unroll": zero_u, "sizes": zero_sizes}
            out.update(fields)
            return out

        src = self.regions[self.net.input]
        c, h, w = src.shape
        instructions = [ins("INPUT", scatter={
            "addr": src.base, "lane": 0, "pixel_step": src.groups, "row_step": w * src.groups,
            "n_b": channel_groups(c, cc.rows), "n_x": w, "n_y": h, "valid": c})]
        names = ["input"]
        weights, params, w_off = [], [], 0
        for step in self.steps:
            if isinstance(step, UnrollStep):
                # the first step, run as the input arrives: part of the input's instruction
                instructions[0].update(op=OPCODES["INPUT_UNROLL"],
                                       unroll=unroll_fields(step, cc.lanes))
                continue
            if isinstance(step, OpStep):
                if step.op != "flatten":
                    instructions.append(ins("OP", eltwise=op_fields(step, cc.lanes)))
                    names.append(step.name)
                continue
            names += [step.name] * len(step.plan.tiles)
            for tile in step.plan.tiles:
                if tile.weights:       # a tile that keeps its weights reads the last ones
                    w_off = len(weights)
                instructions.append(ins(
                    "CONV", cfg=tile.fields, sizes=derived_sizes(cc, tile.fields),
                    w_off=w_off, w_n=len(tile.weights),
                    p_off=len(params), p_n=len(tile.params),
                    gather=gather_fields(step.src, tile.window, cc.lanes),
                    scatter=(scatter_fields(step.dst, step.plan, tile) if tile.n_out
                             else zero_s),
                    out=int(tile.n_out > 0)))
                weights += tile.weights
                params += tile.params
        out = self.regions[self.net.output]
        c, h, w = out.shape
        instructions += [ins("OUTPUT", gather=gather_fields(out, Window(0, c, out.groups, 0, h,
                                                                        0, w), cc.lanes)),
                         ins("END")]
        names += ["output", "output"]        # END: the run's last cycle
        return {"instructions": instructions, "steps": names, "weights": weights,
                "params": params,
                "act_words": self.act_words + self.act_words % 2}

    @property
    def io_counts(self):
        """``(input beats, output words)`` of one inference (:meth:`input_beats`, ``OUTPUT``)."""
        c, h, w = self.regions[self.net.input].shape
        return h * w * channel_groups(c, self.config.rows), self.regions[self.net.output].words

    def input_beats(self, image):
        """The host's beats of ``INPUT``: the input's pixels in raster order, each as
        ``ceil(C / rows)`` beats of ``rows`` activations (ints)."""
        x = self.input_words(image)
        return [int(v) for v in pack_activations(x, self.config.rows,
                                                 self.config.pe.act_width).reshape(-1)]

    def output_from_words(self, words):
        """The network's output ``(C, H, W)`` from ``OUTPUT``'s lane words."""
        c, h, w = self.regions[self.net.output].shape
        groups = channel_groups(c, self.config.lanes)
        arr = np.array(words, dtype=object).reshape(h, w, groups)
        return unpack_activations(arr, c, self.config.lanes, self.config.pe.act_width)

    def engine_config(self, op_values=None, weight_store=None, given_sizes=None):
        """The :class:`psc.hw.network.EngineConfig` whose memories hold exactly this program,
        its add and pooling unit sending ``op_values`` activations per beat through the
        core's requantiser (None: the shipped target's, :func:`psc.presets.op_values`),
        its instructions carrying their commands' sizes with ``given_sizes`` (None: as the
        shipped build, :func:`psc.presets.given_sizes`).
        The weight blocks go to the core's own weight buffer where
        they fit it (``weight_store`` None) or ``weight_store`` is False, else to a weight
        store of exactly their number
        (:attr:`~psc.hw.network.EngineConfig.weight_store_depth`)."""
        from psc.hw.network.engine import EngineConfig
        image = self.engine_image()
        blocks = len(image["weights"])
        if weight_store is None:
            weight_store = blocks > self.config.weight_depth
        check_bool("weight_store", weight_store)
        return EngineConfig(self.config, act_depth=image["act_words"],
                            cmd_depth=len(image["instructions"]),
                            param_store_depth=max(1, len(image["params"])),
                            weight_store_depth=max(1, blocks) if weight_store else 0,
                            op_values=presets.op_values(self.config) if op_values is None
                            else op_values,
                            given_sizes=presets.given_sizes(self.config) if given_sizes is None
                            else given_sizes)

    def check_engine(self, engine_config):
        """Raise :class:`NetworkFitError` unless ``engine_config``'s memories (a
        :class:`psc.hw.network.EngineConfig`, a build's) hold this program, naming each
        memory that is too small: what the program needs against what the build has."""
        ec = engine_config
        if ec.core != self.config:
            raise NetworkFitError(f"the program is compiled for {self.config!r}, not for the "
                                  f"engine's core {ec.core!r}")
        image = self.engine_image()
        short = [f"{need} {what} (the build has {have})" for need, have, what in (
            (image["act_words"], ec.act_depth, "activation words"),
            (len(image["instructions"]), ec.cmd_depth, "instructions"),
            (len(image["weights"]), ec.weight_blocks, "weight blocks"),
            (len(image["params"]), ec.param_store_depth, "parameter words")) if need > have]
        if short:
            raise NetworkFitError(f"the network does not fit the engine's memories: it needs "
                                  f"{', '.join(short)}; run it tile by tile instead")

    def cycle_bound(self):
        """An upper bound on the engine's cycles for one inference, with no stalls (the
        tiles' own bounds, the adds and poolings, per-tile starts and a margin): a
        simulation that runs longer has hung."""
        cc = self.config
        tiles = [t for s in self.steps if isinstance(s, ConvStep) for t in s.plan.tiles]
        ops = sum(s.srcs[0].words * (2 * cc.lanes + 4) for s in self.steps
                  if isinstance(s, OpStep))
        weights = sum(len(t.weights) for t in tiles)     # streamed from a weight store
        unrolls = sum(s.cycles + 16 for s in self.steps if isinstance(s, UnrollStep))
        return (sum(t.cycle_bound for t in tiles) + ops + unrolls + weights + 64 * len(tiles)
                + 10_000)

    def store_words(self, engine_config):
        """The words the engine's stores hold for this program, from address 0, for each
        ``sel`` of :func:`psc.hw.network.engine.load_layout`: ``(command store, weight
        buffer, parameter store)``. Raises :class:`NetworkFitError` unless it fits
        ``engine_config`` (:meth:`check_engine`)."""
        from psc.hw.network.engine import instruction_words
        self.check_engine(engine_config)
        image = self.engine_image()
        cmd = [w for ins in image["instructions"] for w in instruction_words(engine_config, ins)]
        return cmd, list(image["weights"]), list(image["params"])

    def simulate(self, images, *, target="verilator", stall=0.0, seed=0, op_values=None,
                 given_sizes=None, trace=False):
        """Run ``images`` on a simulated :class:`psc.hw.network.NetworkEngine` holding this
        program: the stores loaded once, then per image its input in, every layer on chip,
        its output out (:mod:`psc.host.engine_bench`, random pauses of probability
        ``stall`` on the host's two streams; ``op_values`` and ``given_sizes`` as in
        :meth:`engine_config`).

        Returns ``(outputs, report)``: the network's outputs ``(N, ...)`` and, per
        inference, ``cycles`` (median over the images, from ``run`` to ``done``: input
        in, every layer, output out), ``window`` (those after the input was received),
        ``compute`` (median cycles with a beat entering the MAC array), ``macs`` and ``utilisation`` (``macs / (rows * lanes)`` over
        ``cycles``). With ``trace``, ``trace`` too: where the first image's cycles went,
        step by step (:meth:`trace_rows`).
        """
        from psc.host.sim import run_engine_job
        from psc.hw.network.engine import load_layout
        xs = self.net.check_images(images)
        cc = self.config
        ec = self.engine_config(op_values, given_sizes=given_sizes)
        ll = load_layout(ec)
        loads = [pack_payload(ll, {"sel": sel, "addr": i, "data": w})
                 for sel, words in enumerate(self.store_words(ec)) for i, w in enumerate(words)]
        out_words = self.regions[self.net.output].words
        job = {"seed": int(seed), "stall": float(stall),
               "max_cycles": int(self.cycle_bound() * (1 + 8 * stall)), "loads": loads,
               "images": [{"beats": self.input_beats(x), "n_out": out_words} for x in xs],
               "trace": bool(trace)}
        res = run_engine_job(job, ec, target=target)["images"]
        for i, r in enumerate(res):
            if r["error"] or len(r["outputs"]) != out_words:
                raise RuntimeError(f"image {i}: the engine stopped with error={r['error']} "
                                   f"after {len(r['outputs'])}/{out_words} output words")
        outs = np.stack([self.output_from_words(r["outputs"]) for r in res])
        cycles = float(np.median([r["cycles"] for r in res]))
        macs = sum(s.plan.macs for s in self.steps if isinstance(s, ConvStep))
        report = {"cycles": cycles, "macs": macs,
                  "compute": float(np.median([r["compute"] for r in res])),
                  "window": float(np.median([r["window"] for r in res])),
                  "utilisation": macs / (cc.rows * cc.lanes) / cycles,
                  "per_image": [r["cycles"] for r in res]}
        if trace:
            report["trace"] = self.trace_rows(**res[0]["trace"])
        return outs, report

    def trace_rows(self, instructions, cycles):
        """Where a run's ``cycles`` went, step by step: ``instructions`` holds per instruction
        (:meth:`engine_image`'s order) the cycle it started, the cycles of its first and
        last beat into the MAC array (``None`` without beats) and its beats, counted from
        the ``run`` pulse (:mod:`psc.host.engine_bench`'s trace). An instruction lasts until
        the next one starts (the first also holds the fetch before it, the ``END`` ends the
        run). Returns per step, in order, a dict: ``name``, ``instructions``, ``cycles``,
        ``beats``, ``setup`` (cycles of its instructions before their first beat),
        ``drain`` (after their last beat, the next instruction's fetch included) and
        ``ideal`` (its MACs over the array's, 0 for a step without).
        """
        names = self.engine_image()["steps"]
        if len(instructions) != len(names):
            raise RuntimeError(f"the trace has {len(instructions)} instructions, the program "
                               f"{len(names)}")
        macs = {s.name: s.plan.macs for s in self.steps if isinstance(s, ConvStep)}
        ends = [s[0] for s in instructions[1:]] + [cycles]
        rows = []
        for i, (name, (start, first, last, beats), end) in enumerate(
                zip(names, instructions, ends)):
            start = 0 if i == 0 else start
            if not rows or rows[-1]["name"] != name:
                rows.append({"name": name, "instructions": 0, "cycles": 0, "beats": 0,
                             "setup": 0, "drain": 0,
                             "ideal": macs.get(name, 0) / (self.config.rows * self.config.lanes)})
            row = rows[-1]
            row["instructions"] += 1
            row["cycles"] += end - start
            row["beats"] += beats
            if beats:
                row["setup"] += first - start
                row["drain"] += end - 1 - last
        return rows

    # --- running it ------------------------------------------------------------

    def input_words(self, image):
        """The network's input as the host writes it to its region: ``image`` ``(C, H, W)``,
        or its unrolled form when the host unrolls it for the first layer."""
        if self.unrolled_input:
            return _unrolled(self.net.layers[0], image, self.config)
        return image

    def run(self, images, *, target="verilator", stall=0.0, seed=0):
        """Run ``images`` (``(N, C, H, W)`` or one ``(C, H, W)``) through the program on a
        simulated core, one :class:`ActivationMemory` per image.

        Each convolution is one simulation of all the images' tiles
        (:func:`psc.host.api.run_plans`), every tile's input gathered from
        its image's memory and its output scattered back; the other
        operations use their golden definitions on the stored tensors.
        Returns ``(outputs, report)``: the network's output ``(N, ...)``,
        and per inference (averaged over the images) ``cycles`` of the core
        over all convolutions, ``macs`` and ``utilisation`` (``macs / (rows *
        lanes)`` over ``cycles``), with ``layers``, the same per convolution.
        """
        from psc.host.api import run_plans

        xs = self.net.check_images(images)
        cc, net = self.config, self.net
        mems = [ActivationMemory(self.act_words, cc.lanes, cc.pe.act_width) for _ in xs]
        for mem, x in zip(mems, xs):
            mem.store(self.regions[net.input], self.input_words(x))
        layers = []
        for step in self.steps:
            if isinstance(step, UnrollStep):
                for mem in mems:
                    mem.unroll(step, cc)
                continue
            if isinstance(step, OpStep):
                for mem in mems:
                    step_inputs = [mem.load(r) for r in step.srcs]
                    layer = next(l for l in net.layers if l.name == step.name)
                    mem.store(step.dst, net.apply(layer, step_inputs))
                continue
            plan = step.plan
            runs = [[replace(t, acts=mem.gather(step.src, t.window)) for t in plan.tiles]
                    for mem in mems]
            results = run_plans(runs, config=cc, target=target, stall=stall, seed=seed)
            for mem, tiles, res in zip(mems, runs, results):
                for tile, r in zip(tiles, res):
                    if r["error"] or not r["done"]:
                        raise RuntimeError(f"layer {step.name!r}: the core refused or did not "
                                           f"finish a tile: {r}")
                    if tile.n_out:
                        mem.scatter(step.dst, plan, tile, r["outputs"])
            cycles = sum(r["total"] for res in results for r in res) / len(xs)
            layers.append({"name": step.name, "cycles": cycles, "macs": plan.macs,
                           "utilisation": plan.macs / (cc.rows * cc.lanes) / cycles})
        outs = np.stack([mem.load(self.regions[net.output]) for mem in mems])
        cycles = sum(l["cycles"] for l in layers)
        macs = sum(l["macs"] for l in layers)
        return outs, {"cycles": cycles, "macs": macs,
                      "utilisation": macs / (cc.rows * cc.lanes) / cycles, "layers": layers}


def _lifetimes(net, alias):
    """Index of the last step reading each stored tensor (the output's: past the end)."""
    last = {}
    for i, layer in enumerate(net.layers):
        for t in layer.inputs:
            last[alias.get(t, t)] = i
    last[alias.get(net.output, net.output)] = len(net.layers)
    return last


class _Allocator:
    """First-fit allocation of regions in a linear word space."""

    def __init__(self):
        self.used = []       # (base, end), sorted
        self.high = 0

    def take(self, words):
        base = 0
        for b, e in self.used:
            if b - base >= words:
                break
            base = max(base, e)
        self.used = sorted(self.used + [(base, base + words)])
        self.high = max(self.high, base + words)
        return base

    def free(self, base):
        self.used = [(b, e) for b, e in self.used if b != base]


def compile_network(net, config, *, unroll_input=True):
    """Compile ``net`` for network mode on the build ``config``; returns a :class:`Program`.

    ``unroll_input`` (one of :data:`UNROLL_INPUT`): a first layer with few input
    channels (the stem) may read its input unrolled (im2col, :func:`psc.host.plan_layer`'s
    ``unroll_stem``), which keeps the array busier. With ``True`` the host sends the
    input unrolled, ``k * k / stride**2`` times larger, which costs nothing where the
    input arrives a beat per cycle. With ``"chip"`` the engine unrolls the stored input
    (an :class:`UnrollStep`, one input pixel per cycle) where the build's activation
    memory writes a pixel's channels from any lane (``lanes`` not a multiple of
    ``rows``) and the input has at most ``lanes`` channels, else the stem reads the
    input as it is: for a serial link, where the input's bytes take longer than the
    layer.

    Raises :class:`NetworkFitError` for what network mode cannot run (a
    flatten of a map larger than 1 x 1, whose order differs from the stored
    channels-last one) and :class:`~psc.host.scheduler.LayerError` for a
    convolution the build cannot run at all, naming the layer.
    """
    if not isinstance(net, Network):
        raise BadTypeError(f"net must be a psc.model.network.Network, not {show(net)}")
    if not isinstance(config, CoreConfig):
        raise BadTypeError(f"config must be a psc.config.CoreConfig, not {show(config)}")
    if not any(unroll_input is v for v in UNROLL_INPUT):
        raise ValueError(f"unroll_input must be one of {', '.join(map(repr, UNROLL_INPUT))}, "
                         f"not {unroll_input!r}")
    lanes = config.lanes
    on_chip = (unroll_input == "chip" and unrolls_on_chip(config)
               and net.shapes[net.input][0] <= lanes)
    alias = {}
    for layer in net.layers:
        if layer.op == "flatten":
            c, h, w = net.shapes[layer.inputs[0]]
            if (h, w) != (1, 1):
                raise NetworkFitError(
                    f"layer {layer.name!r}: network mode flattens only a (C, 1, 1) tensor, not "
                    f"{(c, h, w)}; run this network tile by tile")
            alias[layer.output] = alias.get(layer.inputs[0], layer.inputs[0])
    last = _lifetimes(net, alias)
    plans = {}
    for i, layer in enumerate(net.layers):
        if layer.op == "conv":
            # only the first layer, alone on the network's input, may read it unrolled
            on_input = ((on_chip or unroll_input is True) and i == 0
                        and sum(net.input in l.inputs for l in net.layers) == 1)
            x = np.zeros(net.shapes[layer.inputs[0]], dtype=np.int64)
            try:
                # the scatter writes output beats in pixel order
                plans[i] = plan_layer(x, **layer.conv_args(), config=config,
                                      unroll_stem=on_input, pixel_order=True)
            except LayerError as e:
                raise type(e)(f"layer {layer.name!r}: {e}") from None
    first = plans.get(0)
    first = first if first is not None and first.meta["unrolled"] else None

    mem = _Allocator()
    regions = {}

    def region(shape):
        c, h, w = shape
        groups = channel_groups(c, lanes)
        return Region(mem.take(h * w * groups), tuple(shape), groups)

    steps = []
    unrolled_shape = None if first is None else _unrolled(
        net.layers[0], np.zeros(net.shapes[net.input], dtype=np.int64), config).shape
    if first is not None and not on_chip:
        # the host unrolls: the input is stored unrolled, as the host sends it
        regions[net.input] = region(unrolled_shape)
    else:
        regions[net.input] = region(net.shapes[net.input])
    stored = dict(regions)         # tensor -> the region its readers read
    for i, layer in enumerate(net.layers):
        srcs = tuple(stored[alias.get(t, t)] for t in layer.inputs)
        if i == 0 and first is not None and on_chip:
            # the stem's input unrolled on chip into a region of its own, which the stem
            # reads in place of the input's (freed after the unroll)
            raw = srcs[0]
            srcs = (region(unrolled_shape),)
            steps.append(UnrollStep(f"{layer.name}/unroll", raw, srcs[0], layer))
            mem.free(raw.base)
            stored[net.input] = srcs[0]
        if layer.op == "flatten":
            regions[layer.output] = stored[layer.output] = replace(
                srcs[0], shape=net.shapes[layer.output])
            steps.append(OpStep(layer.name, "flatten", srcs, regions[layer.output], layer.attrs))
            continue
        dst = regions[layer.output] = stored[layer.output] = region(net.shapes[layer.output])
        if layer.op == "conv":
            steps.append(ConvStep(layer.name, srcs[0], dst, plans[i]))
        else:
            steps.append(OpStep(layer.name, layer.op, srcs, dst, layer.attrs))
        for t in {alias.get(t, t) for t in layer.inputs}:
            if last[t] == i:
                mem.free(stored[t].base)
    return Program(net, config, steps, regions, mem.high, first is not None and not on_chip)


def describe(program):
    """The program's memory map and footprint as printable lines (``psc program``)."""
    cc, net = program.config, program.net
    f = program.footprint()
    lines = [f"network mode program: {len(net.layers)} layers on a {cc.lanes} x {cc.rows} "
             f"build ({cc.lanes} lanes of {cc.pe.act_width} bits per activation word)",
             f"{'tensor':<16} {'shape (C, H, W)':<18} {'words':>7}  region",
             ]
    for name, r in program.regions.items():
        note = " (unrolled input)" if name == net.input and program.unrolled_input else ""
        lines.append(f"{name:<16} {str(r.shape):<18} {r.words:>7}  [{r.base}, {r.end}){note}")
    for s in program.steps:
        if isinstance(s, UnrollStep):
            r = s.dst
            lines.append(f"{'(unrolled)':<16} {str(r.shape):<18} {r.words:>7}  "
                         f"[{r.base}, {r.end}) (the input unrolled on chip for {s.layer.name})")
    lines += [f"activation memory: {f['act_words']} words ({f['act_bytes']} bytes)",
              f"commands, weights, parameters: {f['commands']} commands, {f['weight_beats']} "
              f"weight blocks, {f['param_beats']} parameter words ({f['store_bytes']} bytes)",
              f"per inference: {f['input_words']} words in, {f['output_words']} out; "
              f"{f['op_steps']} add/pool/flatten steps off the array"]
    return lines
