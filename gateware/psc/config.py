"""Build-time configuration of the PSC gateware: one frozen dataclass that validates itself."""

import hashlib
import json
from dataclasses import dataclass, field, fields, replace

from psc.model.checks import BadTypeError, check_bool, check_choice, check_int, show

__all__ = ["PSCConfig", "CoreConfig", "required_acc_width", "MULTIPLIERS", "REQUANT_MULTIPLIERS",
           "DEPTHWISE_MODES", "FMAP_RAMS",
           "DW_MAX_REDUCTION", "MAX_VALUE_WIDTH"]

#: Multiplier implementations :attr:`PSCConfig.multiplier` accepts.
MULTIPLIERS = ("generic", "ice40_dual8x8", "ecp5_mult18")
#: Requantiser multipliers :attr:`PSCConfig.requant_multiplier` accepts.
REQUANT_MULTIPLIERS = ("adds", "ice40_mac16")

#: Depthwise mappings :attr:`PSCConfig.depthwise` accepts.
DEPTHWISE_MODES = ("diagonal", "pixels", "channels", "shifted")
#: Where a core's input buffer can live (:attr:`CoreConfig.fmap_ram`).
FMAP_RAMS = ("block", "spram")
#: Largest depthwise reduction (one 7x7 window of one channel); sizes the per-lane accumulators.
DW_MAX_REDUCTION = 49
#: Widest value (signal, port, stream payload) Amaranth can build, in bits: its netlist
#: numbers the bits of a cell's output with 16 bits, and fails on an assertion beyond.
MAX_VALUE_WIDTH = 1 << 16
# Bits of a requantisation shift (0..62) and a margin for a top's command word (about
# 112 bits, and as many again for its derived sizes with CoreConfig.given_sizes), stream
# handshakes, clock and reset, in PSCConfig.input_bits.
_SHIFT_BITS = 6
_CONTROL_BITS = 512


def required_acc_width(act_width, weight_width, max_reduction):
    """Smallest signed accumulator width that holds any sum of ``max_reduction`` products.

    The largest product magnitude is ``2**(act_width-1) * 2**(weight_width-1)``
    (most negative times most negative, which is positive), so the sum of
    ``n`` of them needs ``n * 2**(a+w-2) <= 2**(acc-1) - 1``.
    """
    peak = max_reduction << (act_width + weight_width - 2)
    return peak.bit_length() + 1


def _check_range(name, value, lo, hi):
    """``value`` as an int in ``[lo, hi]`` (kept for the components' own parameter checks)."""
    return check_int(name, value, lo, hi)


def _check_field(config, name, lo, hi):
    # A numpy integer is accepted and stored as an int, so to_dict stays plain JSON.
    object.__setattr__(config, name, check_int(name, getattr(config, name), lo, hi))


def _check_mac16_width(name, value, most):
    if value > most:
        raise ValueError(f"{name} must be at most {most} with requant_multiplier='ice40_mac16' "
                         f"(two SB_MAC16 16x16 products per value), not {value!r}")


def _check_flag(config, name):
    object.__setattr__(config, name, check_bool(name, getattr(config, name)))


