"""Command format, stream payloads and the internal beat layouts of :class:`~psc.hw.core.PSCConvCore`.

The public half (the ``KIND_*`` constants, the field limits and the payload
layouts of the core's streams) is what the host packs and unpacks; the
internal half (:func:`sizes_layout`, :func:`tap_layout`, :func:`fetch_layout`,
:func:`input_read_layout`, :func:`read_signature`) is what the core's parts
pass to each other.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum
from amaranth.lib.wiring import In, Out, Signature

from psc.config import CoreConfig
from psc.hw.requantize import SHIFT_WIDTH

__all__ = [
    "LayerKind", "Part", "KIND_STANDARD", "KIND_DEPTHWISE", "KIND_POINTWISE", "KIND_FC",
    "KERNELS", "STRIDES", "FIELD_WIDTH", "COUNTER_WIDTH", "OUTPUT_COUNT_WIDTH", "MAX_OUTPUTS",
    "config_layout", "weight_layout", "param_layout", "act_in_layout", "act_out_layout",
    "sizes_layout", "tap_layout", "fetch_layout", "input_read_layout", "read_signature",
    "output_groups",
]


class LayerKind(enum.IntEnum, shape=2):
    """The ``kind`` field of a command (:func:`config_layout`)."""
    STANDARD = 0
    DEPTHWISE = 1
    POINTWISE = 2
    FC = 3


class Part(enum.IntEnum, shape=2):
    """The ``part`` field of a command: which chunk of a split reduction it is.

    A layer whose reduction does not fit one command runs as several over
    chunks of its input channels, each over the same output beats: ``FIRST``
    adds the bias to its sums and stores them in the partial-sum buffer,
    ``MIDDLE`` adds its sums to the stored ones and stores them again,
    ``LAST`` adds them and sends the total through the requantiser. Only
    ``LAST`` (and ``WHOLE``, a reduction in one command) makes output beats.
    """
    WHOLE = 0
    FIRST = 1
    MIDDLE = 2
    LAST = 3


# Plain names for the host, which packs commands from integers.
KIND_STANDARD = LayerKind.STANDARD
KIND_DEPTHWISE = LayerKind.DEPTHWISE
KIND_POINTWISE = LayerKind.POINTWISE
KIND_FC = LayerKind.FC
KERNELS = (1, 3, 5, 7)
STRIDES = (1, 2)
#: Width of the size fields of a layer command (heights, widths, channel groups).
FIELD_WIDTH = 16
#: Width of the cycle counters.
COUNTER_WIDTH = 32
#: Width of the core's count of a command's output beats (``out_h * out_w * gout``),
#: which are streamed, not stored, so no buffer bounds them. 24 bits hold every tile
#: :func:`psc.host.plan_layer` makes for the shipped builds: a tile's input holds at
#: most ``fmap_depth`` words, one input pixel (``k = 7``, padding 6) makes at most
#: 7 x 7 output pixels and a tile has at most ``param_depth`` output groups, so
#: ``49 * fmap_depth * param_depth`` outputs, below ``2**24`` for every shipped preset.
OUTPUT_COUNT_WIDTH = 24
#: Most output beats one command may make; the core refuses a larger one (``error``).
MAX_OUTPUTS = (1 << OUTPUT_COUNT_WIDTH) - 1
#: Largest ``pad_top``/``pad_left`` the command's 3-bit fields hold.
PAD_MAX = (1 << 3) - 1


def _pe(config):
    return config.pe if isinstance(config, CoreConfig) else config


def _bits(n):
    return max(1, int(n).bit_length())


def config_layout(config=None):
    """Payload of :attr:`PSCConvCore.cfg`, one beat per layer (or tile).

    Fields (LSB first): ``in_h``, ``in_w`` (input tile size), ``out_h``,
    ``out_w`` (output tile size), ``gin``, ``gout`` (input and output channel
    groups: ``ceil(Cin / lanes)``, ``ceil(Cout / rows)``), ``k`` (kernel),
    ``stride``, ``pad_top``, ``pad_left`` (zero rows/columns before the tile;
    rows/columns after it are implied by ``out_h``/``out_w``), ``kind``
    (:class:`LayerKind`, the ``KIND_*`` values), ``relu``, ``keep`` (reuse the
    weights and parameters of the previous command instead of loading new ones),
    ``part`` (:class:`Part`: a whole reduction, or a chunk of a split one).
    """
    return data.StructLayout({
        "in_h": FIELD_WIDTH, "in_w": FIELD_WIDTH, "out_h": FIELD_WIDTH, "out_w": FIELD_WIDTH,
        "gin": FIELD_WIDTH, "gout": FIELD_WIDTH,
        "k": 4, "stride": 2, "pad_top": 3, "pad_left": 3, "kind": LayerKind, "relu": 1, "keep": 1,
        "part": Part,
    })


def weight_layout(config):
    """Payload of :attr:`PSCConvCore.weights`: one ``rows x lanes`` block of weight words.

    Row ``r`` lane ``l`` is word ``r * lanes + l``: parified ``{W-, W+}``
    (``W+`` low, :func:`psc.model.packing.parify`) when ``psc``, else the signed
    weight. Same bits as the ``w`` field of :func:`psc.hw.dot_product.input_layout`.
    """
    p = _pe(config)
    elem = unsigned(2 * p.weight_width) if p.psc else signed(p.weight_width)
    return data.ArrayLayout(data.ArrayLayout(elem, p.lanes), p.rows)


def param_layout(config):
    """Payload of :attr:`PSCConvCore.params`: ``bias``, ``mult``, ``shift`` of ``rows`` channels."""
    p = _pe(config)
    return data.StructLayout({
        "bias": data.ArrayLayout(signed(p.acc_width), p.rows),
        "mult": data.ArrayLayout(unsigned(p.mult_width), p.rows),
        "shift": data.ArrayLayout(unsigned(SHIFT_WIDTH), p.rows),
    })


def act_in_layout(config):
    """Payload of :attr:`PSCConvCore.act_in`: ``lanes`` signed activations (a lane word)."""
    p = _pe(config)
    return data.ArrayLayout(signed(p.act_width), p.lanes)


def output_groups(config, kind, gout):
    """Output beats per output pixel of a command of ``kind`` with ``gout`` groups: ``gout``,
    or ``gout * lanes`` for a depthwise command on a ``depthwise="channels"`` build (whose
    groups are of ``rows * lanes`` channels; also its parameter words), ``gout * lanes /
    rows`` on a ``depthwise="shifted"`` build (groups of ``lanes`` channels)."""
    pe = _pe(config)
    if kind == KIND_DEPTHWISE and pe.depthwise == "channels":
        return gout * pe.lanes
    if kind == KIND_DEPTHWISE and pe.depthwise == "shifted":
        return gout * (pe.lanes // pe.rows)
    return gout


def act_out_layout(config):
    """Payload of :attr:`PSCConvCore.act_out`: ``rows`` signed activations."""
    p = _pe(config)
    return data.ArrayLayout(signed(p.act_width), p.rows)


# --- internal layouts ---------------------------------------------------------

def _pixels(cc):
    return cc.pe.depthwise == "pixels"


def _channels(cc):
    return cc.pe.depthwise == "channels"


def bank_count(cc):
    """Input buffer banks: ``rows`` on a ``depthwise="pixels"`` or ``"channels"`` build,
    else one."""
    return cc.pe.rows if cc.pe.row_words else 1


def address_width(cc):
    """Width of the sequencer's signed word addresses (padding makes them negative)."""
    return _bits(cc.fmap_depth) + 5


