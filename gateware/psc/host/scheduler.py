"""The tiling scheduler of :class:`psc.hw.core.PSCConvCore`: a layer becomes a list of :class:`Tile`.

This is the only code that knows the order of the core's command and data
streams; tensors become stream words only through :mod:`psc.model.packing`.
Each tile is one command of the core with its weight blocks, parameter beats
and input lane words, the number of output beats it produces and where they
go in the output tensor.

:func:`plan_layer` runs five steps, each its own function:

1. :func:`validate` checks the layer against the build and normalises it
   (:class:`LayerError` names the limit, before anything is sent);
2. :func:`choose_kind` picks the core's command kind (standard, depthwise,
   pointwise, fully connected); a depthwise layer on a build with
   ``lanes != rows`` runs as standard commands with diagonal weights, each
   over the output groups whose channels one input lane word holds (a
   fraction of the array busy); a standard layer with few input channels
   (a stem) runs as a pointwise layer over its unrolled input (:func:`unroll`)
   when that fills more lanes;
3. :func:`pack` turns weights and parameters into stream words per output
   group;
4. :func:`cut_bands` chooses the output-channel chunks and, inside a chunk,
   the band of output rows and columns whose input footprint fits the input
   buffer and whose output beats the command can count; where a layer has
   more than one way to cut it (a reduction split over input chunks, a
   depthwise layer's chunk of channel groups), the one whose commands the
   cycle model (:mod:`psc.host.cycle_model`) finds fastest;
5. :func:`emit_tiles` makes the tiles: each carries its own zero padding
   (``pad_top``/``pad_left`` and its output size); the first tile of a chunk
   loads the chunk's weights and parameters, the following ones reuse them
   (``keep``).

A reduction longer than one command holds (the weight buffer, the
accumulator's ``max_reduction`` or one input window) is split over chunks
of input channels (:func:`split_reduction`), whose sums the core keeps at
full precision in its partial-sum buffer and requantises once, after the
last chunk. A layer is refused only for what the hardware cannot
represent: a kernel, stride or padding it has no mode for, values out of
their widths, a whole sum wider than the build's, a kernel window of one
channel group larger than a buffer.
"""

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from psc.hw.core import (KERNELS, STRIDES, FIELD_WIDTH, MAX_OUTPUTS, KIND_STANDARD, KIND_DEPTHWISE,
                         KIND_POINTWISE, KIND_FC, CoreConfig, Part, command_layout, param_layout,
                         weight_layout)
from psc.hw.core.setup import command_fields
from psc.hw.core.layouts import output_groups
from psc.hw.pe import pe_latency
from psc.host.cycle_model import tile_cycles, tiles_cycles
from psc.hw.requantize import Requantizer
from psc.model.checks import (check_bool, check_dims, check_int, check_signed, per_channel, show,
                              signed_range)
from psc.model.packing import (channel_groups, pack_activations, pack_payload, parify,
                               unpack_lanes)

__all__ = ["LayerError", "Tile", "Window", "LayerPlan", "Layer", "plan_layer", "validate", "choose_kind",
           "pack", "unroll", "split_reduction", "cut_bands", "emit_tiles", "cycle_bound", "encode_command", "KIND_NAMES",
           "MAX_SHIFT"]

#: Largest requantisation shift the core takes.
MAX_SHIFT = 62
KIND_NAMES = {KIND_STANDARD: "standard", KIND_DEPTHWISE: "depthwise",
              KIND_POINTWISE: "pointwise", KIND_FC: "fully connected"}


class LayerError(ValueError):
    """A layer the build cannot run; raised before anything is sent to the core."""


@dataclass
class Tile:
    """One command of the core and its data, in stream order."""
    cfg: int
    weights: list
    params: list
    acts: list
    n_out: int
    fields: dict
    # where the tile's output goes: channels [c0, c1), rows [oy0, oy1), cols [ox0, ox1)
    place: tuple = (0, 0, 0, 0, 0, 0)
    # the input lane words' source in the layer's input tensor (the acts are its words)
    window: "Window | None" = None
    reset_after: int | None = None   # tests: assert rst this many cycles into the tile
    # upper bound on the command's cycles with no stream paused (:func:`cycle_bound`);
    # the default covers a command refused by its checks (setup only)
    cycle_bound: int = 1024

    def as_json(self):
        return {"cfg": self.cfg, "weights": self.weights, "params": self.params,
                "acts": self.acts, "n_out": self.n_out, "reset_after": self.reset_after,
                "cycle_bound": self.cycle_bound}


@dataclass(frozen=True)
class Window:
    """The input of one tile: ``groups`` lane words per pixel of rows ``[r0, r1)`` and columns
    ``[q0, q1)`` of the layer's (mapped) input, lane ``l`` of word ``g`` holding channel
    ``c_lo + g*lanes + l``, or zero for a channel at or past ``c_hi``.

    Every tile's input is such a window, whatever the mapping: all input groups of a
    standard layer from a group ``g0``, a depthwise chunk's own channels (with padding
    groups on a ``depthwise="channels"`` build), a diagonal command's channels from the
    start of their lane word (:func:`_diagonal_span`). So the tile's acts are a gather
    from the input stored channels-last, which a sequencer on the board can do as well as
    the host (:meth:`words`).
    """
    c_lo: int
    c_hi: int
    groups: int
    r0: int
    r1: int
    q0: int
    q1: int

    def words(self, x, lanes, act_width):
        """The window's lane words of ``x`` ``(C, H, W)``, shape ``(r1-r0, q1-q0, groups)``."""
        c = np.arange(self.c_lo, self.c_lo + self.groups * lanes)
        sel = np.zeros((len(c), self.r1 - self.r0, self.q1 - self.q0), dtype=np.int64)
        valid = c < min(self.c_hi, x.shape[0])
        sel[valid] = x[c[valid], self.r0:self.r1, self.q0:self.q1]
        return pack_activations(sel, lanes, act_width)