@dataclass(frozen=True)
class PSCConfig:
    """Widths and array size of the PSC datapath.

    Parameters
    ----------
    act_width : int
        Bits of a signed activation (2..32). The sign is the MSB.
    weight_width : int
        Bits of a signed weight (2..32). A PSC weight word holds two.
    acc_width : int
        Bits of the signed accumulator (8..64); must hold ``max_reduction``
        products of the most negative activation and weight (checked).
    mult_width : int
        Bits of the unsigned requantisation multiplier (1..32).
    lanes : int
        Activations consumed per beat, ``Tn`` (1..64).
    rows : int
        Output channels (accumulators) per beat, ``Tm`` (1..64). A top's inputs
        (:attr:`input_bits`, mostly ``rows x lanes`` weight words) must fit
        :data:`MAX_VALUE_WIDTH` bits (checked), so the largest arrays need narrower
        weights.
    max_reduction : int
        Largest number of products summed into one output,
        ``Cin // groups * K * K``, that the build supports (1..2**24).
    psc : bool
        ``True`` builds PSC (parified weight words, sign mask and a 2:1 mux
        per weight); ``False`` the plain convolution from the same source.
    multiplier : str
        How :class:`~psc.hw.pe.PSCMac` builds its products. ``"generic"`` (the
        default) writes ``x * w`` and lets synthesis map it (Yosys puts one
        iCE40 SB_MAC16 or ECP5 MULT18X18D per product). ``"ice40_dual8x8"``
        hand-instantiates one iCE40 ``SB_MAC16`` per pair of lanes in its
        signed dual 8x8 mode, fully registered
        (:class:`~psc.hw.ice40_mul.Ice40DualMul`): two products per DSP, so the
        UP5K's 8 DSPs give 16 MACs per cycle. It needs ``act_width <= 8``,
        ``weight_width <= 8`` and an even ``lanes``, adds one cycle of
        latency (the DSP's output register), and builds only for iCE40 (and
        simulators given Yosys's ``cells_sim.v``); the Amaranth simulator
        cannot run it. ``"ecp5_mult18"`` hand-instantiates one ECP5
        ``MULT18X18D`` per lane with its input, pipeline and output
        registers in use (:class:`~psc.hw.ecp5_mul.Ecp5Mult18`), so no fabric
        path crosses the multiplier (Yosys's own mapping leaves them
        unused). It needs ``act_width <= 18`` and ``weight_width <= 18``,
        adds one cycle of latency, and builds only for ECP5 (and simulators
        given the stand-in ``tb/mult18x18d_sim.v``).
    tree_stages : int
        Pipeline registers in the adder tree that sums a PE's products
        (0..2, default 0), for a higher clock at one cycle of latency each
        (throughput unchanged). They split the tree's levels plus the
        accumulator add into equal runs (:func:`psc.hw.pe.pipelined_tree_sum`).
    requantizers : int or None
        Requantisers working in parallel in the core
        (:class:`~psc.hw.requantize.Requantizer`), a divisor of ``rows``;
        ``None`` (the default) means one per row. With fewer, one output beat
        of ``rows`` channels takes ``rows / requantizers`` cycles to
        requantise, which costs no cycles when a layer's reduction is at least
        that many beats long (``K*K*ceil(Cin/lanes)``) and saves one
        ``acc_width x mult_width`` multiplier and one shifter per row removed.
    requant_mult_bits : int or None
        Bits of the requantisation multiplier ``M`` each requantiser
        multiplies per cycle (1..``mult_width``); ``None`` (the default) means
        all of them: a fully pipelined ``acc_width x mult_width`` multiply, one
        value per cycle. With ``k`` bits the multiply is digit-serial (an
        ``acc_width x k`` product and an accumulator, about ``k / mult_width``
        of the multiplier's LUTs) and each requantiser takes
        ``ceil(mult_width / k)`` cycles per value, so one output beat takes
        ``rows / requantizers * ceil(mult_width / k)`` cycles; that costs no
        cycles when a layer's reduction (``K*K*ceil(Cin/lanes)`` beats) is at
        least that long (:attr:`psc.hw.requantize.Requantizer.cycles_per_beat`).
    requant_multiplier : str
        How each requantiser multiplies its sum by ``M``. ``"adds"`` (the
        default): written as shifted adds in the fabric, never mapped to a
        hard multiplier, which the MAC array keeps. ``"ice40_mac16"``: two
        hand-instantiated iCE40 ``SB_MAC16`` in their 16x16 mode per
        requantiser, fully registered, one for each 16-bit half of the sum
        (:class:`~psc.hw.ice40_mul.Ice40Mul16`), so a requantiser takes one
        value per cycle in a few LUTs; the array then has two DSPs fewer per
        requantiser. It needs ``mult_width <= 16``, the requantiser's sums
        at most 32 bits (``acc_width``, and a core's ``psum_width``) and
        ``requant_mult_bits=None`` and ``multiplier="ice40_dual8x8"`` (Yosys's
        ``-dsp``, which a generic multiplier needs, rewrites hand-instantiated
        SB_MAC16), and builds only for iCE40 (and simulators given Yosys's
        ``cells_sim.v``).
    depthwise : str
        How the core maps a depthwise layer on the array. ``"diagonal"``
        (the default, no extra hardware): as a convolution with
        block-diagonal weights, so one multiplier per row works (``1/rows``
        of the array). ``"pixels"``: lanes are channels, rows are ``rows``
        neighbouring output pixels, and every multiplier keeps its own
        accumulator, so the whole array works. It costs ``rows * lanes``
        lane accumulators and as many drain registers
        (:class:`~psc.hw.dot_product.DotProduct`), one activation word per row
        per beat (the core banks its input buffer by column) and needs
        ``lanes == rows``, a power of two. ``"channels"``: lanes and rows are
        both channels: row ``r`` takes lane group ``j*rows + r`` of the same
        pixel and every multiplier keeps its own accumulator, so one beat
        works on ``rows * lanes`` channels of one tap and the whole array
        works for any ``lanes`` and ``rows`` (``rows >= 2``). It costs the
        same accumulators and drain registers as ``"pixels"`` and one lane
        word per row per beat (the core banks its input buffer by channel
        group); a layer's channels are padded to a multiple of
        ``rows * lanes``. ``"shifted"``: lanes are channels, rows are ``rows``
        neighbouring output pixels that share one input word per beat, each
        row's kernel shifted by the stride (row ``r`` applies tap ``kx - r*s``
        of the word at column ``kx``), and every multiplier keeps its own
        accumulator. A kernel row then takes ``K + (rows-1)*s`` beats for
        ``rows`` pixels, so the array works ``K / (K + (rows-1)*s)`` of the
        time, with one input buffer port and no banks (a single-ported
        SPRAM). It costs the same accumulators and drain registers as
        ``"pixels"`` and needs ``lanes`` a multiple of ``rows``, ``rows`` 2
        or 4.
    """
    act_width: int = 8
    weight_width: int = 8
    acc_width: int = 32
    mult_width: int = 16
    lanes: int = 8
    rows: int = 8
    max_reduction: int = 1 << 14
    psc: bool = True
    multiplier: str = "generic"
    tree_stages: int = 0
    requantizers: int | None = None
    requant_mult_bits: int | None = None
    depthwise: str = "diagonal"
    requant_multiplier: str = "adds"

    def __post_init__(self):
        _check_field(self, "act_width", 2, 32)
        _check_field(self, "weight_width", 2, 32)
        _check_field(self, "acc_width", 8, 64)
        _check_field(self, "mult_width", 1, 32)
        _check_field(self, "lanes", 1, 64)
        _check_field(self, "rows", 1, 64)
        _check_field(self, "max_reduction", 1, 1 << 24)
        _check_flag(self, "psc")
        check_choice("multiplier", self.multiplier, MULTIPLIERS)
        if self.multiplier == "ice40_dual8x8":
            for name in ("act_width", "weight_width"):
                value = getattr(self, name)
                if value > 8:
                    raise ValueError(f"{name} must be at most 8 with multiplier='ice40_dual8x8' "
                                     f"(the SB_MAC16's 8x8 mode), not {value!r}")
            if self.lanes % 2:
                raise ValueError(f"lanes must be even with multiplier='ice40_dual8x8' (one "
                                 f"SB_MAC16 computes two lanes), not {self.lanes!r}")
        if self.multiplier == "ecp5_mult18":
            for name in ("act_width", "weight_width"):
                value = getattr(self, name)
                if value > 18:
                    raise ValueError(f"{name} must be at most 18 with multiplier='ecp5_mult18' "
                                     f"(the MULT18X18D's 18x18 operands), not {value!r}")
        _check_field(self, "tree_stages", 0, 2)
        if self.requantizers is not None:
            _check_field(self, "requantizers", 1, self.rows)
            if self.rows % self.requantizers:
                raise ValueError(f"requantizers must divide rows ({self.rows}), "
                                 f"not {self.requantizers!r}")
        if self.requant_mult_bits is not None:
            _check_field(self, "requant_mult_bits", 1, self.mult_width)
        check_choice("requant_multiplier", self.requant_multiplier, REQUANT_MULTIPLIERS)
        if self.requant_multiplier == "ice40_mac16":
            if self.requant_mult_bits is not None:
                raise ValueError(f"requant_mult_bits must be None with "
                                 f"requant_multiplier='ice40_mac16' (the SB_MAC16 takes all of M "
                                 f"at once), not {self.requant_mult_bits!r}")
            if self.multiplier != "ice40_dual8x8":
                # a generic multiplier needs synth_ice40 -dsp, which rewrites hand-made SB_MAC16
                raise ValueError(f"requant_multiplier='ice40_mac16' needs the array's SB_MAC16 "
                                 f"instantiated by hand too (multiplier='ice40_dual8x8'), not "
                                 f"multiplier={self.multiplier!r}")
            _check_mac16_width("mult_width", self.mult_width, 16)
            _check_mac16_width("acc_width", self.acc_width, 32)
        check_choice("depthwise", self.depthwise, DEPTHWISE_MODES)
        if self.depthwise == "pixels" and (self.lanes != self.rows or self.rows < 2
                                           or self.rows & (self.rows - 1)):
            raise ValueError(f"depthwise='pixels' needs lanes == rows, a power of two >= 2, "
                             f"not lanes={self.lanes!r}, rows={self.rows!r}")
        if self.depthwise == "shifted" and (self.rows not in (2, 4) or self.lanes % self.rows):
            raise ValueError(f"depthwise='shifted' needs rows 2 or 4 and lanes a multiple of "
                             f"rows, not lanes={self.lanes!r}, rows={self.rows!r}")
        if self.depthwise == "channels" and self.rows < 2:
            raise ValueError(f"depthwise='channels' needs rows >= 2 (one lane group per row), "
                             f"not rows={self.rows!r}")
        need = required_acc_width(self.act_width, self.weight_width, self.max_reduction)
        if self.acc_width < need:
            raise ValueError(
                f"acc_width must be at least {need} to hold {self.max_reduction} products of "
                f"{self.act_width}-bit activations and {self.weight_width}-bit weights "
                f"(max_reduction={self.max_reduction}), not {self.acc_width}")
        if self.input_bits > MAX_VALUE_WIDTH:
            raise ValueError(
                f"lanes={self.lanes}, rows={self.rows} with {self.act_width}-bit activations, "
                f"{self.word_width}-bit weight words, {self.acc_width}-bit accumulators and "
                f"{self.mult_width}-bit multipliers need up to {self.input_bits} input bits on "
                f"one top; Amaranth builds at most {MAX_VALUE_WIDTH}: use fewer lanes or rows, "
                f"or narrower widths")

    @property
    def input_bits(self):
        """Bound on the input port bits of any top built from this configuration.

        Amaranth numbers all of a top's input bits together, up to
        :data:`MAX_VALUE_WIDTH`. The widest inputs are the MAC array's beat
        (:func:`psc.hw.dot_product.input_layout`: activations, one lane word or
        one per row with ``depthwise="pixels"`` or ``"channels"``, ``rows x lanes`` weight words,
        ``rows`` biases) and the core's streams (a weight block, ``rows``
        biases, multipliers and shifts, a lane word, the command); the bound
        adds both's parts and a margin for the command word, stream handshakes,
        clock and reset. Tests check it against every top's ports.
        """
        x_words = self.rows if self.row_words else 1
        return (x_words * self.lanes * self.act_width + self.rows * self.lanes * self.word_width
                + self.rows * (self.acc_width + self.mult_width + _SHIFT_BITS) + _CONTROL_BITS)

    @property
    def word_width(self):
        """Bits of one weight memory word: ``2 * weight_width`` for PSC, ``weight_width`` plain."""
        return 2 * self.weight_width if self.psc else self.weight_width

    @property
    def hand_dsps(self):
        """The build instantiates DSP cells by hand (:attr:`multiplier` or
        :attr:`requant_multiplier`), which synthesis must neither infer nor rewrite."""
        return self.multiplier != "generic" or self.requant_multiplier != "adds"

    @property
    def requant_parallel(self):
        """Requantisers in parallel: :attr:`requantizers`, or ``rows`` when it is ``None``."""
        return self.rows if self.requantizers is None else self.requantizers

    @property
    def lane_accumulators(self):
        """Whether depthwise layers run on per-lane accumulators (``depthwise`` ``"pixels"``,
        ``"channels"`` or ``"shifted"``)."""
        return self.depthwise in ("pixels", "channels", "shifted")

    @property
    def row_words(self):
        """Whether each row takes its own lane word in a depthwise beat (``depthwise``
        ``"pixels"`` or ``"channels"``; ``"shifted"`` rows share one)."""
        return self.depthwise in ("pixels", "channels")

    def kernel_span(self, k, stride):
        """Input columns one depthwise reduction reads per kernel row: ``k``, or with
        ``depthwise="shifted"`` ``k + (rows-1)*stride`` (the ``rows`` pixels' windows)."""
        return k + (self.rows - 1) * stride if self.depthwise == "shifted" else k

    @property
    def dw_acc_width(self):
        """Bits of a per-lane accumulator (:attr:`lane_accumulators`): one 7x7 window, no bias."""
        return required_acc_width(self.act_width, self.weight_width, DW_MAX_REDUCTION)

    @property
    def product_width(self):
        """Bits of a signed ``act_width x weight_width`` product."""
        return self.act_width + self.weight_width

    def replace(self, **changes):
        """A copy with ``changes`` applied (and validated)."""
        _check_names(type(self), changes)
        return replace(self, **changes)

    def to_dict(self):
        """Every field, as plain JSON-serialisable values; :meth:`from_dict` inverts it.
        ``requant_multiplier``, added after builds shipped, appears only where it is not
        ``"adds"``, so that their digests (which a board reports) stay what they were."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["requant_multiplier"] == "adds":
            del d["requant_multiplier"]
        return d

    @classmethod
    def from_dict(cls, d):
        """The configuration :meth:`to_dict` wrote; unknown or missing fields are refused
        (but ``requant_multiplier``, which :meth:`to_dict` writes only where it is set)."""
        if isinstance(d, dict):
            d = {"requant_multiplier": "adds", **d}
        return _from_dict(cls, d)


def _check_names(cls, changes, *others):
    names = [f.name for c in (cls, *others) for f in fields(c)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}.replace: unknown field(s) {unknown}; fields are {names}")


def _from_dict(cls, d, convert=None):
    if not isinstance(d, dict):
        raise BadTypeError(f"{cls.__name__}.from_dict needs a dict, not {show(d)}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; fields are {names}")
    missing = [n for n in names if n not in d]
    if missing:
        raise ValueError(f"{cls.__name__}: missing field(s) {missing}")
    kw = dict(d)
    for name, fn in (convert or {}).items():
        kw[name] = fn(kw[name])
    return cls(**kw)


@dataclass(frozen=True)
class CoreConfig:
    """Build-time parameters of :class:`PSCConvCore`.

    Parameters
    ----------
    pe : psc.config.PSCConfig
        Datapath widths, ``lanes`` (Tn, input channels per beat), ``rows``
        (Tm, output channels per beat), ``max_reduction``, ``psc`` and the
        depthwise mapping. The default is ``PSCConfig(depthwise="pixels")``
        (8 x 8, depthwise layers on the whole array).
    fmap_depth : int
        Input buffer depth in lane words (``lanes`` activations each). A tile
        of ``H x W`` pixels and ``ceil(Cin / lanes)`` channel groups needs
        ``H * W * ceil(Cin / lanes)`` words.
    weight_depth : int
        Weight buffer depth in blocks of ``rows x lanes`` weight words.
    param_depth : int
        Per-channel parameter buffer depth in groups of ``rows`` output
        channels (bias, multiplier, shift).
    read_register : bool
        Pipelining for a fast target: a register stage after the buffers'
        read data (one cycle more latency on each side of the MAC array, same
        throughput), so the block RAM outputs route neither straight into the
        multipliers' input registers nor into the bias add in front of the
        requantiser, and a two-entry FIFO of sums after the MAC array (one
        cycle more; :attr:`sums_fifo`), so the output port's ready does not
        reach the buffers' read enables through the whole pipeline. Both
        limit the clock on ECP5. ``False`` by default: it costs a lane word
        per row, a weight block and a parameter word plus three times
        ``rows`` sums of flip-flops.
    psum_depth : int
        Depth of the partial-sum buffer in output beats (``rows`` sums
        each), ``0`` for none. A layer whose reduction does not fit one
        command (the weight buffer, ``max_reduction`` or one input window)
        runs as several commands over chunks of its input channels; the
        output stage keeps their full-precision sums here between them, so
        one such command makes at most ``psum_depth`` output beats. With
        ``0`` such a layer is refused.
    psum_width : int or None
        Bits of a partial sum, of the bias add and of the requantiser's
        input (at least ``pe.acc_width``, at most 64): the whole reduction of
        a chunked layer plus its bias must fit, while the MAC array's
        accumulators stay ``pe.acc_width`` bits, enough for one chunk.
        ``None`` (the default) is ``max(32, pe.acc_width)``. Ignored (taken
        as ``pe.acc_width``) when ``psum_depth`` is ``0``.
    fmap_ram : str
        Where the input buffer lives: ``"block"`` (the default: inferred
        block RAM, dual-ported, so a tile's input loads while its first
        output rows compute) or ``"spram"`` (the iCE40 UltraPlus's
        single-ported ``SB_SPRAM256KA`` cells, up to four: much deeper, but
        the tile's whole input loads before its first beat). ``"spram"``
        needs one bank (``depthwise`` ``"diagonal"`` or ``"shifted"``).
    early_weights : bool
        A command's taps issue as soon as the weight block each reads has arrived, not
        once all of the command's blocks have: the first output pixel reads every block
        in the order they arrive, so a layer whose weights outweigh its MACs per block
        (fully connected, pointwise on a small map) computes while its weights load
        instead of after. One comparator in front of the sequencer's issue flag.
        ``False`` by default.
    given_sizes : bool
        Each command beat carries the command's derived sizes, computed by the host
        (:func:`~psc.hw.core.setup.command_layout`), so the core has no shift-and-add
        multipliers to compute them and its setup takes no cycles. ``False`` by default.
    """
    pe: PSCConfig = field(default_factory=lambda: PSCConfig(depthwise="pixels"))
    fmap_depth: int = 2048
    weight_depth: int = 256
    param_depth: int = 32
    read_register: bool = False
    psum_depth: int = 256
    psum_width: int | None = None
    fmap_ram: str = "block"
    early_weights: bool = False
    given_sizes: bool = False

    def __post_init__(self):
        if not isinstance(self.pe, PSCConfig):
            raise BadTypeError(f"pe must be a psc.config.PSCConfig, not {show(self.pe)}")
        _check_field(self, "fmap_depth", 2, 1 << 20)
        _check_field(self, "weight_depth", 2, 1 << 20)
        _check_field(self, "param_depth", 2, 1 << 16)
        _check_flag(self, "read_register")
        _check_flag(self, "early_weights")
        _check_flag(self, "given_sizes")
        _check_field(self, "psum_depth", 0, 1 << 16)
        if self.psum_width is None:
            object.__setattr__(self, "psum_width", max(32, self.pe.acc_width))
        _check_field(self, "psum_width", 8, 64)
        if self.pe.requant_multiplier == "ice40_mac16" and self.psum_depth:
            _check_mac16_width("psum_width", self.psum_width, 32)
        if self.psum_depth and self.psum_width < self.pe.acc_width:
            raise ValueError(f"psum_width must be at least acc_width ({self.pe.acc_width}), "
                             f"not {self.psum_width!r}")
        if self.fmap_ram not in FMAP_RAMS:
            raise ValueError(f"fmap_ram must be one of {FMAP_RAMS}, not {self.fmap_ram!r}")
        if self.fmap_ram == "spram":
            from psc.hw.spram import UP5K_SPRAMS, spram_cells
            if self.pe.row_words:
                raise ValueError(f"fmap_ram='spram' needs one input bank, so not "
                                 f"depthwise={self.pe.depthwise!r}")
            cells = spram_cells(self.pe.lanes * self.pe.act_width, self.fmap_depth)
            if cells > UP5K_SPRAMS:
                raise ValueError(f"fmap_depth={self.fmap_depth} words of "
                                 f"{self.pe.lanes * self.pe.act_width} bits need {cells} "
                                 f"SB_SPRAM256KA cells with fmap_ram='spram'; the device has "
                                 f"{UP5K_SPRAMS}")
        if self.pe.max_reduction < self.pe.lanes:
            # the core counts a reduction in beats of `lanes` products
            raise ValueError(f"max_reduction must be at least lanes ({self.pe.lanes}) in a core "
                             f"(one beat of products), not {self.pe.max_reduction}")
        if self.pe.depthwise == "pixels" and self.fmap_depth % self.pe.rows:
            raise ValueError(f"fmap_depth must be a multiple of rows ({self.pe.rows}) with "
                             f"depthwise='pixels' (one input bank per row), not {self.fmap_depth!r}")
        bank = self.fmap_depth // self.pe.rows
        if self.pe.depthwise == "channels" and (self.fmap_depth % self.pe.rows
                                                or bank & (bank - 1)):
            raise ValueError(f"fmap_depth must be rows ({self.pe.rows}) times a power of two with "
                             f"depthwise='channels' (one input bank per row, addressed by its "
                             f"low bits), not {self.fmap_depth!r}")

    @property
    def lanes(self):
        return self.pe.lanes

    @property
    def rows(self):
        return self.pe.rows

    @property
    def sum_width(self):
        """Bits of a layer's whole sum (bias included) after the MAC array: ``psum_width``
        with a partial-sum buffer, else ``pe.acc_width``."""
        return self.psum_width if self.psum_depth else self.pe.acc_width

    @property
    def sums_fifo(self):
        """The core has a two-entry FIFO of sums between the MAC array and the output stage
        (one cycle more latency), so that the array's enable comes from the FIFO's level and
        not from the requantiser's state and ``act_out.ready``: with ``read_register``, and
        on an ``fmap_ram="spram"`` build, whose SB_SPRAM256KA chip selects (the read
        enables, at the end of that chain) sit in the device's corners."""
        return self.read_register or self.fmap_ram == "spram"

    @property
    def requant_config(self):
        """The :class:`PSCConfig` of the output stage's requantiser: ``pe`` with
        ``acc_width`` set to :attr:`sum_width`."""
        if self.sum_width == self.pe.acc_width:
            return self.pe
        return self.pe.replace(acc_width=self.sum_width)

    def replace(self, **changes):
        """A copy with ``changes`` applied (and validated); a field of :class:`PSCConfig`
        changes ``pe``."""
        _check_names(type(self), changes, PSCConfig)
        pe_changes = {k: changes.pop(k) for k in list(changes) if k in PSCConfig.__dataclass_fields__}
        if pe_changes:
            # one step, so that a change valid only with another (rows and fmap_depth)
            # is checked with it
            changes["pe"] = self.pe.replace(**pe_changes)
        return replace(self, **changes)

    def to_dict(self):
        """Every field (``pe`` nested), as plain JSON-serialisable values."""
        return {"pe": self.pe.to_dict(), "fmap_depth": self.fmap_depth,
                "weight_depth": self.weight_depth, "param_depth": self.param_depth,
                "read_register": self.read_register, "psum_depth": self.psum_depth,
                "psum_width": self.psum_width, "fmap_ram": self.fmap_ram,
                # a field added after builds shipped appears only where it is set, so that
                # their digests (which a board reports) stay what they were
                **({"early_weights": True} if self.early_weights else {}),
                **({"given_sizes": True} if self.given_sizes else {})}

    @classmethod
    def from_dict(cls, d):
        """The configuration :meth:`to_dict` wrote; unknown or missing fields are refused
        (but ``early_weights`` and ``given_sizes``, which :meth:`to_dict` writes only where
        they are set)."""
        if isinstance(d, dict):
            d = {"early_weights": False, "given_sizes": False, **d}
        return _from_dict(cls, d, {"pe": PSCConfig.from_dict})

    def digest(self):
        """Stable 32-bit digest of every field (the board reports it to the host)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")

    def key(self):
        """Short stable text naming this build (used for build directories)."""
        p = self.pe
        # the readable part names the usual knobs; the digest covers every field
        digest = hashlib.sha1(repr(self).encode()).hexdigest()[:8]
        return (f"n{p.lanes}m{p.rows}{'psc' if p.psc else 'plain'}"
                f"_f{self.fmap_depth}w{self.weight_depth}p{self.param_depth}s{self.psum_depth}_{digest}")