def weight_address_width(cc):
    """Width of the sequencer's weight block address (one more than the buffer's)."""
    return _bits(cc.weight_depth) + 1


def param_address_width(cc):
    """Width of a parameter buffer address (an output group below ``param_depth``)."""
    return (cc.param_depth - 1).bit_length()


def sizes_layout(cc):
    """The derived sizes of a command (:class:`~psc.hw.core.setup.DerivedSizes`).

    Each field holds one more value than its largest value in an accepted
    command (the build's limit), so a saturated product (all ones) is above
    the limit it is checked against. ``wg``: words per input row; ``n_in``:
    input words (both in bank words, one per ``rows`` stream words, for a
    depthwise command on a ``depthwise="channels"`` build); ``ow``: output beats per output row; ``n_out``: output beats;
    ``kk``: ``k * k``; ``red``: beats per reduction; ``n_w``: weight blocks;
    ``pt_wg``, ``pl_g``: words skipped by the top and left padding; ``kr_wg``:
    words of the input rows above the last one the first output row needs
    (``(k - 1 - pad_top) * wg``); ``c0_g``: words of that last row its first
    pixel needs (``min(in_w, k - pad_left) * gin``). Depthwise
    layers on a ``depthwise="pixels"`` build: ``plane`` (bank words per
    group), ``n_dw`` (bank words of the tile), ``pt_ws`` (bank words skipped
    by the top padding).
    """
    pe = cc.pe
    red_max = pe.max_reduction // pe.lanes
    bank_depth = cc.fmap_depth // bank_count(cc)

    def sized(limit):
        return unsigned(_bits(limit + 1))
    return data.StructLayout({
        "wg": sized(cc.fmap_depth), "n_in": sized(cc.fmap_depth),
        "ow": sized(MAX_OUTPUTS), "n_out": sized(MAX_OUTPUTS),
        "kk": sized(red_max), "red": sized(red_max), "n_w": sized(cc.weight_depth),
        # Used only by an accepted command (wg, gin <= fmap_depth), never checked.
        "pt_wg": sized(PAD_MAX * cc.fmap_depth), "pl_g": sized(PAD_MAX * cc.fmap_depth),
        "kr_wg": sized(PAD_MAX * cc.fmap_depth), "c0_g": sized(PAD_MAX * cc.fmap_depth),
        "plane": sized(bank_depth), "n_dw": sized(bank_depth),
        "pt_ws": sized(PAD_MAX * bank_depth),
    })