@dataclass
class LayerPlan:
    """Tiles of one layer and what is needed to reassemble and judge the result."""
    tiles: list
    out_shape: tuple
    kind: int
    macs: int
    config: CoreConfig
    meta: dict = field(default_factory=dict)

    def assemble(self, results):
        """Place the tiles' output words into ``(Cout, Ho, Wo)``; returns the array."""
        rows, width = self.config.rows, self.config.pe.act_width
        y = np.zeros(self.out_shape, dtype=np.int64)
        for tile, res in zip(self.tiles, results):
            words = res["outputs"]
            if tile.n_out == 0 and not len(words):
                continue    # a chunk of a split reduction: its sums stay in the core
            if len(words) != tile.n_out:
                raise RuntimeError(f"tile {tile.fields} produced {len(words)} output beats, "
                                   f"expected {tile.n_out}")
            oy, ox, ch, keep = self.beat_places(tile)
            vals = unpack_lanes(np.array(words, dtype=object), rows, width)
            y[ch[keep], oy[keep], ox[keep]] = vals[keep]
        return y

    def beat_places(self, tile):
        """Where the values of ``tile``'s output beats go, in stream order.

        Returns ``(oy, ox, c, keep)``, each of shape ``(n_out, rows)``: value ``i`` of
        beat ``b`` is channel ``c[b, i]`` of output pixel ``(oy[b, i], ox[b, i])``, and is
        a padding channel to drop where ``keep`` is False. Beats are pixel-major with the
        pixel's groups of ``rows`` channels in order, except on a ``depthwise="pixels"``
        or ``"shifted"`` build, whose depthwise tiles send blocks of ``rows`` neighbouring
        pixels.
        """
        rows = self.config.rows
        c0, c1, oy0, oy1, ox0, ox1 = tile.place
        oh, ow = oy1 - oy0, ox1 - ox0
        per_pixel = tile.n_out // (oh * ow)
        pos = np.arange(tile.n_out)     # each beat's index in pixel-major order
        if self.kind == KIND_DEPTHWISE and self.config.pe.depthwise in ("pixels", "shifted"):
            pos[_pixel_block_order(oh, ow, per_pixel, rows)] = np.arange(tile.n_out)
        pixel, group = np.divmod(pos, per_pixel)
        c = (c0 + group * rows)[:, None] + np.arange(rows)
        oy = np.broadcast_to((oy0 + pixel // ow)[:, None], c.shape)
        ox = np.broadcast_to((ox0 + pixel % ow)[:, None], c.shape)
        return oy, ox, c, c < c1


def _pixel_block_order(oh, ow, gc, rows):
    """Beat index of each channels-last output word ``(oy, ox, j)`` of a depthwise tile on a
    ``depthwise="pixels"`` or ``"shifted"`` build, which sends blocks of ``rows`` neighbouring pixels:
    ``(oy, ox // rows, j, ox % rows)``, without the pixels past ``ow``."""
    idx = np.zeros((oh, ow, gc), dtype=np.int64)
    beat = 0
    for oy in range(oh):
        for ox0 in range(0, ow, rows):
            n = min(rows, ow - ox0)
            for j in range(gc):
                idx[oy, ox0:ox0 + n, j] = np.arange(beat, beat + n)
                beat += n
    return idx.reshape(-1)


@dataclass
class Layer:
    """A layer checked against a build (:func:`validate`); arrays are int64."""
    config: CoreConfig
    x: np.ndarray
    w_pos: np.ndarray
    w_neg: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    stride: int
    padding: int
    groups: int
    relu: bool
    depthwise: bool
    # a depthwise layer run as standard commands with diagonal weights, each over the
    # input channels of its own groups only (choose_kind)
    diagonal: bool = False

    @property
    def k(self):
        return self.w_pos.shape[-1]

    @property
    def out_hw(self):
        _, h, w = self.x.shape
        return ((h + 2 * self.padding - self.k) // self.stride + 1,
                (w + 2 * self.padding - self.k) // self.stride + 1)


def validate(x, w_pos, w_neg, bias, mult, shift, *, stride=1, padding=0, groups=1, relu=False,
             config=None):
    """Step 1: check a layer against the build; returns a :class:`Layer`.

    Raises :class:`LayerError` naming the parameter, its value and what the
    build allows: a wrong type (a float, bool or object array where integers
    belong, a string where a bool does, a config that is not a
    :class:`~psc.config.CoreConfig`), an empty dimension, a value out of its
    range, or a layer the build cannot run.
    """
    cc = CoreConfig() if config is None else config
    if not isinstance(cc, CoreConfig):
        raise LayerError(f"config must be a psc.config.CoreConfig, not {show(cc)}")
    pe = cc.pe
    try:
        x = check_dims("x", check_signed("x", x, pe.act_width), ("Cin", "H", "W"))
        w_pos = check_dims("w_pos", check_signed("w_pos", w_pos, pe.weight_width),
                           ("Cout", "Cin // groups", "K", "K"))
        w_neg = check_signed("w_neg", w_neg, pe.weight_width)
        stride = check_int("stride", stride, 1)
        padding = check_int("padding", padding, 0)
        groups = check_int("groups", groups, 1)
        relu = check_bool("relu", relu)
    except ValueError as e:     # BadTypeError included
        raise LayerError(str(e)) from None
    if w_pos.shape[2] != w_pos.shape[3]:
        raise LayerError(f"w_pos must have square kernels (Cout, Cin // groups, K, K), "
                         f"not {w_pos.shape}")
    if w_neg.shape != w_pos.shape:
        raise LayerError(f"w_neg must have the shape of w_pos {w_pos.shape}, not {w_neg.shape}")
    if not pe.psc and not np.array_equal(w_pos, w_neg):
        raise LayerError("this build has psc=False: it needs w_neg == w_pos")
    cin, h, w = x.shape
    cout, cin_g, k, _ = w_pos.shape
    if k not in KERNELS:
        raise LayerError(f"kernel size must be one of {KERNELS}, not {k}")
    if stride not in STRIDES:
        raise LayerError(f"stride must be one of {STRIDES}, not {stride}")
    if padding >= k:
        raise LayerError(f"padding must be less than the kernel size {k}, not {padding}")
    if groups == 1:
        depthwise = False
        if cin_g != cin:
            raise LayerError(f"w_pos has {cin_g} input channels, x has {cin}")
    elif groups == cin and cout == cin and cin_g == 1:
        depthwise = True
    else:
        raise LayerError(f"only groups=1 and depthwise (groups == Cin == Cout) are supported, "
                         f"not groups={groups} with Cin={cin}, Cout={cout}")
    if h + 2 * padding < k or w + 2 * padding < k:
        raise LayerError(f"kernel {k}x{k} does not fit the padded input "
                         f"{h + 2 * padding}x{w + 2 * padding}")
    acc_lo, acc_hi = signed_range(pe.acc_width)
    try:
        bias = per_channel("bias", np.zeros(cout, dtype=np.int64) if bias is None else bias,
                           cout, acc_lo, acc_hi)
        mult = per_channel("mult", mult, cout, 0, (1 << pe.mult_width) - 1)
        shift = per_channel("shift", shift, cout, 0, MAX_SHIFT)
    except ValueError as e:
        raise LayerError(str(e)) from None
    red = cin_g * k * k
    peak = red << (pe.act_width + pe.weight_width - 2)
    if int(np.abs(bias).max(initial=0)) + peak > signed_range(cc.sum_width)[1]:
        raise LayerError(f"bias up to {int(np.abs(bias).max())} plus the largest reduction of "
                         f"{red} products ({peak}) can leave the build's {cc.sum_width}-bit sum "
                         f"(psum_width, or acc_width without a partial-sum buffer)")
    return Layer(config=cc, x=x, w_pos=w_pos, w_neg=w_neg, bias=bias, mult=mult, shift=shift,
                 stride=stride, padding=padding, groups=groups, relu=relu,
                 depthwise=depthwise)


def choose_kind(layer, unroll_stem=True, pixel_order=False):
    """Step 2: the command kind of ``layer``; returns ``(kind, layer)``.

    A depthwise layer the build cannot map (``lanes != rows`` on a build
    without ``depthwise="channels"`` or ``"shifted"``, or any on a ``"shifted"``
    build when ``pixel_order`` asks for output beats in pixel order, which a
    shifted depthwise command sends in blocks of pixels) comes back as a standard one marked
    ``diagonal``: each command covers the output groups of one input lane
    word (:func:`_diagonal_span`) over their own channels. A standard layer
    whose input channels leave most lanes idle (a network's stem: 3 channels
    on 8 lanes) comes back as a pointwise layer over its unrolled input
    (:func:`unroll`) when that is estimated to take fewer cycles
    (:func:`_unroll_pays`) and ``unroll_stem`` allows it.
    """
    pe = layer.config.pe
    if layer.depthwise and ((pe.lanes != pe.rows and pe.depthwise not in ("channels", "shifted"))
                            or (pixel_order and pe.depthwise == "shifted")):
        layer = Layer(**{**layer.__dict__, "depthwise": False, "diagonal": True})
    elif unroll_stem and not layer.depthwise and layer.k > 1 and _unroll_pays(layer):
        layer = unroll(layer)
    return _kind_of(layer), layer


def _kind_of(layer):
    """The command kind of a mapped layer (:func:`choose_kind`)."""
    _, h, w = layer.x.shape
    if layer.depthwise:
        return KIND_DEPTHWISE
    if layer.k == 1 and h == 1 and w == 1:
        return KIND_FC
    return KIND_POINTWISE if layer.k == 1 else KIND_STANDARD


def unroll(layer):
    """A standard layer as the equivalent pointwise layer over its unrolled input (im2col):
    input channel ``(ky*K + kx)*C + c`` at output pixel ``(oy, ox)`` is the zero-padded
    input's ``x[c, oy*s + ky, ox*s + kx]``, and its weights are ``w[:, c, ky, kx]``. Every
    product is the same, so the sums, and the outputs, are bit-exact. A kernel position's
    ``C`` channels are consecutive, so that network mode's unroll unit
    (:class:`psc.hw.network.Unroll`) writes each input pixel it reads in one write."""
    c, _, _ = layer.x.shape
    k, s, p = layer.k, layer.stride, layer.padding
    ho, wo = layer.out_hw
    xp = np.pad(layer.x, ((0, 0), (p, p), (p, p)))
    cols = np.empty((k, k, c, ho, wo), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            cols[ky, kx] = xp[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]
    cout = layer.w_pos.shape[0]

    def flat(w):
        return w.transpose(0, 2, 3, 1).reshape(cout, k * k * c, 1, 1)
    return Layer(**{**layer.__dict__, "x": cols.reshape(k * k * c, ho, wo),
                    "w_pos": flat(layer.w_pos), "w_neg": flat(layer.w_neg),
                    "stride": 1, "padding": 0})


def _unroll_pays(layer):
    """Whether :func:`unroll` is worth it: the unrolled input is at most twice the words of
    the layer's own (it repeats each value up to ``K*K / stride**2`` times, and the input
    buffer and the link carry every copy: a stem with 3 channels at stride 2 keeps its
    size), it fills more lanes, and its tiles take fewer cycles by the cycle model
    (:mod:`psc.host.cycle_model`) than the layer's own."""
    cc = layer.config
    c, h, w = layer.x.shape
    k2 = layer.k * layer.k
    ho, wo = layer.out_hw
    g_std, g_unr = channel_groups(c, cc.lanes), channel_groups(c * k2, cc.lanes)
    if g_unr >= k2 * g_std or ho * wo * g_unr > 2 * h * w * g_std:
        return False
    unrolled = _tiles_cycles(unroll(layer), KIND_POINTWISE)
    try:
        return unrolled < _tiles_cycles(layer, KIND_STANDARD)
    except LayerError:      # its own window does not fit a buffer: unrolled, it runs
        return True


def _tiles_cycles(layer, kind):
    """Predicted cycles of ``layer`` planned as ``kind`` (steps 3 to 5)."""
    return tiles_cycles(layer.config, emit_tiles(layer, kind, *pack(layer), cut_bands(layer)))


def _pixels(layer):
    return layer.depthwise and layer.config.pe.depthwise == "pixels"


def _channels(layer):
    """A depthwise layer on a ``depthwise="channels"`` build: its command's groups are of
    ``rows * lanes`` channels (row ``r`` takes lane group ``j*rows + r`` of a pixel), each
    making ``lanes`` output beats of ``rows`` channels per pixel."""
    return layer.depthwise and layer.config.pe.depthwise == "channels"


def _shifted(layer):
    """A depthwise layer on a ``depthwise="shifted"`` build: its command's groups are of
    ``lanes`` channels (one lane word), each making ``lanes / rows`` output beats per pixel;
    a reduction is ``K`` kernel rows of :func:`_span` beats for ``rows`` pixels."""
    return layer.depthwise and layer.config.pe.depthwise == "shifted"


def _span(layer):
    """Beats of one kernel row of a reduction: ``K``, or the ``rows`` pixels' windows
    (``K + (rows-1)*stride``) of a depthwise layer on a ``"shifted"`` build."""
    return layer.config.pe.kernel_span(layer.k, layer.stride) if layer.depthwise else layer.k


def _beats_per_group(layer):
    """Output beats (and parameter words) per pixel of one of the command's groups: ``lanes``
    for a depthwise layer on a channels build (a group of ``rows * lanes`` channels),
    ``lanes / rows`` on a shifted build (a group of ``lanes`` channels), else 1."""
    if _channels(layer):
        return layer.config.lanes
    if _shifted(layer):
        return layer.config.lanes // layer.config.rows
    return 1


def _out_groups(layer):
    """The command's output groups of ``layer`` (``gout``), of ``rows`` channels each, or
    ``rows * lanes`` for a depthwise layer on a channels build."""
    return channel_groups(layer.w_pos.shape[0], layer.config.rows * _beats_per_group(layer))


def _diagonal_span(config):
    """The channels of a diagonal command's input word: ``lanes`` where a lane word holds
    whole output groups (``lanes % rows == 0``), so one command covers its
    ``lanes // rows`` groups and loads their input once, else ``rows`` (one group per
    command). Channel ``c`` sits at lane ``c % span`` of its command's input."""
    return config.lanes if config.lanes % config.rows == 0 else config.rows


def _groups_in(layer):
    """Input channel groups of one reduction: 1 for depthwise, the lane groups of the
    :func:`_diagonal_span` channels of a depthwise layer run as standard commands
    (``diagonal``), else every input group."""
    cc = layer.config
    if layer.depthwise:
        return 1
    if layer.diagonal:
        return channel_groups(_diagonal_span(cc), cc.lanes)
    return channel_groups(layer.x.shape[0], cc.lanes)


def pack(layer):
    """Step 3: stream words of the weights and parameters, per output group.

    Returns ``(weights, params)``: ``weights[j][t][g]`` is the weight-block
    word of output group ``j``, kernel tap ``t`` (raster order) and input
    group ``g`` (a command over input groups ``[g0, g1)`` takes, per output
    group, its taps in order and inside each the groups ``g0 .. g1-1``),
    ``params[j]`` its parameter word.
    """
    cc = layer.config
    pe = cc.pe
    lanes, rows, k = pe.lanes, pe.rows, layer.k
    cin = layer.x.shape[0]
    cout = layer.w_pos.shape[0]
    wl, pl = weight_layout(cc), param_layout(cc)
    if _channels(layer):
        return _pack_channels(layer, wl, pl)
    if _shifted(layer):
        return _pack_shifted(layer, wl, pl)
    gin, gout = channel_groups(cin, lanes), channel_groups(cout, rows)
    if layer.diagonal:
        # a command reads only its own channels, packed from the start of their span
        # (_commands), so its input groups are those of one span
        gin = _groups_in(layer)
    # zero-padded weights as (gout, K, K, gin, rows, lanes) blocks
    wp = np.zeros((gout * rows, gin * lanes, k, k), dtype=np.int64)
    wn = np.zeros_like(wp)
    if layer.diagonal:
        # output channel c's weight sits at its input channel's lane of the span
        span = _diagonal_span(cc)
        for c in range(cout):
            wp[c, c % span] = layer.w_pos[c, 0]
            wn[c, c % span] = layer.w_neg[c, 0]
    elif layer.depthwise:
        for c in range(cin):
            wp[c, c] = layer.w_pos[c, 0]
            wn[c, c] = layer.w_neg[c, 0]
    else:
        wp[:cout, :cin] = layer.w_pos
        wn[:cout, :cin] = layer.w_neg
    blocks_pos = wp.reshape(gout, rows, gin, lanes, k, k).transpose(0, 4, 5, 2, 1, 3)
    blocks_neg = wn.reshape(gout, rows, gin, lanes, k, k).transpose(0, 4, 5, 2, 1, 3)
    if _pixels(layer):
        # every row (output pixel) uses the group's lane weights
        blocks_pos, blocks_neg = (
            np.broadcast_to(np.diagonal(b, axis1=-2, axis2=-1)[..., None, :], b.shape)
            for b in (blocks_pos, blocks_neg))
    # every block's words at once: the packer then only places them
    blocks = parify(blocks_pos, blocks_neg, pe.weight_width) if pe.psc else blocks_pos
    weights = []
    for j in range(gout):
        taps = []
        for ky in range(k):
            for kx in range(k):
                taps.append([pack_payload(wl, blocks[j, ky, kx, g])
                             for g in ([j * rows // lanes] if layer.depthwise else range(gin))])
        weights.append(taps)
    return weights, _pack_params(layer, pl, gout)


def _pack_params(layer, pl, groups):
    """Parameter words of ``groups`` groups of ``rows`` channels (zero past the layer's)."""
    rows = layer.config.rows
    params = []
    for j in range(groups):
        sl = slice(j * rows, (j + 1) * rows)
        pad = rows - len(layer.bias[sl])
        params.append(pack_payload(pl, {name: np.pad(getattr(layer, name)[sl], (0, pad))
                                        for name in ("bias", "mult", "shift")}))
    return params


def _pack_channels(layer, wl, pl):
    """:func:`pack` of a depthwise layer on a ``depthwise="channels"`` build: group ``j``
    (``rows * lanes`` channels) has one block per tap, row ``r`` lane ``l`` holding channel
    ``(j*rows + r)*lanes + l``'s weight, and ``lanes`` parameter words (the groups of
    ``rows`` channels of its output beats)."""
    pe = layer.config.pe
    lanes, rows, k = pe.lanes, pe.rows, layer.k
    gout = _out_groups(layer)
    cout = layer.w_pos.shape[0]
    wp = np.zeros((gout * rows * lanes, k, k), dtype=np.int64)
    wn = np.zeros_like(wp)
    wp[:cout], wn[:cout] = layer.w_pos[:, 0], layer.w_neg[:, 0]
    wp = wp.reshape(gout, rows, lanes, k, k)
    wn = wn.reshape(gout, rows, lanes, k, k)
    weights = [[[pack_payload(wl, parify(wp[j, :, :, ky, kx], wn[j, :, :, ky, kx],
                                         pe.weight_width) if pe.psc else wp[j, :, :, ky, kx])]
                for ky in range(k) for kx in range(k)] for j in range(gout)]
    return weights, _pack_params(layer, pl, gout * lanes)


def _pack_shifted(layer, wl, pl):
    """:func:`pack` of a depthwise layer on a ``depthwise="shifted"`` build: group ``j``
    (``lanes`` channels) has a block per kernel row ``ky`` and input column ``u`` of the
    ``rows`` pixels' windows (:func:`_span`), row ``r`` lane ``l`` holding tap ``(ky, u -
    r*stride)`` of channel ``j*lanes + l`` (zero outside the kernel), and ``lanes / rows``
    parameter words."""
    pe = layer.config.pe
    lanes, rows, k, s = pe.lanes, pe.rows, layer.k, layer.stride
    gout = _out_groups(layer)
    cout = layer.w_pos.shape[0]
    span = _span(layer)
    blocks = []
    for w in (layer.w_pos, layer.w_neg):
        full = np.zeros((gout * lanes, k, k), dtype=np.int64)
        full[:cout] = w[:, 0]
        b = np.zeros((gout, k, span, rows, lanes), dtype=np.int64)
        for r in range(rows):
            # row r's pixel is r*stride columns to the right: its taps start there
            b[:, :, r * s:r * s + k, r, :] = full.reshape(gout, lanes, k, k).transpose(0, 2, 3, 1)
        blocks.append(b)
    words = parify(*blocks, pe.weight_width) if pe.psc else blocks[0]
    weights = [[[pack_payload(wl, words[j, ky, u])] for ky in range(k) for u in range(span)]
               for j in range(gout)]
    return weights, _pack_params(layer, pl, gout * lanes // rows)


def _footprint(layer, band_h, band_w, groups):
    """Input words of an output band ``band_h x band_w`` over ``groups`` channel groups."""
    _, h, w = layer.x.shape
    k, stride, rows = layer.k, layer.stride, layer.config.rows
    ih, iw = min(h, (band_h - 1) * stride + k), min(w, (band_w - 1) * stride + k)
    if _pixels(layer):
        # input bank b holds the columns with (x // stride) % rows == b (psc.hw.core)
        return rows * ih * -(-iw // (stride * rows)) * stride * groups
    if _channels(layer):
        # each of the rows banks holds one of every group's rows lane words per pixel
        return rows * ih * iw * groups
    return ih * iw * groups


def split_reduction(layer, n=None):
    """The input-channel chunks of one output group's reduction: a list of ``(g0, g1)``.

    ``n`` chunks of balanced sizes; by default the fewest that fit: one
    (``[(0, gin)]``) when the whole reduction fits one command (its
    ``K*K*gin`` weight blocks in the weight buffer, its products in
    ``max_reduction`` and one input window in the input buffer). The core
    adds up the chunks' sums in its partial-sum buffer
    (:class:`~psc.hw.core.layouts.Part`). Depthwise layers always have one.
    Raises :class:`LayerError` only for what no chunking can fix: one input
    group's ``K x K`` window larger than a buffer, or a build with no
    partial-sum buffer.
    """
    cc = layer.config
    pe = cc.pe
    k2 = layer.k ** 2
    gin = _groups_in(layer)
    if layer.depthwise:
        return [(0, 1)]
    if n is None:
        def fits(g):
            return (k2 * g <= cc.weight_depth and g * pe.lanes * k2 <= pe.max_reduction
                    and _footprint(layer, 1, 1, g) <= cc.fmap_depth)
        if not fits(1):
            raise LayerError(
                f"kernel {layer.k}x{layer.k} does not fit this build even for one channel "
                f"group: {k2} weight blocks (weight_depth={cc.weight_depth}), {pe.lanes * k2} "
                f"products (max_reduction={pe.max_reduction}), {_footprint(layer, 1, 1, 1)} "
                f"input words (fmap_depth={cc.fmap_depth})")
        n = 1
        while not fits(-(-gin // n)):
            n += 1
        if n > 1 and not cc.psum_depth:
            raise LayerError(f"a reduction of {gin} channel groups x {pe.lanes} lanes x "
                             f"{layer.k}x{layer.k} needs {n} commands, and this build has no "
                             f"partial-sum buffer (psum_depth=0)")
    q, extra = divmod(gin, n)
    bounds = [0]
    for c in range(n):
        bounds.append(bounds[-1] + q + (c < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def _band(layer, g_t, gc, max_beats):
    """The largest output band (``band_h``, ``band_w``) whose input (``g_t`` groups) fits
    the input buffer and whose ``gc`` groups of output beats number at most ``max_beats``."""
    cc = layer.config
    ho, wo = layer.out_hw
    band_w = wo
    while _footprint(layer, 1, band_w, g_t) > cc.fmap_depth or band_w * gc > max_beats:
        band_w -= 1
    band_h = ho
    while (_footprint(layer, band_h, band_w, g_t) > cc.fmap_depth
           or band_h * band_w * gc > max_beats):
        band_h -= 1
    return band_h, band_w


def cut_bands(layer):
    """Step 4: the chunks of output groups and input groups and their output bands.

    Returns a list of ``(j0, j1, chunks, band_h, band_w)``: output groups
    ``[j0, j1)`` (their weights and parameters fit the buffers), the input
    groups of each command over them (:func:`split_reduction`; for a
    depthwise layer ``[(0, j1 - j0)]``, its own channels), and the largest
    output band whose input fits the input buffer and whose beats the
    command can count (and, for a split reduction, hold as partial sums).

    Where the output groups do not fit one chunk, or the reduction does not
    fit one command, and the build has a partial-sum buffer, the number of
    input chunks and the output-group chunk are the pair whose commands take
    the fewest cycles by the cycle model (:func:`_bands_cycles`). Smaller
    input chunks leave room for more output groups per command and larger
    bands, over which each command's setup and input load is spread: a fully
    connected layer whose weights fill the weight buffer many times over
    loads its input once per chunk of output groups, not once per command.
    A depthwise layer's chunk of channel groups is chosen the same way, from
    one group to the most that fit: fewer groups per command leave room for
    taller bands, whose input rows are loaded once.
    """
    cc = layer.config
    k = layer.k
    chunks = split_reduction(layer)
    gout = _out_groups(layer)
    if layer.diagonal:
        # the output groups of one span per command (or a divisor of them, to keep the
        # commands aligned to spans), whose input is their own channels only
        per = _diagonal_span(cc) // cc.rows
        return _fastest(layer, [(chunks, d) for d in range(1, per + 1)
                                if per % d == 0 and d * k * k <= cc.weight_depth
                                and d * _beats_per_group(layer) <= cc.param_depth])
    if layer.depthwise:
        per_group = k * _span(layer)
        if per_group > cc.pe.max_reduction // cc.lanes:
            raise LayerError(f"a depthwise {k}x{k} reduction of {per_group} beats of "
                             f"{cc.lanes} lanes does not fit max_reduction="
                             f"{cc.pe.max_reduction}")
        chunk = min(gout, cc.param_depth // _beats_per_group(layer), cc.weight_depth // per_group)
        while chunk > 1 and _footprint(layer, 1, 1, chunk) > cc.fmap_depth:
            chunk -= 1
        if _footprint(layer, 1, 1, chunk) > cc.fmap_depth:
            raise LayerError(f"kernel {k}x{k} does not fit this build even for one channel "
                             f"group: {_footprint(layer, 1, 1, 1)} input words "
                             f"(fmap_depth={cc.fmap_depth})")
        return _fastest(layer, [(chunks, gc) for gc in _balanced(gout, chunk)])
    gin = _groups_in(layer)
    chunk = min(gout, cc.param_depth, cc.weight_depth // (k * k * gin))
    if len(chunks) == 1 and (chunk == gout or not cc.psum_depth):
        return _cut(layer, chunks, chunk)
    cuts = []
    sizes = {}                              # each input chunk size from its fewest chunks
    for n in range(len(chunks), gin + 1):
        sizes.setdefault(-(-gin // n), n)
    for g_n, n in sizes.items():
        top = min(gout, cc.param_depth, cc.weight_depth // (k * k * g_n),
                  cc.psum_depth if n > 1 else gout)
        cuts += [(split_reduction(layer, n), gc) for gc in _balanced(gout, top)]
    return _fastest(layer, cuts)


def _balanced(gout, top):
    """Output groups per command of balanced chunks of ``gout`` groups, from the fewest
    chunks of at most ``top`` groups to one group each."""
    return sorted({-(-gout // m) for m in range(-(-gout // top), gout + 1)})


def _fastest(layer, cuts):
    """The cut with the fewest cycles (:func:`_bands_cycles`) among ``cuts``, pairs of
    input chunks and output groups per command (:func:`_cut`)."""
    kind = _kind_of(layer)
    memo, best = {}, None
    for chunks, gc in cuts:
        cost = _bands_cycles(layer, kind, _cut(layer, chunks, gc), memo)
        if best is None or cost < best[0]:
            best = (cost, chunks, gc)
    return _cut(layer, *best[1:])


def _cut(layer, chunks, chunk):
    """:func:`cut_bands`'s list for input ``chunks`` and ``chunk`` output groups per command."""
    cc = layer.config
    gout = _out_groups(layer)
    max_beats = MAX_OUTPUTS if len(chunks) == 1 else min(MAX_OUTPUTS, cc.psum_depth)
    bands = {}                              # of each chunk size (all but the last are equal)
    out = []
    for j0 in range(0, gout, chunk):
        j1 = min(gout, j0 + chunk)
        gc = j1 - j0
        in_chunks = [(0, gc)] if layer.depthwise else chunks
        if gc not in bands:
            g_t = max(g1 - g0 for g0, g1 in in_chunks)
            bands[gc] = _band(layer, g_t, gc * _beats_per_group(layer), max_beats)
        out.append((j0, j1, in_chunks, *bands[gc]))
    return out


def cycle_bound(config, fields, n_loaded):
    """An upper bound on the cycles of one command with no stream paused.

    The sum of what the core's docstring lists as a command's cost, each
    part taken at its worst and none overlapped: setup (every derived size
    by a shift-and-add of at most ``FIELD_WIDTH + 1`` steps), ``n_loaded``
    stream beats (weights, parameters and input words, taken one per
    cycle), the MAC beats (a depthwise tile on a ``depthwise="pixels"``
    build issues ``K*K`` beats per block of ``rows`` pixels and group, on a
    ``"shifted"`` build ``K * (K + (rows-1)*stride)``, any other
    ``K*K*gin'`` per output beat), every output through the
    requantiser at its rate, and the pipeline's latency. A watchdog set from
    it trips on a hang, never on a slow but valid tile; the stalls a bench
    adds scale it.
    """
    pe = config.pe
    dw = fields["kind"] == KIND_DEPTHWISE
    k2 = fields["k"] * (pe.kernel_span(fields["k"], fields["stride"]) if dw else fields["k"])
    pix = dw and pe.depthwise in ("pixels", "shifted") and pe.rows > 1
    if pix:
        beats = fields["out_h"] * -(-fields["out_w"] // pe.rows) * fields["gout"] * k2
    else:
        gin_e = 1 if fields["kind"] == KIND_DEPTHWISE else fields["gin"]
        beats = fields["out_h"] * fields["out_w"] * fields["gout"] * k2 * gin_e
    n_out = fields["out_h"] * fields["out_w"] * output_groups(config, fields["kind"],
                                                               fields["gout"])
    setup = 16 * (FIELD_WIDTH + 2)
    # the MAC array's (both modes'), the requantiser's and the core's own stages
    latency = 2 * pe_latency(pe) + Requantizer.latency_of(pe) + 16
    return setup + n_loaded + beats + n_out * Requantizer.rate_of(pe) + latency


class _Command(NamedTuple):
    """One command of :func:`_commands`, before its words are attached."""
    fields: dict
    window: Window
    groups_out: tuple       # its output groups [j0, j1)
    groups_in: tuple        # its input groups [g0, g1) of each output group's reduction
    load: bool              # it loads its weights and parameters (not ``keep``)
    n_out: int
    place: tuple


def _commands(layer, kind, bands):
    """The commands of ``bands`` (:func:`cut_bands`) in stream order, as :class:`_Command`:
    their fields and geometry without their words, which :func:`emit_tiles` attaches and
    :func:`_bands_cycles` only counts.

    A band whose reduction is one chunk is one command (``part`` ``WHOLE``);
    the following bands of the same output groups reuse its weights and
    parameters (``keep``). A split reduction makes one command per input
    chunk over the same band (``FIRST``, ``MIDDLE``..., ``LAST``), each with
    its own weights; only ``LAST`` makes output beats.
    """
    cc = layer.config
    lanes, rows, k, stride, padding = cc.lanes, cc.rows, layer.k, layer.stride, layer.padding
    _, h, w = layer.x.shape
    cout = layer.w_pos.shape[0]
    ho, wo = layer.out_hw
    chn = _channels(layer)
    per_p = _beats_per_group(layer)              # parameter words (output beats) per group
    per = rows * per_p                           # channels of one command group
    for j0, j1, in_chunks, band_h, band_w in bands:
        c0, c1 = j0 * per, min(cout, j1 * per)
        # a depthwise or diagonal command reads its own channels (a diagonal one from the
        # start of their span, as pack places the weights; a channels one every group's rows
        # lane words, its padding channels zero); a standard one every input channel
        lo, hi = (c0, c1) if layer.depthwise else (0, layer.x.shape[0])
        if layer.diagonal:
            lo, hi = c0 - c0 % _diagonal_span(cc), c1
        dw_groups = channel_groups((j1 - j0) * per if chn else c1 - c0, lanes)
        split = len(in_chunks) > 1
        parts = ([Part.WHOLE] if not split else
                 [Part.FIRST] + [Part.MIDDLE] * (len(in_chunks) - 2) + [Part.LAST])
        first = True
        for oy0 in range(0, ho, band_h):
            oy1 = min(ho, oy0 + band_h)
            for ox0 in range(0, wo, band_w):
                ox1 = min(wo, ox0 + band_w)
                top, left = oy0 * stride - padding, ox0 * stride - padding
                r0, r1 = max(0, top), min(h, (oy1 - 1) * stride - padding + k)
                q0, q1 = max(0, left), min(w, (ox1 - 1) * stride - padding + k)
                beats = (oy1 - oy0) * (ox1 - ox0) * (j1 - j0) * per_p
                for (g0, g1), part in zip(in_chunks, parts):
                    fields = {
                        "in_h": r1 - r0, "in_w": q1 - q0, "out_h": oy1 - oy0,
                        "out_w": ox1 - ox0, "gin": g1 - g0, "gout": j1 - j0, "k": k,
                        "stride": stride, "pad_top": r0 - top, "pad_left": q0 - left,
                        "kind": kind, "relu": int(layer.relu), "keep": int(not (first or split)),
                        "part": part,
                    }
                    for name in ("in_h", "in_w", "out_h", "out_w", "gin", "gout"):
                        if fields[name] >= 1 << FIELD_WIDTH:
                            raise LayerError(f"{name}={fields[name]} does not fit the "
                                             f"command's {FIELD_WIDTH}-bit field")
                    if layer.depthwise:
                        window = Window(lo, hi, dw_groups, r0, r1, q0, q1)
                    else:
                        window = Window(lo + g0 * lanes, hi, g1 - g0, r0, r1, q0, q1)
                    yield _Command(fields, window, (j0, j1), (g0, g1), first or split,
                                   beats if part in (Part.WHOLE, Part.LAST) else 0,
                                   (c0, c1, oy0, oy1, ox0, ox1))
                first = False


def _loaded(layer, cmd):
    """Weight blocks and parameter words ``cmd`` (a :class:`_Command`) loads."""
    if not cmd.load:
        return 0, 0
    j0, j1 = cmd.groups_out
    g0, g1 = cmd.groups_in
    per_group = layer.k * _span(layer) * (1 if layer.depthwise else g1 - g0)
    return (j1 - j0) * per_group, (j1 - j0) * _beats_per_group(layer)


def _bands_cycles(layer, kind, bands, memo=None):
    """Predicted cycles (:func:`~psc.host.cycle_model.tile_cycles`) of the commands of
    ``bands``, from their fields and word counts alone: the scheduler's cost of a cut.
    ``memo`` (a dict) keeps each distinct command's cycles across calls."""
    memo = {} if memo is None else memo
    # chunks of as many output groups (and channels) have the same commands: count each once
    per = layer.config.rows * _beats_per_group(layer)
    cout = layer.w_pos.shape[0]
    same = {}
    for band in bands:
        j0, j1, chunks, band_h, band_w = band
        shape = (j1 - j0, min(cout, j1 * per) - j0 * per, tuple(chunks), band_h, band_w)
        same.setdefault(shape, [band, 0])[1] += 1
    total = 0
    for band, times in same.values():
        for cmd in _commands(layer, kind, [band]):
            win = cmd.window
            counts = (*_loaded(layer, cmd), (win.r1 - win.r0) * (win.q1 - win.q0) * win.groups,
                      cmd.n_out)
            key = (*cmd.fields.values(), *counts)
            if key not in memo:
                memo[key] = tile_cycles(layer.config, cmd.fields, *counts)
            total += times * memo[key]
    return total


def emit_tiles(layer, kind, weights, params, bands):
    """Step 5: the :class:`Tile` commands of every chunk and output band, in stream order
    (:func:`_commands`), with their words: ``weights`` and ``params`` from :func:`pack`,
    the input lane words of each command's window."""
    cc = layer.config
    cl = command_layout(cc)
    per_p = _beats_per_group(layer)
    tiles = []
    for cmd in _commands(layer, kind, bands):
        (j0, j1), (g0, g1) = cmd.groups_out, cmd.groups_in
        wwords, pwords = [], []
        if cmd.load:
            pwords = params[j0 * per_p:j1 * per_p]
            wwords = [wd for j in range(j0, j1) for tap in weights[j]
                      for wd in (tap if layer.depthwise else tap[g0:g1])]
        acts = cmd.window.words(layer.x, cc.lanes, cc.pe.act_width)
        n_loaded = 1 + acts.size + len(wwords) + len(pwords)
        tiles.append(Tile(
            cfg=pack_payload(cl, command_fields(cc, cmd.fields)), weights=wwords, params=pwords,
            acts=[int(v) for v in acts.reshape(-1)], n_out=cmd.n_out, fields=cmd.fields,
            window=cmd.window, place=cmd.place,
            cycle_bound=cycle_bound(cc, cmd.fields, n_loaded)))
    return tiles


def plan_layer(x, w_pos, w_neg, bias, mult, shift, *, stride=1, padding=0, groups=1, relu=False,
               config=None, unroll_stem=True, pixel_order=False):
    """Check a layer against the build and cut it into :class:`Tile` commands.

    Arguments as :func:`psc.host.run_layer`; ``unroll_stem=False`` keeps a
    standard layer standard (its tiles then read windows of ``x`` itself,
    which network mode needs of every layer but the first); ``pixel_order=True``
    makes every tile send its output beats in pixel order, as network mode's
    scatter writes them (a depthwise layer on a ``depthwise="shifted"`` build
    then runs as diagonal commands). Returns a
    :class:`LayerPlan`, whose ``meta["unrolled"]`` says whether its tiles
    read the unrolled input (:func:`unroll`). Raises :class:`LayerError`
    naming the limit for anything the build cannot run, before anything is
    sent.
    """
    check_bool("unroll_stem", unroll_stem)
    check_bool("pixel_order", pixel_order)
    layer = validate(x, w_pos, w_neg, bias, mult, shift, stride=stride, padding=padding,
                     groups=groups, relu=relu, config=config)
    kind, mapped = choose_kind(layer, unroll_stem, pixel_order)
    weights, params = pack(mapped)
    tiles = emit_tiles(mapped, kind, weights, params, cut_bands(mapped))
    cin, h, w = layer.x.shape
    cout, cin_g, k, _ = layer.w_pos.shape
    ho, wo = layer.out_hw
    return LayerPlan(tiles=tiles, out_shape=(cout, ho, wo), kind=kind,
                     macs=ho * wo * cout * cin_g * k * k, config=layer.config,
                     meta={"shape": (cin, h, w), "cout": cout, "k": k, "stride": layer.stride,
                           "padding": layer.padding, "groups": layer.groups,
                           "relu": layer.relu, "unrolled": mapped.x is not layer.x})


def encode_command(config=None, **fields):
    """A raw command word (for tests of the core's own checks; the scheduler uses its own)."""
    cc = CoreConfig() if config is None else config
    defaults = {"in_h": 1, "in_w": 1, "out_h": 1, "out_w": 1, "gin": 1, "gout": 1, "k": 1,
                "stride": 1, "pad_top": 0, "pad_left": 0, "kind": KIND_STANDARD, "relu": 0,
                "keep": 0, "part": Part.WHOLE}
    defaults.update(fields)
    return pack_payload(command_layout(cc), command_fields(cc, defaults))