def tap_layout(cc):
    """One beat of the sequencer (:class:`~psc.hw.core.sequencer.Sequencer`).

    ``lin``: linear word address of the tap's input word (signed: padding
    taps may point before the tile); ``ix``, ``iy``: the tap's input column
    and row (row 0's column on a depthwise pixels beat); ``waddr``: weight
    block; ``first``/``last``: the beat starts/ends a reduction.
    """
    sd = signed(FIELD_WIDTH + 2)
    return data.StructLayout({
        "lin": signed(address_width(cc)), "ix": sd, "iy": sd,
        "waddr": unsigned(weight_address_width(cc)), "first": 1, "last": 1,
    })


def input_read_layout(cc):
    """Read address of :class:`~psc.hw.core.input_buffer.InputBuffer`.

    ``addr``: one word address per bank; on a banked build also ``sel``
    (the bank of the shared word of a non-depthwise beat) and, on a
    ``depthwise="pixels"`` build, ``rot`` (the bank of row 0 of a depthwise beat).
    """
    nbanks = bank_count(cc)
    fields = {"addr": data.ArrayLayout(unsigned(_bits(cc.fmap_depth // nbanks - 1)), nbanks)}
    if nbanks > 1:
        sel = unsigned(max(1, (nbanks - 1).bit_length()))
        fields.update(sel=sel, **({"rot": sel} if _pixels(cc) else {}))
    return data.StructLayout(fields)


def fetch_layout(cc):
    """An entry of the fetch's address queue: bank addresses, weight address, padding.

    ``pad`` is one bit per row on a ``depthwise="pixels"`` build (each row
    reads its own pixel), else one bit for the whole beat.
    """
    rd = input_read_layout(cc)
    fields = {
        "addr": rd["addr"].shape,
        "waddr": unsigned(weight_address_width(cc)),
        "pad": unsigned(cc.pe.rows if _pixels(cc) else 1),
        "first": 1, "last": 1,
    }
    fields.update({name: rd[name].shape for name in ("sel", "rot") if name in rd.members})
    return data.StructLayout(fields)


def read_signature(addr_shape, data_shape):
    """A synchronous buffer read, from the reader's side.

    ``addr`` and ``en`` in a cycle; ``data`` holds the word in the next
    cycle and keeps it while ``en`` is low (one cycle latency, one read per cycle).
    """
    return Signature({"addr": Out(addr_shape), "en": Out(1), "data": In(data_shape)})
